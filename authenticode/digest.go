package authenticode

import (
	"crypto"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
)

// chunkSize is the read size for streaming; large enough that syscalls do
// not show in profiles, small enough that memory does not grow with the file.
const chunkSize = 1 << 20

// Digest returns the Authenticode digest of the image as signers commit to
// it (sbsign, systemd-sbsign, osslsigncode, pesign): the headers without
// CheckSum and the certificate table entry, the section data in file order,
// the data after the sections up to the certificate table, and, when that
// end is not 8-byte aligned, zero bytes up to the next multiple of 8 (the
// padding a signer adds before the certificate table).
func (f *File) Digest(h crypto.Hash) ([]byte, error) {
	return f.digest(h, true)
}

// DigestUnpadded is Digest without the trailing zero padding: the hash
// UEFI db/dbx entries and `pesign -h` on an unsigned, unaligned file use.
// For signed or 8-byte aligned images both are equal.
func (f *File) DigestUnpadded(h crypto.Hash) ([]byte, error) {
	return f.digest(h, false)
}

func (f *File) digest(h crypto.Hash, pad bool) ([]byte, error) {
	if !h.Available() {
		return nil, fmt.Errorf("authenticode: hash %v is not available", h)
	}
	d := h.New()
	if err := f.hashRanges(d); err != nil {
		return nil, err
	}
	if r := f.dataEnd % 8; pad && r != 0 {
		d.Write(make([]byte, 8-r))
	}
	return d.Sum(nil), nil
}

// hashRanges streams the hashed extents into d. Reading runs one chunk ahead
// of hashing on another goroutine, so the copy out of the page cache
// overlaps the hash.
func (f *File) hashRanges(d hash.Hash) error {
	type chunk struct {
		b   []byte
		err error
	}
	full := make(chan chunk, 1)
	free := make(chan []byte, 2)
	free <- make([]byte, chunkSize)
	free <- make([]byte, chunkSize)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		defer close(full)
		for _, rg := range f.ranges {
			for off := rg[0]; off < rg[1]; {
				var buf []byte
				select {
				case buf = <-free:
				case <-stop:
					return
				}
				n := min(int64(len(buf)), rg[1]-off)
				err := readFull(f.r, buf[:n], off)
				full <- chunk{buf[:n], err}
				if err != nil {
					return
				}
				off += n
			}
		}
	}()
	for c := range full {
		if c.err != nil {
			return c.err
		}
		d.Write(c.b)
		free <- c.b[:cap(c.b)]
	}
	return nil
}

// Checksum computes the PE CheckSum of the image as it is (the optional
// header's CheckSum field counts as zero): the 16-bit one's-complement sum
// of the file's little-endian words, plus the file length. This is what the
// Windows loader, sbsign and systemd-sbsign compute.
func (f *File) Checksum() (uint32, error) {
	s, err := sumFile(f.r, f.size)
	if err != nil {
		return 0, err
	}
	var old [4]byte
	binary.LittleEndian.PutUint32(old[:], f.OptionalHeader.CheckSum)
	s -= wordSum(old[:], f.checksumOffset)
	return FinishChecksum(s, f.size), nil
}

// Checksum parses the PE image in r and returns its PE CheckSum (see
// File.Checksum), e.g. for a tool that has just laid out an image.
func Checksum(r io.ReaderAt, size int64) (uint32, error) {
	f, err := Parse(r, size)
	if err != nil {
		return 0, err
	}
	return f.Checksum()
}

// FinishChecksum turns a plain sum of 16-bit little-endian words (see
// wordSum) into the PE CheckSum of a file of the given size: fold to 16 bits
// with end-around carry, then add the size.
func FinishChecksum(sum uint64, size int64) uint32 {
	// Folding word by word keeps a value in [1, 0xffff] once any word was
	// non-zero, i.e. ((sum-1) mod 0xffff) + 1; a zero sum stays zero.
	var folded uint64
	if sum != 0 {
		folded = (sum-1)%0xffff + 1
	}
	return uint32(folded) + uint32(size)
}

// wordSum returns the contribution of b, found at file offset off, to the
// plain sum of the file's 16-bit little-endian words.
func wordSum(b []byte, off int64) uint64 {
	var s uint64
	i := 0
	if off&1 == 1 && len(b) > 0 {
		s += uint64(b[0]) << 8
		i = 1
	}
	// Now at an even file offset.
	for i+8 <= len(b) {
		// Lanes of 32 bits hold four 16-bit words at a time; flush them
		// before they could overflow.
		var lo, hi uint64
		for n := 0; n < 16384 && i+8 <= len(b); n++ {
			v := binary.LittleEndian.Uint64(b[i:])
			lo += v & 0x0000ffff0000ffff
			hi += (v >> 16) & 0x0000ffff0000ffff
			i += 8
		}
		s += lo&0xffffffff + lo>>32 + hi&0xffffffff + hi>>32
	}
	for ; i+2 <= len(b); i += 2 {
		s += uint64(binary.LittleEndian.Uint16(b[i:]))
	}
	if i < len(b) {
		s += uint64(b[i])
	}
	return s
}

// sumFile returns the plain word sum of the first size bytes of r.
func sumFile(r io.ReaderAt, size int64) (uint64, error) {
	buf := make([]byte, chunkSize)
	var s uint64
	for off := int64(0); off < size; {
		n := min(int64(len(buf)), size-off)
		if err := readFull(r, buf[:n], off); err != nil {
			return 0, err
		}
		s += wordSum(buf[:n], off)
		off += n
	}
	return s, nil
}
