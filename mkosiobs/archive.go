// Package mkosiobs signs the archives mkosi's built-in mkosi-obs profile
// hands to the Open Build Service: a newc cpio "hashes.cpio.rsasign" with
// one member per thing to sign (pcrs/<uki>/<hex>, ukis/<file>,
// kernels/<file>, bootloaders/<ddi>/..., roothashes/<Output>.roothash,
// authvars/<var>.auth), answered by "hashes.cpio.rsasign.sig", one
// "<name>.sig" member per signed member holding the raw
// RSASSA-PKCS1-v1_5 signature over SHA-256 of the member's bytes.
//
// Nothing is signed on the strength of a path alone: Request turns an
// archive and mkosi's output directory into a signet request whose every
// item carries the context signet.dev/request/check rebuilds the member
// from (the UKI's measured sections for a PCR policy, the PE image digest
// for Authenticode, the split root hash for verity), so a member is signed
// only if it is exactly what its path says it is.
package mkosiobs

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Limits of what is read, matching obs-sign's own (cpio.c): names of at
// most 8192 bytes, members of at most 1 GiB. mkosi's members are a few
// hundred bytes; a lower bound on the whole archive is the caller's.
const (
	maxName   = 8192
	maxMember = 0x40000000
	headerLen = 110
	trailer   = "TRAILER!!!"
)

// Header is a newc header as read, kept whole so the answer copies it.
type Header struct {
	Ino, Mode, UID, GID, Nlink, Mtime, Size uint32
	DevMajor, DevMinor                      uint32
	RdevMajor, RdevMinor, Check             uint32
}

// Member is one regular file of an archive.
type Member struct {
	// Name is the name as stored (a leading "./" kept: the answer
	// names <Name>.sig).
	Name string
	// Path is Name without a leading "./": the path kinds are read from.
	Path   string
	Header Header
	Data   []byte

	raw []byte // the header as read, written back with two fields changed
}

// Archive is a parsed hashes.cpio.rsasign: its regular files in order,
// and the trailer's header (copied into the answer).
type Archive struct {
	Members []Member
	Trailer Header

	trailerRaw []byte
}

// ReadArchive parses a newc cpio archive. Only regular files are kept;
// directories, symlinks and other entries are skipped, as OBS skips them.
// Anything after the trailer (block padding) is ignored. Duplicate member
// paths, a missing trailer, bad magic or truncated data are errors.
func ReadArchive(data []byte) (*Archive, error) {
	a := &Archive{}
	seen := map[string]bool{}
	off := 0
	for {
		if len(data)-off < headerLen {
			return nil, fmt.Errorf("cpio: truncated header at offset %d (no %s)", off, trailer)
		}
		h := data[off : off+headerLen]
		if string(h[:6]) != "070701" {
			return nil, fmt.Errorf("cpio: offset %d: magic %q is not newc (070701)", off, h[:6])
		}
		var f [13]uint32
		for i := range f {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				return nil, fmt.Errorf("cpio: offset %d: header field %d %q is not hex", off, i, h[6+8*i:14+8*i])
			}
			f[i] = uint32(v)
		}
		hdr := Header{Ino: f[0], Mode: f[1], UID: f[2], GID: f[3], Nlink: f[4], Mtime: f[5], Size: f[6],
			DevMajor: f[7], DevMinor: f[8], RdevMajor: f[9], RdevMinor: f[10], Check: f[12]}
		namesize := f[11]
		if namesize < 2 || namesize > maxName {
			return nil, fmt.Errorf("cpio: offset %d: name size %d out of range", off, namesize)
		}
		if hdr.Size > maxMember {
			return nil, fmt.Errorf("cpio: offset %d: member size %d over %d", off, hdr.Size, maxMember)
		}
		nameEnd := off + headerLen + int(namesize)
		if nameEnd > len(data) {
			return nil, fmt.Errorf("cpio: offset %d: truncated name", off)
		}
		raw := data[off+headerLen : nameEnd]
		if raw[len(raw)-1] != 0 || bytes.IndexByte(raw[:len(raw)-1], 0) >= 0 {
			return nil, fmt.Errorf("cpio: offset %d: name is not NUL-terminated", off)
		}
		name := string(raw[:len(raw)-1])
		dataStart := align4(nameEnd)
		dataEnd := dataStart + int(hdr.Size)
		if dataStart > len(data) || dataEnd > len(data) {
			return nil, fmt.Errorf("cpio: member %q: truncated data", name)
		}
		if name == trailer {
			a.Trailer, a.trailerRaw = hdr, h
			return a, nil
		}
		if (hdr.Mode>>12)&0xf == 0o10 {
			p := strings.TrimPrefix(name, "./")
			if seen[p] {
				return nil, fmt.Errorf("cpio: member %q appears twice", name)
			}
			seen[p] = true
			a.Members = append(a.Members, Member{Name: name, Path: p, Header: hdr, Data: data[dataStart:dataEnd:dataEnd], raw: h})
		}
		off = align4(dataEnd)
	}
}

func align4(n int) int { return (n + 3) &^ 3 }

// WriteSignatures writes the answer archive in obs-sign's layout: for each
// member, in order, its header copied byte for byte with only the file
// size and name size rewritten (in upper-case hex), the name <Name>.sig
// and the signature, padded to 4; then the input's trailer header; no
// block padding. sigs is indexed by member Path and must answer every
// member but the companions (see Companion), which get no .sig.
// Members not read by ReadArchive get their Header encoded.
func WriteSignatures(w io.Writer, a *Archive, sigs map[string][]byte) error {
	var buf bytes.Buffer
	for i := range a.Members {
		m := &a.Members[i]
		if Companion(m) {
			continue
		}
		sig, ok := sigs[m.Path]
		if !ok || len(sig) == 0 {
			return fmt.Errorf("member %q: no signature", m.Name)
		}
		writeEntry(&buf, m.raw, m.Header, m.Name+".sig", sig)
	}
	writeEntry(&buf, a.trailerRaw, a.Trailer, trailer, nil)
	_, err := w.Write(buf.Bytes())
	return err
}

// Offsets of the newc header fields that change.
const (
	offFileSize = 6 + 8*6
	offNameSize = 6 + 8*11
)

func writeEntry(b *bytes.Buffer, raw []byte, h Header, name string, data []byte) {
	hdr := make([]byte, 0, headerLen)
	if len(raw) == headerLen {
		hdr = append(hdr, raw...)
	} else {
		hdr = append(hdr, "070701"...)
		for _, v := range []uint32{h.Ino, h.Mode, h.UID, h.GID, h.Nlink, h.Mtime, 0,
			h.DevMajor, h.DevMinor, h.RdevMajor, h.RdevMinor, 0, h.Check} {
			hdr = fmt.Appendf(hdr, "%08X", v)
		}
	}
	copy(hdr[offFileSize:], fmt.Sprintf("%08X", len(data)))
	copy(hdr[offNameSize:], fmt.Sprintf("%08X", len(name)+1))
	b.Write(hdr)
	b.WriteString(name)
	b.WriteByte(0)
	pad(b)
	b.Write(data)
	pad(b)
}

func pad(b *bytes.Buffer) {
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
}
