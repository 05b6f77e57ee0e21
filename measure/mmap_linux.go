package measure

import (
	"os"
	"syscall"
	"unsafe"
)

// mapInput maps a file input into memory so the hashing workers read the
// page cache directly instead of a copy. A file truncated while mapped
// raises SIGBUS in a worker, which recovers from it (SetPanicOnFault) and
// reports an error.
func mapInput(in Input) ([]byte, func(), bool) {
	f, ok := in.R.(*os.File)
	if !ok || in.Size < chunkSize || in.Size != int64(int(in.Size)) {
		return nil, nil, false
	}
	m, err := syscall.Mmap(int(f.Fd()), 0, int(in.Size), syscall.PROT_READ, syscall.MAP_SHARED)
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
