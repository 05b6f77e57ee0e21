package uki

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrFormat is wrapped by every error about a malformed PE file.
var ErrFormat = errors.New("malformed PE file")

func formatErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrFormat, fmt.Sprintf(format, a...))
}

// FileHeader is the COFF file header.
type FileHeader struct {
	Machine              uint16
	NumberOfSections     uint16
	TimeDateStamp        uint32
	PointerToSymbolTable uint32
	NumberOfSymbols      uint32
	SizeOfOptionalHeader uint16
	Characteristics      uint16
}

// OptionalHeader holds the optional header fields signet reads or
// rewrites; the rest is kept verbatim.
type OptionalHeader struct {
	Magic                  uint16 // 0x10b PE32, 0x20b PE32+
	SizeOfCode             uint32
	SizeOfInitializedData  uint32
	SectionAlignment       uint32
	FileAlignment          uint32
	SizeOfImage            uint32
	SizeOfHeaders          uint32
	CheckSum               uint32
	NumberOfRvaAndSizes    uint32
	DataDirectory          []DataDirectory
	dataDirectoryOffset    int // within the optional header
	numberOfRvaSizesOffset int
}

// DataDirectory is one entry of the optional header's directory table.
type DataDirectory struct {
	VirtualAddress uint32
	Size           uint32
}

// Data directory indexes used here.
const (
	DirectorySecurity = 4 // attribute certificates (Authenticode); a file offset
	DirectoryDebug    = 6
)

// Section is one PE section.
type Section struct {
	Name                 string
	VirtualSize          uint32
	VirtualAddress       uint32
	SizeOfRawData        uint32
	PointerToRawData     uint32
	PointerToRelocations uint32
	PointerToLinenumbers uint32
	NumberOfRelocations  uint16
	NumberOfLinenumbers  uint16
	Characteristics      uint32

	r io.ReaderAt
}

// Section characteristics ukify sets.
const (
	ScnCntCode              = 0x00000020
	ScnCntInitializedData   = 0x00000040
	ScnMemRead              = 0x40000000
	sectionHeaderSize       = 40
	maxSections             = 96 // the PE/COFF limit Windows' loader enforces
	peSignatureOffsetOffset = 0x3c
	// maxZeroFill bounds the uninitialized tail a section may claim: UKI
	// sections carry their data, and hashing gigabytes of zeros for a
	// hostile header would be a denial of service.
	maxZeroFill = 64 << 20
)

// Size is the section's size in memory, VirtualSize: what the stub
// measures (ukify sets it to the data length; SizeOfRawData is padded).
func (s *Section) Size() int64 { return int64(s.VirtualSize) }

// Open returns the section's contents as loaded in memory: the raw data,
// zero-filled beyond SizeOfRawData up to Size.
func (s *Section) Open() io.ReaderAt {
	raw := int64(s.SizeOfRawData)
	if raw > s.Size() {
		raw = s.Size()
	}
	return &zeroExtended{r: io.NewSectionReader(s.r, int64(s.PointerToRawData), raw), n: raw, size: s.Size()}
}

// Data reads the whole section (for small sections only).
func (s *Section) Data() ([]byte, error) {
	b := make([]byte, s.Size())
	if _, err := s.Open().ReadAt(b, 0); err != nil && err != io.EOF {
		return nil, fmt.Errorf("section %s: %w", s.Name, err)
	}
	return b, nil
}

type zeroExtended struct {
	r       io.ReaderAt
	n, size int64
}

func (z *zeroExtended) ReadAt(p []byte, off int64) (int, error) {
	if off >= z.size {
		return 0, io.EOF
	}
	if int64(len(p)) > z.size-off {
		p = p[:z.size-off]
	}
	n := 0
	if off < z.n {
		m := int64(len(p))
		if m > z.n-off {
			m = z.n - off
		}
		k, err := z.r.ReadAt(p[:m], off)
		n += k
		if int64(k) < m {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return n, err
		}
	}
	for i := n; i < len(p); i++ {
		p[i] = 0
	}
	if off+int64(len(p)) >= z.size {
		return len(p), io.EOF
	}
	return len(p), nil
}

// File is a parsed PE image.
type File struct {
	FileHeader
	OptionalHeader
	Sections []*Section

	r              io.ReaderAt
	size           int64
	peOffset       int64
	header         []byte // bytes 0 .. end of the section table
	sectionTableAt int
}

// Parse reads the headers and section table of a PE image of size bytes.
// Section contents are read on demand.
func Parse(r io.ReaderAt, size int64) (*File, error) {
	var dos [64]byte
	if size < 64 {
		return nil, formatErr("%d bytes is too short for a DOS header", size)
	}
	if _, err := r.ReadAt(dos[:], 0); err != nil {
		return nil, fmt.Errorf("reading DOS header: %w", err)
	}
	if dos[0] != 'M' || dos[1] != 'Z' {
		return nil, formatErr("no MZ signature")
	}
	peOff := int64(binary.LittleEndian.Uint32(dos[peSignatureOffsetOffset:]))
	if peOff < 64 || peOff > size-24 || peOff > 1<<20 {
		return nil, formatErr("PE header offset %#x outside the file", peOff)
	}
	var ph [24]byte
	if _, err := r.ReadAt(ph[:], peOff); err != nil {
		return nil, fmt.Errorf("reading PE header: %w", err)
	}
	if !bytes.Equal(ph[:4], []byte("PE\x00\x00")) {
		return nil, formatErr("no PE signature at %#x", peOff)
	}
	f := &File{r: r, size: size, peOffset: peOff}
	le := binary.LittleEndian
	f.FileHeader = FileHeader{
		Machine: le.Uint16(ph[4:]), NumberOfSections: le.Uint16(ph[6:]), TimeDateStamp: le.Uint32(ph[8:]),
		PointerToSymbolTable: le.Uint32(ph[12:]), NumberOfSymbols: le.Uint32(ph[16:]),
		SizeOfOptionalHeader: le.Uint16(ph[20:]), Characteristics: le.Uint16(ph[22:]),
	}
	if f.NumberOfSections > maxSections {
		return nil, formatErr("%d sections (at most %d)", f.NumberOfSections, maxSections)
	}
	optOff := peOff + 24
	tableOff := optOff + int64(f.SizeOfOptionalHeader)
	tableEnd := tableOff + int64(f.NumberOfSections)*sectionHeaderSize
	if tableEnd > size {
		return nil, formatErr("section table (%d sections at %#x) runs past the end of the file", f.NumberOfSections, tableOff)
	}
	f.header = make([]byte, tableEnd)
	if _, err := r.ReadAt(f.header, 0); err != nil {
		return nil, fmt.Errorf("reading headers: %w", err)
	}
	f.sectionTableAt = int(tableOff)
	opt := f.header[optOff:tableOff]
	if len(opt) < 2 {
		return nil, formatErr("no optional header")
	}
	o := &f.OptionalHeader
	o.Magic = le.Uint16(opt)
	switch o.Magic {
	case 0x10b:
		o.numberOfRvaSizesOffset, o.dataDirectoryOffset = 92, 96
	case 0x20b:
		o.numberOfRvaSizesOffset, o.dataDirectoryOffset = 108, 112
	default:
		return nil, formatErr("optional header magic %#x (want PE32 or PE32+)", o.Magic)
	}
	if len(opt) < o.dataDirectoryOffset {
		return nil, formatErr("optional header is %d bytes, too short", len(opt))
	}
	o.SizeOfCode = le.Uint32(opt[4:])
	o.SizeOfInitializedData = le.Uint32(opt[8:])
	o.SectionAlignment = le.Uint32(opt[32:])
	o.FileAlignment = le.Uint32(opt[36:])
	o.SizeOfImage = le.Uint32(opt[56:])
	o.SizeOfHeaders = le.Uint32(opt[60:])
	o.CheckSum = le.Uint32(opt[64:])
	o.NumberOfRvaAndSizes = le.Uint32(opt[o.numberOfRvaSizesOffset:])
	if o.NumberOfRvaAndSizes > 16 || o.dataDirectoryOffset+8*int(o.NumberOfRvaAndSizes) > len(opt) {
		return nil, formatErr("%d data directories do not fit the optional header", o.NumberOfRvaAndSizes)
	}
	for i := 0; i < int(o.NumberOfRvaAndSizes); i++ {
		d := opt[o.dataDirectoryOffset+8*i:]
		o.DataDirectory = append(o.DataDirectory, DataDirectory{le.Uint32(d), le.Uint32(d[4:])})
	}
	if o.FileAlignment == 0 || o.FileAlignment&(o.FileAlignment-1) != 0 || o.SectionAlignment == 0 || o.SectionAlignment&(o.SectionAlignment-1) != 0 {
		return nil, formatErr("file alignment %#x / section alignment %#x are not powers of two", o.FileAlignment, o.SectionAlignment)
	}
	for i := 0; i < int(f.NumberOfSections); i++ {
		h := f.header[int(tableOff)+i*sectionHeaderSize:]
		s := &Section{
			Name:                 strings.TrimRight(string(h[:8]), "\x00"),
			VirtualSize:          le.Uint32(h[8:]),
			VirtualAddress:       le.Uint32(h[12:]),
			SizeOfRawData:        le.Uint32(h[16:]),
			PointerToRawData:     le.Uint32(h[20:]),
			PointerToRelocations: le.Uint32(h[24:]),
			PointerToLinenumbers: le.Uint32(h[28:]),
			NumberOfRelocations:  le.Uint16(h[32:]),
			NumberOfLinenumbers:  le.Uint16(h[34:]),
			Characteristics:      le.Uint32(h[36:]),
			r:                    r,
		}
		if s.SizeOfRawData > 0 && int64(s.PointerToRawData)+int64(s.SizeOfRawData) > size {
			return nil, formatErr("section %d (%q) raw data %#x+%#x runs past the end of the file (%#x)", i, s.Name, s.PointerToRawData, s.SizeOfRawData, size)
		}
		if int64(s.VirtualSize) > int64(s.SizeOfRawData)+maxZeroFill {
			return nil, formatErr("section %d (%q) claims %d bytes in memory for %d bytes of data", i, s.Name, s.VirtualSize, s.SizeOfRawData)
		}
		if uint64(s.VirtualAddress)+uint64(s.Size()) > 1<<32 {
			return nil, formatErr("section %d (%q) overflows the address space", i, s.Name)
		}
		f.Sections = append(f.Sections, s)
	}
	return f, nil
}

// Section returns the first section named name, or nil.
func (f *File) Section(name string) *Section {
	for _, s := range f.Sections {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Signed reports whether the image carries an attribute certificate table
// (an Authenticode signature).
func (f *File) Signed() bool {
	return len(f.DataDirectory) > DirectorySecurity && f.DataDirectory[DirectorySecurity].Size != 0
}

// rawEnd is the end of the last section's raw data.
func (f *File) rawEnd() int64 {
	end := int64(f.SizeOfHeaders)
	for _, s := range f.Sections {
		if e := int64(s.PointerToRawData) + int64(s.SizeOfRawData); s.SizeOfRawData > 0 && e > end {
			end = e
		}
	}
	return end
}

func alignUp(v, a int64) int64 { return (v + a - 1) &^ (a - 1) }
