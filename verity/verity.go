// Package verity builds and checks dm-verity hash trees exactly as
// cryptsetup's veritysetup does (hash format version 1), reads and writes the
// verity superblock, and builds the signature payload systemd-repart stores
// in a verity-sig partition.
//
// Format and Verify stream: data is read in bounded chunks by one worker per
// CPU, so memory does not grow with the size of the data. The lowest level
// of the tree is hashed from the data, every upper level from the level
// below it in the hash device itself.
//
// The tree (cryptsetup lib/verity/verity_hash.c, version 1): every data block
// is hashed as H(salt || block); the digests are packed into hash blocks,
// each zero-padded to the hash block size; each level is hashed the same way
// until one hash block remains, whose H(salt || block) is the root hash. The
// top level comes first in the hash device. With a superblock the tree starts
// at the first hash block after the 512-byte superblock.
package verity

import (
	"bytes"
	"crypto"
	_ "crypto/sha1" // hash algorithms veritysetup offers
	_ "crypto/sha256"
	_ "crypto/sha512"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
)

// Errors a caller may check with errors.Is.
var (
	// ErrBadParams reports parameters veritysetup would refuse.
	ErrBadParams = errors.New("verity: bad parameters")
	// ErrDataSize reports data whose size is not a whole number of data blocks.
	ErrDataSize = errors.New("verity: data size is not a multiple of the data block size")
	// ErrHashTooSmall reports a hash device too small for the tree.
	ErrHashTooSmall = errors.New("verity: hash device too small")
	// ErrCorrupt reports a data or hash block that does not match the tree.
	ErrCorrupt = errors.New("verity: verification failed")
	// ErrRootHash reports a tree whose root hash is not the expected one.
	ErrRootHash = errors.New("verity: root hash mismatch")
)

// Params are the dm-verity format parameters, with veritysetup's meaning.
type Params struct {
	HashAlgorithm string // "sha256" (default), "sha1", "sha512"
	DataBlockSize int    // bytes, power of two, 512..1 MiB; default 4096
	HashBlockSize int    // bytes, power of two, 512..1 MiB; default 4096
	Salt          []byte // at most 256 bytes; nil or empty means no salt
	UUID          [16]byte
	NoSuperblock  bool

	// Progress, if set, is called now and then with the number of data
	// bytes hashed so far and the total.
	Progress func(done, total int64) `json:"-"`
}

// withDefaults fills in veritysetup's defaults and checks the parameters.
func (p Params) withDefaults() (Params, crypto.Hash, error) {
	if p.HashAlgorithm == "" {
		p.HashAlgorithm = "sha256"
	}
	if p.DataBlockSize == 0 {
		p.DataBlockSize = 4096
	}
	if p.HashBlockSize == 0 {
		p.HashBlockSize = 4096
	}
	h, err := HashByName(p.HashAlgorithm)
	if err != nil {
		return p, 0, err
	}
	for _, bs := range []struct {
		name string
		n    int
	}{{"data block size", p.DataBlockSize}, {"hash block size", p.HashBlockSize}} {
		if bs.n < 512 || bs.n > 1<<19 || bs.n&(bs.n-1) != 0 {
			return p, 0, fmt.Errorf("%w: %s %d is not a power of two between 512 and 524288", ErrBadParams, bs.name, bs.n)
		}
	}
	if len(p.Salt) > MaxSaltSize {
		return p, 0, fmt.Errorf("%w: salt of %d bytes (at most %d)", ErrBadParams, len(p.Salt), MaxSaltSize)
	}
	if h.Size() > p.HashBlockSize/2 {
		return p, 0, fmt.Errorf("%w: hash block size %d too small for %s", ErrBadParams, p.HashBlockSize, p.HashAlgorithm)
	}
	return p, h, nil
}

// HashByName maps a veritysetup hash name to a crypto.Hash.
func HashByName(name string) (crypto.Hash, error) {
	switch strings.ToLower(name) {
	case "sha256":
		return crypto.SHA256, nil
	case "sha1":
		return crypto.SHA1, nil
	case "sha512":
		return crypto.SHA512, nil
	}
	return 0, fmt.Errorf("%w: hash algorithm %q not supported (sha256, sha1, sha512)", ErrBadParams, name)
}

// Layout is where a tree lives in the hash device.
type Layout struct {
	DataBlocks int64
	// Levels[i] is the first hash block (counted from the tree start) and
	// the number of hash blocks of level i; level 0 hashes the data, the
	// last level is a single block. Empty when the data is one block.
	Levels []Level
	// TreeOffset is the byte offset of the tree in the hash device: the
	// superblock area, or 0 without a superblock.
	TreeOffset int64
	// HashBlocks is the number of tree blocks (as veritysetup reports it).
	HashBlocks int64
	// HashDeviceSize is TreeOffset + HashBlocks × hash block size.
	HashDeviceSize int64
	hashPerBlock   int64
}

// Level is one level of the tree.
type Level struct{ Block, Count int64 }

// ComputeLayout returns the tree layout for dataSize bytes of data.
func ComputeLayout(dataSize int64, p Params) (*Layout, error) {
	p, h, err := p.withDefaults()
	if err != nil {
		return nil, err
	}
	return layout(dataSize, p, h)
}

func layout(dataSize int64, p Params, h crypto.Hash) (*Layout, error) {
	if dataSize <= 0 {
		return nil, fmt.Errorf("%w: data size %d", ErrDataSize, dataSize)
	}
	if dataSize%int64(p.DataBlockSize) != 0 {
		return nil, fmt.Errorf("%w (%d bytes, block size %d)", ErrDataSize, dataSize, p.DataBlockSize)
	}
	l := &Layout{DataBlocks: dataSize / int64(p.DataBlockSize)}
	// Digests per hash block, rounded down to a power of two (cryptsetup's
	// get_bits_down).
	bitsPer := uint(bits.Len(uint(p.HashBlockSize/h.Size())) - 1)
	l.hashPerBlock = 1 << bitsPer
	levels := 0
	for bitsPer*uint(levels) < 64 && (l.DataBlocks-1)>>(bitsPer*uint(levels)) != 0 {
		levels++
	}
	l.Levels = make([]Level, levels)
	pos := int64(0)
	for i := levels - 1; i >= 0; i-- {
		shift := bitsPer * uint(i+1)
		var n int64
		if shift >= 63 {
			n = 1
		} else {
			n = (l.DataBlocks + (1 << shift) - 1) >> shift
		}
		l.Levels[i] = Level{Block: pos, Count: n}
		pos += n
	}
	l.HashBlocks = pos
	if !p.NoSuperblock {
		l.TreeOffset = roundUp(SuperblockSize, int64(p.HashBlockSize))
	}
	l.HashDeviceSize = l.TreeOffset + l.HashBlocks*int64(p.HashBlockSize)
	return l, nil
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// ReadWriterAt is what Format writes the tree to: it reads the lower levels
// back to hash the upper ones.
type ReadWriterAt interface {
	io.ReaderAt
	io.WriterAt
}

// Format computes the hash tree of dataSize bytes of data, writes it (and
// the superblock unless p.NoSuperblock) to hash from offset 0, and returns
// the root hash. The bytes written equal what `veritysetup format` writes
// with the same options.
func Format(data io.ReaderAt, dataSize int64, hash ReadWriterAt, p Params) ([]byte, error) {
	p, h, err := p.withDefaults()
	if err != nil {
		return nil, err
	}
	l, err := layout(dataSize, p, h)
	if err != nil {
		return nil, err
	}
	if !p.NoSuperblock {
		sb := Superblock{
			HashType: 1, UUID: p.UUID, Algorithm: p.HashAlgorithm,
			DataBlockSize: uint32(p.DataBlockSize), HashBlockSize: uint32(p.HashBlockSize),
			DataBlocks: uint64(l.DataBlocks), Salt: p.Salt,
		}
		b, err := sb.MarshalBinary()
		if err != nil {
			return nil, err
		}
		// Zero the rest of the superblock's hash block too.
		b = append(b, make([]byte, l.TreeOffset-int64(len(b)))...)
		if _, err := hash.WriteAt(b, 0); err != nil {
			return nil, fmt.Errorf("verity: writing superblock: %w", err)
		}
	}
	return walk(data, hash, l, p, h, false)
}

// Verify recomputes the tree of dataSize bytes of data and checks every
// hash block stored in hash (laid out per p) and the root hash, as
// `veritysetup verify` does. With a superblock, p's format fields must
// match it; use ReadSuperblock to learn them.
func Verify(data io.ReaderAt, dataSize int64, hash io.ReaderAt, rootHash []byte, p Params) error {
	p, h, err := p.withDefaults()
	if err != nil {
		return err
	}
	if len(rootHash) != h.Size() {
		return fmt.Errorf("%w: root hash is %d bytes, %s needs %d", ErrBadParams, len(rootHash), p.HashAlgorithm, h.Size())
	}
	l, err := layout(dataSize, p, h)
	if err != nil {
		return err
	}
	if !p.NoSuperblock {
		sb, err := ReadSuperblock(hash)
		if err != nil {
			return err
		}
		if sb.DataBlocks != uint64(l.DataBlocks) || sb.DataBlockSize != uint32(p.DataBlockSize) ||
			sb.HashBlockSize != uint32(p.HashBlockSize) || !strings.EqualFold(sb.Algorithm, p.HashAlgorithm) ||
			!bytes.Equal(sb.Salt, p.Salt) {
			return fmt.Errorf("%w: superblock does not match the parameters", ErrBadParams)
		}
	}
	if l.HashBlocks > 0 {
		// A short hash device is reported as such, not as a mismatch.
		last := make([]byte, 1)
		if _, err := hash.ReadAt(last, l.HashDeviceSize-1); err != nil {
			return fmt.Errorf("%w: the tree needs %d bytes", ErrHashTooSmall, l.HashDeviceSize)
		}
	}
	got, err := walk(data, readOnly{hash}, l, p, h, true)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, rootHash) {
		return fmt.Errorf("%w: computed %x", ErrRootHash, got)
	}
	return nil
}

type readOnly struct{ io.ReaderAt }

func (readOnly) WriteAt([]byte, int64) (int, error) { return 0, errors.New("read only") }

// walk builds (or, with check, verifies) every level and returns the root.
func walk(data io.ReaderAt, hash ReadWriterAt, l *Layout, p Params, h crypto.Hash, check bool) ([]byte, error) {
	hbs := int64(p.HashBlockSize)
	if len(l.Levels) == 0 {
		// One data block: its digest is the root hash, there is no tree.
		blk := make([]byte, p.DataBlockSize)
		if _, err := data.ReadAt(blk, 0); err != nil {
			return nil, fmt.Errorf("verity: reading data: %w", err)
		}
		return digest(h, p.Salt, blk), nil
	}
	var progress func(int64)
	if p.Progress != nil {
		total := l.DataBlocks * int64(p.DataBlockSize)
		var done atomic.Int64
		var mu sync.Mutex
		progress = func(n int64) {
			d := done.Add(n)
			if mu.TryLock() {
				p.Progress(d, total)
				mu.Unlock()
			}
		}
	}
	src, srcOff, srcBS := data, int64(0), int64(p.DataBlockSize)
	srcBlocks := l.DataBlocks
	for i, lv := range l.Levels {
		dstOff := l.TreeOffset + lv.Block*hbs
		if err := hashLevel(src, srcOff, srcBS, srcBlocks, hash, dstOff, lv.Count, l.hashPerBlock, p, h, check, progress, i); err != nil {
			return nil, err
		}
		src, srcOff, srcBS, srcBlocks = hash, dstOff, hbs, lv.Count
		progress = nil
	}
	top := make([]byte, hbs)
	if _, err := hash.ReadAt(top, srcOff); err != nil {
		return nil, fmt.Errorf("verity: reading top hash block: %w", err)
	}
	if p.Progress != nil {
		p.Progress(l.DataBlocks*int64(p.DataBlockSize), l.DataBlocks*int64(p.DataBlockSize))
	}
	return digest(h, p.Salt, top), nil
}

func digest(h crypto.Hash, salt, blk []byte) []byte {
	d := h.New()
	d.Write(salt)
	d.Write(blk)
	return d.Sum(nil)
}

// useMmap selects mapping data files instead of reading them (tests turn
// it off to cover both paths).
var useMmap = true

// readChunk is how much source one worker reads at once: enough hash
// blocks' worth of source to amortize the call, small enough to keep memory
// flat (2 MiB for 4 KiB blocks and SHA-256).
const readChunk = 2 << 20

// hashLevel hashes count source blocks into outBlocks hash blocks at dstOff.
// Work is split by output hash block, so workers never share one.
func hashLevel(src io.ReaderAt, srcOff, srcBS, srcBlocks int64, dst ReadWriterAt, dstOff, outBlocks, perBlock int64,
	p Params, h crypto.Hash, check bool, progress func(int64), level int) error {
	hbs := int64(p.HashBlockSize)
	outPerChunk := max(1, readChunk/(perBlock*srcBS))
	chunks := (outBlocks + outPerChunk - 1) / outPerChunk
	workers := int64(runtime.GOMAXPROCS(0))
	workers = min(workers, chunks)
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var failed atomic.Bool
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err })
		failed.Store(true)
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A mapped file that shrinks under us faults: report it as an
			// error instead of crashing.
			defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
			defer func() {
				if r := recover(); r != nil {
					fail(fmt.Errorf("verity: reading data: %v (did the file change?)", r))
				}
			}()
			in := make([]byte, outPerChunk*perBlock*srcBS)
			out := make([]byte, outPerChunk*hbs)
			var stored []byte
			if check {
				stored = make([]byte, len(out))
			}
			d := h.New()
			// Version 1 spaces digests evenly: a power-of-two stride
			// (the kernel's verity_hash_at_level).
			ds := hbs / perBlock
			for !failed.Load() {
				c := next.Add(1) - 1
				if c >= chunks {
					return
				}
				firstOut := c * outPerChunk
				nOut := min(outPerChunk, outBlocks-firstOut)
				firstIn := firstOut * perBlock
				nIn := min(nOut*perBlock, srcBlocks-firstIn)
				buf := in[:nIn*srcBS]
				var unmap func()
				if level == 0 && useMmap {
					if m, um, ok := mapChunk(src, srcOff+firstIn*srcBS, len(buf)); ok {
						buf, unmap = m, um
					}
				}
				if unmap != nil {
					// mapped: nothing to read
				} else if _, err := src.ReadAt(buf, srcOff+firstIn*srcBS); err != nil {
					if level == 0 {
						fail(fmt.Errorf("verity: reading data at %d: %w", firstIn*srcBS, err))
					} else {
						fail(fmt.Errorf("%w: reading hash level %d: %v", ErrHashTooSmall, level, err))
					}
					return
				}
				o := out[:nOut*hbs]
				clear(o)
				for b := int64(0); b < nIn; b++ {
					d.Reset()
					d.Write(p.Salt)
					d.Write(buf[b*srcBS : (b+1)*srcBS])
					pos := (b/perBlock)*hbs + (b%perBlock)*ds
					d.Sum(o[pos:pos])
				}
				if unmap != nil {
					unmap()
				}
				at := dstOff + firstOut*hbs
				if check {
					s := stored[:len(o)]
					if _, err := dst.ReadAt(s, at); err != nil {
						fail(fmt.Errorf("%w: reading hash block at %d: %v", ErrHashTooSmall, at, err))
						return
					}
					if !bytes.Equal(s, o) {
						for k := int64(0); k < nOut; k++ {
							if !bytes.Equal(s[k*hbs:(k+1)*hbs], o[k*hbs:(k+1)*hbs]) {
								if level == 0 {
									fail(fmt.Errorf("%w: data blocks %d..%d do not match hash block at offset %d",
										ErrCorrupt, firstIn+k*perBlock, min(firstIn+(k+1)*perBlock, srcBlocks)-1, at+k*hbs))
								} else {
									fail(fmt.Errorf("%w: hash block at offset %d (level %d)", ErrCorrupt, at+k*hbs, level))
								}
								return
							}
						}
					}
				} else if _, err := dst.WriteAt(o, at); err != nil {
					fail(fmt.Errorf("verity: writing hash block at %d: %w", at, err))
					return
				}
				if progress != nil {
					progress(nIn * srcBS)
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}

// RootFromTree computes the root hash of a hash device with a superblock
// from its top hash block alone (no data is read). It proves only that the
// top block and the root hash agree.
func RootFromTree(hash io.ReaderAt, sb *Superblock) ([]byte, error) {
	p, h, err := sb.Params().withDefaults()
	if err != nil {
		return nil, err
	}
	l, err := layout(sb.DataSize(), p, h)
	if err != nil {
		return nil, err
	}
	if len(l.Levels) == 0 {
		return nil, fmt.Errorf("%w: the tree of a one-block device is the data block itself", ErrBadParams)
	}
	top := make([]byte, p.HashBlockSize)
	if _, err := hash.ReadAt(top, l.TreeOffset+l.Levels[len(l.Levels)-1].Block*int64(p.HashBlockSize)); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHashTooSmall, err)
	}
	return digest(h, p.Salt, top), nil
}
