package filecopy

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// Range copies the bytes at the given offsets, over several pieces, and
// moves neither file's offset; Source finds the file under section
// readers.
func TestRange(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, Piece*2+12345)
	r := rand.NewChaCha8([32]byte{1})
	r.Read(data)
	src, err := os.Create(filepath.Join(dir, "src"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	src.Write(data)
	dst, err := os.Create(filepath.Join(dir, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	dst.Write([]byte("head"))

	f, off, ok := Source(io.NewSectionReader(io.NewSectionReader(src, 7, 1<<30), 3, 1<<30))
	if !ok || f != src || off != 10 {
		t.Fatalf("Source: %v %d %v", f, off, ok)
	}
	n := int64(len(data)) - 10
	done, err := Range(dst, f, 4, off, n)
	if err != nil || done != n {
		t.Fatalf("Range copied %d of %d: %v", done, n, err)
	}
	if pos, _ := dst.Seek(0, io.SeekCurrent); pos != 4 {
		t.Fatalf("destination offset moved to %d", pos)
	}
	got, _ := os.ReadFile(dst.Name())
	if !bytes.Equal(got[:4], []byte("head")) || !bytes.Equal(got[4:], data[10:]) {
		t.Fatal("copied bytes differ")
	}
	if _, _, ok := Source(bytes.NewReader(data)); ok {
		t.Fatal("a bytes.Reader has no file")
	}
}
