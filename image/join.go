package image

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"signet.dev/internal/atomicfile"
	"signet.dev/verity"
)

// Join adds the deferred verity signature partitions of an image made by
// Build with Options.Defer, as `systemd-repart --join-signature=` does:
// each existing partition is matched to its definition (by type, in order),
// each signature partition the image lacks is placed in its reserved space
// and filled with the payload whose root hash is that of its verity pair.
//
// Unlike systemd-repart 258, a payload for a root hash the image does not
// have is an error (a signature partition without a payload stays
// deferred for a later Join), and every payload is verified (signature over the hex
// root hash) before anything is written. The image is replaced atomically:
// on any error it is left as it was.
func Join(path string, defs []*Definition, cert *x509.Certificate, sigs []*verity.SignaturePayload, o Options) (*Report, error) {
	for _, s := range sigs {
		if err := s.Verify(nil); err != nil {
			return nil, fmt.Errorf("signature for root hash %x: %w", s.RootHash, err)
		}
	}
	parts, err := plan(defs)
	if err != nil {
		return nil, err
	}
	src, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return nil, err
	}
	diskSize := st.Size()
	t, err := Read(src, diskSize)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// Match the n-th definition of a type to the n-th entry of that type.
	taken := make([]bool, len(t.Entries))
	var fresh []*part
	for _, p := range parts {
		found := false
		for i, e := range t.Entries {
			if e.Used() && !taken[i] && e.Type == p.def.Type.UUID {
				taken[i], found = true, true
				p.existing, p.partNo, p.offset, p.size, p.oldSize = true, i, e.Offset(), e.Size(), e.Size()
				p.uuid, p.label, p.attrs = e.UUID, e.Name, e.Attributes
				break
			}
		}
		if !found {
			if p.def.Verity != "signature" {
				return nil, fmt.Errorf("%w: %s: no %s partition in %s (only verity signature partitions can be joined)",
					ErrMismatch, p.def.File, p.def.Type.Name, path)
			}
			p.size = VeritySigSize
			fresh = append(fresh, p)
		}
	}
	// Root hashes of the verity pairs, from their trees.
	for _, p := range parts {
		if p.def.Verity != "hash" || !p.existing {
			continue
		}
		root, err := treeRoot(src, p)
		if err != nil {
			return nil, err
		}
		if !p.data.def.HasUUID && !p.def.HasUUID && (!bytes.Equal(p.data.uuid[:], root[:16]) || !bytes.Equal(p.uuid[:], root[len(root)-16:])) {
			return nil, fmt.Errorf("%w: %s: the partition UUIDs do not match the root hash %x of the verity tree", ErrMismatch, p.def.File, root)
		}
		p.rootHash, p.data.rootHash = root, root
	}
	used := make([]bool, len(sigs))
	payloads := map[*part]*verity.SignaturePayload{}
	for _, p := range fresh {
		if p.hash == nil || !p.hash.existing {
			return nil, fmt.Errorf("%w: %s: its verity pair is not in the image", ErrMismatch, p.def.File)
		}
		p.rootHash = p.hash.rootHash
		for i, s := range sigs {
			if bytes.Equal(s.RootHash, p.rootHash) {
				payloads[p], used[i] = s, true
			}
		}
		// Without a signature it stays deferred, for a later join.
		p.deferred = payloads[p] == nil
		count := uint64(0)
		for _, q := range parts {
			if q == p {
				break
			}
			if q.def.Type.UUID == p.def.Type.UUID {
				count++
			}
		}
		p.uuid = PartitionUUID(o.Seed, p.def.Type.UUID, count)
		if p.def.HasUUID {
			p.uuid = p.def.UUID
		}
	}
	// Place new partitions where Build reserved them: after the previous
	// definition's partition, in the definition's table slot if free.
	prevEnd := int64(firstPartition)
	for i, p := range parts {
		if p.existing {
			prevEnd = p.offset + p.size
			continue
		}
		p.offset = roundUp(prevEnd, Grain)
		prevEnd = p.offset + p.size
		if prevEnd/SectorSize-1 > int64(t.LastUsableLBA) {
			return nil, fmt.Errorf("%w: %s: no room for it in %s", ErrJoin, p.def.File, path)
		}
		for j, e := range t.Entries {
			if e.Used() && p.offset < e.Offset()+e.Size() && e.Offset() < prevEnd {
				return nil, fmt.Errorf("%w: %s: its space is taken by partition %d", ErrJoin, p.def.File, j+1)
			}
		}
		p.partNo = -1
		if i < len(t.Entries) && !taken[i] && !t.Entries[i].Used() {
			p.partNo, taken[i] = i, true
		} else {
			for j := range t.Entries {
				if !taken[j] && !t.Entries[j].Used() {
					p.partNo, taken[j] = j, true
					break
				}
			}
		}
		if p.partNo < 0 {
			return nil, fmt.Errorf("%w: no free partition table entry in %s", ErrJoin, path)
		}
	}
	for i, s := range sigs {
		if !used[i] {
			return nil, fmt.Errorf("%w: %s has no verity signature partition to fill for root hash %x", ErrJoin, path, s.RootHash)
		}
	}

	f, err := atomicfile.Create(path, st.Mode().Perm())
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// os.File.ReadFrom uses copy_file_range: a reflink or in-kernel copy.
	if _, err := io.Copy(f.File, src); err != nil {
		return nil, fmt.Errorf("%s: copying: %w", path, err)
	}
	for _, p := range fresh {
		if p.deferred {
			continue
		}
		if err := writePayload(f.File, p, payloads[p]); err != nil {
			return nil, err
		}
	}
	if err := writeTable(f.File, parts, t.DiskGUID, diskSize, t); err != nil {
		return nil, err
	}
	if err := f.Commit(); err != nil {
		return nil, err
	}
	rep := &Report{Partitions: reports(path, parts)}
	for _, p := range parts {
		if p.def.Verity == "hash" {
			rep.RootHashes = append(rep.RootHashes, p.rootHash)
		}
	}
	if o.Split {
		if err := split(path, parts, rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// treeRoot recomputes a hash partition's root hash from its superblock and
// top hash block (the lower levels are not re-read).
func treeRoot(img io.ReaderAt, hash *part) ([]byte, error) {
	r := io.NewSectionReader(img, hash.offset, hash.size)
	sb, err := verity.ReadSuperblock(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMismatch, hash.def.File, err)
	}
	if hash.data.size < sb.DataSize() {
		return nil, fmt.Errorf("%w: %s: the data partition is smaller than the tree says", ErrMismatch, hash.def.File)
	}
	return verity.RootFromTree(r, sb)
}

// ParseRootHash parses a hex root hash of at least 128 bits.
func ParseRootHash(s string) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) < 16 {
		return nil, fmt.Errorf("%q is not a hex root hash", s)
	}
	return b, nil
}
