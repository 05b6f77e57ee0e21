package verity

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// SuperblockSize is the size of the on-disk verity superblock.
const SuperblockSize = 512

// MaxSaltSize is the largest salt the superblock can hold.
const MaxSaltSize = 256

var sbMagic = [8]byte{'v', 'e', 'r', 'i', 't', 'y', 0, 0}

// ErrSuperblock reports a missing or malformed verity superblock.
var ErrSuperblock = errors.New("verity: bad superblock")

// Superblock is cryptsetup's verity superblock (struct verity_sb in
// lib/verity/verity.c): 512 bytes, little-endian.
type Superblock struct {
	HashType      uint32 // 1 (0 is the Chrome OS format)
	UUID          [16]byte
	Algorithm     string // e.g. "sha256"
	DataBlockSize uint32
	HashBlockSize uint32
	DataBlocks    uint64
	Salt          []byte
}

// MarshalBinary encodes the 512-byte superblock.
func (sb *Superblock) MarshalBinary() ([]byte, error) {
	if len(sb.Algorithm) >= 32 || len(sb.Algorithm) == 0 {
		return nil, fmt.Errorf("%w: algorithm name %q", ErrSuperblock, sb.Algorithm)
	}
	if len(sb.Salt) > MaxSaltSize {
		return nil, fmt.Errorf("%w: salt of %d bytes", ErrSuperblock, len(sb.Salt))
	}
	b := make([]byte, SuperblockSize)
	copy(b[0:8], sbMagic[:])
	binary.LittleEndian.PutUint32(b[8:], 1) // superblock version
	binary.LittleEndian.PutUint32(b[12:], sb.HashType)
	copy(b[16:32], sb.UUID[:])
	copy(b[32:64], sb.Algorithm)
	binary.LittleEndian.PutUint32(b[64:], sb.DataBlockSize)
	binary.LittleEndian.PutUint32(b[68:], sb.HashBlockSize)
	binary.LittleEndian.PutUint64(b[72:], sb.DataBlocks)
	binary.LittleEndian.PutUint16(b[80:], uint16(len(sb.Salt)))
	copy(b[88:88+MaxSaltSize], sb.Salt)
	return b, nil
}

// UnmarshalBinary decodes and checks a superblock.
func (sb *Superblock) UnmarshalBinary(b []byte) error {
	if len(b) < SuperblockSize {
		return fmt.Errorf("%w: %d bytes, need %d", ErrSuperblock, len(b), SuperblockSize)
	}
	if !bytes.Equal(b[0:8], sbMagic[:]) {
		return fmt.Errorf("%w: no \"verity\" signature", ErrSuperblock)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != 1 {
		return fmt.Errorf("%w: unsupported version %d", ErrSuperblock, v)
	}
	sb.HashType = binary.LittleEndian.Uint32(b[12:])
	if sb.HashType != 1 {
		return fmt.Errorf("%w: unsupported hash type %d", ErrSuperblock, sb.HashType)
	}
	copy(sb.UUID[:], b[16:32])
	alg := b[32:64]
	if i := bytes.IndexByte(alg, 0); i >= 0 {
		alg = alg[:i]
	}
	sb.Algorithm = string(alg)
	if sb.Algorithm == "" {
		// Params would default an empty name to sha256; a superblock must
		// say what it was made with.
		return fmt.Errorf("%w: no hash algorithm name", ErrSuperblock)
	}
	sb.DataBlockSize = binary.LittleEndian.Uint32(b[64:])
	sb.HashBlockSize = binary.LittleEndian.Uint32(b[68:])
	sb.DataBlocks = binary.LittleEndian.Uint64(b[72:])
	n := int(binary.LittleEndian.Uint16(b[80:]))
	if n > MaxSaltSize {
		return fmt.Errorf("%w: salt size %d", ErrSuperblock, n)
	}
	sb.Salt = bytes.Clone(b[88 : 88+n])
	if _, _, err := sb.Params().withDefaults(); err != nil {
		return fmt.Errorf("%w: %v", ErrSuperblock, err)
	}
	if sb.DataBlocks == 0 || sb.DataBlocks > 1<<50 {
		return fmt.Errorf("%w: %d data blocks", ErrSuperblock, sb.DataBlocks)
	}
	return nil
}

// ReadSuperblock reads the superblock at the start of a hash device.
func ReadSuperblock(r io.ReaderAt) (*Superblock, error) {
	b := make([]byte, SuperblockSize)
	if _, err := r.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSuperblock, err)
	}
	sb := new(Superblock)
	if err := sb.UnmarshalBinary(b); err != nil {
		return nil, err
	}
	return sb, nil
}

// Params returns the format parameters the superblock records.
func (sb *Superblock) Params() Params {
	return Params{
		HashAlgorithm: sb.Algorithm,
		DataBlockSize: int(sb.DataBlockSize),
		HashBlockSize: int(sb.HashBlockSize),
		Salt:          sb.Salt,
		UUID:          sb.UUID,
	}
}

// DataSize is the size of the data the superblock describes.
func (sb *Superblock) DataSize() int64 { return int64(sb.DataBlocks) * int64(sb.DataBlockSize) }
