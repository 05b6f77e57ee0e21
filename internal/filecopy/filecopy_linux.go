package filecopy

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// copyRange copies up to n bytes with copy_file_range. Errors that mean
// "not between these files" (another file system, an old kernel) are
// reported as 0 bytes copied and no error.
func copyRange(dst, src File, dstOff, srcOff, n int64) (int64, error) {
	var done int64
	for done < n {
		roff, woff := srcOff+done, dstOff+done
		k, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(n-done), 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EBADF) {
				return done, nil
			}
			return done, &os.PathError{Op: "copy_file_range", Path: dst.Name(), Err: err}
		}
		if k == 0 {
			break // src ended early: the caller's copy reports it
		}
		done += int64(k)
	}
	return done, nil
}

// StartWriteback asks the kernel to start writing [off, off+n) of f to
// its device without waiting, so that a later sync finds it mostly
// written. On file systems without write-back (tmpfs) it does nothing.
func StartWriteback(f File, off, n int64) {
	unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
