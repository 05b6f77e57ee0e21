package boottest

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The guest's build script and its test unit, embedded so that a change to
// any of them names a new cache directory (and so a rebuild).
var (
	//go:embed guest.sh
	guestScript []byte
	//go:embed bootproof-test
	guestTest []byte
	//go:embed bootproof.service
	guestUnit []byte
)

// Guest is the full-systemd guest of the chain test: the sid kernel, a
// dracut initrd (systemd, systemd-cryptsetup with tpm2-tss,
// systemd-veritysetup, systemd-pcrextend) and an erofs root whose unit runs
// bootproof-test after multi-user.target: it prints BOOTPROOF: lines on the
// serial console (the root's verity status, LUKS2 enrollment and TPM
// unlock of the 32 MiB disk) and powers off.
type Guest struct {
	Kernel string // vmlinuz
	Initrd string // initrd.img
	Root   string // rootfs.erofs
}

// Guest markers printed by bootproof-test.
const (
	GuestStart     = "BOOTPROOF: START"
	GuestDone      = "BOOTPROOF: DONE"
	GuestEnrolled  = "BOOTPROOF: ENROLLED"
	GuestUnlocked  = "BOOTPROOF: UNLOCKED signet-luks-secret"
	GuestLocked    = "BOOTPROOF: UNLOCK-FAILED"
	GuestVeritySig = "BOOTPROOF: VERITY verified (with signature)"
	// LUKSDiskSize is the size by which bootproof-test finds its LUKS disk.
	LUKSDiskSize = 32 << 20
)

// MakeGuest returns the guest, building it first (mmdebstrap from the
// mirror the sid chroot uses, several minutes) when the test cache has no
// copy made by the current script: $SIGNET_TEST_CACHE/guest-HASH, HASH
// naming the script and the unit. Concurrent tests wait on a lock rather
// than building twice.
func MakeGuest(t testing.TB) *Guest {
	t.Helper()
	Chroot(t)
	cache := os.Getenv("SIGNET_TEST_CACHE")
	if cache == "" {
		cache = "/var/cache/signet-test"
	}
	h := sha256.New()
	for _, b := range [][]byte{guestScript, {0}, guestTest, {0}, guestUnit} {
		h.Write(b)
	}
	dir := filepath.Join(cache, "guest-"+hex.EncodeToString(h.Sum(nil))[:16])
	g := &Guest{Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.img"), Root: filepath.Join(dir, "rootfs.erofs")}
	stamp := filepath.Join(dir, ".done")
	if _, err := os.Stat(stamp); err == nil {
		return g
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stamp); err == nil {
		return g
	}
	for name, b := range map[string][]byte{"guest.sh": guestScript, "bootproof-test": guestTest, "bootproof.service": guestUnit} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mirror := debianMirror(t)
	t.Logf("building the guest in %s from %s (mmdebstrap, dracut, mkfs.erofs: minutes, once per cache)", dir, mirror)
	out, err := InChroot(t, "sh", filepath.Join(dir, "guest.sh"), dir, mirror).CombinedOutput()
	os.WriteFile(filepath.Join(dir, "build.log"), out, 0o644)
	if err != nil {
		t.Fatalf("building the guest (%s): %v\n%s", filepath.Join(dir, "build.log"), err, tail(string(out), 30))
	}
	if err := os.WriteFile(stamp, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return g
}

// debianMirror is the mirror the machine's apt sources name, as
// scripts/sid-chroot picks it.
func debianMirror(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", `cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/{print $2; exit}'`).Output()
	if m := strings.TrimSpace(string(out)); err == nil && m != "" {
		return m
	}
	out, _ = exec.Command("sh", "-c", `grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$2 !~ /security/ {print $2; exit}'`).Output()
	if m := strings.TrimSpace(string(out)); m != "" {
		return m
	}
	t.Fatal("no Debian mirror in /etc/apt/sources*")
	return ""
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
