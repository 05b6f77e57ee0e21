package audit

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// buildLog makes a log of n entries and its checkpoint, signed.
func buildLog(t testing.TB, n int) ([]byte, Checkpoint, []byte, note.Verifier) {
	var hashes []tlog.Hash
	r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = hashes[x]
		}
		return out, nil
	})
	var log bytes.Buffer
	for i := range n {
		e := &Entry{Index: int64(i), Time: time.Unix(1700000000, 0).UTC(), Type: TypeSign, Client: "ci", Request: "r", Item: fmt.Sprint("item", i)}
		if i == 0 {
			e = &Entry{Index: 0, Time: e.Time, Type: TypeSubmit, Client: "ci", Request: "r", Items: 100}
		}
		line := e.Marshal()
		hs, err := tlog.StoredHashes(int64(i), line, r)
		if err != nil {
			t.Fatal(err)
		}
		hashes = append(hashes, hs...)
		log.Write(line)
		log.WriteByte('\n')
	}
	root, err := tlog.TreeHash(int64(n), r)
	if err != nil {
		t.Fatal(err)
	}
	skey, vkey, _ := note.GenerateKey(rand.Reader, "test/audit")
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	cp := Checkpoint{Origin: "test/audit", Size: int64(n), Hash: root}
	signed, err := cp.Sign(s)
	if err != nil {
		t.Fatal(err)
	}
	return log.Bytes(), cp, signed, v
}

func TestVerifyLog(t *testing.T) {
	log, cp, signed, v := buildLog(t, 9)
	got, err := OpenCheckpoint(signed, v)
	if err != nil || got != cp {
		t.Fatalf("checkpoint round trip: %v %+v", err, got)
	}
	if _, err := OpenCheckpoint(bytes.Replace(signed, []byte("\n9\n"), []byte("\n8\n"), 1), v); err == nil {
		t.Fatal("edited checkpoint opened")
	}
	rep, err := VerifyLog(bytes.NewReader(log), cp)
	if err != nil || rep.Entries != 9 || rep.Signed != 8 || rep.Unauthenticated != 0 {
		t.Fatalf("%v %+v", err, rep)
	}
	lines := strings.SplitAfter(string(log), "\n")
	lines = lines[:len(lines)-1]
	dupItem := strings.Replace(string(log), `"item":"item4"`, `"item":"item3"`, 1)
	for name, c := range map[string]struct {
		log  string
		want error
	}{
		"edited":    {strings.Replace(string(log), `"item":"item2"`, `"item":"itemX"`, 1), ErrMismatch},
		"dropped":   {strings.Join(append(append([]string{}, lines[:2]...), lines[3:]...), ""), ErrMismatch},
		"reordered": {lines[1] + lines[0] + strings.Join(lines[2:], ""), ErrMismatch},
		"truncated": {strings.Join(lines[:8], ""), ErrShortLog},
		"double":    {dupItem, ErrMismatch}, // edited: reported as such

		"garbage line": {strings.Replace(string(log), lines[5], "{}\n", 1), ErrBadEntry},
	} {
		if _, err := VerifyLog(strings.NewReader(c.log), cp); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	// A log that grew past the checkpoint still verifies its prefix.
	more, _, _, _ := buildLog(t, 12)
	if rep, err := VerifyLog(bytes.NewReader(more), cp); err != nil || rep.Unauthenticated != 3 || rep.Entries != 12 {
		t.Fatalf("grown log: %v %+v", err, rep)
	}
}

func FuzzParseEntry(f *testing.F) {
	log, _, _, _ := buildLog(f, 1)
	f.Add(bytes.TrimSpace(log))
	f.Add([]byte(`{"index":0,"type":"refuse","status":403}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseEntry(b)
		if err != nil {
			return
		}
		if _, err := ParseEntry(e.Marshal()); err != nil {
			t.Fatalf("re-encoded entry does not parse: %v", err)
		}
	})
}

func FuzzCheckpoint(f *testing.F) {
	_, cp, signed, _ := buildLog(f, 3)
	f.Add(cp.Text())
	f.Add(string(signed))
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCheckpointText(s)
		if err != nil {
			return
		}
		if c.Text() != s {
			t.Fatalf("checkpoint %q re-encodes as %q", s, c.Text())
		}
	})
}

func FuzzVerifyLog(f *testing.F) {
	log, cp, _, _ := buildLog(f, 5)
	f.Add(log)
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := VerifyLog(bytes.NewReader(b), cp); err == nil && !bytes.Equal(b, log) && !bytes.HasPrefix(b, log) {
			t.Fatalf("a different log verified")
		}
	})
}

// Proof's own encoding is byte for byte what encoding/json makes of its
// fields (HTML-escaped entry, base64 hashes, null for no proof), alone and
// inside other documents, indented or not.
func TestProofJSON(t *testing.T) {
	type plain Proof // the same fields without the MarshalJSON method
	var h tlog.Hash
	for i := range h {
		h[i] = byte(i * 7)
	}
	for _, p := range []Proof{
		{Index: 0, Entry: "", Proof: nil},
		{Index: 1, Entry: `{"type":"sign","item":"a<b>&c"}`, Proof: []tlog.Hash{}},
		{Index: 1<<40 + 3, Entry: "é\u2028\x01\"\\", Proof: []tlog.Hash{h, {}, h}},
	} {
		want, err := json.Marshal(plain(p))
		if err != nil {
			t.Fatal(err)
		}
		got, err := json.Marshal(&p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("proof %d:\n got %s\nwant %s", p.Index, got, want)
		}
		wantI, _ := json.MarshalIndent(map[string]any{"p": plain(p)}, "", "  ")
		gotI, _ := json.MarshalIndent(map[string]any{"p": &p}, "", "  ")
		if !bytes.Equal(gotI, wantI) {
			t.Errorf("indented proof %d:\n got %s\nwant %s", p.Index, gotI, wantI)
		}
		var back Proof
		if err := json.Unmarshal(got, &back); err != nil || back.Index != p.Index || back.Entry != p.Entry || !slices.Equal(back.Proof, p.Proof) || (back.Proof == nil) != (p.Proof == nil) {
			t.Errorf("proof %d does not decode back: %v %+v", p.Index, err, back)
		}
		// tlog.Hash's own decoding agrees.
		var viaHash plain
		if err := json.Unmarshal(got, &viaHash); err != nil || !slices.Equal(viaHash.Proof, back.Proof) {
			t.Errorf("proof %d: tlog.Hash decodes %v (%v), Proof %v", p.Index, viaHash.Proof, err, back.Proof)
		}
	}
}

// Proof decoding refuses hashes that are not 32 bytes of padded base64.
func TestProofJSONBadHash(t *testing.T) {
	for _, h := range []string{`""`, `"AAAA"`, `"` + strings.Repeat("A", 43) + `"`, `"` + strings.Repeat("A", 43) + `="` + `,"x"`, `"` + strings.Repeat("A", 42) + `B="`, `"` + strings.Repeat("A", 44) + `"`, `1`} {
		var p Proof
		if err := json.Unmarshal([]byte(`{"index":1,"entry":"e","proof":[`+h+`]}`), &p); err == nil {
			t.Errorf("proof hash %s accepted: %v", h, p.Proof)
		}
	}
}

// Proof decoding never panics, and what it accepts encodes and decodes
// back to itself.
func FuzzProofJSON(f *testing.F) {
	h := base64.StdEncoding.EncodeToString(make([]byte, 32))
	f.Add([]byte(`{"index":3,"entry":"{\"type\":\"sign\"}","proof":["` + h + `"]}`))
	f.Add([]byte(`{"index":0,"entry":"","proof":null}`))
	f.Add([]byte(`{"proof":["` + h[:43] + `="]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Proof
		if json.Unmarshal(b, &p) != nil {
			return
		}
		enc, err := json.Marshal(&p)
		if err != nil {
			t.Fatal(err)
		}
		var q Proof
		if err := json.Unmarshal(enc, &q); err != nil || q.Index != p.Index || q.Entry != p.Entry || !slices.Equal(q.Proof, p.Proof) {
			t.Fatalf("%s: round trip %s gave %+v (%v)", b, enc, q, err)
		}
	})
}

// logOf hashes entries into a log and returns it with its checkpoint.
func logOf(t *testing.T, entries []*Entry) ([]byte, Checkpoint) {
	var hashes []tlog.Hash
	r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = hashes[x]
		}
		return out, nil
	})
	var log bytes.Buffer
	for i, e := range entries {
		e.Index = int64(i)
		line := e.Marshal()
		hs, err := tlog.StoredHashes(int64(i), line, r)
		if err != nil {
			t.Fatal(err)
		}
		hashes = append(hashes, hs...)
		log.Write(line)
		log.WriteByte('\n')
	}
	root, err := tlog.TreeHash(int64(len(entries)), r)
	if err != nil {
		t.Fatal(err)
	}
	return log.Bytes(), Checkpoint{Origin: "test/audit", Size: int64(len(entries)), Hash: root}
}

func TestVerifySemantics(t *testing.T) {
	tm := time.Unix(1700000000, 0).UTC()
	sub := &Entry{Time: tm, Type: TypeSubmit, Client: "ci", Request: "r1", Items: 1}
	sign := func(client, key string) *Entry {
		return &Entry{Time: tm, Type: TypeSign, Client: client, Request: "r1", Item: "a", Key: key}
	}
	appr := func(client string) *Entry { return &Entry{Time: tm, Type: TypeApprove, Client: client, Request: "r1"} }
	gated := VerifyOptions{Approvals: map[string]int{"db": 2}}
	for name, c := range map[string]struct {
		entries []*Entry
		opt     VerifyOptions
		want    error
	}{
		"ok":                {[]*Entry{sub, sign("ci", "db")}, VerifyOptions{}, nil},
		"no submit":         {[]*Entry{sign("ci", "db")}, VerifyOptions{}, ErrUnsubmitted},
		"sign before":       {[]*Entry{sign("ci", "db"), sub}, VerifyOptions{}, ErrUnsubmitted},
		"other client":      {[]*Entry{sub, sign("mallory", "db")}, VerifyOptions{}, ErrUnsubmitted},
		"approved":          {[]*Entry{sub, appr("alice"), appr("bob"), sign("ci", "db")}, gated, nil},
		"one approval":      {[]*Entry{sub, appr("alice"), appr("alice"), sign("ci", "db")}, gated, ErrUnapproved},
		"self approval":     {[]*Entry{sub, appr("ci"), appr("bob"), sign("ci", "db")}, gated, ErrUnapproved},
		"approved too late": {[]*Entry{sub, appr("alice"), sign("ci", "db"), appr("bob")}, gated, ErrUnapproved},
		"double signed":     {[]*Entry{sub, sign("ci", "db"), sign("ci", "db")}, VerifyOptions{}, ErrDoubleSigned},
		"approver of another key": {[]*Entry{sub, appr("alice"), appr("bob"), sign("ci", "db")},
			VerifyOptions{Approvals: gated.Approvals, Approvers: map[string]map[string]bool{"alice": {"db": true}, "bob": {"uki": true}}}, ErrUnapproved},
		"approvers of the key": {[]*Entry{sub, appr("alice"), appr("bob"), sign("ci", "db")},
			VerifyOptions{Approvals: gated.Approvals, Approvers: map[string]map[string]bool{"alice": {"db": true}, "bob": {"db": true}}}, nil},
		"ungated key":  {[]*Entry{sub, sign("ci", "uki")}, gated, nil},
		"unknown type": {[]*Entry{sub, {Time: tm, Type: "rotate", Client: "ci", Request: "r1"}, sign("ci", "db")}, VerifyOptions{}, nil},
	} {
		for _, e := range c.entries {
			e.Index = 0
		}
		// Copies: logOf sets indexes and entries are shared between cases.
		var es []*Entry
		for _, e := range c.entries {
			cp := *e
			es = append(es, &cp)
		}
		log, cp := logOf(t, es)
		rep, err := VerifyLog(bytes.NewReader(log), cp, c.opt)
		if !errors.Is(err, c.want) || (err != nil) != (c.want != nil) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
		if name == "unknown type" && (err != nil || rep.Types["rotate"] != 1 || !slices.Equal(rep.Unknown(), []string{"rotate"})) {
			t.Errorf("unknown type: %v %+v", err, rep)
		}
	}
}

// An entry of any size the service stored is read back; a stored string is
// never longer than MaxString plus its truncation note.
func TestLongEntries(t *testing.T) {
	tm := time.Unix(1700000000, 0).UTC()
	huge := strings.Repeat("é", 9<<20) // 18 MiB, two bytes a rune
	e := &Entry{Time: tm, Type: TypeRefuse, Client: "ci", Request: "r", Status: 422, Reason: huge}
	line := e.Marshal()
	if len(line) > 2*MaxString {
		t.Fatalf("refusal of an 18 MiB reason is a %d-byte entry", len(line))
	}
	got, err := ParseEntry(line)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(huge))
	want := fmt.Sprintf(" …[truncated, %d bytes, sha256:%x]", len(huge), sum)
	if !strings.HasSuffix(got.Reason, want) || !utf8.ValidString(got.Reason) || !strings.HasPrefix(huge, strings.TrimSuffix(got.Reason, want)) {
		t.Fatalf("bounded reason %q...", got.Reason[len(got.Reason)-120:])
	}
	if Bound("short") != "short" {
		t.Fatal("short string changed")
	}
	// A log line longer than any fixed buffer (a service of an earlier
	// version stored unbounded reasons) still verifies.
	var raw bytes.Buffer
	raw.WriteString(`{"index":1,"time":"2023-11-14T22:13:20Z","type":"refuse","client":"ci","status":422,"reason":"`)
	raw.WriteString(strings.Repeat("x", 20<<20))
	raw.WriteString(`"}`)
	entries := []*Entry{{Time: tm, Type: TypeSubmit, Client: "ci", Request: "r"}}
	first, _ := logOf(t, entries)
	var hashes []tlog.Hash
	r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = hashes[x]
		}
		return out, nil
	})
	for i, l := range [][]byte{bytes.TrimSuffix(first, []byte("\n")), raw.Bytes()} {
		hs, err := tlog.StoredHashes(int64(i), l, r)
		if err != nil {
			t.Fatal(err)
		}
		hashes = append(hashes, hs...)
	}
	root, _ := tlog.TreeHash(2, r)
	log := append(first, raw.Bytes()...) // the last line without a newline
	rep, err := VerifyLog(bytes.NewReader(log), Checkpoint{Origin: "o", Size: 2, Hash: root})
	if err != nil || rep.Entries != 2 || rep.Types[TypeRefuse] != 1 {
		t.Fatalf("20 MiB entry: %v %+v", err, rep)
	}
}

func TestParseEntryStrict(t *testing.T) {
	for _, in := range []string{
		`{"index":0,"type":"sign","client":"a","client":"b"}`,
		`{"index":0,"type":"sign","Client":"b"}`,
		`{"index":0,"type":"Sign"}`,
		`{"index":0,"type":""}`,
		`{"index":0,"type":"sign"} {}`,
	} {
		if _, err := ParseEntry([]byte(in)); !errors.Is(err, ErrBadEntry) {
			t.Errorf("%s: %v", in, err)
		}
	}
}
