package uki_test

import (
	"os"
	"path/filepath"
	"testing"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/keys"
	"signet.dev/measure"
	"signet.dev/uki"
)

const stubPath = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

func openUKI(t *testing.T, path string) *uki.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, _ := f.Stat()
	u, err := uki.Parse(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func stub(t *testing.T) *uki.File {
	t.Helper()
	if _, err := os.Stat(stubPath); err != nil {
		t.Fatalf("systemd-boot-efi is not installed (%s): run scripts/test, which installs it", stubPath)
	}
	testenv.Tool(t, "objdump")
	return openUKI(t, stubPath)
}

func namedOf(f *uki.File) []*uki.Named {
	var out []*uki.Named
	for _, s := range f.Sections {
		out = append(out, &uki.Named{Name: s.Name, R: s.Open(), Size: s.Size()})
	}
	return out
}

// buildUKI assembles and signs a UKI on the Debian 12 stub, online.
func buildUKI(t *testing.T, dir, name string, k *testkeys.Key, kernel []byte, cmdline string) string {
	t.Helper()
	pem, err := keys.MarshalPublicKeyPEM(k.Signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	plan, err := uki.NewPlan(stub(t), []uki.Part{
		uki.BytesPart(".linux", kernel),
		uki.BytesPart(".cmdline", []byte(cmdline)),
		uki.BytesPart(".osrel", []byte("ID=signet\n")),
		uki.BytesPart(".initrd", []byte("070701 initrd")),
		uki.BytesPart(".pcrpkey", pem),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := plan.Prepare(measure.DefaultPhases, []measure.Bank{measure.SHA256}, k.Signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	doc, err := measure.Sign(entries[0], k.Signer)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := plan.WriteTo(out, []*measure.PCRSig{doc}); err != nil {
		t.Fatal(err)
	}
	return path
}
