package measure

import (
	"crypto"
	_ "crypto/sha1" // PCR banks
	_ "crypto/sha256"
	_ "crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Bank is a TPM PCR bank: the hash the TPM extends the PCR with.
type Bank struct {
	Name string // lower-case name as in systemd's JSON: sha1, sha256, sha384, sha512
	Hash crypto.Hash
}

var (
	SHA1   = Bank{"sha1", crypto.SHA1}
	SHA256 = Bank{"sha256", crypto.SHA256}
	SHA384 = Bank{"sha384", crypto.SHA384}
	SHA512 = Bank{"sha512", crypto.SHA512}
)

// DefaultBanks are the banks systemd-measure uses without --bank=.
var DefaultBanks = []Bank{SHA1, SHA256, SHA384, SHA512}

// ErrUnknownBank is returned for a bank name that is not one of sha1,
// sha256, sha384, sha512.
var ErrUnknownBank = errors.New("unknown PCR bank")

// ParseBank resolves a bank name case-insensitively ("SHA256", "sha256").
func ParseBank(name string) (Bank, error) {
	for _, b := range DefaultBanks {
		if strings.EqualFold(name, b.Name) {
			return b, nil
		}
	}
	return Bank{}, fmt.Errorf("%q: %w (use sha1, sha256, sha384 or sha512)", name, ErrUnknownBank)
}

// ParseBanks resolves names and sorts and de-duplicates them as
// systemd-measure does; no names gives DefaultBanks.
func ParseBanks(names []string) ([]Bank, error) {
	if len(names) == 0 {
		return slices.Clone(DefaultBanks), nil
	}
	var out []Bank
	for _, n := range names {
		b, err := ParseBank(n)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b Bank) int { return strings.Compare(a.Name, b.Name) })
	return slices.CompactFunc(out, func(a, b Bank) bool { return a.Name == b.Name }), nil
}

// Phase words systemd-pcrphase measures, in boot order.
var KnownPhaseWords = []string{"enter-initrd", "leave-initrd", "sysinit", "ready", "shutdown", "final"}

// DefaultPhases are the phase paths systemd-measure signs without --phase=.
var DefaultPhases = []string{
	"enter-initrd",
	"enter-initrd:leave-initrd",
	"enter-initrd:leave-initrd:sysinit",
	"enter-initrd:leave-initrd:sysinit:ready",
}

// ErrUnknownPhase is returned for a phase word systemd-pcrphase never
// measures (a typo would otherwise yield a policy no boot can satisfy).
var ErrUnknownPhase = errors.New("unknown boot phase word")

// NormalizePhase splits a phase path on ':', drops empty words and joins
// the rest again; "" and ":" are the phase before any word is measured.
// Every word must be one of KnownPhaseWords.
func NormalizePhase(p string) (string, error) {
	var words []string
	for _, w := range strings.Split(p, ":") {
		if w == "" {
			continue
		}
		if !slices.Contains(KnownPhaseWords, w) {
			return "", fmt.Errorf("phase %q: %w %q (known: %s)", p, ErrUnknownPhase, w, strings.Join(KnownPhaseWords, ", "))
		}
		words = append(words, w)
	}
	return strings.Join(words, ":"), nil
}

// ParsePhases normalizes each path, then sorts and de-duplicates the list
// as systemd-measure does; no paths gives DefaultPhases.
func ParsePhases(paths []string) ([]string, error) {
	if len(paths) == 0 {
		return slices.Clone(DefaultPhases), nil
	}
	out := make([]string, 0, len(paths))
	for _, p := range paths {
		n, err := NormalizePhase(p)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// PhaseLabel is how systemd-measure labels a phase path in text output: the
// path, or ":" for the empty one.
func PhaseLabel(p string) string {
	if p == "" {
		return ":"
	}
	return p
}

// Result holds the predicted PCR 11 values, per bank and phase.
type Result struct {
	Banks []BankValues
}

// BankValues are one bank's predictions.
type BankValues struct {
	Bank Bank
	// Sections is PCR 11 after the sections, before any phase word.
	Sections []byte
	Phases   []PhaseValue
}

// PhaseValue is PCR 11 at one boot phase.
type PhaseValue struct {
	Phase string // normalized phase path ("" before enter-initrd)
	PCR   []byte
}

// Extend returns H(pcr || digest), the TPM2_PCR_Extend operation.
func Extend(h crypto.Hash, pcr, digest []byte) []byte {
	d := h.New()
	d.Write(pcr)
	d.Write(digest)
	return d.Sum(nil)
}

// ErrDuplicateSection is returned when Calculate gets a section twice.
var ErrDuplicateSection = errors.New("section given more than once")

// Calculate predicts PCR 11 for the given section inputs (any order; empty
// ones are skipped as the stub skips them; .pcrsig is never measured), phase
// paths (normalized, as from ParsePhases) and banks. Each input is read
// once; the banks are hashed in parallel.
func Calculate(inputs []Input, phases []string, banks []Bank) (*Result, error) {
	if len(banks) == 0 {
		return nil, errors.New("measure: no PCR banks")
	}
	var seen [numSections]bool
	var measured []Input
	for _, in := range inputs {
		if in.Section < 0 || in.Section >= numSections {
			return nil, fmt.Errorf("measure: unknown section %d", int(in.Section))
		}
		if seen[in.Section] {
			return nil, fmt.Errorf("%s: %w", in.Section, ErrDuplicateSection)
		}
		seen[in.Section] = true
		if in.Section.Measured() && in.Size > 0 {
			measured = append(measured, in)
		}
	}
	slices.SortFunc(measured, func(a, b Input) int { return int(a.Section - b.Section) })

	digests, err := digestInputs(measured, banks)
	if err != nil {
		return nil, err
	}
	res := &Result{}
	for bi, b := range banks {
		pcr := make([]byte, b.Hash.Size())
		for ii, in := range measured {
			pcr = Extend(b.Hash, pcr, hashOf(b.Hash, []byte(in.Section.String()+"\x00")))
			pcr = Extend(b.Hash, pcr, digests[ii][bi])
		}
		bv := BankValues{Bank: b, Sections: pcr}
		for _, p := range phases {
			v := pcr
			for _, w := range strings.Split(p, ":") {
				if w != "" {
					v = Extend(b.Hash, v, hashOf(b.Hash, []byte(w)))
				}
			}
			bv.Phases = append(bv.Phases, PhaseValue{Phase: p, PCR: v})
		}
		res.Banks = append(res.Banks, bv)
	}
	return res, nil
}

func hashOf(h crypto.Hash, b []byte) []byte {
	d := h.New()
	d.Write(b)
	return d.Sum(nil)
}

const (
	// A chunk is hashed by every bank while it is still in the core's L2.
	chunkSize = 256 << 10
	numChunks = 16
	// mapWindowSize is how much of a file input is mapped at a time.
	mapWindowSize = 8 << 20
)

// cost is the relative CPU cost of a hash on amd64 (SHA-1 and SHA-256 have
// SHA-NI; SHA-384/512 run about 2.5 times slower), used to spread the
// banks over the cores.
func cost(h crypto.Hash) int {
	switch h {
	case crypto.SHA384, crypto.SHA512:
		return 5
	}
	return 2
}

type chunk struct {
	input int
	data  []byte // nil: end of input
	buf   *[]byte
	refs  atomic.Int32
	win   *window // the mapping data lies in, if mapped
}

// window is one mapped part of an input, unmapped when every worker has
// hashed all its chunks.
type window struct {
	refs  atomic.Int32
	unmap func()
}

func (w *window) release() {
	if w.refs.Add(-1) == 0 {
		w.unmap()
	}
}

// digestInputs returns digests[input][bank]. One goroutine reads every
// input once, in chunks, and hands each chunk to the hashing workers, one
// per core, each owning a balanced share of the banks; a chunk's buffer is
// reused when every worker is done with it.
func digestInputs(inputs []Input, banks []Bank) ([][][]byte, error) {
	out := make([][][]byte, len(inputs))
	for i := range out {
		out[i] = make([][]byte, len(banks))
	}
	var total int64
	for _, in := range inputs {
		total += in.Size
	}
	if total <= chunkSize {
		// Small inputs (the stub's sections, a command line): the
		// pipeline would cost more than the hashing.
		return digestSmall(inputs, banks, out)
	}
	nw := min(runtime.GOMAXPROCS(0), len(banks))
	groups := make([][]int, nw) // bank indexes per worker
	load := make([]int, nw)
	order := make([]int, len(banks))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cost(banks[b].Hash) - cost(banks[a].Hash) })
	for _, bi := range order {
		w := slices.Index(load, slices.Min(load))
		groups[w] = append(groups[w], bi)
		load[w] += cost(banks[bi].Hash)
	}

	free := make(chan *[]byte, numChunks)
	for range numChunks {
		b := make([]byte, chunkSize)
		free <- &b
	}
	chans := make([]chan *chunk, nw)
	var (
		wg      sync.WaitGroup
		faultMu sync.Mutex
		fault   error // a worker's reading fault
	)
	for w := range nw {
		ch := make(chan *chunk, numChunks)
		chans[w] = ch
		hs := make([]hash.Hash, len(groups[w]))
		for i, bi := range groups[w] {
			hs[i] = banks[bi].Hash.New()
		}
		wg.Add(1)
		go func(group []int, hs []hash.Hash) {
			defer wg.Done()
			debug.SetPanicOnFault(true) // a mapped file truncated under us
			for c := range ch {
				if c.data == nil {
					for i, bi := range group {
						out[c.input][bi] = hs[i].Sum(nil)
						hs[i].Reset()
					}
					continue
				}
				if err := hashChunk(hs, c.data); err != nil {
					faultMu.Lock()
					fault = fmt.Errorf("%s: %w", inputs[c.input].Origin, err)
					faultMu.Unlock()
				}
				if c.buf != nil && c.refs.Add(-1) == 0 {
					free <- c.buf
				}
				if c.win != nil {
					c.win.release()
				}
			}
		}(groups[w], hs)
	}
	var err error
	for ii, in := range inputs {
		// Mapped a window at a time; a window that cannot be mapped, and
		// everything after it, is read into buffers instead.
		off := int64(0)
		for off < in.Size {
			n := min(int64(mapWindowSize), in.Size-off)
			m, unmap, ok := mapWindow(in, off, n)
			if !ok {
				break
			}
			w := &window{unmap: unmap}
			w.refs.Store(int32(nw * int((n+chunkSize-1)/chunkSize)))
			for o := int64(0); o < n; o += chunkSize {
				c := &chunk{input: ii, data: m[o:min(o+chunkSize, n)], win: w}
				prefault(c.data)
				for _, ch := range chans {
					ch <- c
				}
			}
			off += n
		}
		for off < in.Size && err == nil {
			buf := <-free
			n := int64(chunkSize)
			if in.Size-off < n {
				n = in.Size - off
			}
			var k int
			k, err = in.R.ReadAt((*buf)[:n], off)
			if int64(k) == n {
				err = nil // io.EOF with a full read is fine
			} else if err == nil || err == io.EOF {
				err = fmt.Errorf("%s: %w (file changed while reading?)", in.Origin, io.ErrUnexpectedEOF)
			} else {
				err = fmt.Errorf("%s: %w", in.Origin, err)
			}
			if err != nil {
				free <- buf
				break
			}
			c := &chunk{input: ii, data: (*buf)[:n], buf: buf}
			c.refs.Store(int32(nw))
			for _, ch := range chans {
				ch <- c
			}
			off += n
		}
		if err != nil {
			break
		}
		end := &chunk{input: ii}
		for _, ch := range chans {
			ch <- end
		}
	}
	for _, ch := range chans {
		close(ch)
	}
	wg.Wait()
	if err == nil {
		err = fault
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// hashChunk feeds data to every hash, turning a memory fault (a mapped
// file that shrank) into an error.
func hashChunk(hs []hash.Hash, data []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("reading failed (file truncated while hashing?): %v", r)
		}
	}()
	for _, h := range hs {
		h.Write(data)
	}
	return nil
}

func digestSmall(inputs []Input, banks []Bank, out [][][]byte) ([][][]byte, error) {
	for ii, in := range inputs {
		b := make([]byte, in.Size)
		if k, err := in.R.ReadAt(b, 0); int64(k) != in.Size {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("%s: %w", in.Origin, err)
		}
		for bi, bank := range banks {
			out[ii][bi] = hashOf(bank.Hash, b)
		}
	}
	return out, nil
}
