package uki

import (
	"fmt"
	"io"

	"signet.dev/pe"
)

// ErrFormat is wrapped by every error about a malformed PE file (package
// pe's errors match it too).
var ErrFormat = pe.ErrFormat

func formatErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrFormat, fmt.Sprintf(format, a...))
}

// The header structures are package pe's.
type (
	FileHeader     = pe.FileHeader
	OptionalHeader = pe.OptionalHeader
	DataDirectory  = pe.DataDirectory
)

// Data directory indexes used here.
const (
	DirectorySecurity = pe.DirCertificateTable // attribute certificates (Authenticode); a file offset
	DirectoryDebug    = pe.DirDebug
)

// Section characteristics ukify sets.
const (
	ScnCntCode            = pe.ScnCntCode
	ScnCntInitializedData = pe.ScnCntInitializedData
	ScnMemRead            = pe.ScnMemRead
)

const (
	maxSections = 96 // the PE/COFF limit Windows' loader enforces
	// maxZeroFill bounds the uninitialized tail a section may claim: UKI
	// sections carry their data, and hashing gigabytes of zeros for a
	// hostile header would be a denial of service.
	maxZeroFill = 64 << 20
)

// Section is one PE section of a stub or UKI, with its contents.
type Section struct {
	pe.SectionHeader

	r io.ReaderAt
}

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

// File is a parsed PE image: a stub, a UKI, or a PE holding profile
// sections.
type File struct {
	*pe.File
	Sections []*Section // in section table order
}

// Parse reads the headers and section table of a PE image of size bytes
// with pe.Parse and checks what the stub's loader needs besides: at most 96
// sections, and no section claiming much more memory than it has data.
// Section contents are read on demand.
func Parse(r io.ReaderAt, size int64) (*File, error) {
	p, err := pe.Parse(r, size)
	if err != nil {
		return nil, err
	}
	if p.NumberOfSections > maxSections {
		return nil, formatErr("%d sections (at most %d)", p.NumberOfSections, maxSections)
	}
	f := &File{File: p}
	for i, h := range p.Sections {
		if int64(h.VirtualSize) > int64(h.SizeOfRawData)+maxZeroFill {
			return nil, formatErr("section %d (%q) claims %d bytes in memory for %d bytes of data", i, h.Name, h.VirtualSize, h.SizeOfRawData)
		}
		f.Sections = append(f.Sections, &Section{SectionHeader: h, r: r})
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

func alignUp(v, a int64) int64 { return (v + a - 1) &^ (a - 1) }
