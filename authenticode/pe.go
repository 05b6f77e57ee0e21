package authenticode

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// Errors a caller can test for with errors.Is. Parse wraps them with the
// structure and offsets that were bad.
var (
	ErrNotPE              = errors.New("not a PE/COFF image")
	ErrTruncated          = errors.New("truncated PE headers")
	ErrBadOptionalHeader  = errors.New("bad PE optional header")
	ErrNoCertTable        = errors.New("PE file lacks a certificate table directory entry")
	ErrSectionPastEOF     = errors.New("PE section extends past the end of the file")
	ErrOverlappingSection = errors.New("PE sections overlap")
	ErrCertTable          = errors.New("bad PE certificate table")
	ErrCertTableAlignment = errors.New("PE certificate table is not aligned to 8 bytes")
)

// Magic numbers of the PE/COFF specification.
const (
	dosMagic          = 0x5a4d // "MZ"
	peSignature       = 0x00004550
	OptionalHeader32  = 0x10b // PE32 optional header magic
	OptionalHeader64  = 0x20b // PE32+ optional header magic
	sectionHeaderSize = 40
	fileHeaderSize    = 20

	// CertificateTableIndex is IMAGE_DIRECTORY_ENTRY_SECURITY: the data
	// directory entry that locates the attribute certificate table. Unlike
	// every other entry its VirtualAddress is a file offset.
	CertificateTableIndex = 4
)

// maxSections bounds the section table; the PE specification limits
// NumberOfSections to 96 for images, the loader accepts up to 65535.
const maxSections = 65535

// FileHeader is the COFF file header (IMAGE_FILE_HEADER).
type FileHeader struct {
	Machine              uint16
	NumberOfSections     uint16
	TimeDateStamp        uint32
	PointerToSymbolTable uint32
	NumberOfSymbols      uint32
	SizeOfOptionalHeader uint16
	Characteristics      uint16
}

// DataDirectory is one IMAGE_DATA_DIRECTORY entry.
type DataDirectory struct {
	VirtualAddress uint32
	Size           uint32
}

// OptionalHeader holds the optional-header fields that Authenticode and the
// loader's checksum care about, for PE32 and PE32+ alike.
type OptionalHeader struct {
	Magic               uint16
	SectionAlignment    uint32
	FileAlignment       uint32
	SizeOfImage         uint32
	SizeOfHeaders       uint32
	CheckSum            uint32
	NumberOfRvaAndSizes uint32
	DataDirectory       []DataDirectory
}

// SectionHeader is one IMAGE_SECTION_HEADER.
type SectionHeader struct {
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
}

// File is a parsed PE/COFF image, read through an io.ReaderAt. Parse reads
// only the headers; hashing streams the rest.
type File struct {
	FileHeader
	OptionalHeader OptionalHeader
	Sections       []SectionHeader

	r    io.ReaderAt
	size int64

	// File offsets of the fields Authenticode skips.
	checksumOffset  int64
	certEntryOffset int64
	// dataEnd is where the hashed image ends: the start of the certificate
	// table if there is one, else the end of the file.
	dataEnd int64
	// ranges are the hashed [start, end) extents in file order, without
	// the 8-byte padding.
	ranges [][2]int64
}

// Size returns the size of the file in bytes.
func (f *File) Size() int64 { return f.size }

// CertificateTable returns the certificate table directory entry (Size 0
// if the image is unsigned).
func (f *File) CertificateTable() DataDirectory {
	return f.OptionalHeader.DataDirectory[CertificateTableIndex]
}

// ChecksumOffset returns the file offset of the optional header's CheckSum
// field.
func (f *File) ChecksumOffset() int64 { return f.checksumOffset }

// CertificateTableEntryOffset returns the file offset of the certificate
// table's DataDirectory entry (8 bytes).
func (f *File) CertificateTableEntryOffset() int64 { return f.certEntryOffset }

// Parse reads the headers of a PE/COFF image of the given size from r and
// checks everything Authenticode hashing relies on: the headers and section
// table lie inside the file and inside SizeOfHeaders, section data lies
// inside the file and sections do not overlap each other or the headers, and
// an existing certificate table is 8-byte aligned, after the section data
// and at the end of the file.
func Parse(r io.ReaderAt, size int64) (*File, error) {
	var dos [64]byte
	if size < int64(len(dos)) {
		return nil, fmt.Errorf("%w: %d bytes, too short for a DOS header", ErrNotPE, size)
	}
	if err := readFull(r, dos[:], 0); err != nil {
		return nil, err
	}
	if binary.LittleEndian.Uint16(dos[0:]) != dosMagic {
		return nil, fmt.Errorf("%w: no MZ signature", ErrNotPE)
	}
	peOff := int64(binary.LittleEndian.Uint32(dos[0x3c:]))
	if peOff+4+fileHeaderSize > size {
		return nil, fmt.Errorf("%w: PE header at offset %#x is past the end of the file (%d bytes)", ErrTruncated, peOff, size)
	}
	var hdr [4 + fileHeaderSize]byte
	if err := readFull(r, hdr[:], peOff); err != nil {
		return nil, err
	}
	if binary.LittleEndian.Uint32(hdr[0:]) != peSignature {
		return nil, fmt.Errorf("%w: no PE signature at offset %#x", ErrNotPE, peOff)
	}
	f := &File{r: r, size: size}
	fh := hdr[4:]
	f.FileHeader = FileHeader{
		Machine:              binary.LittleEndian.Uint16(fh[0:]),
		NumberOfSections:     binary.LittleEndian.Uint16(fh[2:]),
		TimeDateStamp:        binary.LittleEndian.Uint32(fh[4:]),
		PointerToSymbolTable: binary.LittleEndian.Uint32(fh[8:]),
		NumberOfSymbols:      binary.LittleEndian.Uint32(fh[12:]),
		SizeOfOptionalHeader: binary.LittleEndian.Uint16(fh[16:]),
		Characteristics:      binary.LittleEndian.Uint16(fh[18:]),
	}
	optOff := peOff + 4 + fileHeaderSize
	optSize := int64(f.SizeOfOptionalHeader)
	if optOff+optSize > size {
		return nil, fmt.Errorf("%w: optional header (%d bytes at %#x) is past the end of the file", ErrTruncated, optSize, optOff)
	}
	if optSize < 2 {
		return nil, fmt.Errorf("%w: SizeOfOptionalHeader is %d", ErrBadOptionalHeader, optSize)
	}
	opt := make([]byte, optSize)
	if err := readFull(r, opt, optOff); err != nil {
		return nil, err
	}
	oh := &f.OptionalHeader
	oh.Magic = binary.LittleEndian.Uint16(opt)
	// Offsets inside the optional header (PE/COFF specification 3.4).
	var nrvaOff, ddOff int
	switch oh.Magic {
	case OptionalHeader32:
		nrvaOff, ddOff = 92, 96
	case OptionalHeader64:
		nrvaOff, ddOff = 108, 112
	default:
		return nil, fmt.Errorf("%w: magic %#x is neither PE32 nor PE32+", ErrBadOptionalHeader, oh.Magic)
	}
	if len(opt) < ddOff {
		return nil, fmt.Errorf("%w: SizeOfOptionalHeader %d is too small for a %#x header", ErrBadOptionalHeader, optSize, oh.Magic)
	}
	oh.SectionAlignment = binary.LittleEndian.Uint32(opt[32:])
	oh.FileAlignment = binary.LittleEndian.Uint32(opt[36:])
	oh.SizeOfImage = binary.LittleEndian.Uint32(opt[56:])
	oh.SizeOfHeaders = binary.LittleEndian.Uint32(opt[60:])
	oh.CheckSum = binary.LittleEndian.Uint32(opt[64:])
	oh.NumberOfRvaAndSizes = binary.LittleEndian.Uint32(opt[nrvaOff:])
	if oh.NumberOfRvaAndSizes > 16 {
		return nil, fmt.Errorf("%w: NumberOfRvaAndSizes is %d (at most 16)", ErrBadOptionalHeader, oh.NumberOfRvaAndSizes)
	}
	if oh.NumberOfRvaAndSizes <= CertificateTableIndex {
		return nil, fmt.Errorf("%w: NumberOfRvaAndSizes is %d", ErrNoCertTable, oh.NumberOfRvaAndSizes)
	}
	if ddOff+8*int(oh.NumberOfRvaAndSizes) > len(opt) {
		return nil, fmt.Errorf("%w: %d data directories do not fit in SizeOfOptionalHeader %d", ErrBadOptionalHeader, oh.NumberOfRvaAndSizes, optSize)
	}
	oh.DataDirectory = make([]DataDirectory, oh.NumberOfRvaAndSizes)
	for i := range oh.DataDirectory {
		d := opt[ddOff+8*i:]
		oh.DataDirectory[i] = DataDirectory{binary.LittleEndian.Uint32(d), binary.LittleEndian.Uint32(d[4:])}
	}
	f.checksumOffset = optOff + 64
	f.certEntryOffset = optOff + int64(ddOff) + 8*CertificateTableIndex

	secOff := optOff + optSize
	secEnd := secOff + int64(f.NumberOfSections)*sectionHeaderSize
	if secEnd > size {
		return nil, fmt.Errorf("%w: section table (%d sections at %#x) is past the end of the file (%d bytes)", ErrTruncated, f.NumberOfSections, secOff, size)
	}
	hdrEnd := int64(oh.SizeOfHeaders)
	if hdrEnd < secEnd {
		return nil, fmt.Errorf("%w: SizeOfHeaders %#x is smaller than the headers and section table (%#x)", ErrBadOptionalHeader, hdrEnd, secEnd)
	}
	if hdrEnd > size {
		return nil, fmt.Errorf("%w: SizeOfHeaders %#x is past the end of the file (%d bytes)", ErrTruncated, hdrEnd, size)
	}
	st := make([]byte, secEnd-secOff)
	if err := readFull(r, st, secOff); err != nil {
		return nil, err
	}
	f.Sections = make([]SectionHeader, f.NumberOfSections)
	for i := range f.Sections {
		b := st[i*sectionHeaderSize:]
		name := b[:8]
		for j, c := range name {
			if c == 0 {
				name = name[:j]
				break
			}
		}
		f.Sections[i] = SectionHeader{
			Name:                 string(name),
			VirtualSize:          binary.LittleEndian.Uint32(b[8:]),
			VirtualAddress:       binary.LittleEndian.Uint32(b[12:]),
			SizeOfRawData:        binary.LittleEndian.Uint32(b[16:]),
			PointerToRawData:     binary.LittleEndian.Uint32(b[20:]),
			PointerToRelocations: binary.LittleEndian.Uint32(b[24:]),
			PointerToLinenumbers: binary.LittleEndian.Uint32(b[28:]),
			NumberOfRelocations:  binary.LittleEndian.Uint16(b[32:]),
			NumberOfLinenumbers:  binary.LittleEndian.Uint16(b[34:]),
			Characteristics:      binary.LittleEndian.Uint32(b[36:]),
		}
	}

	// The certificate table, if any, must be the last thing in the file:
	// signing appends to it, and everything before it is hashed.
	f.dataEnd = size
	ct := oh.DataDirectory[CertificateTableIndex]
	// An entry with Size 0 is no table (linkers may leave an offset).
	if ct.Size != 0 {
		start, n := int64(ct.VirtualAddress), int64(ct.Size)
		switch {
		case start%8 != 0:
			return nil, fmt.Errorf("%w: it starts at offset %#x", ErrCertTableAlignment, start)
		case n%8 != 0:
			return nil, fmt.Errorf("%w: its size is %d", ErrCertTableAlignment, n)
		case start == 0:
			return nil, fmt.Errorf("%w: directory entry {offset 0, size %d}", ErrCertTable, n)
		case start+n != size:
			return nil, fmt.Errorf("%w: table at %#x+%d does not end at the end of the file (%d bytes)", ErrCertTable, start, n, size)
		case start < hdrEnd:
			return nil, fmt.Errorf("%w: table at %#x overlaps the headers", ErrCertTable, start)
		}
		f.dataEnd = start
	}

	// Hashed ranges: headers minus CheckSum and the certificate table entry,
	// then section data in file order, then the data after it (symbol
	// tables, appended data) up to the certificate table. As in the
	// Authenticode specification and every signer, that trailing range starts
	// at SizeOfHeaders plus the sum of the section sizes, so gaps between
	// sections shift it rather than being hashed in place.
	f.ranges = [][2]int64{
		{0, f.checksumOffset},
		{f.checksumOffset + 4, f.certEntryOffset},
		{f.certEntryOffset + 8, hdrEnd},
	}
	secs := make([]SectionHeader, 0, len(f.Sections))
	for _, s := range f.Sections {
		if s.SizeOfRawData != 0 {
			secs = append(secs, s)
		}
	}
	sort.SliceStable(secs, func(i, j int) bool { return secs[i].PointerToRawData < secs[j].PointerToRawData })
	pos, sum := hdrEnd, hdrEnd
	for _, s := range secs {
		start, end := int64(s.PointerToRawData), int64(s.PointerToRawData)+int64(s.SizeOfRawData)
		if end > f.dataEnd {
			what := "the end of the file"
			if f.dataEnd != size {
				what = "the certificate table"
			}
			return nil, fmt.Errorf("%w: section %q data %#x..%#x runs past %s (%#x)", ErrSectionPastEOF, s.Name, start, end, what, f.dataEnd)
		}
		if start < pos {
			return nil, fmt.Errorf("%w: section %q data at %#x overlaps what precedes it (up to %#x)", ErrOverlappingSection, s.Name, start, pos)
		}
		f.ranges = append(f.ranges, [2]int64{start, end})
		pos = end
		sum += end - start
	}
	if sum < f.dataEnd {
		f.ranges = append(f.ranges, [2]int64{sum, f.dataEnd})
	}
	return f, nil
}

func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%w: reading %d bytes at %#x: %v", ErrTruncated, len(b), off, err)
}
