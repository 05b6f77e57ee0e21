//go:build unix

package verity

import (
	"io"
	"os"
	"syscall"
)

// mapChunk maps n bytes of f at off read-only, so the data level is hashed
// straight from the page cache instead of being copied by read(2). Chunks
// are unmapped after use, which keeps the resident set flat.
func mapChunk(r any, off int64, n int) ([]byte, func(), bool) {
	if s, ok := r.(*io.SectionReader); ok {
		var base int64
		r, base, _ = s.Outer()
		off += base
	}
	f, ok := r.(*os.File)
	if !ok || off%int64(os.Getpagesize()) != 0 || n <= 0 {
		return nil, nil, false
	}
	b, err := syscall.Mmap(int(f.Fd()), off, n, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, false
	}
	return b, func() { syscall.Munmap(b) }, true
}
