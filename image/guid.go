package image

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// GUID is a UUID in its canonical (textual, big-endian) byte order, as
// systemd's sd_id128_t holds it. GPT stores GUIDs mixed-endian; Encode and
// DecodeGUID convert.
type GUID [16]byte

// ParseGUID parses the 8-4-4-4-12 form or 32 hex digits.
func ParseGUID(s string) (GUID, error) {
	var g GUID
	h := strings.ReplaceAll(s, "-", "")
	if len(h) != 32 || (len(s) == 36 && (s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-')) || (len(s) != 32 && len(s) != 36) {
		return g, fmt.Errorf("%q is not a UUID", s)
	}
	if _, err := hex.Decode(g[:], []byte(h)); err != nil {
		return g, fmt.Errorf("%q is not a UUID", s)
	}
	return g, nil
}

func (g GUID) String() string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", g[0:4], g[4:6], g[6:8], g[8:10], g[10:16])
}

// IsZero reports the all-zero GUID (an unused GPT entry).
func (g GUID) IsZero() bool { return g == GUID{} }

// Encode returns the GPT on-disk form: the first three fields little-endian.
func (g GUID) Encode() [16]byte {
	var b [16]byte
	binary.LittleEndian.PutUint32(b[0:], binary.BigEndian.Uint32(g[0:]))
	binary.LittleEndian.PutUint16(b[4:], binary.BigEndian.Uint16(g[4:]))
	binary.LittleEndian.PutUint16(b[6:], binary.BigEndian.Uint16(g[6:]))
	copy(b[8:], g[8:])
	return b
}

// DecodeGUID converts the GPT on-disk form to a GUID.
func DecodeGUID(b []byte) GUID {
	var g GUID
	binary.BigEndian.PutUint32(g[0:], binary.LittleEndian.Uint32(b[0:]))
	binary.BigEndian.PutUint16(g[4:], binary.LittleEndian.Uint16(b[4:]))
	binary.BigEndian.PutUint16(g[6:], binary.LittleEndian.Uint16(b[6:]))
	copy(g[8:], b[8:16])
	return g
}

// makeV4 sets the RFC 4122 version 4 and variant bits (id128_make_v4_uuid).
func makeV4(b []byte) GUID {
	var g GUID
	copy(g[:], b)
	g[6] = g[6]&0x0f | 0x40
	g[8] = g[8]&0x3f | 0x80
	return g
}

// DeriveUUID is systemd's derive_uuid(base, token): the first 16 bytes of
// HMAC-SHA256(key = base, msg = token), made a v4 UUID. repart derives the
// disk UUID ("disk-uuid") and the verity superblock UUID ("verity-uuid")
// from the seed this way.
func DeriveUUID(base GUID, token string) GUID {
	m := hmac.New(sha256.New, base[:])
	m.Write([]byte(token))
	return makeV4(m.Sum(nil))
}

// DeriveSalt is repart's verity salt: the full HMAC-SHA256(key = seed,
// msg = "verity-salt").
func DeriveSalt(seed GUID) []byte {
	m := hmac.New(sha256.New, seed[:])
	m.Write([]byte("verity-salt"))
	return m.Sum(nil)
}

// PartitionUUID is repart's seed-derived UUID for the k-th (from 0)
// partition of a type: HMAC-SHA256(key = seed, msg = type [|| LE64 k when
// k > 0]), first 16 bytes, v4.
func PartitionUUID(seed, typ GUID, k uint64) GUID {
	m := hmac.New(sha256.New, seed[:])
	m.Write(typ[:])
	if k > 0 {
		m.Write(binary.LittleEndian.AppendUint64(nil, k))
	}
	return makeV4(m.Sum(nil))
}
