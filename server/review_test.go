package server

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"signet.dev/authenticode"
	"signet.dev/request"
	"signet.dev/server/api"
	"signet.dev/server/client"
	"signet.dev/server/internal/pgtest"
)

// waitState polls a request until its state is want.
func waitState(t *testing.T, c *client.Client, id, want string) *api.Status {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := c.Status(ctxT(t), id)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == want {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("request %s is %s, not %s: %s", id, st.State, want, st.Summary())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// auditLog is the service's whole audit log as text.
func auditLog(t *testing.T, e *env) string {
	t.Helper()
	var b strings.Builder
	size, _, err := e.srv.store.Tree(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	ents, err := e.srv.store.Entries(ctxT(t), 0, size)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range ents {
		b.Write(x)
		b.WriteByte('\n')
	}
	return b.String()
}

// The database is not a signing oracle: a row edited between submission
// and signing (another TBS, approvals skipped, a request inserted whole)
// is refused at signing and audited, never signed. On SQLite and on
// PostgreSQL.
func TestEditedRowsRefused(t *testing.T) {
	for _, driver := range []string{"sqlite", "postgres"} {
		t.Run(driver, func(t *testing.T) {
			var dsn string
			e := newEnv(t, func(c *Config) {
				if driver == "postgres" {
					pg := pgtest.Start(t)
					dsn = pg.NewDatabase(t)
					c.Store = StoreConfig{Driver: "postgres", DSN: dsn}
				} else {
					dsn = c.Store.DSN
				}
			})
			sqlDriver := map[string]string{"sqlite": "sqlite", "postgres": "pgx"}[driver]
			if driver == "sqlite" {
				// The service holds SQLite's writer lock while it commits:
				// wait for it as the service's own connections do.
				dsn = "file:" + dsn + "?_pragma=busy_timeout(10000)"
			}
			db, err := sql.Open(sqlDriver, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			q := func(query string, args ...any) {
				t.Helper()
				if driver == "postgres" {
					for i := 1; strings.Contains(query, "?"); i++ {
						query = strings.Replace(query, "?", "$"+string(rune('0'+i)), 1)
					}
				}
				if _, err := db.Exec(query, args...); err != nil {
					t.Fatal(err)
				}
			}
			c := e.client("ci")

			// 1. A gated request whose row gets another root hash and is
			// released without approvals.
			_, body := newRequest(t, 1, "gated")
			st, err := c.Submit(ctxT(t), body)
			if err != nil {
				t.Fatal(err)
			}
			evil := strings.Repeat("66", 32)
			q(`UPDATE items SET tbs = ?, state = 'pending' WHERE request_id = ?`, []byte(evil), st.ID)
			got := waitState(t, c, st.ID, api.StateRefused)
			if !strings.Contains(got.Items[0].Error, "refused at signing: the stored item row 0 (") {
				t.Fatalf("edited tbs: %q", got.Items[0].Error)
			}

			// 2. Only released without approvals: the TBS is the real one,
			// but nobody approved.
			_, body = newRequest(t, 1, "gated")
			st, err = c.Submit(ctxT(t), body)
			if err != nil {
				t.Fatal(err)
			}
			q(`UPDATE items SET state = 'pending' WHERE request_id = ?`, st.ID)
			got = waitState(t, c, st.ID, api.StateRefused)
			if !strings.Contains(got.Items[0].Error, `key "gated" needs 2 approvals by current approvers, the request has 0 valid ones`) {
				t.Fatalf("skipped approvals: %q", got.Items[0].Error)
			}
			// Approvals inserted by hand do not count either.
			_, body = newRequest(t, 1, "gated")
			st, err = c.Submit(ctxT(t), body)
			if err != nil {
				t.Fatal(err)
			}
			q(`INSERT INTO approvals (request_id, approver, created, binding) VALUES (?, 'alice', 1, ?), (?, 'bob', 2, ?)`, st.ID, []byte("x"), st.ID, []byte("y"))
			q(`UPDATE items SET state = 'pending' WHERE request_id = ?`, st.ID)
			got = waitState(t, c, st.ID, api.StateRefused)
			if !strings.Contains(got.Items[0].Error, "the request has 0 valid ones") {
				t.Fatalf("forged approvals: %q", got.Items[0].Error)
			}

			// 3. A request inserted whole, as the service would have stored it
			// but without its binding.
			r, body := newRequest(t, 1, "verity")
			d := r.Digest()
			id := hex.EncodeToString(d[:])
			q(`INSERT INTO requests (id, client, body, created) VALUES (?, 'ci', ?, 1)`, id, body)
			q(`INSERT INTO items (request_id, seq, client, item_id, key_name, kind, hash, tbs, state, created) VALUES (?, 0, 'ci', ?, 'verity', 'verity-roothash', 'sha256', ?, 'pending', 1)`,
				id, r.Items[0].ID, r.Items[0].TBS)
			e.srv.wake()
			got = waitState(t, c, id, api.StateRefused)
			if !strings.Contains(got.Items[0].Error, "is not bound to client \"ci\" by this service") {
				t.Fatalf("inserted request: %q", got.Items[0].Error)
			}
			// Fetching it says so at once, with the reason.
			if _, err := c.Wait(ctxT(t), id); err == nil || !strings.Contains(err.Error(), "410 Gone") {
				t.Fatalf("fetching a refused request: %v", err)
			}

			// Nothing was signed, every refusal is in the audit log, and an
			// honest request still is signed.
			log := auditLog(t, e)
			if strings.Contains(log, `"type":"sign"`) {
				t.Fatal("an edited row was signed")
			}
			if n := strings.Count(log, `"reason":"refused at signing`); n != 4 {
				t.Fatalf("%d refusals at signing audited, want 4:\n%s", n, log)
			}
			if got := e.metric("signet_items_refused_at_signing_total"); got != "4" {
				t.Fatalf("metric: %s", got)
			}
			_, body = newRequest(t, 2, "verity")
			if st, err = c.Submit(ctxT(t), body); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Wait(ctxT(t), st.ID); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A client removed from the configuration can have nothing signed any
// more, even what it queued before and what approvers release after.
func TestRevokedClientNotSigned(t *testing.T) {
	e := newEnv(t, nil)
	_, body := newRequest(t, 2, "gated")
	st, err := e.client("ci").Submit(ctxT(t), body)
	if err != nil {
		t.Fatal(err)
	}
	e.stop()
	var kept []ClientConfig
	for _, c := range e.cfg.Clients {
		if c.Name != "ci" {
			kept = append(kept, c)
		}
	}
	e.cfg.Clients = kept
	e.start()
	for _, who := range []string{"alice", "bob"} {
		if _, err := e.client(who).Approve(ctxT(t), st.ID); err != nil {
			t.Fatal(err)
		}
	}
	var got *api.Status
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		got = waitState(t, e.client("alice"), st.ID, api.StateRefused)
		if got.Items[0].State == api.StateRefused && got.Items[1].State == api.StateRefused || time.Now().After(deadline) {
			break
		}
	}
	for _, it := range got.Items {
		if it.State != api.StateRefused || !strings.Contains(it.Error, `client "ci" is no longer configured`) {
			t.Fatalf("item %s: %s %q", it.ID, it.State, it.Error)
		}
	}
	if strings.Contains(auditLog(t, e), `"type":"sign"`) {
		t.Fatal("a revoked client's item was signed")
	}
}

// A rejection ends a waiting fetch at once, with the approver's reason.
func TestRejectEndsWait(t *testing.T) {
	e := newEnv(t, nil)
	_, body := newRequest(t, 1, "gated")
	c := e.client("ci")
	st, err := c.Submit(ctxT(t), body)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := c.Wait(ctxT(t), st.ID); done <- err }()
	time.Sleep(100 * time.Millisecond)
	if _, err := e.client("alice").Reject(ctxT(t), st.ID, "wrong root hash"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Status != 410 || !strings.Contains(err.Error(), "rejected by alice: wrong root hash") {
			t.Fatalf("wait after reject: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting fetch did not end")
	}
}

// limits.signing_time_window bounds the signing time a client may choose
// for an Authenticode item, at submission and again at signing.
func TestSigningTimeWindow(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Limits.SigningTimeWindow.Duration = time.Hour
		c.Keys = append(c.Keys, KeyConfig{Name: "db", PrivateKey: c.Keys[0].PrivateKey, Certificate: c.Keys[0].Certificate, Kinds: []string{"authenticode"}})
		for i := range c.Clients {
			if c.Clients[i].Name == "ci" {
				c.Clients[i].Keys = append(c.Clients[i].Keys, "db")
			}
		}
	})
	item := func(at time.Time) []byte {
		d := sha256.Sum256([]byte("an image"))
		p, err := authenticode.PrepareDigest(d[:], at)
		if err != nil {
			t.Fatal(err)
		}
		spc, _ := authenticode.SpcIndirectDataContent(authenticode.Hash, d[:])
		r := &request.Request{Format: request.FormatRequest, Items: []request.Item{{ID: "ukis/a.efi", Kind: request.KindAuthenticode, Key: "db", Hash: "sha256",
			TBS: p.SignedAttributes, Authenticode: &request.AuthenticodeContext{File: "a.efi", Digest: hex.EncodeToString(d[:]), SpcIndirectData: spc}}}}
		b, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	c := e.client("ci")
	st, err := c.Submit(ctxT(t), item(time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctxT(t), st.ID); err != nil {
		t.Fatal(err)
	}
	_, err = c.Submit(ctxT(t), item(time.Unix(1700000000, 0)))
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != 422 || !strings.Contains(err.Error(), "signing time 2023-11-14T22:13:20Z is more than 1h0m0s from the service's clock") {
		t.Fatalf("old signing time: %v", err)
	}
	// At signing, the same bound against the clock then.
	if err := e.srv.timeAllowed(time.Now(), time.Now().Add(2*time.Hour)); err == nil {
		t.Fatal("a signing time two hours before the signing clock passed the recheck")
	}
}

// A reproducible build gives every client that builds it the same request:
// a second client with the rights gets it as its own (its name in the
// status, the response fetched), a client that did not submit it still
// cannot see it, and the audit log records both submissions.
func TestSameRequestTwoClients(t *testing.T) {
	e := newEnv(t, nil)
	_, body := newRequest(t, 3, "verity")
	st, err := e.client("ci").Submit(ctxT(t), body)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client("ci").Wait(ctxT(t), st.ID); err != nil {
		t.Fatal(err)
	}
	other := e.client("approver-ci")
	if _, err := other.Status(ctxT(t), st.ID); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("a client that did not submit it sees it: %v", err)
	}
	st2, err := other.Submit(ctxT(t), body)
	if err != nil {
		t.Fatal(err)
	}
	if st2.ID != st.ID || st2.Client != "approver-ci" || st2.State != api.StateSigned {
		t.Fatalf("second submitter's status: %+v", st2)
	}
	res, err := other.Wait(ctxT(t), st.ID)
	if err != nil || len(res.Response.Items) != 3 {
		t.Fatalf("second submitter's fetch: %v", err)
	}
	// A client without the key's rights is refused before anything.
	if _, err := e.client("alice").Submit(ctxT(t), body); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("a client without rights: %v", err)
	}
	if n := strings.Count(auditLog(t, e), `"type":"submit"`); n != 2 {
		t.Fatalf("%d submit entries, want 2", n)
	}
	// Submitting again as either changes nothing more.
	if _, err := other.Submit(ctxT(t), body); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(auditLog(t, e), `"type":"submit"`); n != 2 {
		t.Fatalf("%d submit entries after a repeat, want 2", n)
	}
}
