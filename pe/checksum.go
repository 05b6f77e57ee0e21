package pe

import (
	"encoding/binary"
	"io"
	"math/bits"
)

// The PE CheckSum is the 16-bit one's-complement sum of the file's
// little-endian words, with the CheckSum field counted as zero, plus the
// file length: what the Windows loader, sbsign and systemd-sbsign compute.
// Since 2^16 = 1 (mod 0xffff), that sum is the sum of the words modulo
// 0xffff, which can be taken over pieces of a file in any order and
// corrected for patched fields; WordSum, SubWordSum and FinishCheckSum are
// those steps, for writers that sum a file while streaming it anyway.

// sumChunk is the read size of ComputeCheckSum.
const sumChunk = 1 << 20

// ComputeCheckSum computes the PE CheckSum of the image as it is (the
// optional header's CheckSum field counts as zero), reading the whole file.
func (f *File) ComputeCheckSum() (uint32, error) {
	s, err := SumRange(f.r, 0, f.size)
	if err != nil {
		return 0, err
	}
	var old [4]byte
	binary.LittleEndian.PutUint32(old[:], f.CheckSum)
	return FinishCheckSum(SubWordSum(s, WordSum(old[:], f.CheckSumOffset())), f.size), nil
}

// FinishCheckSum turns the word sum of a whole file (see WordSum), with the
// CheckSum field's words taken out, into the PE CheckSum of a file of the
// given size. The file must not be all zeros (a PE image starts with "MZ").
func FinishCheckSum(sum uint64, size int64) uint32 {
	// Folding word by word, as the loader does, ends in [1, 0xffff] once any
	// word was non-zero: 0xffff where the sum is a multiple of 0xffff.
	folded := uint32(sum % 0xffff)
	if folded == 0 {
		folded = 0xffff
	}
	return folded + uint32(size)
}

// WordSum returns the sum, modulo 0xffff, of the 16-bit little-endian
// words that b makes up at file offset off (an odd off makes b[0] the high
// byte of a word). Since 2^16 = 1 (mod 0xffff), a 64-bit little-endian word
// is congruent to the sum of its four 16-bit words, so the sum runs 8 bytes
// at a time.
func WordSum(b []byte, off int64) uint64 {
	var s, carries, c uint64
	i := 0
	if off&1 == 1 && len(b) > 0 {
		s = uint64(b[0]) << 8 // the high byte of a word that starts before b
		i = 1
	}
	for ; i+32 <= len(b); i += 32 {
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[i:]), 0)
		carries += c
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[i+8:]), 0)
		carries += c
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[i+16:]), 0)
		carries += c
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[i+24:]), 0)
		carries += c
	}
	for ; i+8 <= len(b); i += 8 {
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[i:]), 0)
		carries += c
	}
	for ; i+2 <= len(b); i += 2 {
		s, c = bits.Add64(s, uint64(binary.LittleEndian.Uint16(b[i:])), 0)
		carries += c
	}
	if i < len(b) {
		s, c = bits.Add64(s, uint64(b[i]), 0)
		carries += c
	}
	// 2^64 = 1 (mod 0xffff): each carry counts 1.
	return (s%0xffff + carries%0xffff) % 0xffff
}

// SubWordSum returns a - b modulo 0xffff: the sum a without bytes whose
// WordSum is b.
func SubWordSum(a, b uint64) uint64 {
	return (a%0xffff + 0xffff - b%0xffff) % 0xffff
}

// SumRange returns the WordSum of the bytes [start, end) of r.
func SumRange(r io.ReaderAt, start, end int64) (uint64, error) {
	buf := make([]byte, min(sumChunk, max(end-start, 0)))
	var s uint64
	for off := start; off < end; {
		n := min(int64(len(buf)), end-off)
		if err := ReadFull(r, buf[:n], off); err != nil {
			return 0, err
		}
		s = (s + WordSum(buf[:n], off)) % 0xffff
		off += n
	}
	return s, nil
}
