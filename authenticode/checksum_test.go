package authenticode

import (
	"bytes"
	"math/rand"

	"signet.dev/internal/testkeys"
	"testing"
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
// CheckSum; so does the incremental update signing does.
func TestChecksumAlgorithm(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	for n := 0; n < 300; n++ {
		b := synthetics["odd-section"].build()
		b = append(b, make([]byte, rng.Intn(50))...)
		if n%3 == 0 {
			rng.Read(b[0x400:])
		}
		if n%5 == 0 { // a sum that is a multiple of 0xffff
			for i := 0x400; i < len(b); i++ {
				b[i] = 0xff
			}
		}
		f, err := Parse(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		want := naiveChecksum(b, int(f.ChecksumOffset()))
		if got, _ := f.Checksum(); got != want {
			t.Fatalf("case %d: Checksum %#x, loader algorithm %#x", n, got, want)
		}
		cut := rng.Intn(len(b))
		s := (wordSum(b[:cut], 0) + wordSum(b[cut:], int64(cut))) % 0xffff
		s = subSum(s, wordSum(b[f.ChecksumOffset():f.ChecksumOffset()+4], f.ChecksumOffset()))
		if got := finishChecksum(s, int64(len(b))); got != want {
			t.Fatalf("case %d: split at %d: %#x, want %#x", n, cut, got, want)
		}
	}
	// Signing's header update: the CheckSum written equals a fresh one.
	k := testkeys.Generate(t, testkeys.P256)
	for _, name := range []string{"odd-section", "trailing-odd", "pe32", "stale-cert-entry"} {
		in := writeFile(t, name, synthetics[name].build())
		f := parseFile(t, signFile(t, in, k, fixedTime))
		if got, _ := f.Checksum(); got != f.OptionalHeader.CheckSum {
			t.Errorf("%s: written CheckSum %#x, computed %#x", name, f.OptionalHeader.CheckSum, got)
		}
	}
}

// A file mapped in several windows (ranges spanning window edges) hashes
// and sums as the same bytes read through io.ReaderAt.
func TestMappedWindows(t *testing.T) {
	b := synth{sections: []int{mapWindow + 0x1001, 0x200, mapWindow/2 + 3}, trailing: 11}.build()
	path := writeFile(t, "big.efi", b)
	mapped := parseFile(t, path)
	plain, err := Parse(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if windowMapper(mapped.r, mapped.size) == nil {
		t.Fatal("an *os.File is not mapped")
	}
	for _, pad := range []bool{true, false} {
		d1, err1 := mapped.digest(Hash, pad)
		d2, err2 := plain.digest(Hash, pad)
		if err1 != nil || err2 != nil || !bytes.Equal(d1, d2) {
			t.Fatalf("pad %v: mapped %x (%v), read %x (%v)", pad, d1, err1, d2, err2)
		}
	}
	s1, _ := mapped.scan(Hash.New(), true)
	s2, _ := plain.scan(Hash.New(), true)
	if s1 != s2 {
		t.Fatalf("word sums differ: mapped %#x, read %#x", s1, s2)
	}
	if got, want := finishChecksum(subSum(s1, wordSum(b[mapped.ChecksumOffset():mapped.ChecksumOffset()+4], mapped.ChecksumOffset())), int64(len(b))), naiveChecksum(b, int(mapped.ChecksumOffset())); got != want {
		t.Fatalf("CheckSum %#x, loader algorithm %#x", got, want)
	}
}
