// Package api defines the JSON documents of signet's signing service HTTP
// API (version 1), shared by the server and its client. docs/server.md
// shows each with an example.
//
//	POST /v1/requests                  submit a signet.request/v1 → Status (201 new, 200 known)
//	GET  /v1/requests/{id}             → Status
//	GET  /v1/requests/{id}/response    → Result (409 until every item is signed;
//	                                     ?wait=30s waits up to that long, at most 60s)
//	POST /v1/requests/{id}/approve     → Status
//	GET  /v1/keys                      → []Key
//	GET  /v1/audit/checkpoint          → signed note (text/plain)
//	GET  /v1/audit/key                 → the note verifier key (text/plain)
//	GET  /v1/audit/entries?start=&end= → entries, one per line (text/plain)
//	GET  /healthz, GET /metrics
//
// A request's id is the hex SHA-256 of its canonical encoding
// (request.Request.Digest): submitting the same request twice is one
// request. Every error is an Error document with a 4xx or 5xx status.
package api

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"signet.dev/request"
	"signet.dev/server/audit"
)

// Request and item states.
const (
	StateApproval = "approval" // waiting for approvals
	StatePending  = "pending"  // queued for signing
	StateSigned   = "signed"   // every item signed: the response can be fetched
	// StateRefused: an item was refused when it was to be signed, or the
	// request was rejected or cancelled; it will never be signed. The
	// items' errors say why.
	StateRefused = "refused"
)

// Status describes a submitted request.
type Status struct {
	ID        string       `json:"id"`
	State     string       `json:"state"`
	Client    string       `json:"client"`
	Created   string       `json:"created"` // RFC 3339
	Items     []ItemStatus `json:"items"`
	Approvers []string     `json:"approvers,omitempty"`
	// Approvals maps each approval-gated key used by the request to the
	// number of distinct approvers it needs.
	Approvals map[string]int `json:"approvals,omitempty"`
}

// Summary is the status on one line, for whoever waits: the state, how
// many items are signed, the items the service keeps failing to sign and
// why (grouped by error), and the approvals still needed.
func (st *Status) Summary() string {
	signed := 0
	failing := map[string][]string{}
	var errs []string
	for _, it := range st.Items {
		if it.State == StateSigned {
			signed++
		}
		if it.Error != "" && it.State != StateRefused {
			if failing[it.Error] == nil {
				errs = append(errs, it.Error)
			}
			failing[it.Error] = append(failing[it.Error], it.ID)
		}
	}
	s := fmt.Sprintf("%s, %d/%d items signed", st.State, signed, len(st.Items))
	for _, it := range st.Items {
		if it.State == StateRefused {
			s += fmt.Sprintf("; item %s: %s", it.ID, it.Error)
			break
		}
	}
	for _, e := range errs {
		n := "1 item"
		if k := len(failing[e]); k != 1 {
			n = fmt.Sprintf("%d items", k)
		}
		s += fmt.Sprintf("; %s failing, retried: %s", n, e)
	}
	if len(st.Approvals) > 0 {
		var need []string
		for k, n := range st.Approvals {
			need = append(need, fmt.Sprintf("%s needs %d", k, n))
		}
		sort.Strings(need)
		s += "; approvals: " + strings.Join(need, ", ")
		if len(st.Approvers) > 0 {
			s += " (approved by " + strings.Join(st.Approvers, ", ") + ")"
		}
	}
	return s
}

// ItemStatus is one item's state.
type ItemStatus struct {
	ID    string `json:"id"`
	Key   string `json:"key"`
	Kind  string `json:"kind"`
	State string `json:"state"`
	// Error is why the last attempt to sign a pending item failed (it is
	// tried again after the service's retry interval).
	Error string `json:"error,omitempty"`
}

// Error is the body of every error response.
type Error struct {
	Error string `json:"error"`
	// Items lists per-item reasons when items were refused.
	Items []ItemError `json:"items,omitempty"`
}

// ItemError says why one item was refused.
type ItemError struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// Key describes a key the service holds: what a build needs at prepare
// time.
type Key struct {
	Name        string   `json:"name"`
	Kinds       []string `json:"kinds"`
	Approvals   int      `json:"approvals,omitempty"`
	Certificate string   `json:"certificate"`     // PEM
	Chain       string   `json:"chain,omitempty"` // PEM
	PublicKey   string   `json:"publicKey"`       // PEM SubjectPublicKeyInfo
	Algorithm   string   `json:"algorithm"`       // keys.Describe
}

// Result is a completed request: its signet.response/v1 and the audit
// log's proof that each signature was logged.
type Result struct {
	Response *request.Response `json:"response"`
	Audit    AuditProofs       `json:"audit"`
}

// AuditProofs proves items' "sign" entries are in the audit log.
type AuditProofs struct {
	// Checkpoint is the signed note of the tree the proofs are against.
	Checkpoint string `json:"checkpoint"`
	// Items maps item id to the inclusion proof of its "sign" entry.
	Items map[string]*audit.Proof `json:"items"`
}

// Marshal is the API's JSON encoding (indented, final newline).
func Marshal(v any) []byte {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}
