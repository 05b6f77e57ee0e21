package authenticode

import (
	"bytes"
	"os"
	"testing"

	"signet.dev/internal/filecopy"
	"signet.dev/internal/testkeys"
	"signet.dev/pe"
)

// Signing's header update writes the CheckSum a fresh computation gives
// (pe's tests check that computation against the loader's algorithm).
func TestChecksumAlgorithm(t *testing.T) {
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
	if got, want := pe.FinishCheckSum(pe.SubWordSum(s1, pe.WordSum(b[mapped.ChecksumOffset():mapped.ChecksumOffset()+4], mapped.ChecksumOffset())), int64(len(b))), mustChecksum(t, plain); got != want {
		t.Fatalf("inline CheckSum %#x, separate pass %#x", got, want)
	}
}

func mustChecksum(t *testing.T, f *File) uint32 {
	t.Helper()
	c, err := f.Checksum()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// An image copied to the output in several pieces (each handed to
// write-back) is the same file as one written through a plain io.Writer,
// and sbverify accepts it.
func TestCopyInPieces(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048) // deterministic signatures
	in := writeFile(t, "pieces.efi", synth{sections: []int{filecopy.Piece + 0x1001, 0x200, filecopy.Piece/2 + 3}, trailing: 5}.build())
	out := signFile(t, in, k, fixedTime)
	var buf bytes.Buffer
	if err := Sign(parseFile(t, in), k.Signer, k.Cert, fixedTime, &buf); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, buf.Bytes()) {
		t.Fatalf("copied in pieces: %d bytes, streamed: %d bytes, contents differ", len(got), buf.Len())
	}
	if ok, msg := sbverify(t, k.CertPath, out); !ok {
		t.Fatalf("sbverify: %s", msg)
	}
}
