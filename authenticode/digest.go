package authenticode

import (
	"crypto"
	"fmt"
	"hash"
	"io"
	"runtime/debug"

	"signet.dev/pe"
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

// scan streams the hashed extents into d and, if wantSum, returns the word
// sum of the whole file (modulo 0xffff) for the CheckSum. The file is read
// once: mapped when it is a file, else read (and summed) on another
// goroutine a few chunks ahead of the hash, so the second core does
// everything but the hash.
func (f *File) scan(d hash.Hash, wantSum bool) (uint64, error) {
	if m := windowMapper(f.r, f.size); m != nil && f.monotonic() {
		return f.scanMapped(m, d, wantSum)
	}
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
			s, err := pe.SumRange(f.r, 0, f.size)
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
					sum += pe.WordSum(buf[:n], off)
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
				s, err := pe.SumRange(f.r, pos, rg[0])
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
	return sum % 0xffff, nil
}

// mapWindow is the size of the pieces of a file scanMapped maps at a time:
// large enough that mapping costs nothing, small enough that the resident
// set does not grow with the file.
const mapWindow = 8 << 20

// scanMapped is scan over a file mapped a window at a time: the hash reads
// the page cache in place on this goroutine while the sum of the same
// window runs on another. The ranges must be monotonic.
func (f *File) scanMapped(mapAt func(off, n int64) ([]byte, func(), error), d hash.Hash, wantSum bool) (uint64, error) {
	type result struct {
		sum uint64
		err error
	}
	var sum uint64
	ri := 0 // the range being hashed; it may span windows
	for off := int64(0); off < f.size; off += mapWindow {
		n := min(mapWindow, f.size-off)
		data, unmap, err := mapAt(off, n)
		if err != nil {
			return 0, fmt.Errorf("mapping %d bytes at %#x: %w", n, off, err)
		}
		summed := make(chan result, 1)
		if wantSum {
			go func() {
				var s uint64
				err := guarded(func() { s = pe.WordSum(data, off) })
				summed <- result{s, err}
			}()
		} else {
			summed <- result{}
		}
		err = guarded(func() {
			for ri < len(f.ranges) {
				rg := f.ranges[ri]
				if rg[0] >= off+n {
					break
				}
				if a, b := max(rg[0], off), min(rg[1], off+n); a < b {
					d.Write(data[a-off : b-off])
				}
				if rg[1] > off+n {
					break // continues in the next window
				}
				ri++
			}
		})
		r := <-summed
		unmap()
		if err == nil {
			err = r.err
		}
		if err != nil {
			return 0, err
		}
		sum += r.sum
	}
	return sum % 0xffff, nil
}

// guarded runs fn, which reads a mapped file, and turns the fault of a file
// that shrank meanwhile (SIGBUS) into an error.
func guarded(fn func()) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: the file changed while being read: %v", ErrTruncated, r)
		}
	}()
	fn()
	return nil
}

// Checksum computes the PE CheckSum of the image as it is (the optional
// header's CheckSum field counts as zero); see pe.File.ComputeCheckSum.
func (f *File) Checksum() (uint32, error) { return f.ComputeCheckSum() }

// Checksum parses the PE image in r and returns its PE CheckSum (see
// File.Checksum), e.g. for a tool that has just laid out an image.
func Checksum(r io.ReaderAt, size int64) (uint32, error) {
	f, err := Parse(r, size)
	if err != nil {
		return 0, err
	}
	return f.Checksum()
}
