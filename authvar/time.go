package authvar

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Time is an EFI_TIME (16 bytes). Time-based authenticated variables carry
// one; the firmware refuses an update whose time is not later than the
// stored one (unless it appends), and requires Pad1, Nanosecond, TimeZone,
// Daylight and Pad2 to be zero.
type Time struct {
	Year                 uint16
	Month, Day           uint8
	Hour, Minute, Second uint8
	Pad1                 uint8
	Nanosecond           uint32
	TimeZone             int16
	Daylight             uint8
	Pad2                 uint8
}

// TimeSize is the encoded size of an EFI_TIME.
const TimeSize = 16

// TimeOf returns t in UTC to the second, as sign-efi-sig-list -t writes it.
func TimeOf(t time.Time) Time {
	t = t.UTC()
	return Time{Year: uint16(t.Year()), Month: uint8(t.Month()), Day: uint8(t.Day()),
		Hour: uint8(t.Hour()), Minute: uint8(t.Minute()), Second: uint8(t.Second())}
}

// Time returns et as a time.Time in UTC (TimeZone and Daylight ignored).
func (et Time) Time() time.Time {
	return time.Date(int(et.Year), time.Month(et.Month), int(et.Day), int(et.Hour), int(et.Minute), int(et.Second), int(et.Nanosecond), time.UTC)
}

// String is "YYYY-MM-DD HH:MM:SS", the form sign-efi-sig-list -t takes.
func (et Time) String() string {
	return fmt.Sprintf("%04d-%02d-%02d %02d:%02d:%02d", et.Year, et.Month, et.Day, et.Hour, et.Minute, et.Second)
}

// Bytes encodes et.
func (et Time) Bytes() []byte {
	b := make([]byte, TimeSize)
	binary.LittleEndian.PutUint16(b[0:], et.Year)
	b[2], b[3], b[4], b[5], b[6], b[7] = et.Month, et.Day, et.Hour, et.Minute, et.Second, et.Pad1
	binary.LittleEndian.PutUint32(b[8:], et.Nanosecond)
	binary.LittleEndian.PutUint16(b[12:], uint16(et.TimeZone))
	b[14], b[15] = et.Daylight, et.Pad2
	return b
}

// ParseTime decodes an EFI_TIME.
func ParseTime(b []byte) (Time, error) {
	if len(b) < TimeSize {
		return Time{}, errors.New("EFI_TIME: truncated")
	}
	return Time{Year: binary.LittleEndian.Uint16(b[0:]), Month: b[2], Day: b[3], Hour: b[4], Minute: b[5], Second: b[6], Pad1: b[7],
		Nanosecond: binary.LittleEndian.Uint32(b[8:]), TimeZone: int16(binary.LittleEndian.Uint16(b[12:])), Daylight: b[14], Pad2: b[15]}, nil
}

// Check refuses what firmware refuses in a time-based authenticated
// variable's timestamp: non-zero Pad1, Nanosecond, TimeZone, Daylight or
// Pad2, and out-of-range fields.
func (et Time) Check() error {
	if et.Pad1 != 0 || et.Nanosecond != 0 || et.TimeZone != 0 || et.Daylight != 0 || et.Pad2 != 0 {
		return errors.New("EFI_TIME: Pad1, Nanosecond, TimeZone, Daylight and Pad2 must be zero")
	}
	if et.Year == 0 && et.Month == 0 && et.Day == 0 && et.Hour == 0 && et.Minute == 0 && et.Second == 0 {
		return nil // the zero time of an append
	}
	if et.Year < 1900 || et.Year > 9999 || et.Month < 1 || et.Month > 12 || et.Day < 1 || et.Hour > 23 || et.Minute > 59 || et.Second > 59 ||
		et.Time().Day() != int(et.Day) {
		return fmt.Errorf("EFI_TIME %s: not a valid date and time", et)
	}
	return nil
}
