// Package image reads and writes GPT disk images per the UEFI specification
// and builds images from systemd-repart-style partition definitions per the
// Discoverable Partitions Specification, including dm-verity data, hash and
// signature partitions, byte-identical to systemd-repart 258.
package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"unicode/utf16"
)

// SectorSize is the logical sector size of the images signet writes.
const SectorSize = 512

// Sizes of GPT structures.
const (
	headerSize  = 92
	entrySize   = 128
	numEntries  = 128
	entryArea   = numEntries * entrySize // 16 KiB = 32 sectors
	maxEntries  = 4096
	maxNameRune = 36
)

// Partition attribute bits (UEFI and the Discoverable Partitions
// Specification).
const (
	AttrRequired  = 1 << 0
	AttrReadOnly  = 1 << 60
	AttrNoAuto    = 1 << 63
	AttrGrowFS    = 1 << 59
	AttrNoBlockIO = 1 << 1
)

// ErrGPT reports a missing or malformed GUID partition table.
var ErrGPT = errors.New("gpt: bad partition table")

// Table is a GUID partition table with 512-byte sectors.
type Table struct {
	DiskGUID       GUID
	FirstUsableLBA uint64
	LastUsableLBA  uint64
	// Entries has one element per entry slot; an entry with a zero Type
	// is unused. Slot i is partition number i+1.
	Entries []Entry
}

// Entry is one GPT partition entry.
type Entry struct {
	Type       GUID
	UUID       GUID
	FirstLBA   uint64
	LastLBA    uint64 // inclusive
	Attributes uint64
	Name       string
}

// Offset and Size are the entry's extent in bytes.
func (e Entry) Offset() int64 { return int64(e.FirstLBA) * SectorSize }

// Size is the entry's size in bytes.
func (e Entry) Size() int64 { return int64(e.LastLBA-e.FirstLBA+1) * SectorSize }

// Used reports whether the slot holds a partition.
func (e Entry) Used() bool { return !e.Type.IsZero() }

// NewTable returns an empty table for a disk of diskSize bytes, with the
// first usable sector at 1 MiB as libfdisk (and so systemd-repart) sets it.
func NewTable(disk GUID, diskSize int64) (*Table, error) {
	sectors := uint64(diskSize / SectorSize)
	if diskSize%SectorSize != 0 || sectors < 2048+34 {
		return nil, fmt.Errorf("%w: disk of %d bytes is too small or not whole sectors", ErrGPT, diskSize)
	}
	return &Table{
		DiskGUID:       disk,
		FirstUsableLBA: 2048,
		LastUsableLBA:  sectors - 34,
		Entries:        make([]Entry, numEntries),
	}, nil
}

func (t *Table) encodeEntries() ([]byte, error) {
	b := make([]byte, len(t.Entries)*entrySize)
	for i, e := range t.Entries {
		if !e.Used() {
			continue
		}
		p := b[i*entrySize:]
		ty, id := e.Type.Encode(), e.UUID.Encode()
		copy(p[0:], ty[:])
		copy(p[16:], id[:])
		binary.LittleEndian.PutUint64(p[32:], e.FirstLBA)
		binary.LittleEndian.PutUint64(p[40:], e.LastLBA)
		binary.LittleEndian.PutUint64(p[48:], e.Attributes)
		u := utf16.Encode([]rune(e.Name))
		if len(u) > maxNameRune {
			return nil, fmt.Errorf("%w: partition name %q longer than 36 UTF-16 units", ErrGPT, e.Name)
		}
		for j, c := range u {
			binary.LittleEndian.PutUint16(p[56+2*j:], c)
		}
	}
	return b, nil
}

func (t *Table) header(myLBA, altLBA, entriesLBA uint64, entriesCRC uint32) []byte {
	h := make([]byte, SectorSize)
	copy(h, "EFI PART")
	binary.LittleEndian.PutUint32(h[8:], 0x00010000)
	binary.LittleEndian.PutUint32(h[12:], headerSize)
	binary.LittleEndian.PutUint64(h[24:], myLBA)
	binary.LittleEndian.PutUint64(h[32:], altLBA)
	binary.LittleEndian.PutUint64(h[40:], t.FirstUsableLBA)
	binary.LittleEndian.PutUint64(h[48:], t.LastUsableLBA)
	g := t.DiskGUID.Encode()
	copy(h[56:], g[:])
	binary.LittleEndian.PutUint64(h[72:], entriesLBA)
	binary.LittleEndian.PutUint32(h[80:], uint32(len(t.Entries)))
	binary.LittleEndian.PutUint32(h[84:], entrySize)
	binary.LittleEndian.PutUint32(h[88:], entriesCRC)
	binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:headerSize]))
	return h
}

// Write writes the protective MBR, the primary table at the start and the
// backup table at the end of a disk of diskSize bytes.
func (t *Table) Write(w io.WriterAt, diskSize int64) error {
	if err := t.check(diskSize); err != nil {
		return err
	}
	sectors := uint64(diskSize / SectorSize)
	ents, err := t.encodeEntries()
	if err != nil {
		return err
	}
	crc := crc32.ChecksumIEEE(ents)
	entSectors := uint64(len(ents) / SectorSize)
	last := sectors - 1

	mbr := make([]byte, SectorSize)
	pe := mbr[446:]
	copy(pe, []byte{0x00, 0x00, 0x02, 0x00, 0xee, 0xff, 0xff, 0xff})
	binary.LittleEndian.PutUint32(pe[8:], 1)
	binary.LittleEndian.PutUint32(pe[12:], uint32(min(sectors-1, 0xffffffff)))
	mbr[510], mbr[511] = 0x55, 0xaa

	primary := append(mbr, t.header(1, last, 2, crc)...)
	primary = append(primary, ents...)
	if _, err := w.WriteAt(primary, 0); err != nil {
		return fmt.Errorf("gpt: writing primary table: %w", err)
	}
	backup := append(bytes.Clone(ents), t.header(last, 1, last-entSectors, crc)...)
	if _, err := w.WriteAt(backup, int64(last-entSectors)*SectorSize); err != nil {
		return fmt.Errorf("gpt: writing backup table: %w", err)
	}
	return nil
}

// check validates the table against a disk size: entries inside the usable
// area and not overlapping.
func (t *Table) check(diskSize int64) error {
	sectors := uint64(diskSize / SectorSize)
	entSectors := uint64(len(t.Entries)*entrySize+SectorSize-1) / SectorSize
	if len(t.Entries) == 0 || len(t.Entries) > maxEntries || len(t.Entries)*entrySize%SectorSize != 0 {
		return fmt.Errorf("%w: %d entries", ErrGPT, len(t.Entries))
	}
	if sectors < 3+2*entSectors || t.FirstUsableLBA < 2+entSectors || t.LastUsableLBA+entSectors+1 >= sectors || t.FirstUsableLBA > t.LastUsableLBA {
		return fmt.Errorf("%w: usable area %d..%d does not fit a disk of %d sectors", ErrGPT, t.FirstUsableLBA, t.LastUsableLBA, sectors)
	}
	for i, e := range t.Entries {
		if !e.Used() {
			continue
		}
		if e.FirstLBA < t.FirstUsableLBA || e.LastLBA > t.LastUsableLBA || e.LastLBA < e.FirstLBA {
			return fmt.Errorf("%w: partition %d (%d..%d) outside the usable area %d..%d", ErrGPT, i+1, e.FirstLBA, e.LastLBA, t.FirstUsableLBA, t.LastUsableLBA)
		}
		for j, o := range t.Entries[:i] {
			if o.Used() && e.FirstLBA <= o.LastLBA && o.FirstLBA <= e.LastLBA {
				return fmt.Errorf("%w: partitions %d and %d overlap", ErrGPT, j+1, i+1)
			}
		}
	}
	return nil
}

// Read reads and checks the primary GPT of a disk of diskSize bytes
// (header and entry-array CRCs, geometry, overlaps).
func Read(r io.ReaderAt, diskSize int64) (*Table, error) {
	if diskSize < 3*SectorSize {
		return nil, fmt.Errorf("%w: image of %d bytes is too small", ErrGPT, diskSize)
	}
	h := make([]byte, SectorSize)
	if _, err := r.ReadAt(h, SectorSize); err != nil {
		return nil, fmt.Errorf("%w: reading header: %v", ErrGPT, err)
	}
	if string(h[:8]) != "EFI PART" {
		return nil, fmt.Errorf("%w: no GPT header at LBA 1", ErrGPT)
	}
	hs := binary.LittleEndian.Uint32(h[12:])
	if hs < headerSize || hs > SectorSize {
		return nil, fmt.Errorf("%w: header size %d", ErrGPT, hs)
	}
	want := binary.LittleEndian.Uint32(h[16:])
	hc := bytes.Clone(h[:hs])
	binary.LittleEndian.PutUint32(hc[16:], 0)
	if crc32.ChecksumIEEE(hc) != want {
		return nil, fmt.Errorf("%w: header CRC mismatch", ErrGPT)
	}
	if my := binary.LittleEndian.Uint64(h[24:]); my != 1 {
		return nil, fmt.Errorf("%w: primary header says it is at LBA %d", ErrGPT, my)
	}
	t := &Table{
		FirstUsableLBA: binary.LittleEndian.Uint64(h[40:]),
		LastUsableLBA:  binary.LittleEndian.Uint64(h[48:]),
		DiskGUID:       DecodeGUID(h[56:72]),
	}
	entLBA := binary.LittleEndian.Uint64(h[72:])
	n := binary.LittleEndian.Uint32(h[80:])
	es := binary.LittleEndian.Uint32(h[84:])
	if es != entrySize {
		return nil, fmt.Errorf("%w: entry size %d (only 128 is supported)", ErrGPT, es)
	}
	if n == 0 || n > maxEntries || n*es%SectorSize != 0 {
		return nil, fmt.Errorf("%w: %d entries", ErrGPT, n)
	}
	if entLBA < 2 || entLBA > uint64(diskSize/SectorSize) || int64(entLBA)*SectorSize+int64(n*es) > diskSize {
		return nil, fmt.Errorf("%w: entry array at LBA %d outside the image", ErrGPT, entLBA)
	}
	ents := make([]byte, n*es)
	if _, err := r.ReadAt(ents, int64(entLBA)*SectorSize); err != nil {
		return nil, fmt.Errorf("%w: reading entries: %v", ErrGPT, err)
	}
	if crc32.ChecksumIEEE(ents) != binary.LittleEndian.Uint32(h[88:]) {
		return nil, fmt.Errorf("%w: entry array CRC mismatch", ErrGPT)
	}
	t.Entries = make([]Entry, n)
	for i := range t.Entries {
		p := ents[i*entrySize:]
		e := Entry{
			Type:       DecodeGUID(p[0:16]),
			UUID:       DecodeGUID(p[16:32]),
			FirstLBA:   binary.LittleEndian.Uint64(p[32:]),
			LastLBA:    binary.LittleEndian.Uint64(p[40:]),
			Attributes: binary.LittleEndian.Uint64(p[48:]),
		}
		u := make([]uint16, 0, maxNameRune)
		for j := 0; j < maxNameRune; j++ {
			c := binary.LittleEndian.Uint16(p[56+2*j:])
			if c == 0 {
				break
			}
			u = append(u, c)
		}
		e.Name = string(utf16.Decode(u))
		t.Entries[i] = e
	}
	if err := t.check(diskSize); err != nil {
		return nil, err
	}
	return t, nil
}
