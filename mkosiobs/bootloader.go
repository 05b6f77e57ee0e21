package mkosiobs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"

	"signet.dev/image"
	"signet.dev/mkosiobs/fat"
	"signet.dev/request"
)

// espVolume is the ESP of one DDI of the output directory, opened once
// per archive.
type espVolume struct {
	fs   *fat.FS
	file *os.File
	temp bool // file is a decompressed copy, removed by closeESPs
	err  error
}

func closeESPs(ddis map[string]*espVolume) {
	for _, v := range ddis {
		if v.file != nil {
			v.file.Close()
			if v.temp {
				os.Remove(v.file.Name())
			}
		}
	}
}

// maxDDI bounds the decompressed size of a .raw.zst read for its ESP.
const maxDDI = 64 << 30

// bootloaderItem makes the item of bootloaders/<ddi>/<path>: the member
// is pesign -E's signed attributes of <path> in the ESP of <ddi> (the
// DDI's name without .zst: mkosi.postoutput decompresses it, finds the
// ESP with systemd-repart and copies EFI/ out with mcopy, leaving out
// EFI/Linux). The same PE is read here from the DDI in the output
// directory, so the Authenticode digest is the one of the binary mkosi
// will put the signature on.
func bootloaderItem(m *Member, dir string, ddis map[string]*espVolume, it *request.Item) error {
	parts := strings.Split(m.Path, "/")
	ddi, inESP := parts[1], strings.Join(parts[2:], "/")
	if !strings.EqualFold(parts[2], "EFI") || !strings.HasSuffix(strings.ToLower(inESP), ".efi") {
		return refuse(m, "want bootloaders/<ddi>/EFI/…/<name>.efi (mkosi stages the ESP's EFI/*.efi)")
	}
	if len(parts) > 3 && strings.EqualFold(parts[3], "Linux") {
		return refuse(m, "mkosi does not stage EFI/Linux/ (its UKIs are ukis/ members)")
	}
	v := ddis[ddi]
	if v == nil {
		v = openESP(m, dir, ddi)
		ddis[ddi] = v
	}
	if v.err != nil {
		return v.err
	}
	b, err := v.fs.ReadFile(inESP)
	if err != nil {
		return refuse(m, "the ESP of %s: %v", ddi, err)
	}
	return peItem(m, ddi+":"+inESP, bytes.NewReader(b), int64(len(b)), it)
}

// openESP opens the ESP of ddi (or ddi.zst) in dir.
func openESP(m *Member, dir, ddi string) *espVolume {
	v := &espVolume{}
	p, err := local(m, dir, ddi)
	if err != nil {
		v.err = err
		return v
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		f, err = unzstd(p + ".zst")
		v.temp = err == nil
	}
	if err != nil {
		v.err = refuse(m, "the output directory has no %s or %s.zst: %v", ddi, ddi, err)
		return v
	}
	v.file = f
	fi, err := f.Stat()
	if err != nil {
		v.err = refuse(m, "%s: %v", ddi, err)
		return v
	}
	t, err := image.Read(f, fi.Size())
	if err != nil {
		v.err = refuse(m, "%s: %v", ddi, err)
		return v
	}
	esp := image.Types["esp"].UUID
	for _, e := range t.Entries {
		if e.Type != esp {
			continue
		}
		if v.fs, err = fat.Open(io.NewSectionReader(f, e.Offset(), e.Size()), e.Size()); err != nil {
			v.err = refuse(m, "the ESP of %s: %v", ddi, err)
		}
		return v
	}
	v.err = refuse(m, "%s has no ESP", ddi)
	return v
}

// unzstd decompresses a zstd file into a temporary file, open for
// reading.
func unzstd(p string) (*os.File, error) {
	in, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	d, err := zstd.NewReader(in, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, fmt.Errorf("%s: %v", filepath.Base(p), err)
	}
	defer d.Close()
	out, err := os.CreateTemp("", "signet-ddi-*")
	if err != nil {
		return nil, err
	}
	n, err := io.Copy(out, io.LimitReader(d, maxDDI+1))
	if err == nil && n > maxDDI {
		err = fmt.Errorf("over %d bytes decompressed", int64(maxDDI))
	}
	if err != nil {
		out.Close()
		os.Remove(out.Name())
		return nil, fmt.Errorf("%s: %v", filepath.Base(p), err)
	}
	return out, nil
}
