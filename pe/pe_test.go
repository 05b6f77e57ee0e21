package pe_test

import (
	"bytes"
	debugpe "debug/pe"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"signet.dev/internal/testenv"
	"signet.dev/pe"
)

// Real EFI binaries (installed by scripts/install-deps): the stub, the boot
// manager and Debian's signed kernel (PE32+ with a certificate table).
var realImages = []string{
	"/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
	"/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
	"/var/cache/signet-test/vmlinuz",
}

func open(t testing.TB, path string) (*os.File, *pe.File) {
	t.Helper()
	fd, err := os.Open(path)
	if err != nil {
		t.Fatalf("%v (run scripts/install-deps)", err)
	}
	t.Cleanup(func() { fd.Close() })
	fi, err := fd.Stat()
	if err != nil {
		t.Fatal(err)
	}
	f, err := pe.Parse(fd, fi.Size())
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return fd, f
}

// Every header field and section agrees with Go's debug/pe.
func TestAgainstDebugPE(t *testing.T) {
	for _, path := range realImages {
		fd, f := open(t, path)
		g, err := debugpe.NewFile(fd)
		if err != nil {
			t.Fatal(err)
		}
		if f.FileHeader != (pe.FileHeader)(g.FileHeader) {
			t.Errorf("%s: file header %+v, debug/pe %+v", path, f.FileHeader, g.FileHeader)
		}
		want := fromDebugPE(g.OptionalHeader)
		if got := fmt.Sprintf("%+v", f.OptionalHeader); got != want {
			t.Errorf("%s: optional header\n%s\ndebug/pe\n%s", path, got, want)
		}
		if len(f.Sections) != len(g.Sections) {
			t.Fatalf("%s: %d sections, debug/pe %d", path, len(f.Sections), len(g.Sections))
		}
		for i, s := range f.Sections {
			h := g.Sections[i].SectionHeader
			w := pe.SectionHeader{Name: h.Name, VirtualSize: h.VirtualSize, VirtualAddress: h.VirtualAddress, SizeOfRawData: h.Size,
				PointerToRawData: h.Offset, PointerToRelocations: h.PointerToRelocations, PointerToLinenumbers: h.PointerToLineNumbers,
				NumberOfRelocations: h.NumberOfRelocations, NumberOfLinenumbers: h.NumberOfLineNumbers, Characteristics: h.Characteristics}
			if s != w {
				t.Errorf("%s: section %d %+v, debug/pe %+v", path, i, s, w)
			}
			got, err := io.ReadAll(f.RawData(i))
			if err != nil {
				t.Fatal(err)
			}
			exp, err := g.Sections[i].Data()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, exp) {
				t.Errorf("%s: section %s data differs from debug/pe's", path, s.Name)
			}
		}
		// The patch offsets point at the values Parse read.
		hdr := make([]byte, f.SizeOfHeaders)
		if _, err := fd.ReadAt(hdr, 0); err != nil {
			t.Fatal(err)
		}
		le := binary.LittleEndian
		fh := hdr[f.FileHeaderOffset():]
		opt := hdr[f.OptionalHeaderOffset():]
		if le.Uint16(fh[pe.OffsetNumberOfSections:]) != f.NumberOfSections || le.Uint32(fh[pe.OffsetTimeDateStamp:]) != f.TimeDateStamp ||
			le.Uint32(fh[pe.OffsetPointerToSymbolTable:]) != f.PointerToSymbolTable || le.Uint32(fh[pe.OffsetNumberOfSymbols:]) != f.NumberOfSymbols ||
			le.Uint32(opt[pe.OffsetSizeOfInitializedData:]) != f.SizeOfInitializedData || le.Uint32(opt[pe.OffsetSizeOfImage:]) != f.SizeOfImage ||
			le.Uint32(opt[pe.OffsetSizeOfHeaders:]) != f.SizeOfHeaders || le.Uint32(hdr[f.CheckSumOffset():]) != f.CheckSum {
			t.Errorf("%s: a field offset does not point at its field", path)
		}
		ct := f.CertificateTable()
		if off := f.DataDirectoryOffset(pe.DirCertificateTable); le.Uint32(hdr[off:]) != ct.VirtualAddress || le.Uint32(hdr[off+4:]) != ct.Size {
			t.Errorf("%s: certificate table entry offset %#x", path, off)
		}
		for i, s := range f.Sections {
			var b [pe.SectionHeaderSize]byte
			s.Put(b[:])
			at := f.SectionTableOffset() + int64(i)*pe.SectionHeaderSize
			if !bytes.Equal(b[:], hdr[at:at+pe.SectionHeaderSize]) {
				t.Errorf("%s: section %s re-encodes as %x, file has %x", path, s.Name, b, hdr[at:at+pe.SectionHeaderSize])
			}
		}
		if path == realImages[2] && (ct.Size == 0 || f.DataEnd() != int64(ct.VirtualAddress)) {
			t.Errorf("%s: Debian's signed kernel: certificate table %+v, data end %#x", path, ct, f.DataEnd())
		}
	}
}

// fromDebugPE prints debug/pe's optional header as a pe.OptionalHeader.
func fromDebugPE(oh any) string {
	var o pe.OptionalHeader
	dirs := func(d [16]debugpe.DataDirectory, n uint32) {
		for _, e := range d[:min(n, 16)] {
			o.DataDirectory = append(o.DataDirectory, pe.DataDirectory(e))
		}
	}
	switch h := oh.(type) {
	case *debugpe.OptionalHeader64:
		o = pe.OptionalHeader{h.Magic, h.MajorLinkerVersion, h.MinorLinkerVersion, h.SizeOfCode, h.SizeOfInitializedData, h.SizeOfUninitializedData,
			h.AddressOfEntryPoint, h.BaseOfCode, 0, h.ImageBase, h.SectionAlignment, h.FileAlignment, h.MajorOperatingSystemVersion,
			h.MinorOperatingSystemVersion, h.MajorImageVersion, h.MinorImageVersion, h.MajorSubsystemVersion, h.MinorSubsystemVersion,
			h.Win32VersionValue, h.SizeOfImage, h.SizeOfHeaders, h.CheckSum, h.Subsystem, h.DllCharacteristics, h.SizeOfStackReserve,
			h.SizeOfStackCommit, h.SizeOfHeapReserve, h.SizeOfHeapCommit, h.LoaderFlags, h.NumberOfRvaAndSizes, nil}
		dirs(h.DataDirectory, h.NumberOfRvaAndSizes)
	case *debugpe.OptionalHeader32:
		o = pe.OptionalHeader{h.Magic, h.MajorLinkerVersion, h.MinorLinkerVersion, h.SizeOfCode, h.SizeOfInitializedData, h.SizeOfUninitializedData,
			h.AddressOfEntryPoint, h.BaseOfCode, h.BaseOfData, uint64(h.ImageBase), h.SectionAlignment, h.FileAlignment, h.MajorOperatingSystemVersion,
			h.MinorOperatingSystemVersion, h.MajorImageVersion, h.MinorImageVersion, h.MajorSubsystemVersion, h.MinorSubsystemVersion,
			h.Win32VersionValue, h.SizeOfImage, h.SizeOfHeaders, h.CheckSum, h.Subsystem, h.DllCharacteristics, uint64(h.SizeOfStackReserve),
			uint64(h.SizeOfStackCommit), uint64(h.SizeOfHeapReserve), uint64(h.SizeOfHeapCommit), h.LoaderFlags, h.NumberOfRvaAndSizes, nil}
		dirs(h.DataDirectory, h.NumberOfRvaAndSizes)
	}
	return fmt.Sprintf("%+v", o)
}

var objdumpSection = regexp.MustCompile(`(?m)^\s*(\d+) (\S+)\s+([0-9a-f]{8})\s+([0-9a-f]{16})\s+[0-9a-f]{16}\s+([0-9a-f]{8})`)

// Sections and header fields agree with binutils' reading (objdump -h, -p).
func TestAgainstObjdump(t *testing.T) {
	testenv.Tool(t, "objdump")
	for _, path := range realImages {
		_, f := open(t, path)
		out := string(testenv.Run(t, "objdump", "-h", path))
		rows := objdumpSection.FindAllStringSubmatch(out, -1)
		if len(rows) != len(f.Sections) {
			t.Fatalf("%s: objdump lists %d sections, pe %d:\n%s", path, len(rows), len(f.Sections), out)
		}
		for i, r := range rows {
			s := f.Sections[i]
			size, _ := strconv.ParseUint(r[3], 16, 32)
			vma, _ := strconv.ParseUint(r[4], 16, 64)
			off, _ := strconv.ParseUint(r[5], 16, 32)
			// BFD gives an image section the smaller of its two sizes.
			want := s.SizeOfRawData
			if s.VirtualSize != 0 && s.VirtualSize < want {
				want = s.VirtualSize
			}
			if r[2] != s.Name || uint32(size) != want || vma != f.ImageBase+uint64(s.VirtualAddress) || uint32(off) != s.PointerToRawData {
				t.Errorf("%s: objdump %q, pe %+v", path, r[0], s)
			}
		}
		p := string(testenv.Run(t, "objdump", "-p", path))
		for name, v := range map[string]uint64{
			"SizeOfCode": uint64(f.SizeOfCode), "SizeOfInitializedData": uint64(f.SizeOfInitializedData),
			"AddressOfEntryPoint": uint64(f.AddressOfEntryPoint), "ImageBase": f.ImageBase,
			"SectionAlignment": uint64(f.SectionAlignment), "FileAlignment": uint64(f.FileAlignment),
			"SizeOfImage": uint64(f.SizeOfImage), "SizeOfHeaders": uint64(f.SizeOfHeaders), "CheckSum": uint64(f.CheckSum),
			"Subsystem": uint64(f.Subsystem), "NumberOfRvaAndSizes": uint64(f.NumberOfRvaAndSizes), "Magic": uint64(f.Magic),
		} {
			m := regexp.MustCompile(`(?m)^` + name + `\s+([0-9a-f]+)`).FindStringSubmatch(p)
			if m == nil {
				t.Errorf("%s: objdump -p prints no %s", path, name)
				continue
			}
			if got, _ := strconv.ParseUint(m[1], 16, 64); got != v {
				t.Errorf("%s: %s: objdump %#x, pe %#x", path, name, got, v)
			}
		}
		for i, d := range f.DataDirectory {
			m := regexp.MustCompile(fmt.Sprintf(`(?m)^Entry %x ([0-9a-f]+) ([0-9a-f]+)`, i)).FindStringSubmatch(p)
			if m == nil {
				t.Fatalf("%s: objdump -p prints no data directory %d", path, i)
			}
			va, _ := strconv.ParseUint(m[1], 16, 64)
			n, _ := strconv.ParseUint(m[2], 16, 32)
			if uint32(va) != d.VirtualAddress || uint32(n) != d.Size {
				t.Errorf("%s: data directory %d: objdump %s %s, pe %+v", path, i, m[1], m[2], d)
			}
		}
	}
}

// synthetic returns a small PE32+ image: headers of 0x200 bytes, two
// sections of 0x200 bytes, and its section table offset.
func synthetic() ([]byte, int) {
	const peOff = 0x80
	b := make([]byte, 0x600)
	copy(b, "MZ")
	le := binary.LittleEndian
	le.PutUint32(b[0x3c:], peOff)
	copy(b[peOff:], "PE\x00\x00")
	fh := b[peOff+4:]
	le.PutUint16(fh[0:], 0x8664)
	le.PutUint16(fh[2:], 2)
	le.PutUint16(fh[16:], 240)
	oh := b[peOff+24:]
	le.PutUint16(oh[0:], pe.OptionalHeader64)
	le.PutUint32(oh[32:], 0x1000)
	le.PutUint32(oh[36:], 0x200)
	le.PutUint32(oh[56:], 0x3000)
	le.PutUint32(oh[60:], 0x200)
	le.PutUint32(oh[108:], 16)
	secOff := peOff + 24 + 240
	for i := range 2 {
		s := pe.SectionHeader{Name: fmt.Sprintf(".s%d", i), VirtualSize: 0x200, VirtualAddress: uint32(0x1000 * (i + 1)),
			SizeOfRawData: 0x200, PointerToRawData: uint32(0x200 * (i + 1)), Characteristics: pe.ScnMemRead | pe.ScnCntInitializedData}
		s.Put(b[secOff+i*pe.SectionHeaderSize:])
	}
	return b, secOff
}

// Malformed headers fail with the named error, which also matches
// ErrFormat, and with the bad structure in the message.
func TestParseErrors(t *testing.T) {
	good, secOff := synthetic()
	if _, err := pe.Parse(bytes.NewReader(good), int64(len(good))); err != nil {
		t.Fatal(err)
	}
	const peOff, optOff = 0x80, 0x80 + 24
	le := binary.LittleEndian
	mod := func(f func(b []byte)) []byte {
		b := append([]byte(nil), good...)
		f(b)
		return b
	}
	signed := func(off, n uint32, extra int) []byte {
		return mod(func(b []byte) {
			le.PutUint32(b[optOff+112+8*pe.DirCertificateTable:], off)
			le.PutUint32(b[optOff+112+8*pe.DirCertificateTable+4:], n)
		})[:len(good)+extra]
	}
	cases := []struct {
		name string
		b    []byte
		want error
		msg  string
	}{
		{"empty", nil, pe.ErrNotPE, "too short for a DOS header"},
		{"no-mz", mod(func(b []byte) { b[0] = 'X' }), pe.ErrNotPE, "no MZ signature"},
		{"no-pe-signature", mod(func(b []byte) { b[peOff] = 'X' }), pe.ErrNotPE, "no PE signature at offset 0x80"},
		{"e_lfanew-past-eof", mod(func(b []byte) { le.PutUint32(b[0x3c:], 1<<30) }), pe.ErrTruncated, "PE header at offset 0x40000000"},
		{"truncated-optional-header", good[:peOff+40], pe.ErrTruncated, "optional header"},
		{"no-optional-header", mod(func(b []byte) { le.PutUint16(b[peOff+4+16:], 0) }), pe.ErrBadOptionalHeader, "SizeOfOptionalHeader is 0"},
		{"bad-magic", mod(func(b []byte) { b[optOff] = 7 }), pe.ErrBadOptionalHeader, "neither PE32 nor PE32+"},
		{"short-optional-header", mod(func(b []byte) { le.PutUint16(b[peOff+4+16:], 100) }), pe.ErrBadOptionalHeader, "too small"},
		{"many-directories", mod(func(b []byte) { le.PutUint32(b[optOff+108:], 17) }), pe.ErrBadOptionalHeader, "NumberOfRvaAndSizes is 17"},
		{"file-alignment", mod(func(b []byte) { le.PutUint32(b[optOff+36:], 0x300) }), pe.ErrBadOptionalHeader, "power of two"},
		{"section-alignment-0", mod(func(b []byte) { le.PutUint32(b[optOff+32:], 0) }), pe.ErrBadOptionalHeader, "power of two"},
		{"section-table-past-eof", mod(func(b []byte) { le.PutUint16(b[peOff+6:], 9000) }), pe.ErrTruncated, "section table (9000 sections"},
		{"headers-too-small", mod(func(b []byte) { le.PutUint32(b[optOff+60:], 0x100) }), pe.ErrBadOptionalHeader, "SizeOfHeaders 0x100"},
		{"headers-past-eof", mod(func(b []byte) { le.PutUint32(b[optOff+60:], 0x10000) }), pe.ErrTruncated, "SizeOfHeaders 0x10000"},
		{"address-overflow", mod(func(b []byte) { le.PutUint32(b[secOff+12:], 0xffffff00) }), pe.ErrBadSection, `section 0 (".s0")`},
		{"section-past-eof", mod(func(b []byte) { le.PutUint32(b[secOff+16:], 0x100000) }), pe.ErrSectionPastEOF, `section ".s0"`},
		{"overlapping-sections", mod(func(b []byte) { le.PutUint32(b[secOff+40+20:], 0x300) }), pe.ErrOverlappingSection, `section ".s1" data at 0x300`},
		{"section-over-headers", mod(func(b []byte) { le.PutUint32(b[secOff+20:], 0x100) }), pe.ErrOverlappingSection, `section ".s0" data at 0x100`},
		{"cert-table-misaligned", signed(0x604, 0, 0), nil, ""}, // Size 0: no table, whatever the offset
		{"cert-table-offset", append(signed(0x5fc, 0x10, 0), make([]byte, 12)...), pe.ErrCertTableAlignment, "starts at offset 0x5fc"},
		{"cert-table-size", append(signed(0x600, 0xc, 0), make([]byte, 12)...), pe.ErrCertTableAlignment, "its size is 12"},
		{"cert-table-not-at-end", append(signed(0x600, 0x8, 0), make([]byte, 16)...), pe.ErrCertTable, "does not end at the end of the file"},
		{"cert-table-over-section", append(signed(0x400, 0x208, 0), make([]byte, 8)...), pe.ErrSectionPastEOF, "runs past the certificate table"},
		{"cert-table-over-headers", append(signed(0x100, 0x508, 0), make([]byte, 8)...), pe.ErrCertTable, "overlaps the headers"},
		{"cert-table-at-0", mod(func(b []byte) { le.PutUint32(b[optOff+112+8*4+4:], 0x600) }), pe.ErrCertTable, "offset 0"},
	}
	for _, c := range cases {
		f, err := pe.Parse(bytes.NewReader(c.b), int64(len(c.b)))
		if c.want == nil {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			} else if f.DataEnd() != int64(len(c.b)) {
				t.Errorf("%s: data end %#x", c.name, f.DataEnd())
			}
			continue
		}
		if !errors.Is(err, c.want) || !errors.Is(err, pe.ErrFormat) || !strings.Contains(fmt.Sprint(err), c.msg) {
			t.Errorf("%s: %v, want %v (%q)", c.name, err, c.want, c.msg)
		}
	}
	// A well-formed signed image: the table ends the file and the data
	// before it.
	ok := append(signed(0x600, 0x10, 0), make([]byte, 16)...)
	f, err := pe.Parse(bytes.NewReader(ok), int64(len(ok)))
	if err != nil || f.DataEnd() != 0x600 || f.CertificateTable() != (pe.DataDirectory{0x600, 0x10}) {
		t.Fatalf("signed synthetic: %v", err)
	}
	// Sections without raw data are left out of the file-order list.
	nodata := mod(func(b []byte) { le.PutUint32(b[secOff+16:], 0); le.PutUint32(b[secOff+20:], 0) })
	f, err = pe.Parse(bytes.NewReader(nodata), int64(len(nodata)))
	if err != nil {
		t.Fatal(err)
	}
	if s := f.SectionsByRawData(); len(s) != 1 || s[0].Name != ".s1" || f.RawData(0).Size() != 0 {
		t.Errorf("sections with data: %+v", s)
	}
}

// FuzzParse: no input panics Parse, and whatever it accepts has its
// section data inside the file and its offsets inside the headers.
func FuzzParse(f *testing.F) {
	good, _ := synthetic()
	f.Add(good)
	for _, p := range realImages[:2] {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		pf, err := pe.Parse(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			if !errors.Is(err, pe.ErrFormat) {
				t.Fatalf("error %v does not match ErrFormat", err)
			}
			return
		}
		if pf.SectionTableOffset()+int64(len(pf.Sections))*pe.SectionHeaderSize > int64(pf.SizeOfHeaders) || int64(pf.SizeOfHeaders) > pf.Size() {
			t.Fatalf("section table outside the headers")
		}
		for i := range pf.Sections {
			r := pf.RawData(i)
			if _, err := io.Copy(io.Discard, r); err != nil {
				t.Fatalf("section %d: %v", i, err)
			}
		}
		if pf.DataEnd() > pf.Size() {
			t.Fatalf("data end %#x past %#x", pf.DataEnd(), pf.Size())
		}
	})
}
