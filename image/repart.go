package image

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"signet.dev/internal/atomicfile"
	"signet.dev/verity"
)

// Layout constants of systemd-repart: partitions start at 1 MiB and are
// aligned to (and sized in) 4 KiB grains; a verity-sig partition is 16 KiB.
const (
	Grain              = 4096
	firstPartition     = 1 << 20
	VeritySigSize      = 16384
	gptFooterSectors   = 33 // backup entry array (32) and header (1)
	defaultVerityBlock = 4096
)

// Errors a caller may check with errors.Is.
var (
	// ErrNoSigner: a signature partition is neither signed nor deferred.
	ErrNoSigner = errors.New("repart: a verity signature partition needs a private key and certificate, or deferring")
	// ErrMismatch: an existing image does not match the definitions.
	ErrMismatch = errors.New("repart: image does not match the definitions")
	// ErrJoin: a signature to join has no place in the image.
	ErrJoin = errors.New("repart: cannot join signature")
)

// Options control Build and Join.
type Options struct {
	// Seed derives every UUID and the verity salt (repart's --seed=).
	Seed GUID
	// Signer and Certificate sign verity-sig partitions online.
	Signer      crypto.Signer
	Certificate *x509.Certificate
	// Defer reports partition types to leave out of the table and unwritten
	// (repart's --defer-partitions=); their space stays reserved.
	Defer func(PartType) bool
	// Split also writes each partition to its own file, named as
	// systemd-repart names them (IMAGE.TYPE.raw for IMAGE.raw, else
	// IMAGE.TYPE).
	Split bool
	// LegacySize sizes the image as systemd-repart 252 to 261 did for
	// --size=auto: the end of the last partition plus the backup GPT,
	// rounded up to 4096 bytes. By default the size is systemd 262's
	// (commit 04e3d8933b "repart: Properly pre-calculate auto size of
	// images"): round_up(1 MiB, grain) + the partitions + 16 KiB + 1
	// sector, 3584 bytes less at the default grain.
	LegacySize bool
	// Progress is passed to verity.Format.
	Progress func(done, total int64)
}

// PartitionReport describes one partition as repart's --json= does.
type PartitionReport struct {
	Type      string `json:"type"`
	Label     string `json:"label"`
	UUID      string `json:"uuid"`
	PartNo    int    `json:"partno"`
	File      string `json:"file"`
	Node      string `json:"node"`
	Offset    int64  `json:"offset"`
	OldSize   int64  `json:"old_size"`
	RawSize   int64  `json:"raw_size"`
	OldPad    int64  `json:"old_padding"`
	RawPad    int64  `json:"raw_padding"`
	Activity  string `json:"activity"`
	RootHash  string `json:"roothash,omitempty"`
	SplitPath string `json:"split_path,omitempty"`

	// Deferred is set for a partition left out by Options.Defer.
	Deferred bool `json:"-"`
}

// Report is what Build and Join did.
type Report struct {
	Partitions []PartitionReport
	// RootHashes are the verity root hashes, in definition order; Pending
	// are those whose signature partition was deferred: what to sign
	// offline (verity.PrepareSignature gives the exact bytes).
	RootHashes [][]byte
	Pending    [][]byte
}

// JSON returns the report as repart's --json=short (indent "") or
// --json=pretty (indent " ").
func (r *Report) JSON(indent string) []byte {
	var b []byte
	if indent == "" {
		b, _ = json.Marshal(r.Partitions)
	} else {
		b, _ = json.MarshalIndent(r.Partitions, "", indent)
	}
	return append(b, '\n')
}

type part struct {
	def      *Definition
	offset   int64
	size     int64
	oldSize  int64
	partNo   int
	uuid     GUID
	label    string
	attrs    uint64
	existing bool
	deferred bool
	rootHash []byte
	data     *part // for hash and signature partitions: their data partition
	hash     *part // for data and signature partitions: their hash partition
}

func (p *part) verityParams(o *Options) verity.Params {
	// Either definition of the pair may set the block sizes (CheckDefinitions
	// makes sure they do not disagree).
	var d, h int
	for _, q := range []*part{p, p.data, p.hash} {
		if q != nil {
			d, h = max(d, q.def.VerityDataBlockSize), max(h, q.def.VerityHashBlockSize)
		}
	}
	if d == 0 {
		d = defaultVerityBlock
	}
	if h == 0 {
		h = defaultVerityBlock
	}
	sb := DeriveUUID(o.Seed, "verity-uuid")
	return verity.Params{HashAlgorithm: "sha256", DataBlockSize: d, HashBlockSize: h,
		Salt: DeriveSalt(o.Seed), UUID: sb, Progress: o.Progress}
}

// plan links verity groups and assigns labels, part numbers and attributes.
func plan(defs []*Definition) ([]*part, error) {
	if err := CheckDefinitions(defs); err != nil {
		return nil, err
	}
	parts := make([]*part, len(defs))
	byKey := map[string]map[string]*part{}
	used := map[string]bool{}
	for _, d := range defs {
		if d.Label != "" {
			used[d.Label] = true
		}
	}
	for i, d := range defs {
		p := &part{def: d, partNo: i, label: d.Label}
		if p.label == "" {
			base := d.Type.Name
			p.label = base
			for k := 2; used[p.label]; k++ {
				p.label = base + "-" + strconv.Itoa(k)
			}
			used[p.label] = true
		}
		// repart: verity partitions default to read-only; types that know
		// the grow-file-system flag get it unless read-only.
		ro := d.Verity != "" && d.Type.knowsReadOnly()
		if d.ReadOnly != nil {
			ro = *d.ReadOnly
		}
		if ro {
			p.attrs |= AttrReadOnly
		} else if d.Type.knowsGrowFS() {
			p.attrs |= AttrGrowFS
		}
		if d.Verity != "" {
			if byKey[d.VerityMatchKey] == nil {
				byKey[d.VerityMatchKey] = map[string]*part{}
			}
			byKey[d.VerityMatchKey][d.Verity] = p
		}
		parts[i] = p
	}
	for _, g := range byKey {
		data, hash, sig := g["data"], g["hash"], g["signature"]
		data.hash, hash.data = hash, data
		if sig != nil {
			sig.data, sig.hash = data, hash
		}
	}
	return parts, nil
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// size computes a new partition's size from its content and limits.
func (p *part) computeSize(o *Options) error {
	d := p.def
	var content int64
	switch {
	case d.Verity == "signature":
		p.size = VeritySigSize
		return nil
	case d.Verity == "hash":
		vp := p.verityParams(o)
		l, err := verity.ComputeLayout(p.data.size, vp)
		if err != nil {
			return fmt.Errorf("%s: %w", d.File, err)
		}
		content = l.HashDeviceSize
	case d.CopyBlocks != "":
		st, err := os.Stat(d.CopyBlocks)
		if err != nil {
			return fmt.Errorf("%s: CopyBlocks=: %w", d.File, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s: CopyBlocks=%s is not a regular file", d.File, d.CopyBlocks)
		}
		content = st.Size()
	}
	grain := int64(Grain)
	if d.Verity == "data" {
		grain = max(grain, int64(p.verityParams(o).DataBlockSize))
	}
	p.size = max(roundUp(content, grain), roundUp(d.SizeMin, grain))
	if p.size == 0 {
		return fmt.Errorf("%s: partition would be empty", d.File)
	}
	if d.SizeMax > 0 && p.size > d.SizeMax/grain*grain {
		return fmt.Errorf("%s: content needs %d bytes, more than SizeMaxBytes=%d", d.File, p.size, d.SizeMax)
	}
	return nil
}

// offsetRW addresses a region of the image file.
type offsetRW struct {
	f   *os.File
	off int64
}

func (o offsetRW) ReadAt(b []byte, at int64) (int, error)  { return o.f.ReadAt(b, o.off+at) }
func (o offsetRW) WriteAt(b []byte, at int64) (int, error) { return o.f.WriteAt(b, o.off+at) }

// Build creates a new image at path (atomically) from the definitions, as
// `systemd-repart --empty=create --size=auto` does: data partitions filled
// from CopyBlocks=, verity hash trees formatted, signature partitions signed
// online with o.Signer or left out if o.Defer says so, GPT written.
func Build(path string, defs []*Definition, o Options) (*Report, error) {
	parts, err := plan(defs)
	if err != nil {
		return nil, err
	}
	// Sizes: data partitions first, hash partitions depend on them.
	for _, pass := range []bool{false, true} {
		for _, p := range parts {
			if (p.def.Verity == "hash") == pass {
				if err := p.computeSize(&o); err != nil {
					return nil, err
				}
			}
		}
	}
	off := int64(firstPartition)
	for _, p := range parts {
		off = roundUp(off, Grain)
		p.offset = off
		off += p.size
		p.deferred = o.Defer != nil && o.Defer(p.def.Type)
		if p.def.Verity == "signature" && !p.deferred && (o.Signer == nil || o.Certificate == nil) {
			return nil, fmt.Errorf("%w (%s)", ErrNoSigner, p.def.File)
		}
	}
	diskSize := off + gptFooterSectors*SectorSize
	if o.LegacySize {
		diskSize = roundUp(diskSize, Grain)
	}

	f, err := atomicfile.Create(path, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := f.Truncate(diskSize); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, p := range parts {
		if p.def.CopyBlocks != "" && !p.deferred {
			if err := copyBlocks(f.File, p); err != nil {
				return nil, err
			}
		}
	}
	// Seed-derived UUIDs; verity data and hash partitions take theirs from
	// the root hash below.
	count := map[GUID]uint64{}
	for _, p := range parts {
		k := count[p.def.Type.UUID]
		count[p.def.Type.UUID]++
		p.uuid = PartitionUUID(o.Seed, p.def.Type.UUID, k)
		if p.def.HasUUID {
			p.uuid = p.def.UUID
		}
	}
	rep := &Report{}
	for _, p := range parts {
		if p.def.Verity != "hash" || p.deferred || p.data.deferred {
			continue
		}
		vp := p.verityParams(&o)
		root, err := verity.Format(io.NewSectionReader(f, p.data.offset, p.data.size), p.data.size, offsetRW{f.File, p.offset}, vp)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.def.File, err)
		}
		setRoot(p, root)
		rep.RootHashes = append(rep.RootHashes, root)
	}
	for _, p := range parts {
		if p.def.Verity != "signature" {
			continue
		}
		p.rootHash = p.hash.rootHash
		if p.rootHash == nil {
			return nil, fmt.Errorf("%s: its verity partitions are deferred, so there is no root hash to sign", p.def.File)
		}
		if p.deferred {
			rep.Pending = append(rep.Pending, p.rootHash)
			continue
		}
		payload, err := verity.Sign(o.Signer, o.Certificate, p.rootHash)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.def.File, err)
		}
		if err := writePayload(f.File, p, payload); err != nil {
			return nil, err
		}
	}
	if err := writeTable(f.File, parts, DeriveUUID(o.Seed, "disk-uuid"), diskSize, nil); err != nil {
		return nil, err
	}
	if err := f.Commit(); err != nil {
		return nil, err
	}
	rep.Partitions = reports(path, parts)
	if o.Split {
		if err := split(path, parts, rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

func setRoot(hash *part, root []byte) {
	hash.rootHash, hash.data.rootHash = root, root
	// repart names the pair by the root hash: first and last 128 bits,
	// verbatim (no v4 bits).
	if !hash.data.def.HasUUID {
		copy(hash.data.uuid[:], root[:16])
	}
	if !hash.def.HasUUID {
		copy(hash.uuid[:], root[len(root)-16:])
	}
}

func copyBlocks(f *os.File, p *part) error {
	src, err := os.Open(p.def.CopyBlocks)
	if err != nil {
		return fmt.Errorf("%s: CopyBlocks=: %w", p.def.File, err)
	}
	defer src.Close()
	// At the file offset, os.File.ReadFrom can use copy_file_range (an
	// in-kernel copy, or a reflink).
	if _, err := f.Seek(p.offset, io.SeekStart); err != nil {
		return fmt.Errorf("%s: %w", p.def.File, err)
	}
	n, err := io.Copy(f, io.LimitReader(src, p.size+1))
	if err != nil {
		return fmt.Errorf("%s: copying %s: %w", p.def.File, p.def.CopyBlocks, err)
	}
	if n > p.size {
		return fmt.Errorf("%s: %s grew while being copied", p.def.File, p.def.CopyBlocks)
	}
	return nil
}

// writePayload writes the verity-sig JSON, NUL-padded to the partition.
func writePayload(f *os.File, p *part, s *verity.SignaturePayload) error {
	j := s.Marshal()
	if int64(len(j))+1 > p.size {
		return fmt.Errorf("%s: verity signature of %d bytes does not fit the %d-byte partition", p.def.File, len(j), p.size)
	}
	buf := make([]byte, p.size)
	copy(buf, j)
	if _, err := f.WriteAt(buf, p.offset); err != nil {
		return fmt.Errorf("%s: writing verity signature: %w", p.def.File, err)
	}
	return nil
}

// writeTable writes the GPT with every non-deferred partition, keeping the
// foreign entries of an existing table.
func writeTable(f *os.File, parts []*part, disk GUID, diskSize int64, old *Table) error {
	t, err := NewTable(disk, diskSize)
	if err != nil {
		return err
	}
	if old != nil {
		t = old
	}
	for _, p := range parts {
		if p.deferred {
			continue
		}
		t.Entries[p.partNo] = Entry{
			Type: p.def.Type.UUID, UUID: p.uuid,
			FirstLBA: uint64(p.offset / SectorSize), LastLBA: uint64((p.offset+p.size)/SectorSize - 1),
			Attributes: p.attrs, Name: p.label,
		}
	}
	return t.Write(f, diskSize)
}

func reports(path string, parts []*part) []PartitionReport {
	var r []PartitionReport
	for _, p := range parts {
		file := p.def.Path
		if abs, err := filepath.Abs(file); err == nil {
			file = abs // systemd-repart reports the definition's absolute path
		}
		pr := PartitionReport{
			Type: p.def.Type.Name, Label: p.label, UUID: p.uuid.String(), PartNo: p.partNo,
			File: file, Node: path + strconv.Itoa(p.partNo+1), Offset: p.offset,
			OldSize: p.oldSize, RawSize: p.size, Activity: "create", Deferred: p.deferred,
		}
		if p.existing {
			pr.Activity = "unchanged"
		}
		if p.rootHash != nil {
			pr.RootHash = hex.EncodeToString(p.rootHash)
		}
		r = append(r, pr)
	}
	return r
}

// split writes each written partition to its own file, named as repart's
// --split=yes does by default: split_node() puts the type before a .raw
// suffix (IMAGE.TYPE.raw) and appends it to any other name (IMAGE.TYPE). A
// verity-sig file is stripped of its NUL padding.
func split(path string, parts []*part, rep *Report) error {
	img, err := os.Open(path)
	if err != nil {
		return err
	}
	defer img.Close()
	base, suffix := path, ""
	if strings.HasSuffix(path, ".raw") {
		base, suffix = strings.TrimSuffix(path, ".raw"), ".raw"
	}
	for i, p := range parts {
		if p.deferred {
			continue
		}
		name := base + "." + p.def.Type.Name + suffix
		out, err := atomicfile.Create(name, 0o644)
		if err != nil {
			return err
		}
		if p.def.Verity == "signature" {
			b := make([]byte, p.size)
			if _, err := img.ReadAt(b, p.offset); err != nil {
				out.Close()
				return err
			}
			_, err = out.Write(bytes.TrimRight(b, "\x00"))
		} else {
			_, err = io.CopyBuffer(out, io.NewSectionReader(img, p.offset, p.size), make([]byte, 1<<20))
		}
		if err == nil {
			err = out.Commit()
		}
		out.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		rep.Partitions[i].SplitPath = name
	}
	return nil
}
