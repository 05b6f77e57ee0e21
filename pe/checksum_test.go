package pe_test

import (
	"bytes"
	"math/rand"
	"os"
	"testing"

	"signet.dev/pe"
)

// naiveChecksum is the loader's algorithm as written in the PE
// specification's reference code: add each 16-bit word, fold the carry
// after each addition, skip the CheckSum field, then add the file size.
func naiveChecksum(b []byte, checksumOffset int) uint32 {
	var c uint32
	for i := 0; i < len(b); i += 2 {
		if i == checksumOffset || i == checksumOffset+2 {
			continue
		}
		w := uint32(b[i])
		if i+1 < len(b) {
			w |= uint32(b[i+1]) << 8
		}
		c += w
		c = (c & 0xffff) + (c >> 16)
	}
	return c + uint32(len(b))
}

// The 8-bytes-at-a-time sum, split at any offsets, gives the loader's
// CheckSum, on synthetic images (odd sizes, random data, sums that are a
// multiple of 0xffff) and on the real EFI binaries.
func TestCheckSumAlgorithm(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	var images [][]byte
	for n := 0; n < 300; n++ {
		b, _ := synthetic()
		b = append(b, make([]byte, rng.Intn(50))...)
		if n%3 == 0 {
			rng.Read(b[0x200:])
		}
		if n%5 == 0 { // a sum that is a multiple of 0xffff
			for i := 0x200; i < len(b); i++ {
				b[i] = 0xff
			}
		}
		images = append(images, b)
	}
	for _, p := range realImages {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		images = append(images, b)
	}
	for n, b := range images {
		f, err := pe.Parse(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		off := f.CheckSumOffset()
		want := naiveChecksum(b, int(off))
		if got, err := f.ComputeCheckSum(); err != nil || got != want {
			t.Fatalf("case %d: ComputeCheckSum %#x (%v), loader algorithm %#x", n, got, err, want)
		}
		cut := rng.Intn(len(b))
		s := (pe.WordSum(b[:cut], 0) + pe.WordSum(b[cut:], int64(cut))) % 0xffff
		s = pe.SubWordSum(s, pe.WordSum(b[off:off+4], off))
		if got := pe.FinishCheckSum(s, int64(len(b))); got != want {
			t.Fatalf("case %d: split at %d: %#x, want %#x", n, cut, got, want)
		}
		if s2, err := pe.SumRange(bytes.NewReader(b), int64(cut), int64(len(b))); err != nil || s2 != pe.WordSum(b[cut:], int64(cut)) {
			t.Fatalf("case %d: SumRange from %d: %#x (%v)", n, cut, s2, err)
		}
	}
}
