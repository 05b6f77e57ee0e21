package measure

import (
	"os"
	"syscall"
	"unsafe"
)

// mapWindow maps [off, off+n) of a file input into memory so the hashing
// workers read the page cache directly instead of a copy; off is a multiple
// of mapWindowSize. Inputs are mapped a window at a time and each window is
// unmapped as soon as every worker is done with it, so the mapped pages
// counted in the resident set stay a few windows whatever the input size. A
// file truncated while mapped raises SIGBUS in a worker, which recovers from
// it (SetPanicOnFault) and reports an error.
func mapWindow(in Input, off, n int64) ([]byte, func(), bool) {
	f, ok := in.R.(*os.File)
	if !ok || in.Size < chunkSize || n != int64(int(n)) {
		return nil, nil, false
	}
	m, err := syscall.Mmap(int(f.Fd()), off, int(n), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, false
	}
	syscall.Madvise(m, syscall.MADV_SEQUENTIAL)
	return m, func() { syscall.Munmap(m) }, true
}

// madvPopulateRead is MADV_POPULATE_READ (Linux 5.14).
const madvPopulateRead = 22

// prefault maps the pages of b (reading them in if needed) from the reading
// goroutine, ahead of the workers, so that two workers do not fault on the
// same pages. Older kernels refuse the advice; the workers fault then.
func prefault(b []byte) {
	if len(b) == 0 {
		return
	}
	syscall.Syscall(syscall.SYS_MADVISE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), madvPopulateRead)
}
