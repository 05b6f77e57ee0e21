//go:build unix

package authenticode

import (
	"os"
	"syscall"
)

// windowMapper returns a function that maps [off, off+n) of r read-only,
// when r is a regular *os.File, so that hashing reads the page cache in
// place instead of copying it out first. off must be a multiple of the page
// size. It returns nil when r cannot be mapped; the caller then reads
// through io.ReaderAt.
func windowMapper(r any, size int64) func(off, n int64) ([]byte, func(), error) {
	fd, ok := r.(*os.File)
	if !ok || size <= 0 {
		return nil
	}
	if fi, err := fd.Stat(); err != nil || !fi.Mode().IsRegular() || fi.Size() < size {
		return nil
	}
	return func(off, n int64) ([]byte, func(), error) {
		b, err := syscall.Mmap(int(fd.Fd()), off, int(n), syscall.PROT_READ, syscall.MAP_SHARED)
		if err != nil {
			return nil, nil, err
		}
		return b, func() { syscall.Munmap(b) }, nil
	}
}
