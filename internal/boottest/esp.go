package boottest

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// ESP writes dir/name.img, a FAT file system holding files (keyed by their
// absolute path on the ESP, e.g. /EFI/BOOT/BOOTX64.EFI), and returns its
// path. It uses mkfs.vfat -C and mtools, so no loop device is needed.
func ESP(t testing.TB, dir, name string, files map[string][]byte) string {
	t.Helper()
	return FAT(t, dir, name, "ESP", 32<<20, files)
}

// FAT is ESP with another file system label and room bytes free beyond the
// files (ESP leaves 32 MiB).
func FAT(t testing.TB, dir, name, label string, room int64, files map[string][]byte) string {
	t.Helper()
	img := filepath.Join(dir, name+".img")
	stage := filepath.Join(dir, name+".files")
	var total int64
	names := make([]string, 0, len(files))
	for p, b := range files {
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p {
			t.Fatalf("ESP path %q: not a clean absolute path", p)
		}
		names = append(names, p)
		total += int64(len(b))
	}
	sort.Strings(names)
	// Room for FAT32 metadata, cluster slack and what is to be added.
	kib := (total+room)/1024 + 1
	os.Remove(img)
	Run(t, "mkfs.vfat", "-C", "-n", label, "-i", "5e7b00c1", img, fmt.Sprint(kib))
	dirs := map[string]bool{}
	var mk []string
	for _, p := range names {
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if !dirs[d] {
				dirs[d] = true
				mk = append(mk, "::"+d)
			}
		}
	}
	// Parents before children.
	sort.Slice(mk, func(i, j int) bool { return strings.Count(mk[i], "/") < strings.Count(mk[j], "/") })
	if len(mk) > 0 {
		Run(t, "mmd", append([]string{"-i", img}, mk...)...)
	}
	for i, p := range names {
		src := filepath.Join(stage, fmt.Sprint(i))
		if err := os.MkdirAll(stage, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(src, files[p], 0o644); err != nil {
			t.Fatal(err)
		}
		Run(t, "mcopy", "-i", img, src, "::"+p)
	}
	os.RemoveAll(stage)
	return img
}

// LoaderConf is a systemd-boot loader.conf that boots entry at once (for a
// UKI in /EFI/Linux/NAME.efi the entry is NAME.efi), with extra lines
// appended.
func LoaderConf(entry string, extra ...string) []byte {
	s := "timeout 0\ndefault " + entry + "\n"
	for _, l := range extra {
		s += l + "\n"
	}
	return []byte(s)
}

// FATPut writes data to path (absolute, its directory present) in the FAT
// image img, replacing a file that is there.
func FATPut(t testing.TB, img, p string, data []byte) {
	t.Helper()
	src := img + ".put"
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(src)
	Run(t, "mcopy", "-o", "-i", img, src, "::"+p)
}
