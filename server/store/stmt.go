package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// Every query the store runs on the signing path is prepared once, when the
// store opens, and reused: parsing a statement, above all a multi-row one,
// costs SQLite and PostgreSQL more than running it, and the store is on the
// path of every item. A multi-row statement is prepared for a few row
// counts (rowSizes); one over n rows runs as a few of those.

// query names one of the prepared statements.
type query int

const (
	qInsertRequest query = iota
	qInsertItems         // multi-row
	qLockHead
	qSetHead
	qClaim
	qStoreSigned   // multi-row
	qSetAuditIndex // multi-row
	qInsertEntries // multi-row
	qInsertHashes  // multi-row
	qReadHashes    // multi-row (an IN list)
	qRequest
	qRequestItems
	qApprovers
	qUnsigned
	qPending
	qTreeSize
	qEntries
	nQueries
)

// Queries on items name states literally, never as parameters: SQLite
// uses the partial index items_pending only for a query whose WHERE names
// 'pending' when the statement is prepared, and a parameter compared with
// the index's condition at planning time would tie the plan to its value.

// rowSizes are the row counts multi-row statements are prepared for,
// largest first. Powers of four: n rows take at most three statements of
// each size.
var rowSizes = []int{256, 64, 16, 4, 1}

func (q query) multi() bool {
	switch q {
	case qInsertItems, qStoreSigned, qSetAuditIndex, qInsertEntries, qInsertHashes, qReadHashes:
		return true
	}
	return false
}

// read reports whether q also runs outside transactions, on the read pool.
func (q query) read() bool {
	switch q {
	case qReadHashes, qRequest, qRequestItems, qApprovers, qUnsigned, qPending, qTreeSize, qEntries:
		return true
	}
	return false
}

// text is q's SQL for rows rows (multi-row statements), with the
// database's placeholders.
func (s *Store) text(q query, rows int) string {
	cast := func(t string) string {
		if s.postgres {
			return "::" + t
		}
		return ""
	}
	values := func(row string) string {
		return strings.TrimSuffix(strings.Repeat(row+", ", rows), ", ")
	}
	var t string
	switch q {
	case qInsertRequest:
		t = `INSERT INTO requests (id, client, body, created, binding) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`
	case qInsertItems:
		t = `INSERT INTO items (request_id, seq, client, item_id, key_name, kind, hash, tbs, state, created) VALUES ` +
			values("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
	case qLockHead:
		t = `SELECT size FROM audit_head WHERE id = 1`
		if s.postgres {
			t += " FOR UPDATE"
		}
	case qSetHead:
		t = `UPDATE audit_head SET size = ? WHERE id = 1`
	case qClaim:
		lock := ""
		if s.postgres {
			lock = " FOR UPDATE SKIP LOCKED"
		}
		t = `UPDATE items SET lease_owner = ?, lease_until = ?
			WHERE (request_id, seq) IN (SELECT request_id, seq FROM items
				WHERE state = 'pending' AND (lease_until IS NULL OR lease_until < ?)
				ORDER BY created, request_id, seq LIMIT ?` + lock + `)
			RETURNING request_id, seq, client, item_id, key_name, kind, hash, tbs`
	case qStoreSigned:
		t = `UPDATE items SET state = 'signed', signature = v.column3, audit_index = v.column6, lease_owner = NULL, lease_until = NULL, error = NULL FROM (VALUES ` +
			values("(?"+cast("text")+", ?"+cast("integer")+", ?"+cast("bytea")+", ?"+cast("text")+", ?"+cast("bigint")+", ?"+cast("bigint")+")") +
			`) AS v WHERE items.request_id = v.column1 AND items.seq = v.column2 AND items.state = 'pending'
			AND items.lease_owner = v.column4 AND items.lease_until = v.column5 RETURNING items.request_id, items.seq`
	case qSetAuditIndex:
		t = `UPDATE items SET audit_index = v.column3 FROM (VALUES ` +
			values("(?"+cast("text")+", ?"+cast("integer")+", ?"+cast("bigint")+")") +
			`) AS v WHERE items.request_id = v.column1 AND items.seq = v.column2`
	case qInsertEntries:
		t = `INSERT INTO audit_entries (idx, data) VALUES ` + values("(?, ?)")
	case qInsertHashes:
		t = `INSERT INTO audit_hashes (idx, hash) VALUES ` + values("(?, ?)")
	case qReadHashes:
		t = `SELECT idx, hash FROM audit_hashes WHERE idx IN (` + values("?") + `)`
	case qRequest:
		t = `SELECT client, created FROM requests WHERE id = ?`
	case qRequestItems:
		t = `SELECT seq, item_id, key_name, kind, hash, tbs, state, signature, audit_index, error FROM items WHERE request_id = ? ORDER BY seq`
	case qApprovers:
		t = `SELECT approver FROM approvals WHERE request_id = ? ORDER BY created, approver`
	case qUnsigned:
		t = `SELECT COUNT(*) FROM items WHERE request_id = ? AND state IN ('approval', 'pending')`
	case qPending:
		t = `SELECT COUNT(*) FROM items WHERE state = 'pending'`
	case qTreeSize:
		t = `SELECT size FROM audit_head WHERE id = 1`
	case qEntries:
		t = `SELECT idx, data FROM audit_entries WHERE idx >= ? AND idx < ? ORDER BY idx`
	default:
		panic(fmt.Sprintf("store: unknown query %d", q))
	}
	return s.q(t)
}

type stmtKey struct {
	q    query
	rows int
}

// prepare prepares every statement: on the writer for transactions and,
// for reads, on the read pool.
func (s *Store) prepare(ctx context.Context) error {
	s.wst, s.rst = map[stmtKey]*sql.Stmt{}, map[stmtKey]*sql.Stmt{}
	for q := range nQueries {
		sizes := []int{0}
		if q.multi() {
			sizes = rowSizes
		}
		for _, n := range sizes {
			k := stmtKey{q, n}
			st, err := s.db.PrepareContext(ctx, s.text(q, n))
			if err != nil {
				return fmt.Errorf("store: preparing statements: %w", err)
			}
			s.wst[k] = st
			if !q.read() {
				continue
			}
			if s.rdb == s.db {
				s.rst[k] = st
				continue
			}
			if s.rst[k], err = s.rdb.PrepareContext(ctx, s.text(q, n)); err != nil {
				return fmt.Errorf("store: preparing statements: %w", err)
			}
		}
	}
	return nil
}

func (s *Store) closeStmts() {
	for k, st := range s.rst {
		if s.wst[k] != st {
			st.Close()
		}
	}
	for _, st := range s.wst {
		st.Close()
	}
}

// txStmt is statement q for rows, in tx.
func (s *Store) txStmt(ctx context.Context, tx *txn, q query, rows int) *sql.Stmt {
	return tx.Tx.StmtContext(ctx, s.wst[stmtKey{q, rows}])
}

// readStmt is statement q for rows, on the read pool.
func (s *Store) readStmt(q query, rows int) *sql.Stmt {
	return s.rst[stmtKey{q, rows}]
}

// chunks calls f for consecutive ranges [lo, hi) covering n rows, each of
// a size in rowSizes.
func chunks(n int, f func(lo, hi int) error) error {
	for lo := 0; lo < n; {
		size := rowSizes[0]
		for _, sz := range rowSizes {
			if sz <= n-lo {
				size = sz
				break
			}
		}
		if err := f(lo, lo+size); err != nil {
			return err
		}
		lo += size
	}
	return nil
}
