package boottest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"signet.dev/authenticode"
	"signet.dev/internal/atomicfile"
	"signet.dev/measure"
	"signet.dev/uki"
)

// Stub and SystemdBoot are the sid chroot's systemd-stub and systemd-boot.
const (
	Stub        = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	SystemdBoot = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
)

// Kernel returns the kernel the UKIs carry: $SIGNET_TEST_CACHE/vmlinuz
// (Debian 12's EFI-stub kernel, which the test cache keeps).
func Kernel(t testing.TB) string {
	t.Helper()
	cache := os.Getenv("SIGNET_TEST_CACHE")
	if cache == "" {
		cache = "/var/cache/signet-test"
	}
	p := filepath.Join(cache, "vmlinuz")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("kernel %s is missing: scripts/sid-chroot keeps it in the test cache (%v)", p, err)
	}
	return p
}

// UKI assembles an unsigned UKI at dir/name.efi with signet's uki package
// (the stub from the chroot, Kernel, initrd, cmdline) and returns its path.
func UKI(t testing.TB, dir, name string, initrd []byte, cmdline string) string {
	t.Helper()
	stub, closeStub := parseStub(t)
	defer closeStub()
	plan, err := uki.NewPlan(stub, parts(t, name, initrd, cmdline), nil)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name+".efi")
	var b bytes.Buffer
	if _, err := plan.WriteTo(&b, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// parseStub opens the chroot's systemd-stub.
func parseStub(t testing.TB) (*uki.File, func()) {
	t.Helper()
	sf, err := os.Open(File(t, Stub))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := sf.Stat()
	if err != nil {
		sf.Close()
		t.Fatal(err)
	}
	stub, err := uki.Parse(sf, fi.Size())
	if err != nil {
		sf.Close()
		t.Fatalf("%s: %v", Stub, err)
	}
	return stub, func() { sf.Close() }
}

// parts are a UKI's sections besides the stub's: os-release, cmdline,
// initrd and Kernel.
func parts(t testing.TB, name string, initrd []byte, cmdline string) []uki.Part {
	t.Helper()
	osrel := "ID=signet-boottest\nNAME=\"signet boot test\"\nPRETTY_NAME=\"signet boot test " + name + "\"\n"
	return []uki.Part{
		uki.BytesPart(".osrel", []byte(osrel)),
		uki.BytesPart(".cmdline", []byte(cmdline)),
		uki.BytesPart(".initrd", initrd),
		uki.BytesPart(".linux", ReadFile(t, Kernel(t))),
	}
}

// SignedAt is the signing time of every signature made here, for
// reproducible files.
var SignedAt = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Sign writes the Authenticode-signed in to out with k (signet's
// authenticode.Sign) and returns out.
func Sign(t testing.TB, in, out string, k *Key) string {
	t.Helper()
	f, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	pe, err := authenticode.Parse(f, fi.Size())
	if err != nil {
		t.Fatalf("%s: %v", in, err)
	}
	w, err := atomicfile.Create(out, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := authenticode.Sign(pe, k.Signer, k.Cert, SignedAt, w.File); err != nil {
		t.Fatalf("signing %s: %v", in, err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	return out
}

// ReadFile returns the contents of path, failing the test on error.
func ReadFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// PCR11 returns signet's prediction (uki.Inspect) of the sha256 PCR 11
// value the UKI at path leaves once its stub has measured its sections,
// before any boot phase word: what the initrd's /init reads from the TPM.
func PCR11(t testing.TB, path string) string {
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
	banks, err := measure.ParseBanks([]string{"sha256"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := uki.Inspect(f, fi.Size(), []string{""}, banks)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(r.Profiles) != 1 || len(r.Profiles[0].PCR11) != 1 || len(r.Profiles[0].PCR11[0].Phases) != 1 {
		t.Fatalf("%s: uki.Inspect predicted %+v, want one profile, one bank, one phase", path, r.Profiles)
	}
	return strings.ToLower(r.Profiles[0].PCR11[0].Phases[0].Value)
}
