// Package audit is the signing service's tamper-evident audit log: an
// append-only Merkle tree (golang.org/x/mod/sumdb/tlog) of JSON entries,
// with checkpoints signed as notes (golang.org/x/mod/sumdb/note, Ed25519).
//
// Every submission, refusal, approval and signature is one Entry. The
// service stores the entries and the tree's stored hashes in its database,
// in the same transaction as the state change the entry records, so the log
// and the queue can never disagree.
//
// A checkpoint is a signed note whose text is, line by line (the C2SP
// tlog-checkpoint layout):
//
//	<origin>
//	<tree size, decimal>
//	<root hash, base64>
//
// An exported log is one entry per line, the exact bytes that were hashed
// (RFC 6962 leaf hash of the line without its newline). VerifyLog recomputes
// the root from such a file and compares it with a checkpoint: any edited,
// dropped, inserted or reordered entry changes the root.
package audit

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"signet.dev/internal/strictjson"
)

// Entry types.
const (
	TypeSubmit  = "submit"  // a request was accepted
	TypeRefuse  = "refuse"  // a request or approval was refused (policy or check)
	TypeApprove = "approve" // an approver approved a request
	TypeSign    = "sign"    // an item was signed
	TypeReject  = "reject"  // an approver rejected a request: nothing more of it is signed
	TypeCancel  = "cancel"  // the submitter cancelled a request: nothing more of it is signed
)

// Entry is one audit record. Index is its position in the log (the first
// entry is 0), so an entry that moves no longer matches its own text.
type Entry struct {
	Index   int64     `json:"index"`
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Client  string    `json:"client"`            // authenticated identity
	Request string    `json:"request,omitempty"` // request id: hex SHA-256 of its body
	Item    string    `json:"item,omitempty"`    // item id within the request
	Key     string    `json:"key,omitempty"`
	Kind    string    `json:"kind,omitempty"`
	Items   int       `json:"items,omitempty"`      // submit: number of items
	TBS     string    `json:"tbs_sha256,omitempty"` // sign: SHA-256 of the to-be-signed bytes
	Sig     string    `json:"sig_sha256,omitempty"` // sign: SHA-256 of the signature
	Status  int       `json:"status,omitempty"`     // refuse: HTTP status returned
	Reason  string    `json:"reason,omitempty"`     // refuse: why
}

// MaxString bounds every string of an entry as stored: a longer one keeps
// its first MaxString bytes and names its length and digest (Bound), so no
// input can make an entry large.
const MaxString = 1024

// Bound returns s if it is at most MaxString bytes, else its first
// MaxString bytes (cut at a character boundary) followed by
// " …[truncated, N bytes, sha256:HEX]" naming the whole string.
func Bound(s string) string {
	if len(s) <= MaxString {
		return s
	}
	cut := MaxString
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	sum := sha256.Sum256([]byte(s))
	return fmt.Sprintf("%s …[truncated, %d bytes, sha256:%s]", s[:cut], len(s), hex.EncodeToString(sum[:]))
}

// Marshal encodes e, its strings bounded (Bound), as one line of JSON
// without the newline: the bytes the log hashes.
func (e *Entry) Marshal() []byte {
	c := *e
	for _, p := range []*string{&c.Type, &c.Client, &c.Request, &c.Item, &c.Key, &c.Kind, &c.TBS, &c.Sig, &c.Reason} {
		*p = Bound(*p)
	}
	b, err := json.Marshal(&c)
	if err != nil {
		// Entry holds only strings, ints and a time: cannot fail.
		panic(err)
	}
	return b
}

// ParseEntry decodes one log line strictly (unknown fields, duplicate keys
// and keys differing from the schema by case are errors). An entry of a
// type this version does not know parses: a newer service may write it.
func ParseEntry(line []byte) (*Entry, error) {
	var e Entry
	if err := strictjson.Unmarshal(line, &e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEntry, err)
	}
	if !validType(e.Type) {
		return nil, fmt.Errorf("%w: type %q: want a lowercase word", ErrBadEntry, e.Type)
	}
	return &e, nil
}

// Known reports whether t is an entry type this version knows.
func Known(t string) bool {
	switch t {
	case TypeSubmit, TypeRefuse, TypeApprove, TypeSign, TypeReject, TypeCancel:
		return true
	}
	return false
}

func validType(t string) bool {
	if t == "" || len(t) > 32 {
		return false
	}
	for _, c := range []byte(t) {
		if (c < 'a' || c > 'z') && c != '-' && c != '_' {
			return false
		}
	}
	return true
}

// Errors a caller may check.
var (
	ErrBadEntry      = errors.New("audit: malformed entry")
	ErrBadCheckpoint = errors.New("audit: malformed checkpoint")
	ErrMismatch      = errors.New("audit: log does not match the checkpoint (an entry was edited, dropped, inserted or reordered)")
	ErrShortLog      = errors.New("audit: log is shorter than the checkpoint")
	ErrDoubleSigned  = errors.New("audit: an item was signed more than once")
	ErrUnsubmitted   = errors.New("audit: a sign entry follows no submit entry of its request by its client")
	ErrUnapproved    = errors.New("audit: an item of an approval-gated key was signed before its approvals")
)

// Checkpoint is a tree head: the log's origin name, its size and root hash.
type Checkpoint struct {
	Origin string
	Size   int64
	Hash   tlog.Hash
}

// Text is the checkpoint's note text.
func (c Checkpoint) Text() string {
	return fmt.Sprintf("%s\n%d\n%s\n", c.Origin, c.Size, base64.StdEncoding.EncodeToString(c.Hash[:]))
}

// Sign returns the checkpoint as a signed note.
func (c Checkpoint) Sign(s note.Signer) ([]byte, error) {
	return note.Sign(&note.Note{Text: c.Text()}, s)
}

// OpenCheckpoint verifies a signed checkpoint note with v and parses it.
func OpenCheckpoint(msg []byte, v note.Verifier) (Checkpoint, error) {
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("audit: checkpoint signature: %w", err)
	}
	return ParseCheckpointText(n.Text)
}

// ParseCheckpointText parses the (already verified) text of a checkpoint.
func ParseCheckpointText(text string) (Checkpoint, error) {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 4 || lines[3] != "" || lines[0] == "" {
		return Checkpoint{}, fmt.Errorf("%w: want origin, size and hash lines", ErrBadCheckpoint)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return Checkpoint{}, fmt.Errorf("%w: bad size %q", ErrBadCheckpoint, lines[1])
	}
	h, err := base64.StdEncoding.Strict().DecodeString(lines[2])
	if err != nil || len(h) != tlog.HashSize {
		return Checkpoint{}, fmt.Errorf("%w: bad root hash %q", ErrBadCheckpoint, lines[2])
	}
	c := Checkpoint{Origin: lines[0], Size: size}
	copy(c.Hash[:], h)
	return c, nil
}

// Proof is an inclusion proof of one entry in the tree of a checkpoint.
type Proof struct {
	Index int64       `json:"index"`
	Entry string      `json:"entry"` // the entry's exact log line (a string: re-indenting must not change it)
	Proof []tlog.Hash `json:"proof"`
}

// MarshalJSON encodes p as encoding/json would encode its fields, in one
// pass rather than a call per hash: a response carries a proof per item.
func (p *Proof) MarshalJSON() ([]byte, error) {
	entry, err := json.Marshal(p.Entry)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, 32+len(entry)+len(p.Proof)*47)
	b = append(b, `{"index":`...)
	b = strconv.AppendInt(b, p.Index, 10)
	b = append(b, `,"entry":`...)
	b = append(b, entry...)
	b = append(b, `,"proof":`...)
	if p.Proof == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, h := range p.Proof {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '"')
			b = base64.StdEncoding.AppendEncode(b, h[:])
			b = append(b, '"')
		}
		b = append(b, ']')
	}
	return append(b, '}'), nil
}

// UnmarshalJSON decodes what MarshalJSON encodes, the proof's hashes in
// one pass.
func (p *Proof) UnmarshalJSON(b []byte) error {
	var raw struct {
		Index int64    `json:"index"`
		Entry string   `json:"entry"`
		Proof []string `json:"proof"`
	}
	if err := strictjson.Unmarshal(b, &raw); err != nil {
		return err
	}
	var hs []tlog.Hash
	if raw.Proof != nil {
		hs = make([]tlog.Hash, len(raw.Proof))
	}
	var buf [tlog.HashSize + 2]byte // DecodedLen of a padded hash
	for i, s := range raw.Proof {
		if len(s) != base64.StdEncoding.EncodedLen(tlog.HashSize) {
			return fmt.Errorf("audit: proof hash %d: %q is not a base64 hash", i, s)
		}
		if n, err := base64.StdEncoding.Strict().Decode(buf[:], []byte(s)); err != nil || n != tlog.HashSize {
			return fmt.Errorf("audit: proof hash %d: %q is not a base64 hash", i, s)
		}
		copy(hs[i][:], buf[:])
	}
	*p = Proof{Index: raw.Index, Entry: raw.Entry, Proof: hs}
	return nil
}

// Check verifies that p's entry is at p.Index in the tree of c.
func (p *Proof) Check(c Checkpoint) error {
	if p.Index < 0 || p.Index >= c.Size {
		return fmt.Errorf("audit: entry %d is outside the checkpoint's tree of %d entries", p.Index, c.Size)
	}
	if err := tlog.CheckRecord(tlog.RecordProof(p.Proof), c.Size, c.Hash, p.Index, tlog.RecordHash([]byte(p.Entry))); err != nil {
		return fmt.Errorf("audit: inclusion proof of entry %d: %w", p.Index, err)
	}
	e, err := ParseEntry([]byte(p.Entry))
	if err != nil {
		return err
	}
	if e.Index != p.Index {
		return fmt.Errorf("audit: entry claims index %d, proven at %d", e.Index, p.Index)
	}
	return nil
}

// Report summarises a verified log.
type Report struct {
	Entries int64            // entries read
	Types   map[string]int64 // entries by type (types this version does not know included)
	Signed  int64            // distinct items signed
	// Unauthenticated counts the entries past the checkpoint: they were
	// checked for form and semantics, but no signature covers them.
	Unauthenticated int64
}

// Unknown returns the entry types in the report this version does not
// know, sorted.
func (r *Report) Unknown() []string {
	var out []string
	for t := range r.Types {
		if !Known(t) {
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out
}

// VerifyOptions add the service's key policy to VerifyLog's checks.
type VerifyOptions struct {
	// Approvals is, per key, the distinct approvals its items need
	// before their sign entry (as the service's configuration or its
	// /v1/keys say). A key not listed needs none.
	Approvals map[string]int
	// Approvers, when set, is per client the keys it may approve (the
	// configuration's approve lists): only those approvals count.
	Approvers map[string]map[string]bool
}

// VerifyLog reads an exported log (one entry per line, of any length) and
// checks it against the checkpoint c: the first c.Size entries must hash to
// c.Hash, every line must parse and carry its own index, no item (request,
// item id) may be signed twice, every sign entry must follow a submit entry
// of its request by the client the sign entry names, and an item of a key
// that needs approvals (o.Approvals) must follow that many approve entries
// of its request by distinct clients other than the submitter. Entries
// beyond c.Size get the same checks and are counted as unauthenticated.
func VerifyLog(r io.Reader, c Checkpoint, o ...VerifyOptions) (*Report, error) {
	var opt VerifyOptions
	if len(o) > 0 {
		opt = o[0]
	}
	br := bufio.NewReaderSize(r, 64<<10)
	var (
		hashes    []tlog.Hash // stored hashes, in memory
		n         int64
		rep       = &Report{Types: map[string]int64{}}
		signed    = map[[2]string]int64{}
		submitter = map[string]map[string]bool{} // request → clients that submitted it
		approvers = map[string]map[string]bool{} // request → distinct approvers
		// semErr is the first semantic error: reported once the tree
		// hash matched, so an edited log is reported as edited.
		semErr error
	)
	reader := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			if x < 0 || x >= int64(len(hashes)) {
				return nil, fmt.Errorf("audit: hash %d not stored", x)
			}
			out[i] = hashes[x]
		}
		return out, nil
	})
	var line []byte
	for {
		var err error
		line, err = readLine(br, line[:0])
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		e, err := ParseEntry(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		if e.Index != n {
			return nil, fmt.Errorf("line %d: entry claims index %d: %w", n+1, e.Index, ErrMismatch)
		}
		if n < c.Size {
			hs, err := tlog.StoredHashes(n, line, reader)
			if err != nil {
				return nil, err
			}
			hashes = append(hashes, hs...)
		} else {
			rep.Unauthenticated++
		}
		rep.Types[e.Type]++
		switch e.Type {
		case TypeSubmit:
			if submitter[e.Request] == nil {
				submitter[e.Request] = map[string]bool{}
			}
			submitter[e.Request][e.Client] = true
		case TypeApprove:
			if approvers[e.Request] == nil {
				approvers[e.Request] = map[string]bool{}
			}
			approvers[e.Request][e.Client] = true
		case TypeSign:
			k := [2]string{e.Request, e.Item}
			if prev, dup := signed[k]; dup && semErr == nil {
				semErr = fmt.Errorf("item %q of request %s: entries %d and %d: %w", e.Item, e.Request, prev, e.Index, ErrDoubleSigned)
			}
			signed[k] = e.Index
			if !submitter[e.Request][e.Client] && semErr == nil {
				semErr = fmt.Errorf("entry %d signs item %q of request %s for client %q, which no earlier entry shows submitted: %w", e.Index, e.Item, e.Request, e.Client, ErrUnsubmitted)
			}
			if need := opt.Approvals[e.Key]; need > 0 {
				got := 0
				for a := range approvers[e.Request] {
					if a != e.Client && (opt.Approvers == nil || opt.Approvers[a][e.Key]) {
						got++
					}
				}
				if got < need && semErr == nil {
					semErr = fmt.Errorf("entry %d signs item %q of request %s with key %q after %d approvals, the key needs %d: %w", e.Index, e.Item, e.Request, e.Key, got, need, ErrUnapproved)
				}
			}
		}
		n++
	}
	if n < c.Size {
		return nil, fmt.Errorf("%w: %d entries, checkpoint covers %d", ErrShortLog, n, c.Size)
	}
	th, err := tlog.TreeHash(c.Size, reader)
	if err != nil {
		return nil, err
	}
	if th != c.Hash {
		return nil, ErrMismatch
	}
	if semErr != nil {
		return nil, semErr
	}
	rep.Entries = n
	rep.Signed = int64(len(signed))
	return rep, nil
}

// readLine appends the next line of br (without its newline) to buf,
// however long it is; io.EOF only when no byte is left.
func readLine(br *bufio.Reader, buf []byte) ([]byte, error) {
	for {
		chunk, err := br.ReadSlice('\n')
		buf = append(buf, chunk...)
		switch {
		case err == nil:
			return buf[:len(buf)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF && len(buf) > 0:
			return buf, nil // a last line without its newline
		default:
			return buf, err
		}
	}
}
