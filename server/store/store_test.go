package store

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"signet.dev/server/audit"
	"signet.dev/server/internal/pgtest"
)

// Both databases pass the same tests; PostgreSQL runs in one throwaway
// cluster.
func TestStore(t *testing.T) {
	open := map[string]func(t *testing.T) *Store{
		"sqlite": func(t *testing.T) *Store {
			s, err := Open(context.Background(), "sqlite", filepath.Join(t.TempDir(), "db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
	}
	var pg *pgtest.Cluster
	open["postgres"] = func(t *testing.T) *Store {
		s, err := Open(context.Background(), "postgres", pg.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	pg = pgtest.Start(t)
	for _, db := range []string{"sqlite", "postgres"} {
		t.Run(db+"/lifecycle", func(t *testing.T) { testLifecycle(t, open[db](t)) })
		t.Run(db+"/concurrent-claims", func(t *testing.T) { testConcurrentClaims(t, open[db](t), db == "postgres") })
		t.Run(db+"/retry", func(t *testing.T) { testRetry(t, open[db](t)) })
	}
}

// A failed item goes back to the queue with its error, is not claimed
// before the retry time, and loses the error once signed; a stale claim
// gives nothing back.
func testRetry(t *testing.T, s *Store) {
	ctx := context.Background()
	submit(t, s, "rr", 2, StatePending)
	cs, err := s.Claim(ctx, "w", time.Minute, 10)
	if err != nil || len(cs) != 2 {
		t.Fatalf("claim: %d %v", len(cs), err)
	}
	// PostgreSQL's RETURNING has no order.
	slices.SortFunc(cs, func(a, b Claim) int { return a.Seq - b.Seq })
	stale := cs[1]
	stale.Owner = "other"
	n, err := s.Retry(ctx, []Failed{{Claim: cs[0], Err: "token unreachable"}, {Claim: stale, Err: "x"}}, time.Now().Add(300*time.Millisecond))
	if err != nil || n != 1 {
		t.Fatalf("retry gave back %d (%v), want 1", n, err)
	}
	r, err := s.Request(ctx, "rr")
	if err != nil || r.Items[0].Error != "token unreachable" || r.Items[1].Error != "" {
		t.Fatalf("errors after retry: %v %+v", err, r)
	}
	if again, _ := s.Claim(ctx, "w2", time.Minute, 10); len(again) != 0 {
		t.Fatalf("claimed %d items before their retry time", len(again))
	}
	time.Sleep(350 * time.Millisecond)
	again, err := s.Claim(ctx, "w2", time.Minute, 10)
	if err != nil || len(again) != 1 || again[0].Seq != 0 {
		t.Fatalf("claim after the retry time: %+v %v", again, err)
	}
	if n, err := s.Complete(ctx, signAll(again)); err != nil || n != 1 {
		t.Fatalf("complete: %d %v", n, err)
	}
	if r, _ = s.Request(ctx, "rr"); r.Items[0].State != StateSigned || r.Items[0].Error != "" {
		t.Fatalf("signed item: %+v", r.Items[0])
	}
}

// A database made before the error column gains it when opened.
func TestUpgradeSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE TABLE requests (id TEXT PRIMARY KEY, client TEXT NOT NULL, body BLOB NOT NULL, created BIGINT NOT NULL)`,
		`CREATE TABLE items (request_id TEXT NOT NULL REFERENCES requests(id), seq INTEGER NOT NULL, client TEXT NOT NULL,
			item_id TEXT NOT NULL, key_name TEXT NOT NULL, kind TEXT NOT NULL, hash TEXT NOT NULL, tbs BLOB NOT NULL,
			state TEXT NOT NULL, created BIGINT NOT NULL, lease_owner TEXT, lease_until BIGINT, signature BLOB, audit_index BIGINT,
			PRIMARY KEY (request_id, seq))`,
		`CREATE INDEX items_queue ON items (state, created)`,
		`INSERT INTO requests VALUES ('old', 'ci', x'7b7d', 1)`,
		`INSERT INTO items (request_id, seq, client, item_id, key_name, kind, hash, tbs, state, created) VALUES ('old', 0, 'ci', 'a', 'k', 'verity-roothash', 'sha256', x'00', 'pending', 1)`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	s, err := Open(context.Background(), "sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, err := s.Request(context.Background(), "old")
	if err != nil || len(r.Items) != 1 {
		t.Fatalf("old request: %v %+v", err, r)
	}
	if cs, err := s.Claim(context.Background(), "w", time.Minute, 10); err != nil || len(cs) != 1 {
		t.Fatalf("old item not claimable: %d %v", len(cs), err)
	}
}

func submit(t *testing.T, s *Store, id string, n int, state string) {
	t.Helper()
	r := &Request{ID: id, Client: "ci", Body: []byte("{}"), Created: time.Now()}
	for i := range n {
		r.Items = append(r.Items, Item{Seq: i, ID: fmt.Sprintf("item%d", i), Key: "k", Kind: "verity-roothash", Hash: "sha256", TBS: []byte{byte(i)}, State: state})
	}
	created, err := s.Submit(context.Background(), r, &audit.Entry{Type: audit.TypeSubmit, Client: "ci", Request: id, Items: n})
	if err != nil || !created {
		t.Fatalf("submit %s: %v %v", id, created, err)
	}
}

func signAll(cs []Claim) []Signed {
	var out []Signed
	for _, c := range cs {
		out = append(out, Signed{Claim: c, Signature: []byte("sig-" + c.ID), Entry: &audit.Entry{Type: audit.TypeSign, Client: c.Client, Request: c.Request, Item: c.ID}})
	}
	return out
}

// checkLog verifies the stored log against its own tree head.
func checkLog(t *testing.T, s *Store) *audit.Report {
	t.Helper()
	ctx := context.Background()
	size, root, err := s.Tree(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := s.Entries(ctx, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	for _, e := range ents {
		log.Write(e)
		log.WriteByte('\n')
	}
	rep, err := audit.VerifyLog(&log, audit.Checkpoint{Origin: "x", Size: size, Hash: root})
	if err != nil {
		t.Fatal(err)
	}
	for i := int64(0); i < size; i++ {
		p, err := s.Prove(ctx, size, i)
		if err != nil {
			t.Fatal(err)
		}
		pr := audit.Proof{Index: i, Entry: string(ents[i]), Proof: p[0]}
		if err := pr.Check(audit.Checkpoint{Size: size, Hash: root}); err != nil {
			t.Fatal(err)
		}
	}
	return rep
}

func testLifecycle(t *testing.T, s *Store) {
	ctx := context.Background()
	id := "aa"
	submit(t, s, id, 3, StatePending)
	// Idempotent.
	created, err := s.Submit(ctx, &Request{ID: id, Client: "ci", Body: []byte("{}"), Created: time.Now()}, &audit.Entry{Type: audit.TypeSubmit})
	if err != nil || created {
		t.Fatalf("second submit: %v %v", created, err)
	}
	// A worker claims with a short lease and dies; after the lease another
	// claims the items; the dead worker's late commit is dropped.
	dead, err := s.Claim(ctx, "dead", 50*time.Millisecond, 10)
	if err != nil || len(dead) != 3 {
		t.Fatalf("claim: %d %v", len(dead), err)
	}
	if again, _ := s.Claim(ctx, "other", time.Minute, 10); len(again) != 0 {
		t.Fatalf("leased items claimed again: %d", len(again))
	}
	time.Sleep(80 * time.Millisecond)
	live, err := s.Claim(ctx, "live", time.Minute, 10)
	if err != nil || len(live) != 3 {
		t.Fatalf("re-claim after lease expiry: %d %v", len(live), err)
	}
	if n, err := s.Complete(ctx, signAll(dead)); err != nil || n != 0 {
		t.Fatalf("expired claim stored %d signatures (%v)", n, err)
	}
	// A batch mixing stale claims with live ones stores the live ones,
	// each with the index of its own sign entry.
	submit(t, s, "ab", 2, StatePending)
	fresh, err := s.Claim(ctx, "dead", time.Minute, 10)
	if err != nil || len(fresh) != 2 {
		t.Fatalf("claim: %d %v", len(fresh), err)
	}
	mixed := signAll([]Claim{dead[0], fresh[0], dead[1], dead[2], fresh[1]})
	if n, err := s.Complete(ctx, mixed); err != nil || n != 2 {
		t.Fatalf("mixed batch stored %d signatures (%v), want 2", n, err)
	}
	checkIndexes(t, s, "ab")
	if n, err := s.Complete(ctx, signAll(live)); err != nil || n != 3 {
		t.Fatalf("stored %d signatures (%v), want 3", n, err)
	}
	if n, _ := s.Complete(ctx, signAll(live)); n != 0 {
		t.Fatalf("stored a signature twice")
	}
	r, err := s.Request(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range r.Items {
		if it.State != StateSigned || string(it.Signature) != "sig-"+it.ID || it.AuditIndex < 1 {
			t.Fatalf("item %+v", it)
		}
	}
	checkIndexes(t, s, id)
	// Approvals release items in the same transaction.
	submit(t, s, "bb", 2, StateApproval)
	if c, _ := s.Claim(ctx, "w", time.Minute, 10); len(c) != 0 {
		t.Fatal("items waiting for approval were claimed")
	}
	for _, who := range []string{"alice", "alice", "bob"} {
		_, err := s.Approve(ctx, "bb", who, nil, &audit.Entry{Type: audit.TypeApprove, Client: who, Request: "bb"}, func(r *Request) []int {
			if len(r.Approvers) >= 2 {
				return []int{0, 1}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if c, _ := s.Claim(ctx, "w", time.Minute, 10); len(c) != 2 {
		t.Fatalf("%d items released, want 2", len(c))
	}
	if _, err := s.Request(ctx, "nope"); err != ErrNotFound {
		t.Fatalf("unknown request: %v", err)
	}
	rep := checkLog(t, s)
	// 3 submits, 5 signs, 2 approvals (alice twice is once).
	if rep.Entries != 10 || rep.Types[audit.TypeSign] != 5 || rep.Types[audit.TypeApprove] != 2 {
		t.Fatalf("log %+v", rep)
	}
}

// Workers claiming at once never get the same item, and every item is
// stored once.
func testConcurrentClaims(t *testing.T, s *Store, pg bool) {
	ctx := context.Background()
	for i := range 10 {
		submit(t, s, fmt.Sprintf("r%02d", i), 20, StatePending)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				cs, err := s.Claim(ctx, fmt.Sprintf("w%d", w), time.Minute, 7)
				if err != nil {
					t.Error(err)
					return
				}
				if len(cs) == 0 {
					return
				}
				mu.Lock()
				for _, c := range cs {
					seen[c.Request+"/"+c.ID]++
				}
				mu.Unlock()
				if _, err := s.Complete(ctx, signAll(cs)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(seen) != 200 {
		t.Fatalf("%d items claimed, want 200", len(seen))
	}
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("%s claimed %d times", k, n)
		}
	}
	if rep := checkLog(t, s); rep.Signed != 200 {
		t.Fatalf("%d signed in the log", rep.Signed)
	}
}

// checkIndexes checks that each signed item of request id records the
// index of its own sign entry.
func checkIndexes(t *testing.T, s *Store, id string) {
	t.Helper()
	ctx := context.Background()
	r, err := s.Request(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range r.Items {
		ents, err := s.Entries(ctx, it.AuditIndex, it.AuditIndex+1)
		if err != nil || len(ents) != 1 {
			t.Fatalf("entry %d: %v", it.AuditIndex, err)
		}
		e, err := audit.ParseEntry(ents[0])
		if err != nil {
			t.Fatal(err)
		}
		if e.Type != audit.TypeSign || e.Request != id || e.Item != it.ID || e.Index != it.AuditIndex {
			t.Fatalf("item %s/%s: audit index %d holds %+v", id, it.ID, it.AuditIndex, e)
		}
	}
}
