package authenticode

import (
	"bytes"
	"debug/pe"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
)

// Real EFI binaries the suite signs (installed by scripts/install-deps).
const (
	systemdBoot = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	stub        = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	vmlinuz     = "/var/cache/signet-test/vmlinuz" // Debian's, already signed
)

// synth describes a small synthetic PE32+ EFI application.
type synth struct {
	sections []int // SizeOfRawData of each section (any size)
	trailing int   // bytes appended after the last section
	gap      int   // bytes of gap between sections
	pe32     bool  // PE32 instead of PE32+
	staleVA  bool  // certificate table entry with an offset but size 0
}

// build writes the image: DOS header, PE header, optional header with 16
// data directories, section table, section data filled with a pattern.
func (s synth) build() []byte {
	const peOff = 0x80
	optSize := 240
	if s.pe32 {
		optSize = 224
	}
	secTable := peOff + 4 + 20 + optSize
	hdrSize := (secTable + 40*len(s.sections) + 0x1ff) &^ 0x1ff
	b := make([]byte, hdrSize)
	copy(b, "MZ")
	binary.LittleEndian.PutUint32(b[0x3c:], peOff)
	copy(b[peOff:], "PE\x00\x00")
	fh := b[peOff+4:]
	machine := uint16(0x8664)
	if s.pe32 {
		machine = 0x14c
	}
	binary.LittleEndian.PutUint16(fh[0:], machine)
	binary.LittleEndian.PutUint16(fh[2:], uint16(len(s.sections)))
	binary.LittleEndian.PutUint16(fh[16:], uint16(optSize))
	binary.LittleEndian.PutUint16(fh[18:], 0x0206) // executable, debug stripped
	oh := b[peOff+24:]
	va := uint32(0x1000)
	imageSize := va
	for _, n := range s.sections {
		imageSize += (uint32(n) + 0xfff) &^ 0xfff
	}
	if s.pe32 {
		binary.LittleEndian.PutUint16(oh[0:], OptionalHeader32)
		binary.LittleEndian.PutUint32(oh[28:], 0x10000000) // ImageBase
	} else {
		binary.LittleEndian.PutUint16(oh[0:], OptionalHeader64)
		binary.LittleEndian.PutUint64(oh[24:], 0x10000000)
	}
	binary.LittleEndian.PutUint32(oh[16:], va) // AddressOfEntryPoint
	binary.LittleEndian.PutUint32(oh[32:], 0x1000)
	binary.LittleEndian.PutUint32(oh[36:], 0x200)
	binary.LittleEndian.PutUint32(oh[56:], imageSize)
	binary.LittleEndian.PutUint32(oh[60:], uint32(hdrSize))
	binary.LittleEndian.PutUint16(oh[68:], 10) // EFI application
	dirs := 112
	if s.pe32 {
		dirs = 96
	}
	binary.LittleEndian.PutUint32(oh[dirs-4:], 16)
	if s.staleVA {
		binary.LittleEndian.PutUint32(oh[dirs+8*CertificateTableIndex:], 0x12345678)
	}
	pos := hdrSize
	for i, n := range s.sections {
		sh := b[secTable+40*i:]
		copy(sh, fmt.Sprintf(".s%d", i))
		binary.LittleEndian.PutUint32(sh[8:], uint32(n))
		binary.LittleEndian.PutUint32(sh[12:], va)
		binary.LittleEndian.PutUint32(sh[16:], uint32(n))
		if n > 0 {
			binary.LittleEndian.PutUint32(sh[20:], uint32(pos))
		}
		binary.LittleEndian.PutUint32(sh[36:], 0x40000040) // initialized data, readable
		va += (uint32(n) + 0xfff) &^ 0xfff
		pos += n + s.gap
	}
	for i, n := range s.sections {
		data := make([]byte, n)
		for j := range data {
			data[j] = byte(i*31 + j*7 + j>>8)
		}
		b = append(b, data...)
		b = append(b, bytes.Repeat([]byte{0xcc}, s.gap)...)
	}
	for j := 0; j < s.trailing; j++ {
		b = append(b, byte(j*13+5))
	}
	return b
}

// synthetics are the synthetic images the peer tests sign.
var synthetics = map[string]synth{
	"one-section":         {sections: []int{0x400}},
	"odd-section":         {sections: []int{0x201, 0x1003}},
	"trailing-odd":        {sections: []int{0x400, 0x200}, trailing: 13},
	"trailing-aligned":    {sections: []int{0x600}, trailing: 64},
	"gaps-and-trailing":   {sections: []int{0x200, 0x400, 0x200}, gap: 0x20, trailing: 7},
	"pe32":                {sections: []int{0x200, 0x201}, pe32: true, trailing: 3},
	"no-sections-trailer": {trailing: 1001},
	"stale-cert-entry":    {sections: []int{0x400}, trailing: 5, staleVA: true},
}

func writeFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// uki builds a UKI from the systemd stub with objcopy, laid out as ukify
// does, with TimeDateStamp reset so the bytes depend only on the inputs.
func uki(t testing.TB) string {
	t.Helper()
	pf, err := pe.Open(stub)
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	var base uint64
	switch oh := pf.OptionalHeader.(type) {
	case *pe.OptionalHeader64:
		base = oh.ImageBase
	case *pe.OptionalHeader32:
		base = uint64(oh.ImageBase)
	}
	var end uint64
	for _, s := range pf.Sections {
		end = max(end, base+uint64(s.VirtualAddress)+uint64(s.VirtualSize))
	}
	vma := (end + 4095) &^ 4095
	dir := t.TempDir()
	args := []string{}
	add := func(name, path string) {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		flags := "data,readonly"
		if name == ".linux" {
			flags = "code,readonly"
		}
		args = append(args, "--add-section", name+"="+path, "--change-section-vma", fmt.Sprintf("%s=%#x", name, vma),
			"--set-section-flags", name+"="+flags)
		vma += (uint64(fi.Size()) + 4095) &^ 4095
	}
	osrel := filepath.Join(dir, "os-release")
	cmdline := filepath.Join(dir, "cmdline")
	os.WriteFile(osrel, []byte("ID=signet\nVERSION_ID=1\n"), 0o644)
	os.WriteFile(cmdline, []byte("root=PARTUUID=00000000-0000-0000-0000-000000000000 ro quiet"), 0o644)
	add(".osrel", osrel)
	add(".cmdline", cmdline)
	add(".linux", vmlinuz)
	out := filepath.Join(dir, "uki.efi")
	testenv.Run(t, "objcopy", append(args, stub, out)...)
	// objcopy stamps the time; reset it and redo the CheckSum.
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	peOff := binary.LittleEndian.Uint32(b[0x3c:])
	binary.LittleEndian.PutUint32(b[peOff+8:], 0)
	f, err := Parse(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := f.Checksum()
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint32(b[f.ChecksumOffset():], sum)
	if err := os.WriteFile(out, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// images returns every image the peer tests sign, by name.
func images(t testing.TB) map[string]string {
	t.Helper()
	m := map[string]string{
		"systemd-boot": systemdBoot,
		"stub":         stub,
		"vmlinuz":      vmlinuz,
		"uki":          uki(t),
	}
	for name, s := range synthetics {
		m[name] = writeFile(t, name+".efi", s.build())
	}
	return m
}

func parseFile(t testing.TB, path string) *File {
	t.Helper()
	fd, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fd.Close() })
	fi, err := fd.Stat()
	if err != nil {
		t.Fatal(err)
	}
	f, err := Parse(fd, fi.Size())
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return f
}

// signFile signs in to a new file with Sign and returns its path.
func signFile(t testing.TB, in string, k *testkeys.Key, when time.Time) string {
	t.Helper()
	f := parseFile(t, in)
	out := filepath.Join(t.TempDir(), filepath.Base(in)+".signed")
	w, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := Sign(f, k.Signer, k.Cert, when, w); err != nil {
		t.Fatalf("Sign %s: %v", in, err)
	}
	return out
}

// sbverify checks path with sbverify --cert and reports whether it passed.
func sbverify(t testing.TB, cert, path string) (bool, string) {
	t.Helper()
	out, err := testenv.RunErr(t, "sbverify", "--cert", cert, path)
	return err == nil && strings.Contains(string(out), "Signature verification OK"), string(out)
}

// osslverify runs osslsigncode verify: passed only if it exits 0 and no
// signature failed (it exits 0 when a nested signature fails).
func osslverify(t testing.TB, cafile, path string) (bool, string) {
	t.Helper()
	out, err := testenv.RunErr(t, "osslsigncode", "verify", "-in", path, "-CAfile", cafile)
	s := string(out)
	return err == nil && !strings.Contains(s, "Signature verification: failed") && strings.Contains(s, "Succeeded"), s
}

var (
	reCurrent    = regexp.MustCompile(`Current message digest\s*:\s*([0-9A-Fa-f]+)`)
	reCalculated = regexp.MustCompile(`Calculated message digest\s*:\s*([0-9A-Fa-f]+)`)
	rePESum      = regexp.MustCompile(`(?m)^PE checksum\s*:\s*([0-9A-Fa-f]+)`)
	rePesignHash = regexp.MustCompile(`hash:\s*([0-9a-fA-F]+)`)
)

func match(t testing.TB, re *regexp.Regexp, out string) string {
	t.Helper()
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no %v in:\n%s", re, out)
	}
	return strings.ToLower(m[1])
}

func runCmd(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(testenv.Tool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}
