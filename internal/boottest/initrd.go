package boottest

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"testing"
)

// cpio entry modes (the newc format stores st_mode).
const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeChar = 0o020000
)

// cpioEntry is one member of a newc archive.
type cpioEntry struct {
	name         string
	mode         uint32
	data         []byte
	rmaj, rminor uint32
}

// writeCPIO writes entries as a "newc" (SVR4, no CRC) archive, the format
// the kernel unpacks an initramfs from. Times are zero, so the archive is
// reproducible.
func writeCPIO(entries []cpioEntry) []byte {
	var b bytes.Buffer
	pad := func() {
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	add := func(ino int, e cpioEntry) {
		nlink := 1
		if e.mode&0o170000 == modeDir {
			nlink = 2
		}
		fmt.Fprintf(&b, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, e.rmaj, e.rminor, len(e.name)+1, 0)
		b.WriteString(e.name)
		b.WriteByte(0)
		pad()
		b.Write(e.data)
		pad()
	}
	for i, e := range entries {
		add(i+1, e)
	}
	add(len(entries)+1, cpioEntry{name: "TRAILER!!!"})
	return b.Bytes()
}

// PCR11Marker starts the line where /init prints the TPM's sha256 PCR 11.
const PCR11Marker = "SIGNET-BOOTTEST-PCR11:"

// InitMarker is the line the initrd's /init prints first, followed by the
// marker given to Initrd.
const InitMarker = "SIGNET-BOOTTEST-INIT:"

// Initrd returns a cpio initramfs holding the chroot's static busybox and an
// /init that prints InitMarker and marker, the kernel's Secure Boot,
// lockdown and keyring lines, PCR 11 (sha256) when a TPM is there, and
// powers the machine off.
func Initrd(t testing.TB, marker string) []byte {
	t.Helper()
	return initrd(t, marker, nil, "")
}

// initrd is Initrd with more files (their parent directories included) and
// a shell fragment run before the power-off.
func initrd(t testing.TB, marker string, extra []cpioEntry, script string) []byte {
	t.Helper()
	for _, c := range marker {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			t.Fatalf("initrd marker %q: only letters, digits, '-', '_' and '.'", marker)
		}
	}
	bb, err := os.ReadFile(File(t, "/bin/busybox"))
	if err != nil {
		t.Fatal(err)
	}
	init := `#!/bin/busybox sh
b=/bin/busybox
$b mount -t proc proc /proc
$b mount -t sysfs sysfs /sys
echo "` + InitMarker + ` ` + marker + `"
$b dmesg | $b grep -e 'Secure boot' -e 'secureboot' -e 'locked down' -e 'integrity: Loaded' -e 'tpm'
if [ -r /sys/class/tpm/tpm0/pcr-sha256/11 ]; then
	echo "` + PCR11Marker + ` $($b cat /sys/class/tpm/tpm0/pcr-sha256/11)"
fi
` + script + `
echo "SIGNET-BOOTTEST-DONE"
$b poweroff -f
`
	entries := []cpioEntry{
		{name: "bin", mode: modeDir | 0o755},
		{name: "bin/busybox", mode: modeFile | 0o755, data: bb},
		{name: "dev", mode: modeDir | 0o755},
		{name: "dev/console", mode: modeChar | 0o600, rmaj: 5, rminor: 1},
		{name: "init", mode: modeFile | 0o755, data: []byte(init)},
		{name: "proc", mode: modeDir | 0o755},
		{name: "sys", mode: modeDir | 0o755},
		{name: "tmp", mode: modeDir | 0o1777},
	}
	have := map[string]bool{}
	for _, e := range entries {
		have[e.name] = true
	}
	for _, e := range extra {
		var parents []string
		for d := path.Dir(e.name); d != "." && !have[d]; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			have[d] = true
			entries = append(entries, cpioEntry{name: d, mode: modeDir | 0o755})
		}
		have[e.name] = true
		entries = append(entries, e)
	}
	return writeCPIO(entries)
}
