package authenticode

import "golang.org/x/sys/unix"

// startWriteback asks the kernel to start writing [off, off+n) of the file
// behind fd to its device without waiting for it, so that the sync of the
// output (internal/atomicfile) finds most of a large copy already written
// instead of starting it after the hashing. On file systems without
// write-back (tmpfs) it does nothing.
func startWriteback(fd uintptr, off, n int64) {
	unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
