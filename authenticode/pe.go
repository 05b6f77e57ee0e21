package authenticode

import (
	"errors"
	"fmt"
	"io"

	"signet.dev/pe"
)

// Errors a caller can test for with errors.Is. Parse wraps them with the
// structure and offsets that were bad. All but ErrNoCertTable are package
// pe's, which reads the headers.
var (
	ErrNotPE              = pe.ErrNotPE
	ErrTruncated          = pe.ErrTruncated
	ErrBadOptionalHeader  = pe.ErrBadOptionalHeader
	ErrSectionPastEOF     = pe.ErrSectionPastEOF
	ErrOverlappingSection = pe.ErrOverlappingSection
	ErrCertTable          = pe.ErrCertTable
	ErrCertTableAlignment = pe.ErrCertTableAlignment
	ErrNoCertTable        = errors.New("PE file lacks a certificate table directory entry")
)

// The header structures are package pe's.
type (
	FileHeader     = pe.FileHeader
	DataDirectory  = pe.DataDirectory
	OptionalHeader = pe.OptionalHeader
	SectionHeader  = pe.SectionHeader
)

// Optional header magic numbers and the certificate table's directory index.
const (
	OptionalHeader32      = pe.OptionalHeader32
	OptionalHeader64      = pe.OptionalHeader64
	CertificateTableIndex = pe.DirCertificateTable
)

// File is a PE/COFF image to hash, sign or verify, read through an
// io.ReaderAt. Parse reads only the headers; hashing streams the rest.
type File struct {
	*pe.File

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

// ChecksumOffset returns the file offset of the optional header's CheckSum
// field.
func (f *File) ChecksumOffset() int64 { return f.checksumOffset }

// CertificateTableEntryOffset returns the file offset of the certificate
// table's DataDirectory entry (8 bytes).
func (f *File) CertificateTableEntryOffset() int64 { return f.certEntryOffset }

// Parse reads the headers of a PE/COFF image of the given size from r with
// pe.Parse, which checks everything Authenticode hashing relies on (the
// headers and section table lie inside the file and inside SizeOfHeaders,
// section data lies inside the file and sections do not overlap each other
// or the headers, and an existing certificate table is 8-byte aligned, after
// the section data and at the end of the file), and requires a certificate
// table directory entry.
func Parse(r io.ReaderAt, size int64) (*File, error) {
	p, err := pe.Parse(r, size)
	if err != nil {
		return nil, err
	}
	if n := p.NumberOfRvaAndSizes; n <= CertificateTableIndex {
		return nil, fmt.Errorf("%w: NumberOfRvaAndSizes is %d", ErrNoCertTable, n)
	}
	f := &File{
		File:            p,
		r:               r,
		size:            size,
		checksumOffset:  p.CheckSumOffset(),
		certEntryOffset: p.DataDirectoryOffset(CertificateTableIndex),
		dataEnd:         p.DataEnd(),
	}
	// Hashed ranges: headers minus CheckSum and the certificate table entry,
	// then section data in file order, then the data after it (symbol
	// tables, appended data) up to the certificate table. As in the
	// Authenticode specification and every signer, that trailing range starts
	// at SizeOfHeaders plus the sum of the section sizes, so gaps between
	// sections shift it rather than being hashed in place.
	hdrEnd := int64(p.SizeOfHeaders)
	f.ranges = [][2]int64{
		{0, f.checksumOffset},
		{f.checksumOffset + 4, f.certEntryOffset},
		{f.certEntryOffset + 8, hdrEnd},
	}
	sum := hdrEnd
	for _, s := range p.SectionsByRawData() {
		start, end := int64(s.PointerToRawData), int64(s.PointerToRawData)+int64(s.SizeOfRawData)
		f.ranges = append(f.ranges, [2]int64{start, end})
		sum += end - start
	}
	if sum < f.dataEnd {
		f.ranges = append(f.ranges, [2]int64{sum, f.dataEnd})
	}
	return f, nil
}

// readFull reads exactly len(b) bytes at off (ErrTruncated otherwise).
var readFull = pe.ReadFull
