// Package fat reads files from a FAT12, FAT16 or FAT32 file system (an
// EFI system partition), read-only, with long file names. It is strict:
// a chain that leaves the volume, loops or ends early, or a directory
// entry that does not fit, is an error, never a panic.
package fat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf16"
)

// FS is a FAT volume.
type FS struct {
	r          io.ReaderAt
	size       int64
	bps        int64 // bytes per sector
	cluster    int64 // bytes per cluster
	fatOff     int64
	fatSize    int64
	rootOff    int64 // FAT12/16: the fixed root directory
	rootSize   int64
	rootClus   uint32 // FAT32
	dataOff    int64
	clusters   uint32 // data clusters, numbered 2..clusters+1
	bits       int    // 12, 16 or 32
	MaxFileLen int64  // files longer than this are refused (default 1 GiB)
}

// Open reads the boot sector of the volume of size bytes in r.
func Open(r io.ReaderAt, size int64) (*FS, error) {
	var bs [512]byte
	if _, err := r.ReadAt(bs[:], 0); err != nil {
		return nil, fmt.Errorf("fat: boot sector: %w", err)
	}
	le16 := func(o int) int64 { return int64(binary.LittleEndian.Uint16(bs[o:])) }
	le32 := func(o int) int64 { return int64(binary.LittleEndian.Uint32(bs[o:])) }
	if bs[510] != 0x55 || bs[511] != 0xAA {
		return nil, errors.New("fat: no boot sector signature")
	}
	bps, spc, reserved, nfats, rootEnts := le16(11), int64(bs[13]), le16(14), int64(bs[16]), le16(17)
	total, fatSz := le16(19), le16(22)
	if total == 0 {
		total = le32(32)
	}
	if fatSz == 0 {
		fatSz = le32(36)
	}
	switch bps {
	case 512, 1024, 2048, 4096:
	default:
		return nil, fmt.Errorf("fat: %d bytes per sector", bps)
	}
	if spc == 0 || spc&(spc-1) != 0 || reserved == 0 || nfats == 0 || fatSz == 0 {
		return nil, errors.New("fat: boot sector geometry is not a FAT volume's")
	}
	rootSectors := (rootEnts*32 + bps - 1) / bps
	first := reserved + nfats*fatSz + rootSectors
	if total <= first || total*bps > size {
		return nil, fmt.Errorf("fat: %d sectors of %d bytes do not fit the %d-byte partition", total, bps, size)
	}
	f := &FS{r: r, size: size, bps: bps, cluster: spc * bps, fatOff: reserved * bps, fatSize: fatSz * bps,
		rootOff: (reserved + nfats*fatSz) * bps, rootSize: rootSectors * bps, dataOff: first * bps,
		clusters: uint32((total - first) / spc), MaxFileLen: 1 << 30}
	switch {
	case f.clusters < 4085:
		f.bits = 12
	case f.clusters < 65525:
		f.bits = 16
	default:
		f.bits = 32
		f.rootClus = uint32(le32(44))
		if rootEnts != 0 {
			return nil, errors.New("fat: FAT32 with a fixed root directory")
		}
	}
	if need := (int64(f.clusters) + 2) * int64(f.bits) / 8; need > f.fatSize {
		return nil, fmt.Errorf("fat: a %d-byte FAT for %d clusters", f.fatSize, f.clusters)
	}
	return f, nil
}

// next returns the cluster after c, and whether c is the last.
func (f *FS) next(c uint32) (uint32, bool, error) {
	var b [4]byte
	var v, eoc uint32
	switch f.bits {
	case 12:
		if _, err := f.r.ReadAt(b[:2], f.fatOff+int64(c)+int64(c/2)); err != nil {
			return 0, false, fmt.Errorf("fat: FAT: %w", err)
		}
		v = uint32(binary.LittleEndian.Uint16(b[:]))
		if c&1 == 1 {
			v >>= 4
		}
		v &= 0xfff
		eoc = 0xff8
	case 16:
		if _, err := f.r.ReadAt(b[:2], f.fatOff+2*int64(c)); err != nil {
			return 0, false, fmt.Errorf("fat: FAT: %w", err)
		}
		v, eoc = uint32(binary.LittleEndian.Uint16(b[:])), 0xfff8
	default:
		if _, err := f.r.ReadAt(b[:], f.fatOff+4*int64(c)); err != nil {
			return 0, false, fmt.Errorf("fat: FAT: %w", err)
		}
		v, eoc = binary.LittleEndian.Uint32(b[:])&0x0fffffff, 0x0ffffff8
	}
	if v >= eoc {
		return 0, true, nil
	}
	if v < 2 || v > f.clusters+1 {
		return 0, false, fmt.Errorf("fat: cluster %d links to %#x, not a data cluster", c, v)
	}
	return v, false, nil
}

// chain reads the clusters from start, at most max bytes (max < 0: all).
func (f *FS) chain(start uint32, max int64) ([]byte, error) {
	var out []byte
	c := start
	for n := uint32(0); ; n++ {
		if c < 2 || c > f.clusters+1 {
			return nil, fmt.Errorf("fat: chain at cluster %#x, not a data cluster", c)
		}
		if n > f.clusters {
			return nil, errors.New("fat: cluster chain loops")
		}
		buf := make([]byte, f.cluster)
		if _, err := f.r.ReadAt(buf, f.dataOff+int64(c-2)*f.cluster); err != nil {
			return nil, fmt.Errorf("fat: cluster %d: %w", c, err)
		}
		out = append(out, buf...)
		if max >= 0 && int64(len(out)) >= max {
			return out[:max], nil
		}
		next, last, err := f.next(c)
		if err != nil {
			return nil, err
		}
		if last {
			if max >= 0 {
				return nil, fmt.Errorf("fat: chain from cluster %d ends after %d of %d bytes", start, len(out), max)
			}
			return out, nil
		}
		c = next
	}
}

// Entry is a directory entry.
type Entry struct {
	Name    string // the long name, or the 8.3 name
	Dir     bool
	Size    int64
	Cluster uint32
}

// root returns the root directory's bytes.
func (f *FS) root() ([]byte, error) {
	if f.bits == 32 {
		return f.chain(f.rootClus, -1)
	}
	b := make([]byte, f.rootSize)
	if _, err := f.r.ReadAt(b, f.rootOff); err != nil {
		return nil, fmt.Errorf("fat: root directory: %w", err)
	}
	return b, nil
}

// entries decodes a directory's entries (without . and ..).
func entries(b []byte) []Entry {
	var out []Entry
	var lfn []uint16
	for i := 0; i+32 <= len(b); i += 32 {
		e := b[i : i+32]
		if e[0] == 0 {
			break
		}
		if e[0] == 0xE5 {
			lfn = nil
			continue
		}
		if e[11]&0x3F == 0x0F {
			// Long name parts come last first: prepend each.
			var part []uint16
			for _, r := range [][2]int{{1, 11}, {14, 26}, {28, 32}} {
				for o := r[0]; o < r[1]; o += 2 {
					part = append(part, binary.LittleEndian.Uint16(e[o:]))
				}
			}
			if e[0]&0x40 != 0 {
				lfn = nil
			}
			lfn = append(part, lfn...)
			continue
		}
		if e[11]&0x08 != 0 { // volume label
			lfn = nil
			continue
		}
		name := ""
		if lfn != nil {
			n := len(lfn)
			for j, u := range lfn {
				if u == 0 {
					n = j
					break
				}
			}
			name = string(utf16.Decode(lfn[:n]))
			lfn = nil
		}
		if name == "" {
			base, ext := strings.TrimRight(string(e[0:8]), " "), strings.TrimRight(string(e[8:11]), " ")
			if base != "" && base[0] == 0x05 {
				base = "\xE5" + base[1:]
			}
			if e[12]&0x08 != 0 {
				base = strings.ToLower(base)
			}
			if e[12]&0x10 != 0 {
				ext = strings.ToLower(ext)
			}
			name = base
			if ext != "" {
				name += "." + ext
			}
		}
		if name == "." || name == ".." {
			continue
		}
		cl := uint32(binary.LittleEndian.Uint16(e[26:])) | uint32(binary.LittleEndian.Uint16(e[20:]))<<16
		out = append(out, Entry{Name: name, Dir: e[11]&0x10 != 0, Size: int64(binary.LittleEndian.Uint32(e[28:])), Cluster: cl})
	}
	return out
}

// ReadDir lists the directory at path ("" or "/" for the root;
// components separated by "/", matched without regard to case as FAT
// does).
func (f *FS) ReadDir(path string) ([]Entry, error) {
	b, err := f.root()
	if err != nil {
		return nil, err
	}
	for _, c := range split(path) {
		e, err := find(entries(b), c, path)
		if err != nil {
			return nil, err
		}
		if !e.Dir {
			return nil, fmt.Errorf("fat: %s: %s is not a directory", path, c)
		}
		if b, err = f.chain(e.Cluster, -1); err != nil {
			return nil, err
		}
	}
	return entries(b), nil
}

// ReadFile returns the contents of the file at path.
func (f *FS) ReadFile(path string) ([]byte, error) {
	parts := split(path)
	if len(parts) == 0 {
		return nil, errors.New("fat: no file name")
	}
	dir, err := f.ReadDir(strings.Join(parts[:len(parts)-1], "/"))
	if err != nil {
		return nil, err
	}
	e, err := find(dir, parts[len(parts)-1], path)
	if err != nil {
		return nil, err
	}
	if e.Dir {
		return nil, fmt.Errorf("fat: %s is a directory", path)
	}
	if e.Size > f.MaxFileLen {
		return nil, fmt.Errorf("fat: %s: %d bytes, over the %d read", path, e.Size, f.MaxFileLen)
	}
	if e.Size == 0 {
		return []byte{}, nil
	}
	return f.chain(e.Cluster, e.Size)
}

func split(path string) []string {
	var out []string
	for _, c := range strings.Split(path, "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

func find(es []Entry, name, path string) (Entry, error) {
	for _, e := range es {
		if strings.EqualFold(e.Name, name) {
			return e, nil
		}
	}
	return Entry{}, fmt.Errorf("fat: %s: no %s", path, name)
}
