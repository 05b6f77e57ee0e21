// Package filecopy copies byte ranges between files in the kernel and
// starts their write-back early, for writers of large outputs (signed
// images, UKIs) that sync them before renaming them into place.
package filecopy

import (
	"io"
	"os"
)

// Piece is how much Range copies before starting that piece's write-back:
// large enough that the calls cost nothing, small enough that the device
// is busy while the rest is copied.
const Piece = 16 << 20

// Source returns the file and offset that r reads from when r is an
// *os.File or an io.SectionReader over one, so that Range can copy it.
func Source(r io.ReaderAt) (f *os.File, off int64, ok bool) {
	for {
		switch x := r.(type) {
		case *os.File:
			return x, off, true
		case *io.SectionReader:
			outer, o, _ := x.Outer()
			r, off = outer, off+o
		default:
			return nil, 0, false
		}
	}
}

// File is an open file as Range needs it: an *os.File, or a type that
// embeds one (internal/atomicfile).
type File interface {
	Fd() uintptr
	Name() string
}

// Range copies n bytes at srcOff in src to dstOff in dst, neither file's
// offset moving, and starts the write-back of each piece as it is done.
// It returns how much it copied: less than n (with a nil error) when the
// kernel cannot copy between these files, and the caller copies the rest
// itself.
func Range(dst, src File, dstOff, srcOff, n int64) (int64, error) {
	var done int64
	for done < n {
		k, err := copyRange(dst, src, dstOff+done, srcOff+done, min(Piece, n-done))
		done += k
		if k > 0 {
			StartWriteback(dst, dstOff+done-k, k)
		}
		if err != nil || k == 0 {
			return done, err
		}
	}
	return done, nil
}
