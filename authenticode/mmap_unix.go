//go:build unix

package authenticode

import (
	"os"
	"syscall"
)

// mapFile maps the first size bytes of r read-only when r is a regular
// *os.File, so that hashing reads the page cache in place instead of
// copying it out first. It returns nil when r cannot be mapped; the caller
// then reads through io.ReaderAt.
func mapFile(r any, size int64) (data []byte, unmap func()) {
	fd, ok := r.(*os.File)
	if !ok || size <= 0 || int64(int(size)) != size {
		return nil, nil
	}
	if fi, err := fd.Stat(); err != nil || !fi.Mode().IsRegular() || fi.Size() < size {
		return nil, nil
	}
	b, err := syscall.Mmap(int(fd.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil
	}
	return b, func() { syscall.Munmap(b) }
}
