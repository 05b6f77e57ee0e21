// Package pe reads the headers of PE/COFF images (UEFI applications, the
// systemd stub, unified kernel images, the kernel's EFI stub) as the
// Microsoft PE/COFF specification defines them.
//
// Parse reads only the headers and section table through an io.ReaderAt and
// validates them strictly, so that a writer (Authenticode signing, UKI
// assembly) can rely on the layout: the headers and section table lie inside
// SizeOfHeaders and the file, section data lies inside the file without
// overlapping the headers or another section, and an attribute certificate
// table is 8-byte aligned, after the section data and at the end of the
// file. Section data is read on demand through io.SectionReader. File also
// reports the file offsets of the header fields writers patch in place.
//
//	f, err := pe.Parse(r, size)
//	for i, s := range f.Sections {
//		data := f.RawData(i) // an *io.SectionReader of s's raw data
//	}
//	off := f.CheckSumOffset() // where a writer patches CheckSum
//
// Errors name the structure and offsets that were bad and wrap one of the
// error values below; every one of them matches ErrFormat.
//
// Unlike debug/pe, the package does not read symbol tables, string tables or
// the contents of data directories; structures and fields carry the names of
// the specification.
package pe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// Errors a caller can test for with errors.Is. Parse wraps them with the
// structure and the offsets that were bad. Every one of them also matches
// ErrFormat.
var (
	// ErrFormat matches every error about a malformed image.
	ErrFormat = errors.New("malformed PE file")

	ErrNotPE              = formatError("not a PE/COFF image")
	ErrTruncated          = formatError("truncated PE headers")
	ErrBadOptionalHeader  = formatError("bad PE optional header")
	ErrBadSection         = formatError("bad PE section header")
	ErrSectionPastEOF     = formatError("PE section extends past the end of the file")
	ErrOverlappingSection = formatError("PE sections overlap")
	ErrCertTable          = formatError("bad PE certificate table")
	ErrCertTableAlignment = formatError("PE certificate table is not aligned to 8 bytes")
)

// namedError is a named error that also matches ErrFormat.
type namedError struct{ msg string }

func formatError(msg string) error { return &namedError{msg} }

func (e *namedError) Error() string        { return e.msg }
func (e *namedError) Is(target error) bool { return target == ErrFormat }

// Magic numbers and sizes of the PE/COFF specification.
const (
	OptionalHeader32 = 0x10b // Magic of a PE32 optional header
	OptionalHeader64 = 0x20b // Magic of a PE32+ optional header

	FileHeaderSize    = 20 // size of the COFF file header
	SectionHeaderSize = 40 // size of one section table entry

	dosMagic         = 0x5a4d // "MZ"
	peSignature      = 0x00004550
	lfanewOffset     = 0x3c // e_lfanew: the file offset of the PE signature
	maxDataDirectory = 16
)

// Indexes of the optional header's data directories (PE/COFF specification
// 3.4.3).
const (
	DirExportTable = iota
	DirImportTable
	DirResourceTable
	DirExceptionTable
	// DirCertificateTable locates the attribute certificate table
	// (Authenticode signatures). Unlike every other entry its VirtualAddress
	// is a file offset, and the table is not loaded into memory.
	DirCertificateTable
	DirBaseRelocationTable
	DirDebug
	DirArchitecture
	DirGlobalPtr
	DirTLSTable
	DirLoadConfigTable
	DirBoundImport
	DirIAT
	DirDelayImportDescriptor
	DirCLRRuntimeHeader
)

// Offsets of fields inside the COFF file header, for writers that patch them.
const (
	OffsetNumberOfSections     = 2
	OffsetTimeDateStamp        = 4
	OffsetPointerToSymbolTable = 8
	OffsetNumberOfSymbols      = 12
)

// Offsets of fields inside the optional header, equal in PE32 and PE32+,
// for writers that patch them.
const (
	OffsetSizeOfInitializedData = 8
	OffsetSizeOfImage           = 56
	OffsetSizeOfHeaders         = 60
	OffsetCheckSum              = 64
)

// Section characteristics (IMAGE_SCN_*) writers of UEFI images use.
const (
	ScnCntCode            = 0x00000020
	ScnCntInitializedData = 0x00000040
	ScnMemRead            = 0x40000000
)

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

// DataDirectory is one IMAGE_DATA_DIRECTORY entry of the optional header.
type DataDirectory struct {
	VirtualAddress uint32
	Size           uint32
}

// OptionalHeader is the optional header of a PE32 or PE32+ image
// (IMAGE_OPTIONAL_HEADER32 or IMAGE_OPTIONAL_HEADER64; Magic tells which).
// Fields that are 64 bits wide in PE32+ are uint64 for both; BaseOfData
// exists in PE32 only and is zero for PE32+. DataDirectory holds
// NumberOfRvaAndSizes entries.
type OptionalHeader struct {
	Magic                       uint16
	MajorLinkerVersion          uint8
	MinorLinkerVersion          uint8
	SizeOfCode                  uint32
	SizeOfInitializedData       uint32
	SizeOfUninitializedData     uint32
	AddressOfEntryPoint         uint32
	BaseOfCode                  uint32
	BaseOfData                  uint32
	ImageBase                   uint64
	SectionAlignment            uint32
	FileAlignment               uint32
	MajorOperatingSystemVersion uint16
	MinorOperatingSystemVersion uint16
	MajorImageVersion           uint16
	MinorImageVersion           uint16
	MajorSubsystemVersion       uint16
	MinorSubsystemVersion       uint16
	Win32VersionValue           uint32
	SizeOfImage                 uint32
	SizeOfHeaders               uint32
	CheckSum                    uint32
	Subsystem                   uint16
	DllCharacteristics          uint16
	SizeOfStackReserve          uint64
	SizeOfStackCommit           uint64
	SizeOfHeapReserve           uint64
	SizeOfHeapCommit            uint64
	LoaderFlags                 uint32
	NumberOfRvaAndSizes         uint32
	DataDirectory               []DataDirectory
}

// SectionHeader is one entry of the section table (IMAGE_SECTION_HEADER).
// Name has its NUL padding removed.
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

// Put encodes the section header into the first SectionHeaderSize bytes of
// b, as it appears in the section table. Name must be at most 8 bytes; a
// longer one is cut.
func (s *SectionHeader) Put(b []byte) {
	le := binary.LittleEndian
	var name [8]byte
	copy(name[:], s.Name)
	copy(b, name[:])
	le.PutUint32(b[8:], s.VirtualSize)
	le.PutUint32(b[12:], s.VirtualAddress)
	le.PutUint32(b[16:], s.SizeOfRawData)
	le.PutUint32(b[20:], s.PointerToRawData)
	le.PutUint32(b[24:], s.PointerToRelocations)
	le.PutUint32(b[28:], s.PointerToLinenumbers)
	le.PutUint16(b[32:], s.NumberOfRelocations)
	le.PutUint16(b[34:], s.NumberOfLinenumbers)
	le.PutUint32(b[36:], s.Characteristics)
}

// File is a PE/COFF image whose headers Parse has read and validated.
type File struct {
	FileHeader
	OptionalHeader
	Sections []SectionHeader // in section table order

	r    io.ReaderAt
	size int64

	peOffset int64 // the PE signature (e_lfanew)
	ddOffset int64 // the first data directory entry
}

// Size returns the size of the file in bytes.
func (f *File) Size() int64 { return f.size }

// ReaderAt returns the reader the file was parsed from.
func (f *File) ReaderAt() io.ReaderAt { return f.r }

// SignatureOffset returns the file offset of the "PE\0\0" signature, which
// the COFF file header follows.
func (f *File) SignatureOffset() int64 { return f.peOffset }

// FileHeaderOffset returns the file offset of the COFF file header.
func (f *File) FileHeaderOffset() int64 { return f.peOffset + 4 }

// OptionalHeaderOffset returns the file offset of the optional header.
func (f *File) OptionalHeaderOffset() int64 { return f.FileHeaderOffset() + FileHeaderSize }

// SectionTableOffset returns the file offset of the section table.
func (f *File) SectionTableOffset() int64 {
	return f.OptionalHeaderOffset() + int64(f.SizeOfOptionalHeader)
}

// CheckSumOffset returns the file offset of the optional header's CheckSum.
func (f *File) CheckSumOffset() int64 { return f.OptionalHeaderOffset() + OffsetCheckSum }

// DataDirectoryOffset returns the file offset of data directory entry i (8
// bytes), or -1 if the optional header has no such entry.
func (f *File) DataDirectoryOffset(i int) int64 {
	if i < 0 || i >= len(f.DataDirectory) {
		return -1
	}
	return f.ddOffset + 8*int64(i)
}

// CertificateTable returns the attribute certificate table's directory
// entry: Size 0 if the image is unsigned or has no such entry.
func (f *File) CertificateTable() DataDirectory {
	if len(f.DataDirectory) <= DirCertificateTable {
		return DataDirectory{}
	}
	return f.DataDirectory[DirCertificateTable]
}

// DataEnd returns where the image data ends: the offset of the attribute
// certificate table if there is one, else the size of the file.
func (f *File) DataEnd() int64 {
	if ct := f.CertificateTable(); ct.Size != 0 {
		return int64(ct.VirtualAddress)
	}
	return f.size
}

// RawData returns a reader of the raw data of section i as the file holds
// it: SizeOfRawData bytes at PointerToRawData (none if it has no raw data).
func (f *File) RawData(i int) *io.SectionReader {
	s := &f.Sections[i]
	if s.SizeOfRawData == 0 {
		return io.NewSectionReader(f.r, 0, 0)
	}
	return io.NewSectionReader(f.r, int64(s.PointerToRawData), int64(s.SizeOfRawData))
}

// Parse reads and validates the headers and section table of a PE/COFF
// image of size bytes from r. Section data and the certificate table are
// not read.
func Parse(r io.ReaderAt, size int64) (*File, error) {
	var dos [64]byte
	if size < int64(len(dos)) {
		return nil, fmt.Errorf("%w: %d bytes, too short for a DOS header", ErrNotPE, size)
	}
	if err := ReadFull(r, dos[:], 0); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	if le.Uint16(dos[0:]) != dosMagic {
		return nil, fmt.Errorf("%w: no MZ signature", ErrNotPE)
	}
	peOff := int64(le.Uint32(dos[lfanewOffset:]))
	if peOff+4+FileHeaderSize > size {
		return nil, fmt.Errorf("%w: PE header at offset %#x is past the end of the file (%d bytes)", ErrTruncated, peOff, size)
	}
	var hdr [4 + FileHeaderSize]byte
	if err := ReadFull(r, hdr[:], peOff); err != nil {
		return nil, err
	}
	if le.Uint32(hdr[0:]) != peSignature {
		return nil, fmt.Errorf("%w: no PE signature at offset %#x", ErrNotPE, peOff)
	}
	f := &File{r: r, size: size, peOffset: peOff}
	fh := hdr[4:]
	f.FileHeader = FileHeader{
		Machine:              le.Uint16(fh[0:]),
		NumberOfSections:     le.Uint16(fh[2:]),
		TimeDateStamp:        le.Uint32(fh[4:]),
		PointerToSymbolTable: le.Uint32(fh[8:]),
		NumberOfSymbols:      le.Uint32(fh[12:]),
		SizeOfOptionalHeader: le.Uint16(fh[16:]),
		Characteristics:      le.Uint16(fh[18:]),
	}
	if err := f.readOptionalHeader(); err != nil {
		return nil, err
	}
	if err := f.readSectionTable(); err != nil {
		return nil, err
	}
	if err := f.checkLayout(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *File) readOptionalHeader() error {
	le := binary.LittleEndian
	optOff := f.OptionalHeaderOffset()
	optSize := int64(f.SizeOfOptionalHeader)
	if optOff+optSize > f.size {
		return fmt.Errorf("%w: optional header (%d bytes at %#x) is past the end of the file", ErrTruncated, optSize, optOff)
	}
	if optSize < 2 {
		return fmt.Errorf("%w: SizeOfOptionalHeader is %d", ErrBadOptionalHeader, optSize)
	}
	opt := make([]byte, optSize)
	if err := ReadFull(f.r, opt, optOff); err != nil {
		return err
	}
	oh := &f.OptionalHeader
	oh.Magic = le.Uint16(opt)
	// Offsets inside the optional header (PE/COFF specification 3.4).
	var ddOff int
	switch oh.Magic {
	case OptionalHeader32:
		ddOff = 96
	case OptionalHeader64:
		ddOff = 112
	default:
		return fmt.Errorf("%w: magic %#x is neither PE32 nor PE32+", ErrBadOptionalHeader, oh.Magic)
	}
	if len(opt) < ddOff {
		return fmt.Errorf("%w: SizeOfOptionalHeader %d is too small for a %#x header", ErrBadOptionalHeader, optSize, oh.Magic)
	}
	oh.MajorLinkerVersion = opt[2]
	oh.MinorLinkerVersion = opt[3]
	oh.SizeOfCode = le.Uint32(opt[4:])
	oh.SizeOfInitializedData = le.Uint32(opt[8:])
	oh.SizeOfUninitializedData = le.Uint32(opt[12:])
	oh.AddressOfEntryPoint = le.Uint32(opt[16:])
	oh.BaseOfCode = le.Uint32(opt[20:])
	oh.SectionAlignment = le.Uint32(opt[32:])
	oh.FileAlignment = le.Uint32(opt[36:])
	oh.MajorOperatingSystemVersion = le.Uint16(opt[40:])
	oh.MinorOperatingSystemVersion = le.Uint16(opt[42:])
	oh.MajorImageVersion = le.Uint16(opt[44:])
	oh.MinorImageVersion = le.Uint16(opt[46:])
	oh.MajorSubsystemVersion = le.Uint16(opt[48:])
	oh.MinorSubsystemVersion = le.Uint16(opt[50:])
	oh.Win32VersionValue = le.Uint32(opt[52:])
	oh.SizeOfImage = le.Uint32(opt[OffsetSizeOfImage:])
	oh.SizeOfHeaders = le.Uint32(opt[OffsetSizeOfHeaders:])
	oh.CheckSum = le.Uint32(opt[OffsetCheckSum:])
	oh.Subsystem = le.Uint16(opt[68:])
	oh.DllCharacteristics = le.Uint16(opt[70:])
	if oh.Magic == OptionalHeader32 {
		oh.BaseOfData = le.Uint32(opt[24:])
		oh.ImageBase = uint64(le.Uint32(opt[28:]))
		oh.SizeOfStackReserve = uint64(le.Uint32(opt[72:]))
		oh.SizeOfStackCommit = uint64(le.Uint32(opt[76:]))
		oh.SizeOfHeapReserve = uint64(le.Uint32(opt[80:]))
		oh.SizeOfHeapCommit = uint64(le.Uint32(opt[84:]))
		oh.LoaderFlags = le.Uint32(opt[88:])
	} else {
		oh.ImageBase = le.Uint64(opt[24:])
		oh.SizeOfStackReserve = le.Uint64(opt[72:])
		oh.SizeOfStackCommit = le.Uint64(opt[80:])
		oh.SizeOfHeapReserve = le.Uint64(opt[88:])
		oh.SizeOfHeapCommit = le.Uint64(opt[96:])
		oh.LoaderFlags = le.Uint32(opt[104:])
	}
	// NumberOfRvaAndSizes is the field just before the directories.
	oh.NumberOfRvaAndSizes = le.Uint32(opt[ddOff-4:])
	if oh.NumberOfRvaAndSizes > maxDataDirectory {
		return fmt.Errorf("%w: NumberOfRvaAndSizes is %d (at most %d)", ErrBadOptionalHeader, oh.NumberOfRvaAndSizes, maxDataDirectory)
	}
	if ddOff+8*int(oh.NumberOfRvaAndSizes) > len(opt) {
		return fmt.Errorf("%w: %d data directories do not fit in SizeOfOptionalHeader %d", ErrBadOptionalHeader, oh.NumberOfRvaAndSizes, optSize)
	}
	oh.DataDirectory = make([]DataDirectory, oh.NumberOfRvaAndSizes)
	for i := range oh.DataDirectory {
		d := opt[ddOff+8*i:]
		oh.DataDirectory[i] = DataDirectory{le.Uint32(d), le.Uint32(d[4:])}
	}
	f.ddOffset = optOff + int64(ddOff)
	// Both are powers of two in any image a loader accepts; section layout
	// arithmetic (alignUp) relies on it.
	if !pow2(oh.FileAlignment) || !pow2(oh.SectionAlignment) {
		return fmt.Errorf("%w: FileAlignment %#x or SectionAlignment %#x is not a power of two", ErrBadOptionalHeader, oh.FileAlignment, oh.SectionAlignment)
	}
	return nil
}

func pow2(v uint32) bool { return v != 0 && v&(v-1) == 0 }

func (f *File) readSectionTable() error {
	le := binary.LittleEndian
	secOff := f.SectionTableOffset()
	secEnd := secOff + int64(f.NumberOfSections)*SectionHeaderSize
	if secEnd > f.size {
		return fmt.Errorf("%w: section table (%d sections at %#x) is past the end of the file (%d bytes)", ErrTruncated, f.NumberOfSections, secOff, f.size)
	}
	hdrEnd := int64(f.SizeOfHeaders)
	if hdrEnd < secEnd {
		return fmt.Errorf("%w: SizeOfHeaders %#x is smaller than the headers and section table (%#x)", ErrBadOptionalHeader, hdrEnd, secEnd)
	}
	if hdrEnd > f.size {
		return fmt.Errorf("%w: SizeOfHeaders %#x is past the end of the file (%d bytes)", ErrTruncated, hdrEnd, f.size)
	}
	st := make([]byte, secEnd-secOff)
	if err := ReadFull(f.r, st, secOff); err != nil {
		return err
	}
	f.Sections = make([]SectionHeader, f.NumberOfSections)
	for i := range f.Sections {
		b := st[i*SectionHeaderSize:]
		name := b[:8]
		for j, c := range name {
			if c == 0 {
				name = name[:j]
				break
			}
		}
		s := SectionHeader{
			Name:                 string(name),
			VirtualSize:          le.Uint32(b[8:]),
			VirtualAddress:       le.Uint32(b[12:]),
			SizeOfRawData:        le.Uint32(b[16:]),
			PointerToRawData:     le.Uint32(b[20:]),
			PointerToRelocations: le.Uint32(b[24:]),
			PointerToLinenumbers: le.Uint32(b[28:]),
			NumberOfRelocations:  le.Uint16(b[32:]),
			NumberOfLinenumbers:  le.Uint16(b[34:]),
			Characteristics:      le.Uint32(b[36:]),
		}
		if uint64(s.VirtualAddress)+uint64(s.VirtualSize) > 1<<32 {
			return fmt.Errorf("%w: section %d (%q) at %#x+%#x overflows the 32-bit address space", ErrBadSection, i, s.Name, s.VirtualAddress, s.VirtualSize)
		}
		f.Sections[i] = s
	}
	return nil
}

// checkLayout checks where the certificate table and the section data lie.
func (f *File) checkLayout() error {
	hdrEnd := int64(f.SizeOfHeaders)
	// The certificate table, if any, must be the last thing in the file:
	// signing appends to it, and everything before it is hashed.
	dataEnd := f.size
	// An entry with Size 0 is no table (linkers may leave an offset).
	if ct := f.CertificateTable(); ct.Size != 0 {
		start, n := int64(ct.VirtualAddress), int64(ct.Size)
		switch {
		case start%8 != 0:
			return fmt.Errorf("%w: it starts at offset %#x", ErrCertTableAlignment, start)
		case n%8 != 0:
			return fmt.Errorf("%w: its size is %d", ErrCertTableAlignment, n)
		case start == 0:
			return fmt.Errorf("%w: directory entry {offset 0, size %d}", ErrCertTable, n)
		case start+n != f.size:
			return fmt.Errorf("%w: table at %#x+%d does not end at the end of the file (%d bytes)", ErrCertTable, start, n, f.size)
		case start < hdrEnd:
			return fmt.Errorf("%w: table at %#x overlaps the headers", ErrCertTable, start)
		}
		dataEnd = start
	}
	pos := hdrEnd
	for _, s := range f.SectionsByRawData() {
		start, end := int64(s.PointerToRawData), int64(s.PointerToRawData)+int64(s.SizeOfRawData)
		if end > dataEnd {
			what := "the end of the file"
			if dataEnd != f.size {
				what = "the certificate table"
			}
			return fmt.Errorf("%w: section %q data %#x..%#x runs past %s (%#x)", ErrSectionPastEOF, s.Name, start, end, what, dataEnd)
		}
		if start < pos {
			return fmt.Errorf("%w: section %q data at %#x overlaps what precedes it (up to %#x)", ErrOverlappingSection, s.Name, start, pos)
		}
		pos = end
	}
	return nil
}

// SectionsByRawData returns the sections that have raw data (SizeOfRawData
// not 0), in the order of their data in the file. Parse has checked that
// their data follows the headers without overlapping.
func (f *File) SectionsByRawData() []SectionHeader {
	secs := make([]SectionHeader, 0, len(f.Sections))
	for _, s := range f.Sections {
		if s.SizeOfRawData != 0 {
			secs = append(secs, s)
		}
	}
	sort.SliceStable(secs, func(i, j int) bool { return secs[i].PointerToRawData < secs[j].PointerToRawData })
	return secs
}

// ReadFull reads exactly len(b) bytes at off, reporting a short read as
// ErrTruncated with the offset.
func ReadFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%w: reading %d bytes at %#x: %v", ErrTruncated, len(b), off, err)
}
