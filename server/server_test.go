package server

import (
	"bytes"
	"context"
	"crypto"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/keys"
	"signet.dev/request"
	"signet.dev/server/api"
	"signet.dev/server/audit"
	"signet.dev/server/client"
	"signet.dev/server/store"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func status(err error) int {
	var e *client.Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// exportLog reads the service's checkpoint and whole log.
func exportLog(t *testing.T, c *client.Client, vkey string) (audit.Checkpoint, []byte, []byte) {
	t.Helper()
	cpData, err := c.Checkpoint(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	v, err := noteVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := audit.OpenCheckpoint(cpData, v)
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	if err := c.AuditLog(ctxT(t), &log, cp.Size); err != nil {
		t.Fatal(err)
	}
	return cp, cpData, log.Bytes()
}

func entriesOf(t *testing.T, log []byte) []*audit.Entry {
	var out []*audit.Entry
	for _, l := range bytes.Split(bytes.TrimSuffix(log, []byte("\n")), []byte("\n")) {
		e, err := audit.ParseEntry(l)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// A request to a file key and a SoftHSM2 key is signed; the response
// verifies against the request, its audit proofs against the pinned note
// key, and openssl accepts a signature over the root hash. Submitting the
// same request again is the same request.
func TestSubmitSignFetch(t *testing.T) {
	e := newEnv(t, nil)
	c := e.client("ci")
	req, body := newRequest(t, 40, "verity")
	for i := 0; i < 40; i += 2 {
		req.Items[i].Key = "hsm"
	}
	body, _ = req.Marshal()
	st, err := c.Submit(ctxT(t), body)
	if err != nil {
		t.Fatal(err)
	}
	d := req.Digest()
	if want := strings.TrimPrefix(req.DigestString(), "sha256:"); st.ID != want || len(d) != 32 {
		t.Fatalf("id %s, want %s", st.ID, want)
	}
	res, err := c.Wait(ctxT(t), st.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.VerifyResult(req, res, e.vkey); err != nil {
		t.Fatal(err)
	}
	// A different pinned key must not accept the proofs.
	_, other := writeNoteKey(t, t.TempDir())
	if err := client.VerifyResult(req, res, other); err == nil {
		t.Fatal("proofs verified under another log's key")
	}

	// openssl judges one signature of each key.
	dir := t.TempDir()
	for _, i := range []int{0, 1} {
		it := req.Items[i]
		pub := e.fileKey.PubPath
		if it.Key == "hsm" {
			pub = e.hsmKey.PubPath
		}
		tbs, sig := filepath.Join(dir, "tbs"), filepath.Join(dir, "sig")
		os.WriteFile(tbs, it.TBS, 0o644)
		os.WriteFile(sig, res.Response.Signature(it.ID).Signature, 0o644)
		out := testenv.Run(t, "openssl", "dgst", "-sha256", "-verify", pub, "-signature", sig, tbs)
		testenv.Contains(t, out, "Verified OK")
	}

	// Same request, other whitespace: one request.
	var pretty bytes.Buffer
	json.Indent(&pretty, body, "", "    ")
	st2, err := c.Submit(ctxT(t), pretty.Bytes())
	if err != nil || st2.ID != st.ID || st2.State != api.StateSigned {
		t.Fatalf("resubmission: %v %+v", err, st2)
	}
	_, _, log := exportLog(t, c, e.vkey)
	n := map[string]int{}
	for _, en := range entriesOf(t, log) {
		n[en.Type]++
	}
	if n[audit.TypeSubmit] != 1 || n[audit.TypeSign] != 40 {
		t.Fatalf("audit log: %v, want 1 submit and 40 sign", n)
	}

	// Keys are listed with their certificates.
	ks, err := c.Keys(ctxT(t))
	if err != nil || len(ks) != 3 || ks[0].Name != "verity" || !strings.Contains(ks[1].Certificate, "BEGIN CERTIFICATE") {
		t.Fatalf("keys: %v %+v", err, ks)
	}
}

// Unknown clients get 401; a client using a key or kind it may not gets
// 403 and an audit entry; a mis-typed item is refused with its reason;
// nothing refused is stored.
func TestAuthAndPolicy(t *testing.T) {
	e := newEnv(t, nil)
	_, body := newRequest(t, 2, "verity")
	for _, tok := range []string{"", "not-a-token", strings.ToUpper(e.tokens["ci"])} {
		c, _ := client.New(e.http.URL, client.Options{Token: tok})
		if _, err := c.Submit(ctxT(t), body); status(err) != http.StatusUnauthorized {
			t.Fatalf("token %q: %v, want 401", tok, err)
		}
		if _, err := c.Keys(ctxT(t)); status(err) != http.StatusUnauthorized {
			t.Fatalf("token %q: keys: %v, want 401", tok, err)
		}
	}
	// alice may approve but not submit; limited may use "verity" only for
	// manifests.
	if _, err := e.client("alice").Submit(ctxT(t), body); status(err) != http.StatusForbidden || !strings.Contains(err.Error(), `may not use key "verity"`) {
		t.Fatalf("alice: %v, want 403", err)
	}
	if _, err := e.client("limited").Submit(ctxT(t), body); status(err) != http.StatusForbidden || !strings.Contains(err.Error(), "may not submit verity-roothash") {
		t.Fatalf("limited: %v, want 403", err)
	}
	// The key itself does not sign this kind.
	r2 := &request.Request{Format: request.FormatRequest, Items: []request.Item{verityItem("a", "hsm")}}
	r2.Items[0].Kind = request.KindManifestPKCS7
	r2.Items[0].Verity = nil
	r2.Items[0].TBS = []byte("0000000000000000000000000000000000000000000000000000000000000000  a\n")
	r2.Items[0].Manifest = &request.ManifestContext{File: "SHA256SUMS", Entries: []request.ManifestEntry{{Name: "a", SHA256: strings.Repeat("0", 64)}}}
	b2, err := r2.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client("ci").Submit(ctxT(t), b2); status(err) != http.StatusForbidden || !strings.Contains(err.Error(), "does not sign manifest-pkcs7") {
		t.Fatalf("kind not allowed for key: %v, want 403", err)
	}
	// Mis-typed: the TBS is not the context's root hash.
	r3, _ := newRequest(t, 3, "verity")
	r3.Items[1].TBS = append([]byte(nil), r3.Items[1].TBS...)
	r3.Items[1].TBS[0] ^= 1
	b3, _ := r3.Marshal()
	_, err = e.client("ci").Submit(ctxT(t), b3)
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != http.StatusUnprocessableEntity || len(ce.Body.Items) != 1 || ce.Body.Items[0].ID != r3.Items[1].ID || !strings.Contains(ce.Body.Items[0].Reason, "root hash") {
		t.Fatalf("mis-typed item: %v, want 422 naming item 1", err)
	}
	if _, err := e.client("ci").Status(ctxT(t), strings.TrimPrefix(r3.DigestString(), "sha256:")); status(err) != http.StatusNotFound {
		t.Fatalf("refused request was stored: %v", err)
	}
	// Four refusals audited (alice, limited, key kind, mis-typed), nothing else.
	_, _, log := exportLog(t, e.client("ci"), e.vkey)
	ents := entriesOf(t, log)
	if len(ents) != 4 {
		t.Fatalf("%d audit entries, want 4 refusals", len(ents))
	}
	for _, en := range ents {
		if en.Type != audit.TypeRefuse || en.Reason == "" {
			t.Fatalf("entry %+v, want a refusal with a reason", en)
		}
	}
	if ents[0].Client != "alice" || ents[0].Status != 403 || ents[3].Status != 422 {
		t.Fatalf("refusals: %+v %+v", ents[0], ents[3])
	}
}

// An approval-gated key signs nothing until enough distinct approvers,
// other than the submitter, have approved.
func TestApprovals(t *testing.T) {
	e := newEnv(t, nil)
	req, body := newRequest(t, 3, "gated")
	req.Items[2].Key = "verity" // not gated: signed at once
	body, _ = req.Marshal()
	ci := e.client("approver-ci")
	st, err := ci.Submit(ctxT(t), body)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != api.StateApproval || st.Approvals["gated"] != 2 {
		t.Fatalf("state %+v", st)
	}
	waitItem := func(id string, want string) {
		deadline := time.Now().Add(20 * time.Second)
		for {
			st, err := ci.Status(ctxT(t), st.ID)
			if err != nil {
				t.Fatal(err)
			}
			for _, it := range st.Items {
				if it.ID == id && it.State == want {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("item %s never reached %s: %+v", id, want, st)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitItem(req.Items[2].ID, api.StateSigned)
	if _, err := ci.Fetch(ctxT(t), st.ID); !errors.Is(err, client.ErrNotSigned) {
		t.Fatalf("fetch before approval: %v", err)
	}
	// The submitter may not approve its own request, even with the right.
	if _, err := ci.Approve(ctxT(t), st.ID); status(err) != http.StatusForbidden {
		t.Fatalf("self-approval: %v, want 403", err)
	}
	// A client without the right cannot see it.
	if _, err := e.client("limited").Approve(ctxT(t), st.ID); status(err) != http.StatusNotFound {
		t.Fatalf("stranger approval: %v, want 404", err)
	}
	a, b := e.client("alice"), e.client("bob")
	for range 2 { // approving twice is one approval
		s2, err := a.Approve(ctxT(t), st.ID)
		if err != nil {
			t.Fatal(err)
		}
		if s2.State != api.StateApproval || len(s2.Approvers) != 1 {
			t.Fatalf("after alice: %+v", s2)
		}
	}
	time.Sleep(300 * time.Millisecond)
	s3, _ := ci.Status(ctxT(t), st.ID)
	if s3.Items[0].State != api.StateApproval || s3.Items[1].State != api.StateApproval {
		t.Fatalf("gated items moved with one approver: %+v", s3)
	}
	if _, err := b.Approve(ctxT(t), st.ID); err != nil {
		t.Fatal(err)
	}
	res, err := ci.Wait(ctxT(t), st.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.VerifyResult(req, res, e.vkey); err != nil {
		t.Fatal(err)
	}
	// An approver repeating its approval (a retry whose answer was lost)
	// gets the status again; a new approval of a signed request is 409.
	if _, err := b.Approve(ctxT(t), st.ID); err != nil {
		t.Fatalf("repeated approval: %v", err)
	}
	if _, err := e.client("approver-ci").Approve(ctxT(t), st.ID); status(err) != http.StatusConflict {
		t.Fatalf("approval of a signed request: %v, want 409", err)
	}
	_, _, log := exportLog(t, ci, e.vkey)
	var approvals, refusals int
	for _, en := range entriesOf(t, log) {
		switch en.Type {
		case audit.TypeApprove:
			approvals++
		case audit.TypeRefuse:
			refusals++
		}
	}
	if approvals != 2 || refusals != 1 {
		t.Fatalf("%d approve and %d refuse entries, want 2 and 1", approvals, refusals)
	}
}

// Bad input gets a 4xx with a reason, stores nothing, and the service keeps
// serving.
func TestBadInput(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Limits.MaxRequestBytes = 64 << 10; c.Limits.MaxItems = 20 })
	c := e.client("ci")
	_, big := newRequest(t, 300, "verity")
	_, many := newRequest(t, 21, "verity")
	req, _ := newRequest(t, 2, "verity")
	req.Items[1].ID = req.Items[0].ID
	dup, _ := json.Marshal(req)
	req2, _ := newRequest(t, 2, "nosuchkey")
	unknownKey, _ := req2.Marshal()
	cases := []struct {
		name string
		body []byte
		code int
		msg  string
	}{
		{"oversized", big, 413, "exceeds the limit"},
		{"too many items", many, 413, "21 items, the limit is 20"},
		{"not json", []byte("garbage\x00\xff"), 400, "invalid"},
		{"empty", nil, 400, "invalid"},
		{"wrong format", []byte(`{"format":"signet.request/v9","items":[]}`), 400, "format"},
		{"no items", []byte(`{"format":"signet.request/v1","items":[]}`), 400, "no items"},
		{"unknown field", []byte(`{"format":"signet.request/v1","items":[],"x":1}`), 400, "unknown field"},
		{"duplicate ids", dup, 400, "duplicate id"},
		{"unknown key", unknownKey, 400, `no key named "nosuchkey"`},
		{"bad base64", []byte(`{"format":"signet.request/v1","items":[{"id":"a","kind":"verity-roothash","key":"verity","hash":"sha256","tbs":"!!","verity":{"image":"x","rootHash":"00"}}]}`), 400, "invalid"},
		{"bad hash", []byte(`{"format":"signet.request/v1","items":[{"id":"a","kind":"verity-roothash","key":"verity","hash":"md5","tbs":"AA==","verity":{"image":"x","rootHash":"00"}}]}`), 400, "md5"},
		{"bad id", []byte(`{"format":"signet.request/v1","items":[{"id":"../x","kind":"verity-roothash","key":"verity","hash":"sha256","tbs":"AA==","verity":{"image":"x","rootHash":"00"}}]}`), 400, "clean relative path"},
	}
	for _, tc := range cases {
		_, err := c.Submit(ctxT(t), tc.body)
		if status(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want %d mentioning %q", tc.name, err, tc.code, tc.msg)
		}
	}
	for _, id := range []string{"xyz", strings.Repeat("A", 64), strings.Repeat("0", 63)} {
		if _, err := c.Status(ctxT(t), id); status(err) != 400 {
			t.Errorf("status %q: %v, want 400", id, err)
		}
	}
	if _, err := c.Status(ctxT(t), strings.Repeat("0", 64)); status(err) != 404 {
		t.Errorf("unknown id: %v, want 404", err)
	}
	cp, _, log := exportLog(t, c, e.vkey)
	if cp.Size != 0 || len(log) != 0 {
		t.Fatalf("bad input reached the audit log: %d entries", cp.Size)
	}
	resp, err := http.Get(e.http.URL + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz after bad input: %v", err)
	}
	// Still signs.
	r, b := newRequest(t, 3, "verity")
	st, err := c.Submit(ctxT(t), b)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Wait(ctxT(t), st.ID)
	if err != nil || client.VerifyResult(r, res, e.vkey) != nil {
		t.Fatalf("after bad input: %v", err)
	}
}

// A client over its rate gets 429.
func TestRateLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Limits.Rate = 0.5; c.Limits.Burst = 3 })
	c := e.client("ci")
	c.RetryFor = 0 // see the 429s, not their retries
	var codes []int
	for range 5 {
		_, err := c.Keys(ctxT(t))
		codes = append(codes, status(err))
	}
	if codes[2] != 0 || codes[3] != http.StatusTooManyRequests || codes[4] != http.StatusTooManyRequests {
		t.Fatalf("codes %v, want 3 OK then 429", codes)
	}
	// Another client has its own bucket.
	if _, err := e.client("alice").Keys(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// The exported log verifies against the signed checkpoint; editing,
// dropping or reordering an entry, in the file or in the database, fails
// signet audit verify's check.
func TestAuditTamper(t *testing.T) {
	e := newEnv(t, nil)
	c := e.client("ci")
	for range 3 {
		_, b := newRequest(t, 4, "verity")
		st, err := c.Submit(ctxT(t), b)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Wait(ctxT(t), st.ID); err != nil {
			t.Fatal(err)
		}
	}
	cp, _, log := exportLog(t, c, e.vkey)
	if cp.Size != 15 {
		t.Fatalf("checkpoint size %d, want 15", cp.Size)
	}
	rep, err := audit.VerifyLog(bytes.NewReader(log), cp)
	if err != nil || rep.Signed != 12 {
		t.Fatalf("clean log: %v %+v", err, rep)
	}
	lines := bytes.SplitAfter(log, []byte("\n"))
	lines = lines[:len(lines)-1]
	join := func(ls [][]byte) []byte { return bytes.Join(ls, nil) }
	edited := bytes.Replace(log, []byte(`"client":"ci"`), []byte(`"client":"cj"`), 1)
	dropped := join(append(append([][]byte{}, lines[:5]...), lines[6:]...))
	swapped := append([][]byte{}, lines...)
	swapped[3], swapped[4] = swapped[4], swapped[3]
	reindexed := bytes.Replace(join(swapped), []byte(`"index":4,`), []byte(`"index":X,`), 1)
	reindexed = bytes.Replace(reindexed, []byte(`"index":3,`), []byte(`"index":4,`), 1)
	reindexed = bytes.Replace(reindexed, []byte(`"index":X,`), []byte(`"index":3,`), 1)
	for name, bad := range map[string][]byte{"edited": edited, "dropped": dropped, "swapped": join(swapped), "swapped and renumbered": reindexed, "truncated": join(lines[:10])} {
		if _, err := audit.VerifyLog(bytes.NewReader(bad), cp); err == nil {
			t.Errorf("%s log verified", name)
		}
	}
	// Edit the database under the service: what it then serves fails
	// against the old checkpoint.
	e.stop()
	db, err := sql.Open("sqlite", e.cfg.Store.DSN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE audit_entries SET data = CAST(replace(CAST(data AS TEXT), '"client":"ci"', '"client":"xx"') AS BLOB) WHERE idx = 7`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	e.start()
	var again bytes.Buffer
	if err := e.client("ci").AuditLog(ctxT(t), &again, cp.Size); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(again.Bytes(), log) {
		t.Fatal("database edit did not change the served log")
	}
	if _, err := audit.VerifyLog(&again, cp); !errors.Is(err, audit.ErrMismatch) {
		t.Fatalf("log edited in the database: %v, want ErrMismatch", err)
	}
}

// The documented example configuration is valid.
func TestExampleConfig(t *testing.T) {
	cfg, err := LoadConfig("../docs/server.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Keys) != 3 || cfg.Keys[0].Approvals != 2 || cfg.TLS == nil || !filepath.IsAbs(cfg.Keys[0].Certificate) {
		t.Fatalf("%+v", cfg)
	}
	// A typo is an error, not a silently ignored setting.
	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte("listen = \"127.0.0.1:1\"\naudit_key = \"k\"\n[store]\ndsn = \"x\"\n[limits]\nmax_itmes = 3\n"), 0o600)
	if _, err := LoadConfig(bad); err == nil || !strings.Contains(err.Error(), `unknown setting "limits.max_itmes"`) {
		t.Fatalf("typo: %v", err)
	}
	// A negative interval is refused when read (a ticker of one would panic).
	for _, k := range []string{"lease", "poll", "retry", "shutdown_timeout"} {
		_, err := ParseConfig([]byte("listen = \"127.0.0.1:1\"\naudit_key = \"k\"\n"+k+" = \"-1s\"\n"), t.TempDir())
		if err == nil || !strings.Contains(err.Error(), "duration -1s: must be positive") {
			t.Errorf("%s = -1s: %v", k, err)
		}
	}
}

// Stop finishes the batches in flight: afterwards every item is either
// signed or still queued without a lease, never claimed and abandoned.
func TestStopFinishesInFlight(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Batch = 8 })
	c := e.client("ci")
	_, body := newRequest(t, 120, "hsm")
	st, err := c.Submit(ctxT(t), body)
	if err != nil {
		t.Fatal(err)
	}
	// Stop once signing is under way.
	for {
		s, err := c.Status(ctxT(t), st.ID)
		if err != nil {
			t.Fatal(err)
		}
		if s.Items[0].State == api.StateSigned {
			break
		}
		time.Sleep(time.Millisecond)
	}
	e.srv.Stop(context.Background())
	db, err := sql.Open("sqlite", e.cfg.Store.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var signed, queued, leased int
	db.QueryRow(`SELECT COUNT(*) FROM items WHERE state = 'signed'`).Scan(&signed)
	db.QueryRow(`SELECT COUNT(*) FROM items WHERE state = 'pending' AND lease_owner IS NULL`).Scan(&queued)
	db.QueryRow(`SELECT COUNT(*) FROM items WHERE state = 'pending' AND lease_owner IS NOT NULL`).Scan(&leased)
	if signed+queued != 120 || leased != 0 || signed == 0 {
		t.Fatalf("after Stop: %d signed, %d queued, %d leased", signed, queued, leased)
	}
	t.Logf("stopped with %d signed, %d queued", signed, queued)
	// The metrics count what was stored.
	if got, want := e.metric(`signet_items_signed_total{key="hsm"}`), fmt.Sprint(signed); got != want {
		t.Fatalf("metrics count %s signed, want %s", got, want)
	}
}

// faultyToken answers with another key's signatures until fixed.
type faultyToken struct {
	keys.Signer
	other crypto.Signer
	fixed atomic.Bool
}

func (f *faultyToken) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if f.fixed.Load() {
		return f.Signer.Sign(r, digest, opts)
	}
	return f.other.Sign(r, digest, opts)
}

// A token that returns signatures its certificate does not verify gets
// nothing stored: no signature, no audit entry, an error counted and shown
// in the items' status; once it signs correctly again the items are
// signed after the retry interval, well before their lease would end.
func TestFaultySignatureNotStored(t *testing.T) {
	var ft *faultyToken
	e := newEnvHook(t, func(c *Config) { c.Retry.Duration = 200 * time.Millisecond; c.Lease.Duration = time.Hour }, func(s *Server) {
		k := s.keys["verity"]
		// Another RSA key (the test key cache holds one per kind; the
		// verity key is RSA-3072).
		ft = &faultyToken{Signer: k.signer, other: testkeys.Generate(t, testkeys.RSA2048).Signer}
		k.signer = ft
	})
	c := e.client("ci")
	req, body := newRequest(t, 3, "verity")
	st, err := c.Submit(ctxT(t), body)
	if err != nil {
		t.Fatal(err)
	}
	counted := func() string { return e.metric(`signet_sign_errors_total{key="verity"}`) }
	deadline := time.Now().Add(10 * time.Second)
	for counted() == "0" {
		if time.Now().After(deadline) {
			t.Fatal("no sign error counted for a faulty token")
		}
		time.Sleep(10 * time.Millisecond)
	}
	s, err := c.Status(ctxT(t), st.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range s.Items {
		if it.State != api.StatePending {
			t.Fatalf("item %s is %s after a faulty signature", it.ID, it.State)
		}
	}
	// The reason shows once the failed items are given back.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(s.Items[0].Error, "does not verify"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("status shows no error for a faulty signature: %+v", s.Items)
		}
		if s, err = c.Status(ctxT(t), st.ID); err != nil {
			t.Fatal(err)
		}
	}
	_, _, log := exportLog(t, c, e.vkey)
	for _, en := range entriesOf(t, log) {
		if en.Type == audit.TypeSign {
			t.Fatalf("audit log records a faulty signature: %+v", en)
		}
	}
	ft.fixed.Store(true)
	res, err := c.Wait(ctxT(t), st.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.VerifyResult(req, res, e.vkey); err != nil {
		t.Fatal(err)
	}
	if s, err = c.Status(ctxT(t), st.ID); err != nil || s.Items[0].Error != "" {
		t.Fatalf("a signed item still shows an error: %v %+v", err, s)
	}
}

// A watcher counts the signatures of its request this replica stores, and
// is woken at each batch that has some.
func TestWatchCounts(t *testing.T) {
	s := &Server{signedCh: map[string]*waiters{}}
	next, release := s.watch("a")
	defer release()
	ch, n := next()
	if n != 0 {
		t.Fatalf("stored %d before any batch", n)
	}
	batch := func(reqs ...string) []store.Signed {
		var b []store.Signed
		for _, r := range reqs {
			b = append(b, store.Signed{Claim: store.Claim{Request: r}})
		}
		return b
	}
	s.signedBroadcast(batch("b", "b"))
	select {
	case <-ch:
		t.Fatal("woken by another request's batch")
	default:
	}
	s.signedBroadcast(batch("a", "b", "a", "a"))
	select {
	case <-ch:
	default:
		t.Fatal("not woken by a batch of its request")
	}
	ch2, n := next()
	if n != 3 || ch2 == ch {
		t.Fatalf("after one batch: stored %d (want 3), same channel %v", n, ch2 == ch)
	}
	// A second watcher of the same request shares the count; the entry
	// goes when both are released.
	next2, release2 := s.watch("a")
	s.signedBroadcast(batch("a"))
	if _, n := next2(); n != 4 {
		t.Fatalf("second watcher sees %d stored, want 4", n)
	}
	release2()
	release2()
	if s.signedCh["a"] == nil {
		t.Fatal("released twice, dropped the first watcher's entry")
	}
	release()
	if len(s.signedCh) != 0 {
		t.Fatalf("entries left after release: %v", s.signedCh)
	}
}

// writeEncoded's indented form is api.Marshal's, byte for byte, with the
// length announced.
func TestWriteEncoded(t *testing.T) {
	st := &api.Status{ID: "ab", State: api.StatePending, Client: "ci <&>", Items: []api.ItemStatus{{ID: "x", Key: "k", Kind: "verity-roothash", State: "pending"}}}
	for _, indent := range []bool{true, false} {
		rec := httptest.NewRecorder()
		writeEncoded(rec, http.StatusTeapot, st, indent)
		want := api.Marshal(st)
		if !indent {
			b, _ := json.Marshal(st)
			want = append(b, '\n')
		}
		if rec.Code != http.StatusTeapot || !bytes.Equal(rec.Body.Bytes(), want) || rec.Header().Get("Content-Length") != fmt.Sprint(len(want)) {
			t.Fatalf("indent %v: %d %q (length %s), want %q", indent, rec.Code, rec.Body, rec.Header().Get("Content-Length"), want)
		}
	}
}

// A waiting client is told, at every interval, what the request waits
// for; the wait ends with the result once it is signed.
func TestWaitReporting(t *testing.T) {
	e := newEnv(t, nil)
	ci := e.client("ci")
	ci.LongPoll = 50 * time.Millisecond
	req, body := newRequest(t, 2, "gated")
	st, err := ci.Submit(ctxT(t), body)
	if err != nil {
		t.Fatal(err)
	}
	var reports []string
	res, err := ci.WaitReporting(ctxT(t), st.ID, 100*time.Millisecond, func(s *api.Status, waited time.Duration) {
		reports = append(reports, s.Summary())
		if len(reports) == 1 {
			for _, who := range []string{"alice", "bob"} {
				if _, err := e.client(who).Approve(ctxT(t), st.ID); err != nil {
					t.Error(err)
				}
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.VerifyResult(req, res, e.vkey); err != nil {
		t.Fatal(err)
	}
	if len(reports) == 0 || !strings.HasPrefix(reports[0], "approval, 0/2 items signed; approvals: gated needs 2") {
		t.Fatalf("reports while waiting: %q", reports)
	}
}
