// Package boottest lets tests hand signet's Secure Boot output to real
// firmware: OVMF in Secure Boot mode under QEMU (both from the Debian sid
// chroot that scripts/sid-chroot keeps), with a variable store enrolled with
// the test's PK, KEK and db, an ESP image, an optional swtpm TPM and the
// serial console read into a file.
//
//	k := boottest.NewKey(t, dir, "db")
//	vars := boottest.Vars(t, dir, pk, kek, []*boottest.Key{db})
//	esp := boottest.ESP(t, dir, map[string][]byte{"/EFI/BOOT/BOOTX64.EFI": bootx64})
//	con := boottest.Boot(t, boottest.Machine{Vars: vars, ESP: esp, Stop: []string{"Access denied"}})
//	con.Expect(t, "Secure boot enabled")
//
// Every tool runs inside the chroot through scripts/sid-chroot, which binds
// /tmp at the same path, so the files a test makes under t.TempDir() are
// seen by the tools as they are. A missing chroot or tool fails the test:
// the firmware is the judge, and a judge that is absent is not a pass.
package boottest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Chroot returns the root of the sid chroot, failing the test when it has
// not been made ($SIGNET_TEST_CACHE/sid, default /var/cache/signet-test/sid).
func Chroot(t testing.TB) string {
	t.Helper()
	cache := os.Getenv("SIGNET_TEST_CACHE")
	if cache == "" {
		cache = "/var/cache/signet-test"
	}
	root := filepath.Join(cache, "sid")
	if _, err := os.Stat(filepath.Join(root, ".signet-stamp")); err != nil {
		t.Fatalf("the Debian sid chroot %s is missing: run scripts/sid-chroot (the firmware test needs its OVMF and QEMU)", root)
	}
	return root
}

// Repo returns the repository's top directory (the one holding
// scripts/sid-chroot), found by walking up from the working directory.
func Repo(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "scripts", "sid-chroot")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("scripts/sid-chroot not found above the working directory")
		}
		dir = parent
	}
}

// InChroot returns a command that runs name with args inside the sid chroot.
func InChroot(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	Chroot(t)
	return exec.Command(filepath.Join(Repo(t), "scripts", "sid-chroot"), append([]string{"run", name}, args...)...)
}

// Run runs name inside the sid chroot and returns its combined output,
// failing the test on a non-zero exit.
func Run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	out, err := InChroot(t, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q (sid chroot): %v\n%s", name, args, err, bytes.TrimSpace(out))
	}
	return out
}

// File returns the host path of a file inside the chroot (a path such as
// /usr/lib/systemd/boot/efi/systemd-bootx64.efi), failing the test when it
// is not there.
func File(t testing.TB, path string) string {
	t.Helper()
	p := filepath.Join(Chroot(t), path)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is not in the sid chroot: %v", path, err)
	}
	return p
}
