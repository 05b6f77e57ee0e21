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
	if _, err := f.scan(d, false); err != nil {
		return nil, err
	}
	return f.finish(d, pad), nil
}

// finish adds the padding to a hash of the ranges and returns the digest.
func (f *File) finish(d hash.Hash, pad bool) []byte {
	if r := f.dataEnd % 8; pad && r != 0 {
		d.Write(make([]byte, 8-r))
	}
	return d.Sum(nil)
}

// monotonic reports whether the hashed ranges follow each other in file
// order without overlapping (always, unless sections leave gaps).
func (f *File) monotonic() bool {
	for i := 1; i < len(f.ranges); i++ {
		if f.ranges[i][0] < f.ranges[i-1][1] {
			return false
		}
	}
	return true
}

// scan streams the hashed extents into d and, if wantSum, returns the plain
// word sum of the whole file for the CheckSum. Reading (and summing) runs
// on another goroutine, a few chunks ahead of hashing, so the file is read
// once and the second core does everything but the hash.
func (f *File) scan(d hash.Hash, wantSum bool) (uint64, error) {
	// The sum rides along with the hash reads when those cover the file in
	// order; the holes (CheckSum, the table entry, the certificate table)
	// are summed at the end. Otherwise it takes its own pass.
	inline := wantSum && f.monotonic()
	type result struct {
		sum uint64
		err error
	}
	var sepSum chan result
	if wantSum && !inline {
		sepSum = make(chan result, 1)
		go func() {
			s, err := sumFile(f.r, f.size)
			sepSum <- result{s, err}
		}()
	}
	const nbuf = 3
	full := make(chan []byte, nbuf)
	free := make(chan []byte, nbuf)
	for range nbuf {
		free <- make([]byte, chunkSize)
	}
	stop := make(chan struct{})
	readDone := make(chan result, 1)
	go func() {
		defer close(full)
		var sum uint64
		for _, rg := range f.ranges {
			for off := rg[0]; off < rg[1]; {
				var buf []byte
				select {
				case buf = <-free:
				case <-stop:
					readDone <- result{}
					return
				}
				n := min(int64(len(buf)), rg[1]-off)
				if err := readFull(f.r, buf[:n], off); err != nil {
					readDone <- result{err: err}
					return
				}
				if inline {
					sum += wordSum(buf[:n], off)
				}
				full <- buf[:n]
				off += n
			}
		}
		readDone <- result{sum: sum}
	}()
	for b := range full {
		d.Write(b)
		free <- b[:cap(b)]
	}
	close(stop)
	r := <-readDone
	if r.err != nil {
		return 0, r.err
	}
	sum := r.sum
	switch {
	case inline:
		pos := int64(0)
		holes := append(f.ranges[:len(f.ranges):len(f.ranges)], [2]int64{f.size, f.size})
		for _, rg := range holes {
			if rg[0] > pos {
				s, err := sumRange(f.r, pos, rg[0])
				if err != nil {
					return 0, err
				}
				sum += s
			}
			pos = rg[1]
		}
	case wantSum:
		r := <-sepSum
		if r.err != nil {
			return 0, r.err
		}
		sum = r.sum
	}
	return sum, nil
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
	return sumRange(r, 0, size)
}

// sumRange returns the plain word sum of the bytes [start, end) of r.
func sumRange(r io.ReaderAt, start, end int64) (uint64, error) {
	buf := make([]byte, min(chunkSize, end-start))
	var s uint64
	for off := start; off < end; {
		n := min(int64(len(buf)), end-off)
		if err := readFull(r, buf[:n], off); err != nil {
			return 0, err
		}
		s += wordSum(buf[:n], off)
		off += n
	}
	return s, nil
}
