package fat_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"signet.dev/internal/testenv"
	"signet.dev/mkosiobs/fat"
)

// TestMkfs: volumes made by mkfs.vfat (FAT12, FAT16, FAT32) and filled by
// mtools, as mkosi and systemd-repart make ESPs, read back file for file.
func TestMkfs(t *testing.T) {
	files := map[string][]byte{
		"EFI/BOOT/BOOTX64.EFI":                bytes.Repeat([]byte("boot"), 3000),
		"EFI/systemd/systemd-bootx64.efi":     bytes.Repeat([]byte{1, 2, 3}, 70000),
		"loader/keys/auto/db.auth":            []byte("small"),
		"EFI/Linux/a-long-unified-kernel.efi": {},
	}
	for _, c := range []struct {
		name string
		size int // MiB
		args []string
	}{{"FAT12", 2, []string{"-F", "12"}}, {"FAT16", 32, []string{"-F", "16"}}, {"FAT32", 64, []string{"-F", "32", "-s", "1"}}} {
		t.Run(c.name, func(t *testing.T) {
			dir := testenv.SidDir(t)
			img := filepath.Join(dir, "esp.img")
			testenv.Sid(t, "truncate", "-s", fmt.Sprintf("%dM", c.size), img)
			testenv.Sid(t, "mkfs.vfat", append(c.args, img)...)
			testenv.Sid(t, "mmd", "-i", img, "::EFI", "::EFI/BOOT", "::EFI/systemd", "::EFI/Linux", "::loader", "::loader/keys", "::loader/keys/auto")
			for p, b := range files {
				src := filepath.Join(dir, filepath.Base(p))
				if err := os.WriteFile(src, b, 0o644); err != nil {
					t.Fatal(err)
				}
				testenv.Sid(t, "mcopy", "-i", img, src, "::"+p)
			}
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fi, _ := f.Stat()
			fs, err := fat.Open(f, fi.Size())
			if err != nil {
				t.Fatal(err)
			}
			for p, want := range files {
				got, err := fs.ReadFile(p)
				if err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%s: %d bytes read, %d written", p, len(got), len(want))
				}
			}
			if _, err := fs.ReadFile("efi/boot/bootx64.efi"); err != nil {
				t.Fatalf("case-insensitive lookup: %v", err)
			}
			es, err := fs.ReadDir("EFI")
			if err != nil || len(es) != 3 {
				t.Fatalf("EFI holds %v (%v), want BOOT, systemd and Linux", es, err)
			}
			if _, err := fs.ReadFile("EFI/none.efi"); err == nil {
				t.Fatal("a missing file was read")
			}
		})
	}
}

// FuzzOpen: any bytes are a volume or an error, never a panic.
func FuzzOpen(f *testing.F) {
	bs := make([]byte, 64<<10)
	copy(bs[11:], []byte{0, 2, 1, 1, 0, 2, 16, 0, 0x80, 0, 0xF8, 1, 0})
	bs[510], bs[511] = 0x55, 0xAA
	f.Add(bs)
	f.Fuzz(func(t *testing.T, b []byte) {
		fs, err := fat.Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		fs.MaxFileLen = 1 << 20
		if es, err := fs.ReadDir(""); err == nil {
			for _, e := range es {
				fs.ReadFile(e.Name)
				if e.Dir {
					fs.ReadDir(e.Name)
				}
			}
		}
	})
}
