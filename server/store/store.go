// Package store is the signing service's durable state: requests, their
// items and approvals, and the audit log's entries and Merkle hashes.
//
// Two databases are supported through database/sql: embedded SQLite
// (modernc.org/sqlite, pure Go, the default: nothing to set up) and
// PostgreSQL (pgx), which lets several service replicas share one queue.
// The schema and queries are the same for both but for the column types,
// placeholders and PostgreSQL's row locks.
//
// Crash safety rests on three rules:
//   - every state change and the audit entry that records it commit in one
//     transaction (a signature is stored, its item marked signed and its
//     "sign" entry appended, or none of it happens);
//   - a worker claims pending items with a lease (PostgreSQL: SELECT ... FOR
//     UPDATE SKIP LOCKED, so replicas never claim the same row at once); an
//     item whose lease expired, because its replica died, is claimed again;
//   - a signature is stored only if the item is still pending and still
//     leased to the worker that signed it, so an item is signed (stored,
//     audited) exactly once.
package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"golang.org/x/mod/sumdb/tlog"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"signet.dev/server/audit"
)

// Item states. (Queries spell them out; see stmt.go.)
const (
	StateApproval = "approval" // waiting for approvals before it may be signed
	StatePending  = "pending"  // queued for signing
	StateSigned   = "signed"
	// StateRefused ends an item for good: the signer found it no longer
	// passes its checks (an edited row, a revoked client, a key's kinds
	// changed), or its request was rejected or cancelled. Error says why.
	StateRefused = "refused"
)

// ErrNotFound is returned for an unknown request id.
var ErrNotFound = errors.New("store: no such request")

// Request is a submitted signing request.
type Request struct {
	ID        string // hex SHA-256 of Body
	Client    string // identity that submitted it
	Body      []byte // the request document as submitted (stored by Submit; Request does not read it back)
	Created   time.Time
	Items     []Item
	Approvers []string // distinct identities that approved it, in order
	// Binding is the service's MAC over the request id and its client
	// (stored by Submit; read by Document). The key is not in the
	// database, so a row written by anyone else is refused at signing.
	Binding []byte
	// Submitters are the other clients that submitted the same request
	// (a reproducible build yields the same digest for everyone), in
	// order.
	Submitters []string
}

// Approval is one stored approval with its binding MAC.
type Approval struct {
	Approver string
	Binding  []byte
}

// Item is one signature to make.
type Item struct {
	Seq        int    // position in the request
	ID         string // the request's item id
	Key        string // key name
	Kind       string
	Hash       string // hash name (sha256, ...)
	TBS        []byte
	State      string
	Signature  []byte // once signed
	AuditIndex int64  // index of the "sign" entry, once signed
	Error      string // why the last attempt to sign it failed, while pending
}

// Store is an open database.
type Store struct {
	db       *sql.DB // transactions (SQLite: the single writer connection)
	rdb      *sql.DB // reads outside transactions (SQLite: WAL readers that never wait for the writer)
	postgres bool

	hmu    sync.Mutex
	hcache map[int64]tlog.Hash // committed stored hashes

	wst, rst map[stmtKey]*sql.Stmt // prepared statements: writer, read pool
}

// Open opens (creating the schema if needed) a store. driver is "sqlite"
// (dsn: a file path) or "postgres" (dsn: a libpq connection string or URL).
func Open(ctx context.Context, driver, dsn string) (*Store, error) {
	var s Store
	var err error
	switch driver {
	case "sqlite", "":
		if dsn == "" {
			return nil, errors.New("store: sqlite needs a database path")
		}
		// WAL + synchronous=FULL: a committed signature survives a crash of
		// the process or the machine.
		if err := createPrivate(dsn); err != nil {
			return nil, err
		}
		pragmas := "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)"
		s.db, err = sql.Open("sqlite", "file:"+dsn+pragmas+"&_txlock=immediate")
		if err == nil {
			// One writer connection: SQLite has one writer anyway, and
			// this serialises audit appends without busy retries.
			s.db.SetMaxOpenConns(1)
			s.rdb, err = sql.Open("sqlite", "file:"+dsn+pragmas)
			if err == nil {
				// Keep them open: a new connection reads the schema and
				// prepares the read statements again, and (measured) made
				// SQLite prepare the writer's statements again too.
				s.rdb.SetMaxOpenConns(4)
				s.rdb.SetMaxIdleConns(4)
			}
		}
	case "postgres", "postgresql":
		s.postgres = true
		s.db, err = sql.Open("pgx", dsn)
		if err == nil {
			s.db.SetMaxOpenConns(16)
			s.db.SetMaxIdleConns(16) // statements are prepared per connection
		}
		s.rdb = s.db
	default:
		return nil, fmt.Errorf("store: unknown driver %q (use sqlite or postgres)", driver)
	}
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.prepare(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return &s, nil
}

// createPrivate creates a new SQLite database file with mode 0600 whatever
// the umask, so that SQLite, which gives its -wal and -shm files the
// database's mode, keeps all three private: they hold the signed items and
// the client names. An existing file is left as it is.
func createPrivate(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer f.Close()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// Close closes the database.
func (s *Store) Close() error {
	s.closeStmts()
	if s.rdb != nil && s.rdb != s.db {
		s.rdb.Close()
	}
	return s.db.Close()
}

// Ping checks the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.rdb.PingContext(ctx) }

func (s *Store) migrate(ctx context.Context) error {
	blob := "BLOB"
	if s.postgres {
		blob = "BYTEA"
	}
	schema := []string{
		`CREATE TABLE IF NOT EXISTS requests (
			id TEXT PRIMARY KEY,
			client TEXT NOT NULL,
			body ` + blob + ` NOT NULL,
			created BIGINT NOT NULL)`,
		`CREATE TABLE IF NOT EXISTS items (
			request_id TEXT NOT NULL REFERENCES requests(id),
			seq INTEGER NOT NULL,
			client TEXT NOT NULL,
			item_id TEXT NOT NULL,
			key_name TEXT NOT NULL,
			kind TEXT NOT NULL,
			hash TEXT NOT NULL,
			tbs ` + blob + ` NOT NULL,
			state TEXT NOT NULL,
			created BIGINT NOT NULL,
			lease_owner TEXT,
			lease_until BIGINT,
			signature ` + blob + `,
			audit_index BIGINT,
			error TEXT,
			PRIMARY KEY (request_id, seq))`,
		// The queue: only pending items, in claim order. (A partial index:
		// signing an item removes its entry rather than moving it, and the
		// index stays the size of the queue.)
		`DROP INDEX IF EXISTS items_queue`,
		`CREATE INDEX IF NOT EXISTS items_pending ON items (created, request_id, seq) WHERE state = 'pending'`,
		`CREATE TABLE IF NOT EXISTS approvals (
			request_id TEXT NOT NULL REFERENCES requests(id),
			approver TEXT NOT NULL,
			created BIGINT NOT NULL,
			PRIMARY KEY (request_id, approver))`,
		`CREATE TABLE IF NOT EXISTS submitters (
			request_id TEXT NOT NULL REFERENCES requests(id),
			client TEXT NOT NULL,
			created BIGINT NOT NULL,
			binding ` + blob + ` NOT NULL,
			PRIMARY KEY (request_id, client))`,
		`CREATE TABLE IF NOT EXISTS audit_entries (idx BIGINT PRIMARY KEY, data ` + blob + ` NOT NULL)`,
		`CREATE TABLE IF NOT EXISTS audit_hashes (idx BIGINT PRIMARY KEY, hash ` + blob + ` NOT NULL)`,
		`CREATE TABLE IF NOT EXISTS audit_head (id INTEGER PRIMARY KEY, size BIGINT NOT NULL)`,
		`INSERT INTO audit_head (id, size) VALUES (1, 0) ON CONFLICT (id) DO NOTHING`,
	}
	if s.postgres {
		// Replicas starting together must not race on CREATE TABLE.
		schema = append([]string{`SELECT pg_advisory_xact_lock(7301)`}, schema...)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer tx.Rollback()
	for _, q := range schema {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("store: creating schema: %w", err)
		}
	}
	// Columns added since the first schema, to databases made before.
	for _, c := range []struct{ table, column, typ string }{
		{"items", "error", "TEXT"},
		{"requests", "binding", blob},
		{"approvals", "binding", blob},
	} {
		var n int
		q := `SELECT COUNT(*) FROM pragma_table_info('` + c.table + `') WHERE name = '` + c.column + `'`
		if s.postgres {
			q = `SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = '` + c.table + `' AND column_name = '` + c.column + `'`
		}
		if err := tx.QueryRowContext(ctx, q).Scan(&n); err != nil {
			return fmt.Errorf("store: updating schema: %w", err)
		}
		if n == 0 {
			if _, err := tx.ExecContext(ctx, `ALTER TABLE `+c.table+` ADD COLUMN `+c.column+` `+c.typ); err != nil {
				return fmt.Errorf("store: updating schema: %w", err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: creating schema: %w", err)
	}
	return nil
}

// q rewrites ? placeholders to PostgreSQL's $n.
func (s *Store) q(query string) string {
	if !s.postgres {
		return query
	}
	var b strings.Builder
	n := 0
	for _, c := range query {
		if c == '?' {
			n++
			fmt.Fprintf(&b, "$%d", n)
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}

// Submit stores a new request, its items and the audit entry recording the
// submission, in one transaction. If a request with the same id exists, it
// changes nothing and returns created=false (submission is idempotent).
func (s *Store) Submit(ctx context.Context, r *Request, e *audit.Entry) (created bool, err error) {
	err = s.inTx(ctx, func(tx *txn) error {
		res, err := s.txStmt(ctx, tx, qInsertRequest, 0).ExecContext(ctx, r.ID, r.Client, r.Body, r.Created.UnixNano(), r.Binding)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil
		}
		created = true
		// Multi-row inserts: a few statements per request, not one per item.
		err = chunks(len(r.Items), func(lo, hi int) error {
			args := make([]any, 0, 10*(hi-lo))
			for _, it := range r.Items[lo:hi] {
				args = append(args, r.ID, it.Seq, r.Client, it.ID, it.Key, it.Kind, it.Hash, it.TBS, it.State, r.Created.UnixNano())
			}
			_, err := s.txStmt(ctx, tx, qInsertItems, hi-lo).ExecContext(ctx, args...)
			return err
		})
		if err != nil {
			return err
		}
		_, err = s.appendAudit(ctx, tx, []*audit.Entry{e})
		return err
	})
	if err != nil {
		return false, fmt.Errorf("store: submit %s: %w", r.ID, err)
	}
	return created, nil
}

// Audit appends entries that change no other state (refusals).
func (s *Store) Audit(ctx context.Context, entries ...*audit.Entry) error {
	err := s.inTx(ctx, func(tx *txn) error {
		_, err := s.appendAudit(ctx, tx, entries)
		return err
	})
	if err != nil {
		return fmt.Errorf("store: audit: %w", err)
	}
	return nil
}

// Request loads a request with its items and approvers.
func (s *Store) Request(ctx context.Context, id string) (*Request, error) {
	r := &Request{ID: id}
	var created int64
	err := s.readStmt(qRequest, 0).QueryRowContext(ctx, id).Scan(&r.Client, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("store: request %s: %w", id, err)
	}
	r.Created = time.Unix(0, created).UTC()
	rows, err := s.readStmt(qRequestItems, 0).QueryContext(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("store: request %s: %w", id, err)
	}
	defer rows.Close()
	for rows.Next() {
		var it Item
		var ai sql.NullInt64
		var ie sql.NullString
		if err := rows.Scan(&it.Seq, &it.ID, &it.Key, &it.Kind, &it.Hash, &it.TBS, &it.State, &it.Signature, &ai, &ie); err != nil {
			return nil, fmt.Errorf("store: request %s: %w", id, err)
		}
		it.AuditIndex, it.Error = -1, ie.String
		if ai.Valid {
			it.AuditIndex = ai.Int64
		}
		r.Items = append(r.Items, it)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: request %s: %w", id, err)
	}
	rows.Close()
	sub, err := s.Submitters(ctx, id)
	if err != nil {
		return nil, err
	}
	for _, a := range sub {
		r.Submitters = append(r.Submitters, a.Approver)
	}
	ar, err := s.readStmt(qApprovers, 0).QueryContext(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("store: request %s: %w", id, err)
	}
	defer ar.Close()
	for ar.Next() {
		var a string
		if err := ar.Scan(&a); err != nil {
			return nil, err
		}
		r.Approvers = append(r.Approvers, a)
	}
	return r, ar.Err()
}

// Approve records approver's approval of request id and its audit entry,
// then, in the same transaction, moves to pending the items release picks
// (given the request and all its approvers so far). Approving twice is one
// approval: added is false and nothing is audited.
func (s *Store) Approve(ctx context.Context, id, approver string, binding []byte, e *audit.Entry, release func(r *Request) []int) (added bool, err error) {
	err = s.inTx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, s.q(`INSERT INTO approvals (request_id, approver, created, binding) VALUES (?, ?, ?, ?) ON CONFLICT (request_id, approver) DO NOTHING`),
			id, approver, time.Now().UnixNano(), binding)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil
		}
		added = true
		r := &Request{ID: id}
		rows, err := tx.QueryContext(ctx, s.q(`SELECT seq, item_id, key_name, kind, state FROM items WHERE request_id = ? ORDER BY seq`), id)
		if err != nil {
			return err
		}
		for rows.Next() {
			var it Item
			if err := rows.Scan(&it.Seq, &it.ID, &it.Key, &it.Kind, &it.State); err != nil {
				rows.Close()
				return err
			}
			r.Items = append(r.Items, it)
		}
		rows.Close()
		ar, err := tx.QueryContext(ctx, s.q(`SELECT approver FROM approvals WHERE request_id = ? ORDER BY created, approver`), id)
		if err != nil {
			return err
		}
		for ar.Next() {
			var a string
			if err := ar.Scan(&a); err != nil {
				ar.Close()
				return err
			}
			r.Approvers = append(r.Approvers, a)
		}
		ar.Close()
		for _, seq := range release(r) {
			if _, err := tx.ExecContext(ctx, s.q(`UPDATE items SET state = 'pending' WHERE request_id = ? AND seq = ? AND state = 'approval'`),
				id, seq); err != nil {
				return err
			}
		}
		_, err = s.appendAudit(ctx, tx, []*audit.Entry{e})
		return err
	})
	if err != nil {
		return false, fmt.Errorf("store: approve %s: %w", id, err)
	}
	return added, nil
}

// Claim is a pending item leased to one worker.
type Claim struct {
	Request string
	Client  string // who submitted the request
	Item
	Owner string
	Until int64 // lease end, Unix nanoseconds
}

// Claim leases up to max pending items (oldest first) to owner for lease.
// Items whose lease expired are claimed again.
func (s *Store) Claim(ctx context.Context, owner string, lease time.Duration, max int) ([]Claim, error) {
	now := time.Now()
	until := now.Add(lease).UnixNano()
	var out []Claim
	err := s.inTx(ctx, func(tx *txn) error {
		rows, err := s.txStmt(ctx, tx, qClaim, 0).QueryContext(ctx, owner, until, now.UnixNano(), max)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			c := Claim{Owner: owner, Until: until}
			c.State = StatePending
			if err := rows.Scan(&c.Request, &c.Seq, &c.Client, &c.ID, &c.Key, &c.Kind, &c.Hash, &c.TBS); err != nil {
				return err
			}
			out = append(out, c)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("store: claim: %w", err)
	}
	return out, nil
}

// Signed is a signature made for a claim, with its audit entry.
type Signed struct {
	Claim     Claim
	Signature []byte
	Entry     *audit.Entry
}

// Complete stores signatures and their audit entries in one transaction.
// A signature is stored only if its item is still pending and still leased
// to the claim's owner; the others (re-claimed after a lease expiry, and
// already signed elsewhere) are dropped. It returns how many were stored.
func (s *Store) Complete(ctx context.Context, done []Signed) (stored int, err error) {
	err = s.inTx(ctx, func(tx *txn) error {
		size, err := s.lockHead(ctx, tx)
		if err != nil {
			return err
		}
		// Each item is stored with the audit index its sign entry will
		// have if every item is still ours: then one statement per chunk
		// does it all (the usual case). Items re-claimed elsewhere after a
		// lease expiry are left out, and the others renumbered.
		idx := make([]int64, len(done))
		for i := range done {
			idx[i] = size + int64(i)
		}
		ok, err := s.storeSigned(ctx, tx, done, idx)
		if err != nil {
			return err
		}
		var entries []*audit.Entry
		var kept []Signed
		for _, d := range done {
			if ok[itemKey{d.Claim.Request, d.Claim.Seq}] {
				entries = append(entries, d.Entry)
				kept = append(kept, d)
			}
		}
		got, err := s.appendAuditAt(ctx, tx, size, entries)
		if err != nil {
			return err
		}
		if len(kept) != len(done) {
			if err := s.setAuditIndex(ctx, tx, kept, got); err != nil {
				return err
			}
		}
		stored = len(kept)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("store: storing signatures: %w", err)
	}
	return stored, nil
}

type itemKey struct {
	request string
	seq     int
}

// storeSigned sets done's signatures and audit indexes, for the items
// still pending and leased to their claim's owner, and returns which
// those were.
func (s *Store) storeSigned(ctx context.Context, tx *txn, done []Signed, idx []int64) (map[itemKey]bool, error) {
	ok := map[itemKey]bool{}
	err := chunks(len(done), func(lo, hi int) error {
		args := make([]any, 0, 6*(hi-lo))
		for i, d := range done[lo:hi] {
			args = append(args, d.Claim.Request, d.Claim.Seq, d.Signature, d.Claim.Owner, d.Claim.Until, idx[lo+i])
		}
		rows, err := s.txStmt(ctx, tx, qStoreSigned, hi-lo).QueryContext(ctx, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var k itemKey
			if err := rows.Scan(&k.request, &k.seq); err != nil {
				return err
			}
			ok[k] = true
		}
		return rows.Err()
	})
	return ok, err
}

// setAuditIndex records the audit index of each item of kept.
func (s *Store) setAuditIndex(ctx context.Context, tx *txn, kept []Signed, idx []int64) error {
	return chunks(len(kept), func(lo, hi int) error {
		args := make([]any, 0, 3*(hi-lo))
		for i, d := range kept[lo:hi] {
			args = append(args, d.Claim.Request, d.Claim.Seq, idx[lo+i])
		}
		_, err := s.txStmt(ctx, tx, qSetAuditIndex, hi-lo).ExecContext(ctx, args...)
		return err
	})
}

// Failed is a claim whose signing failed, and why.
type Failed struct {
	Claim Claim
	Err   string
}

// Retry gives back the claims of failed that are still leased to their
// owner, to be claimed again after until, and records their errors. It
// returns how many it gave back.
func (s *Store) Retry(ctx context.Context, failed []Failed, until time.Time) (n int, err error) {
	err = s.inTx(ctx, func(tx *txn) error {
		n = 0
		for _, f := range failed {
			res, err := tx.ExecContext(ctx, s.q(`UPDATE items SET lease_owner = NULL, lease_until = ?, error = ?
				WHERE request_id = ? AND seq = ? AND state = 'pending' AND lease_owner = ? AND lease_until = ?`),
				until.UnixNano(), f.Err, f.Claim.Request, f.Claim.Seq, f.Claim.Owner, f.Claim.Until)
			if err != nil {
				return err
			}
			if k, _ := res.RowsAffected(); k == 1 {
				n++
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("store: giving back failed items: %w", err)
	}
	return n, nil
}

// Document reads what a request was submitted as: its client, its body
// and its binding MAC. The signer re-derives every item from the body.
func (s *Store) Document(ctx context.Context, id string) (*Request, error) {
	r := &Request{ID: id}
	var created int64
	err := s.rdb.QueryRowContext(ctx, s.q(`SELECT client, body, created, binding FROM requests WHERE id = ?`), id).Scan(&r.Client, &r.Body, &created, &r.Binding)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("store: request %s: %w", id, err)
	}
	r.Created = time.Unix(0, created).UTC()
	return r, nil
}

// Approvals reads a request's approvals with their binding MACs.
func (s *Store) Approvals(ctx context.Context, id string) ([]Approval, error) {
	return s.bound(ctx, `SELECT approver, binding FROM approvals WHERE request_id = ? ORDER BY created, approver`, "approvals", id)
}

// bound reads (name, binding) rows of request id.
func (s *Store) bound(ctx context.Context, query, what, id string) ([]Approval, error) {
	rows, err := s.rdb.QueryContext(ctx, s.q(query), id)
	if err != nil {
		return nil, fmt.Errorf("store: %s of %s: %w", what, id, err)
	}
	defer rows.Close()
	var out []Approval
	for rows.Next() {
		var a Approval
		if err := rows.Scan(&a.Approver, &a.Binding); err != nil {
			return nil, fmt.Errorf("store: %s of %s: %w", what, id, err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// AddSubmitter records that client submitted request id too (it exists,
// submitted by another client), with its binding MAC and audit entry, in
// one transaction. A client recorded already is not recorded again:
// added is false and nothing is audited.
func (s *Store) AddSubmitter(ctx context.Context, id, client string, binding []byte, e *audit.Entry) (added bool, err error) {
	err = s.inTx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, s.q(`INSERT INTO submitters (request_id, client, created, binding) VALUES (?, ?, ?, ?) ON CONFLICT (request_id, client) DO NOTHING`),
			id, client, time.Now().UnixNano(), binding)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil
		}
		added = true
		_, err = s.appendAudit(ctx, tx, []*audit.Entry{e})
		return err
	})
	if err != nil {
		return false, fmt.Errorf("store: submitter of %s: %w", id, err)
	}
	return added, nil
}

// Submitters reads the other clients that submitted request id, with
// their binding MACs (in Approval's fields: Approver is the client).
func (s *Store) Submitters(ctx context.Context, id string) ([]Approval, error) {
	return s.bound(ctx, `SELECT client, binding FROM submitters WHERE request_id = ? ORDER BY created, client`, "submitters", id)
}

// Refused is a claimed item the signer will not sign, with why and the
// audit entry that records it.
type Refused struct {
	Claim  Claim
	Reason string
	Entry  *audit.Entry
}

// Refuse ends the claims of refused that are still pending and leased to
// their owner, and appends the audit entries of those, in one transaction.
// It returns how many it ended.
func (s *Store) Refuse(ctx context.Context, refused []Refused) (n int, err error) {
	err = s.inTx(ctx, func(tx *txn) error {
		n = 0
		var entries []*audit.Entry
		for _, r := range refused {
			res, err := tx.ExecContext(ctx, s.q(`UPDATE items SET state = 'refused', error = ?, lease_owner = NULL, lease_until = NULL
				WHERE request_id = ? AND seq = ? AND state = 'pending' AND lease_owner = ? AND lease_until = ?`),
				r.Reason, r.Claim.Request, r.Claim.Seq, r.Claim.Owner, r.Claim.Until)
			if err != nil {
				return err
			}
			if k, _ := res.RowsAffected(); k == 1 {
				n++
				entries = append(entries, r.Entry)
			}
		}
		if len(entries) == 0 {
			return nil
		}
		_, err := s.appendAudit(ctx, tx, entries)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("store: refusing items: %w", err)
	}
	return n, nil
}

// End ends every item of request id not signed yet (a rejection or a
// cancellation), with reason as their error, and appends e, in one
// transaction. It returns how many items it ended; with none, nothing is
// audited. An item being signed meanwhile is not stored: Complete stores
// only pending items.
func (s *Store) End(ctx context.Context, id, reason string, e *audit.Entry) (n int, err error) {
	err = s.inTx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, s.q(`UPDATE items SET state = 'refused', error = ?, lease_owner = NULL, lease_until = NULL
			WHERE request_id = ? AND state IN ('approval', 'pending')`), reason, id)
		if err != nil {
			return err
		}
		k, _ := res.RowsAffected()
		if n = int(k); n == 0 {
			return nil
		}
		_, err = s.appendAudit(ctx, tx, []*audit.Entry{e})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("store: ending %s: %w", id, err)
	}
	return n, nil
}

// Pending counts items waiting to be signed (for metrics).
func (s *Store) Pending(ctx context.Context) (int64, error) {
	var n int64
	err := s.readStmt(qPending, 0).QueryRowContext(ctx).Scan(&n)
	return n, err
}

// Unsigned counts a request's items not yet signed: the cheap question a
// waiting fetch asks.
func (s *Store) Unsigned(ctx context.Context, id string) (int64, error) {
	var n int64
	err := s.readStmt(qUnsigned, 0).QueryRowContext(ctx, id).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("store: request %s: %w", id, err)
	}
	return n, nil
}

// txn is a transaction with the audit hashes it wrote.
type txn struct {
	*sql.Tx
	fresh map[int64]tlog.Hash
}

// inTx runs f in a transaction and commits it. The audit hashes it wrote
// go into the hash cache once committed: responses prove the entries just
// appended.
func (s *Store) inTx(ctx context.Context, f func(*txn) error) error {
	sqlTx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	tx := &txn{Tx: sqlTx}
	if err := f(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	s.cacheHashes(tx.fresh)
	return nil
}

// TBSHash is the hex SHA-256 an audit entry records for bytes.
func TBSHash(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// lockHead returns the audit log's size, locking its head row until tx
// ends (PostgreSQL; SQLite has one writer).
func (s *Store) lockHead(ctx context.Context, tx *txn) (int64, error) {
	var size int64
	if err := s.txStmt(ctx, tx, qLockHead, 0).QueryRowContext(ctx).Scan(&size); err != nil {
		return 0, fmt.Errorf("audit head: %w", err)
	}
	return size, nil
}

// appendAudit appends entries to the log inside tx, setting each entry's
// Index, and returns the indexes. The log head row serialises appends
// (PostgreSQL: row lock; SQLite: the single writer).
func (s *Store) appendAudit(ctx context.Context, tx *txn, entries []*audit.Entry) ([]int64, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	size, err := s.lockHead(ctx, tx)
	if err != nil {
		return nil, err
	}
	return s.appendAuditAt(ctx, tx, size, entries)
}

// appendAuditAt is appendAudit for a caller holding the head (lockHead
// returned size).
func (s *Store) appendAuditAt(ctx context.Context, tx *txn, size int64, entries []*audit.Entry) ([]int64, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	if tx.fresh == nil {
		tx.fresh = map[int64]tlog.Hash{}
	}
	fresh := tx.fresh // hashes written in this transaction
	reader := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		var missing []int64
		for i, x := range idx {
			if h, ok := fresh[x]; ok {
				out[i] = h
			} else {
				missing = append(missing, x)
			}
		}
		if len(missing) > 0 {
			got, err := s.readHashes(ctx, tx, missing)
			if err != nil {
				return nil, err
			}
			for i, x := range idx {
				if _, ok := fresh[x]; !ok {
					out[i], got = got[0], got[1:]
				}
			}
		}
		return out, nil
	})
	var (
		idxs    []int64
		hashIdx []int64
		hashes  []tlog.Hash
		datas   [][]byte
	)
	for _, e := range entries {
		n := size
		e.Index = n
		data := e.Marshal()
		hs, err := tlog.StoredHashes(n, data, reader)
		if err != nil {
			return nil, fmt.Errorf("audit hashes: %w", err)
		}
		base := tlog.StoredHashIndex(0, n)
		for i, h := range hs {
			fresh[base+int64(i)] = h
			hashIdx = append(hashIdx, base+int64(i))
			hashes = append(hashes, h)
		}
		idxs = append(idxs, n)
		datas = append(datas, data)
		size++
	}
	// Multi-row inserts: one round trip per table, not per entry.
	if err := s.insertPairs(ctx, tx, qInsertEntries, len(idxs), func(k int) (any, any) { return idxs[k], datas[k] }); err != nil {
		return nil, fmt.Errorf("audit entries: %w", err)
	}
	if err := s.insertPairs(ctx, tx, qInsertHashes, len(hashIdx), func(k int) (any, any) { return hashIdx[k], hashes[k][:] }); err != nil {
		return nil, fmt.Errorf("audit hashes: %w", err)
	}
	if _, err := s.txStmt(ctx, tx, qSetHead, 0).ExecContext(ctx, size); err != nil {
		return nil, fmt.Errorf("audit head: %w", err)
	}
	return idxs, nil
}

// insertPairs inserts n two-column rows with statement q.
func (s *Store) insertPairs(ctx context.Context, tx *txn, q query, n int, row func(k int) (any, any)) error {
	return chunks(n, func(lo, hi int) error {
		args := make([]any, 0, 2*(hi-lo))
		for k := lo; k < hi; k++ {
			a, b := row(k)
			args = append(args, a, b)
		}
		_, err := s.txStmt(ctx, tx, q, hi-lo).ExecContext(ctx, args...)
		return err
	})
}

// readHashes reads stored hashes idx, in tx or (tx nil) from the read pool.
func (s *Store) readHashes(ctx context.Context, tx *txn, idx []int64) ([]tlog.Hash, error) {
	got := make(map[int64]tlog.Hash, len(idx))
	err := chunks(len(idx), func(lo, hi int) error {
		args := make([]any, hi-lo)
		for i, x := range idx[lo:hi] {
			args[i] = x
		}
		st := s.readStmt(qReadHashes, hi-lo)
		if tx != nil {
			st = s.txStmt(ctx, tx, qReadHashes, hi-lo)
		}
		rows, err := st.QueryContext(ctx, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var x int64
			var b []byte
			if err := rows.Scan(&x, &b); err != nil {
				return err
			}
			if len(b) != tlog.HashSize {
				return fmt.Errorf("audit hash %d: %d bytes", x, len(b))
			}
			var h tlog.Hash
			copy(h[:], b)
			got[x] = h
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	return pick(got, idx, "missing")
}

// pick returns the hashes of idx from m, in order; a hash not in m is an
// error ("audit hash N <why>").
func pick(m map[int64]tlog.Hash, idx []int64, why string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(idx))
	for i, x := range idx {
		h, ok := m[x]
		if !ok {
			return nil, fmt.Errorf("audit hash %d %s", x, why)
		}
		out[i] = h
	}
	return out, nil
}

// Tree returns the audit log's current size and root hash.
func (s *Store) Tree(ctx context.Context) (int64, tlog.Hash, error) {
	var size int64
	if err := s.readStmt(qTreeSize, 0).QueryRowContext(ctx).Scan(&size); err != nil {
		return 0, tlog.Hash{}, fmt.Errorf("store: audit head: %w", err)
	}
	h, err := tlog.TreeHash(size, s.hashReader(ctx))
	if err != nil {
		return 0, tlog.Hash{}, fmt.Errorf("store: audit tree: %w", err)
	}
	return size, h, nil
}

// hashReader reads committed stored hashes, through a bounded in-memory
// cache: a stored hash never changes once committed, and proofs and tree
// heads read the same upper-level hashes again and again. (Hashes written
// by a transaction join it only once the transaction commits.)
func (s *Store) hashReader(ctx context.Context) tlog.HashReader {
	return tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		if len(idx) == 0 {
			return nil, nil
		}
		out := make([]tlog.Hash, len(idx))
		var miss []int64
		var at []int // positions in out of the misses
		s.hmu.Lock()
		for i, x := range idx {
			if h, ok := s.hcache[x]; ok {
				out[i] = h
			} else {
				miss = append(miss, x)
				at = append(at, i)
			}
		}
		s.hmu.Unlock()
		if len(miss) == 0 {
			return out, nil
		}
		got, err := s.readHashes(ctx, nil, miss)
		if err != nil {
			return nil, err
		}
		s.hmu.Lock()
		if s.hcache == nil || len(s.hcache)+len(miss) > maxCachedHashes {
			s.hcache = map[int64]tlog.Hash{}
		}
		for i, x := range miss {
			s.hcache[x] = got[i]
			out[at[i]] = got[i]
		}
		s.hmu.Unlock()
		return out, nil
	})
}

// cacheHashes adds committed hashes to the cache.
func (s *Store) cacheHashes(hs map[int64]tlog.Hash) {
	if len(hs) == 0 {
		return
	}
	s.hmu.Lock()
	defer s.hmu.Unlock()
	if s.hcache == nil || len(s.hcache)+len(hs) > maxCachedHashes {
		s.hcache = map[int64]tlog.Hash{}
	}
	for x, h := range hs {
		s.hcache[x] = h
	}
}

// maxCachedHashes bounds the hash cache (32 bytes each plus map overhead).
const maxCachedHashes = 1 << 18

// Prove returns the inclusion proofs of entries ns in the tree of size t.
// A first pass only records which stored hashes the proofs need; they are
// then read together (cache first, then the database, in a few queries)
// and the proofs built from them.
func (s *Store) Prove(ctx context.Context, t int64, ns ...int64) ([]tlog.RecordProof, error) {
	need := map[int64]bool{}
	record := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		for _, x := range idx {
			need[x] = true
		}
		return make([]tlog.Hash, len(idx)), nil
	})
	for _, n := range ns {
		if _, err := tlog.ProveRecord(t, n, record); err != nil {
			return nil, fmt.Errorf("store: audit proof of %d in %d: %w", n, t, err)
		}
	}
	idx := make([]int64, 0, len(need))
	for x := range need {
		idx = append(idx, x)
	}
	known := map[int64]tlog.Hash{}
	r := s.hashReader(ctx)
	for i := 0; i < len(idx); i += 500 {
		part := idx[i:min(i+500, len(idx))]
		got, err := r.ReadHashes(part)
		if err != nil {
			return nil, fmt.Errorf("store: audit proofs: %w", err)
		}
		for k, x := range part {
			known[x] = got[k]
		}
	}
	fromKnown := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) { return pick(known, idx, "not read") })
	out := make([]tlog.RecordProof, len(ns))
	for i, n := range ns {
		p, err := tlog.ProveRecord(t, n, fromKnown)
		if err != nil {
			return nil, fmt.Errorf("store: audit proof of %d in %d: %w", n, t, err)
		}
		out[i] = p
	}
	return out, nil
}

// Entries returns the log entries with indexes in [start, end), in order.
func (s *Store) Entries(ctx context.Context, start, end int64) ([][]byte, error) {
	var out [][]byte
	err := s.EachEntry(ctx, start, end, func(_ int64, b []byte) error {
		out = append(out, b)
		return nil
	})
	return out, err
}

// EachEntry calls fn with each audit entry of [start, end) in order, as
// the store returns them (one entry in memory at a time, b its own copy),
// and stops at fn's first error, returning it.
func (s *Store) EachEntry(ctx context.Context, start, end int64, fn func(index int64, b []byte) error) error {
	rows, err := s.readStmt(qEntries, 0).QueryContext(ctx, start, end)
	if err != nil {
		return fmt.Errorf("store: audit entries: %w", err)
	}
	defer rows.Close()
	next := start
	var b []byte
	for rows.Next() {
		var x int64
		if err := rows.Scan(&x, &b); err != nil {
			return err
		}
		if x != next {
			return fmt.Errorf("store: audit entry %d missing", next)
		}
		if err := fn(x, b); err != nil {
			return err
		}
		next++
	}
	return rows.Err()
}

// ReleaseLeases drops every lease. Only for a single-node store at start
// (SQLite, whose file the caller holds locked): leases left by a process
// that died are void, so its items are signed now rather than after the
// lease would have expired.
func (s *Store) ReleaseLeases(ctx context.Context) error {
	_, err := s.db.ExecContext(ctx, `UPDATE items SET lease_owner = NULL, lease_until = NULL WHERE state = 'pending' AND lease_owner IS NOT NULL`)
	if err != nil {
		return fmt.Errorf("store: releasing leases: %w", err)
	}
	return nil
}
