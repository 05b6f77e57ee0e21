package uki

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"signet.dev/internal/filecopy"
	"signet.dev/pe"
)

// Part is the content of a section to add to an image: Size bytes read
// from R. Characteristics zero means ukify's choice: code for .linux,
// initialized data otherwise, readable.
type Part struct {
	Name            string
	R               io.ReaderAt
	Size            int64
	Characteristics uint32
}

// BytesPart returns a Part holding b.
func BytesPart(name string, b []byte) Part {
	return Part{Name: name, R: bytesReaderAt(b), Size: int64(len(b))}
}

type bytesReaderAt []byte

func (b bytesReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// ErrNoRoom is returned when a section cannot be added or grown.
var ErrNoRoom = errors.New("no room")

type outSection struct {
	Section
	src    io.ReaderAt // raw data source; nil for no raw data
	srcLen int64       // bytes to copy from src; the rest up to SizeOfRawData is zeros
	added  bool
}

// image is a PE image being assembled from a base (the stub, or the
// unchanged front of a UKI) and added sections.
type image struct {
	base      *File
	secs      []*outSection
	timestamp uint32
	// dropped is the memory size of the base sections left out, taken
	// back out of SizeOfInitializedData (which ukify grows by every section
	// it adds) so that re-adding them gives the same header.
	dropped int64
}

// newImage starts from the first keep sections of base.
func newImage(base *File, keep int) *image {
	im := &image{base: base, timestamp: base.TimeDateStamp}
	for _, s := range base.Sections[:keep] {
		im.secs = append(im.secs, &outSection{Section: *s, src: io.NewSectionReader(base.ReaderAt(), int64(s.PointerToRawData), int64(s.SizeOfRawData)), srcLen: int64(s.SizeOfRawData)})
	}
	for _, s := range base.Sections[keep:] {
		im.dropped += s.Size()
	}
	return im
}

// add appends a section after the last one, at the next SectionAlignment
// boundary in memory, with VirtualSize = the data length and raw data padded
// to FileAlignment (as ukify lays sections out).
func (im *image) add(p Part) error {
	if len(p.Name) > 8 {
		return fmt.Errorf("section name %q is longer than 8 bytes", p.Name)
	}
	if p.Size <= 0 || p.Size > 1<<32-1 {
		return fmt.Errorf("section %s: size %d out of range", p.Name, p.Size)
	}
	var va int64
	if n := len(im.secs); n > 0 {
		last := im.secs[n-1]
		va = int64(last.VirtualAddress) + last.Size()
	}
	va = alignUp(va, int64(im.base.SectionAlignment))
	raw := alignUp(p.Size, int64(im.base.FileAlignment))
	if va+p.Size > 1<<32-1 || raw > 1<<32-1 {
		return fmt.Errorf("section %s: image exceeds 4 GiB", p.Name)
	}
	ch := p.Characteristics
	if ch == 0 {
		ch = ScnMemRead | ScnCntInitializedData
		if p.Name == ".linux" {
			// Old kernels using the EFI handover protocol run in place.
			ch = ScnMemRead | ScnCntCode
		}
	}
	im.secs = append(im.secs, &outSection{
		Section: Section{SectionHeader: pe.SectionHeader{Name: p.Name, VirtualSize: uint32(p.Size), VirtualAddress: uint32(va), SizeOfRawData: uint32(raw), Characteristics: ch}},
		src:     p.R, srcLen: p.Size, added: true,
	})
	return nil
}

// replaceInPlace swaps the data of an existing base section (ukify grows
// the stub's .sbat so), refusing data that would overlap the next section in
// memory or outgrow the raw space.
func (im *image) replaceInPlace(p Part) error {
	for i, s := range im.secs {
		if s.Name != p.Name {
			continue
		}
		room := int64(s.SizeOfRawData)
		if i+1 < len(im.secs) {
			if gap := int64(im.secs[i+1].VirtualAddress) - int64(s.VirtualAddress); gap < room {
				room = gap
			}
		}
		if p.Size > room {
			return fmt.Errorf("section %s: %d bytes do not fit the %d the stub leaves: %w", p.Name, p.Size, room, ErrNoRoom)
		}
		s.VirtualSize = uint32(p.Size)
		s.src, s.srcLen = p.R, p.Size
		return nil
	}
	return im.add(p)
}

// WriteTo lays out the raw data and writes the image: headers from the
// base with NumberOfSections, SizeOfImage, SizeOfHeaders,
// SizeOfInitializedData, TimeDateStamp and the section table updated, the
// COFF symbol table dropped (image files should have none), and CheckSum
// zeroed as ukify does (UEFI does not check it; Secure Boot signing tools
// recompute it).
func (im *image) WriteTo(w io.Writer) (int64, error) {
	b := im.base
	if b.Signed() {
		return 0, errors.New("the base image carries an Authenticode signature; sections must be added before signing")
	}
	tableAt := b.SectionTableOffset()
	tableEnd := tableAt + int64(len(im.secs))*pe.SectionHeaderSize
	headerSize := int64(b.SizeOfHeaders)
	var shift int64
	if tableEnd > headerSize {
		headerSize = alignUp(tableEnd, int64(b.FileAlignment))
		firstRaw := int64(1) << 40
		for _, s := range im.secs {
			if !s.added && s.SizeOfRawData > 0 && int64(s.PointerToRawData) < firstRaw {
				firstRaw = int64(s.PointerToRawData)
			}
		}
		if firstRaw < headerSize && firstRaw != 1<<40 {
			shift = alignUp(headerSize-firstRaw, int64(b.FileAlignment))
		}
		if shift != 0 && len(b.DataDirectory) > DirectoryDebug && b.DataDirectory[DirectoryDebug].Size != 0 {
			return 0, fmt.Errorf("%d section headers do not fit the stub's headers, and its debug directory holds file offsets that moving its sections would break: %w", len(im.secs), ErrNoRoom)
		}
	}
	for _, s := range im.secs {
		if s.VirtualAddress != 0 && int64(s.VirtualAddress) < headerSize {
			return 0, fmt.Errorf("%d section headers do not fit below the first section in memory: %w", len(im.secs), ErrNoRoom)
		}
	}
	// Raw layout: base sections keep their place (shifted if the headers
	// grew); added ones follow the base's raw data.
	next := alignUp(headerSize, int64(b.FileAlignment))
	for _, s := range im.secs {
		if !s.added && s.SizeOfRawData > 0 {
			s.PointerToRawData += uint32(shift)
			if e := int64(s.PointerToRawData) + int64(s.SizeOfRawData); e > next {
				next = e
			}
		}
	}
	next = alignUp(next, int64(b.FileAlignment))
	initData := max(int64(b.SizeOfInitializedData)-im.dropped, 0)
	var imageEnd int64
	for _, s := range im.secs {
		if s.added {
			s.PointerToRawData = uint32(next)
			next += int64(s.SizeOfRawData)
			initData += s.Size()
		}
		if e := int64(s.VirtualAddress) + s.Size(); e > imageEnd {
			imageEnd = e
		}
	}
	if next > 1<<32-1 {
		return 0, errors.New("image exceeds 4 GiB")
	}

	hdr := make([]byte, headerSize)
	if _, err := b.ReaderAt().ReadAt(hdr[:min(int64(b.SizeOfHeaders), headerSize, b.Size())], 0); err != nil && err != io.EOF {
		return 0, fmt.Errorf("reading base headers: %w", err)
	}
	le := binary.LittleEndian
	fh := hdr[b.FileHeaderOffset():]
	le.PutUint16(fh[pe.OffsetNumberOfSections:], uint16(len(im.secs)))
	le.PutUint32(fh[pe.OffsetTimeDateStamp:], im.timestamp)
	le.PutUint32(fh[pe.OffsetPointerToSymbolTable:], 0)
	le.PutUint32(fh[pe.OffsetNumberOfSymbols:], 0)
	opt := hdr[b.OptionalHeaderOffset():]
	le.PutUint32(opt[pe.OffsetSizeOfInitializedData:], uint32(min(initData, 1<<32-1)))
	le.PutUint32(opt[pe.OffsetSizeOfImage:], uint32(alignUp(imageEnd, int64(b.SectionAlignment))))
	le.PutUint32(opt[pe.OffsetSizeOfHeaders:], uint32(headerSize))
	le.PutUint32(opt[pe.OffsetCheckSum:], 0)
	for i, s := range im.secs {
		s.Put(hdr[tableAt+int64(i)*pe.SectionHeaderSize:])
	}
	// Zero whatever of the old section table lies beyond the new one.
	for i := tableEnd; i < tableAt+int64(b.NumberOfSections)*pe.SectionHeaderSize && i < int64(len(hdr)); i++ {
		hdr[i] = 0
	}

	bw := bufio.NewWriterSize(w, 1<<20)
	cw := &countWriter{w: bw}
	cw.Write(hdr)
	order := make([]*outSection, 0, len(im.secs))
	for _, s := range im.secs {
		if s.SizeOfRawData > 0 {
			order = append(order, s)
		}
	}
	sortByRaw(order)
	for _, s := range order {
		if int64(s.PointerToRawData) < cw.n {
			return cw.n, formatErr("section %s raw data overlaps the one before it", s.Name)
		}
		if err := zeros(cw, int64(s.PointerToRawData)-cw.n); err != nil {
			return cw.n, err
		}
		if err := copySection(cw, bw, w, s); err != nil {
			return cw.n, fmt.Errorf("section %s: %w", s.Name, err)
		}
		if err := zeros(cw, int64(s.PointerToRawData)+int64(s.SizeOfRawData)-cw.n); err != nil {
			return cw.n, err
		}
	}
	if cw.err != nil {
		return cw.n, cw.err
	}
	return cw.n, bw.Flush()
}

// kernelCopyMin is the section size from which copySection lets the kernel
// copy the data.
const kernelCopyMin = 1 << 20

// copySection writes s's data to cw (which buffers into bw, which writes
// to w). A large section from a file going to a file is copied by the
// kernel (copy_file_range, its write-back started at once) instead of
// through this process's memory; what the kernel cannot copy is copied
// here.
func copySection(cw *countWriter, bw *bufio.Writer, w io.Writer, s *outSection) error {
	var done int64
	dst, dstOK := w.(interface {
		filecopy.File
		io.Seeker
	})
	src, srcOff, srcOK := filecopy.Source(s.src)
	if dstOK && srcOK && s.srcLen >= kernelCopyMin && cw.err == nil {
		if err := bw.Flush(); err != nil {
			return err
		}
		pos, err := dst.Seek(0, io.SeekCurrent)
		if err != nil {
			return err
		}
		done, err = filecopy.Range(dst, src, pos, srcOff, s.srcLen)
		if err != nil {
			return err
		}
		if _, err := dst.Seek(done, io.SeekCurrent); err != nil {
			return err
		}
		cw.n += done
	}
	_, err := io.Copy(cw, io.NewSectionReader(s.src, done, s.srcLen-done))
	return err
}

func sortByRaw(s []*outSection) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j].PointerToRawData < s[j-1].PointerToRawData; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}

func zeros(w io.Writer, n int64) error {
	if n < 0 {
		return errors.New("negative padding")
	}
	var z [4096]byte
	for n > 0 {
		k := min(n, int64(len(z)))
		if _, err := w.Write(z[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}
