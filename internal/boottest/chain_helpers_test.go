package boottest

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"signet.dev/measure"
	"signet.dev/uki"
)

// pcrsigOf returns the parsed .pcrsig section of the UKI at path.
func pcrsigOf(t *testing.T, path string) *measure.PCRSig {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	u, err := uki.Parse(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	s := u.Section(".pcrsig")
	if s == nil {
		t.Fatalf("%s has no .pcrsig", path)
	}
	b, err := s.Data()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := measure.ParsePCRSig(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return doc
}

// TestForgePCRSig checks the forgery the chain test hands to the TPM: same
// pol and pkfp in every entry, each signature now the other key's, so that
// only a verifier holding the real key refuses it.
func TestForgePCRSig(t *testing.T) {
	dir := t.TempDir()
	pcr, other := NewKey(t, dir, "pcr"), NewKey(t, dir, "other")
	good := PolicyUKI(t, dir, "good", Initrd(t, "FORGE"), "console=ttyS0", pcr)
	forged := ForgePCRSig(t, good, filepath.Join(dir, "forged.efi"), other)
	if a, b := ReadFile(t, good), ReadFile(t, forged); len(a) != len(b) || bytes.Equal(a, b) {
		t.Fatalf("forged UKI: %d bytes (good %d), equal: %v", len(b), len(a), bytes.Equal(a, b))
	}
	g, f := pcrsigOf(t, good), pcrsigOf(t, forged)
	n := 0
	for i, gb := range g.Banks {
		fb := f.Banks[i]
		for j, ge := range gb.Entries {
			fe := fb.Entries[j]
			if !bytes.Equal(ge.Pol, fe.Pol) || !bytes.Equal(ge.Pkfp, fe.Pkfp) {
				t.Fatalf("%s entry %d: pol or pkfp changed", gb.Bank, j)
			}
			if err := measure.VerifyEntry(&pcr.Signer.PublicKey, ge.Pol, ge.Sig); err != nil {
				t.Fatalf("%s entry %d: the good signature does not verify: %v", gb.Bank, j, err)
			}
			if measure.VerifyEntry(&pcr.Signer.PublicKey, fe.Pol, fe.Sig) == nil {
				t.Fatalf("%s entry %d: the forged signature verifies with the PCR key", gb.Bank, j)
			}
			if err := measure.VerifyEntry(&other.Signer.PublicKey, fe.Pol, fe.Sig); err != nil {
				t.Fatalf("%s entry %d: the forged signature is not the other key's: %v", gb.Bank, j, err)
			}
			n++
		}
	}
	if n == 0 {
		t.Fatal("no entries compared")
	}
}
