package boottest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The initrd is judged by busybox cpio (the chroot's), which lists and
// extracts what the kernel would unpack.
func TestInitrdPeer(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "initrd.cpio")
	if err := os.WriteFile(p, Initrd(t, "PEER-1"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := string(Run(t, "sh", "-c", `busybox cpio -t -v < "$1"`, "sh", p))
	for _, want := range []string{"drwxr-xr-x", "-rwxr-xr-x", "crw-------", "bin/busybox", "dev/console", "init", "proc", "sys"} {
		if !strings.Contains(out, want) {
			t.Fatalf("busybox cpio -t lacks %q:\n%s", want, out)
		}
	}
	x := filepath.Join(dir, "x")
	if err := os.Mkdir(x, 0o755); err != nil {
		t.Fatal(err)
	}
	Run(t, "sh", "-c", `cd "$1" && busybox cpio -i -d < "$2" 2>/dev/null; test -x bin/busybox && grep -q 'SIGNET-BOOTTEST-INIT: PEER-1' init`, "sh", x, p)
	if bb, got := ReadFile(t, File(t, "/bin/busybox")), ReadFile(t, filepath.Join(x, "bin/busybox")); string(bb) != string(got) {
		t.Fatal("busybox extracted from the initrd differs from the chroot's")
	}
}

func TestInitrdMarkerRefused(t *testing.T) {
	ft := &fatalT{TB: t}
	func() {
		defer func() { recover() }()
		Initrd(ft, `a"; reboot; "`)
	}()
	if !ft.failed {
		t.Fatal("a marker with shell metacharacters was accepted")
	}
}

// fatalT records Fatalf instead of ending the test.
type fatalT struct {
	testing.TB
	failed bool
}

func (f *fatalT) Fatalf(format string, args ...any) { f.failed = true; panic("fatal") }
func (f *fatalT) Helper()                           {}

// The ESP is judged by mtools: every file reads back as written.
func TestESPPeer(t *testing.T) {
	dir := t.TempDir()
	files := map[string][]byte{
		"/EFI/BOOT/BOOTX64.EFI":     []byte("boot loader"),
		"/loader/loader.conf":       LoaderConf("a.efi", "secure-boot-enroll force"),
		"/loader/keys/auto/db.auth": {1, 2, 3},
	}
	img := ESP(t, dir, "esp", files)
	for p, want := range files {
		got := Run(t, "mtype", "-i", img, "::"+p)
		if string(got) != string(want) {
			t.Fatalf("%s reads back as %q, want %q", p, got, want)
		}
	}
	Run(t, "fsck.vfat", "-n", img)
}

func TestEarlyPanic(t *testing.T) {
	early := "[    1.06] efi_enter_virtual_mode+0x3e8/0x44b\n[    1.06] ---[ end Kernel panic - not syncing: Attempted to kill the idle task! ]---\n"
	late := "[    2.1] Run /init as init process\n[    9.0] ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs ]---\n"
	if !earlyPanic(early) {
		t.Error("a panic before /init is not taken as the emulation's")
	}
	if earlyPanic(late) || earlyPanic("[    2.1] Run /init as init process\n") {
		t.Error("a panic after /init (or no panic) is taken as the emulation's")
	}
}
