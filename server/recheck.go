package server

import (
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"signet.dev/request"
	"signet.dev/request/check"
	"signet.dev/server/audit"
	"signet.dev/server/store"
)

// The database is not trusted to say what to sign. Whoever can write it
// (shared PostgreSQL credentials, a restored backup, the SQLite file's
// owner) must not obtain a signature the service's checks did not pass.
// So the service binds what it accepted with a MAC whose key is not in the
// database (derived from the audit key file), and right before a key
// signs, the worker re-derives the item from the stored request body,
// checks the body's digest is the request id, the binding of the request
// to its client and of every approval to its approver, the client's
// rights in the current configuration, and the item's kind check (the
// canonical rebuild), and signs the TBS of the body, never the row's.

// binder computes the service's binding MACs.
type binder struct{ key []byte }

func newBinder(auditKey string) (binder, error) {
	k, err := hkdf.Key(sha256.New, []byte(auditKey), nil, "signet.dev/server row binding v1", 32)
	return binder{k}, err
}

func (b binder) mac(parts ...string) []byte {
	m := hmac.New(sha256.New, b.key)
	for _, p := range parts {
		// Length-prefixed: no two part lists encode alike.
		fmt.Fprintf(m, "%d:%s,", len(p), p)
	}
	return m.Sum(nil)
}

func (b binder) request(id, client string) []byte { return b.mac("request", id, client) }

func (b binder) approval(id, approver string) []byte { return b.mac("approval", id, approver) }

// verifiedRequest is a stored request whose body, id and client binding
// were verified; immutable, so it may be cached.
type verifiedRequest struct {
	req    *request.Request
	client string
}

// docCache holds verified requests by id. It is bounded: when full it
// starts over (a request is re-verified, which is only slower).
type docCache struct {
	mu sync.Mutex
	m  map[string]*verifiedRequest
}

const docCacheSize = 1024

func (c *docCache) get(id string) *verifiedRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[id]
}

func (c *docCache) put(id string, v *verifiedRequest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= docCacheSize {
		c.m = map[string]*verifiedRequest{}
	}
	c.m[id] = v
}

// errTransient marks a recheck that could not be done now (the store did
// not answer): the item is retried, not refused.
var errTransient = errors.New("transient")

// document returns the verified stored request id.
func (s *Server) document(ctx context.Context, id string) (*verifiedRequest, error) {
	if v := s.docs.get(id); v != nil {
		return v, nil
	}
	d, err := s.store.Document(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("%w: reading request %s: %v", errTransient, id, err)
	}
	if !hmac.Equal(d.Binding, s.bind.request(id, d.Client)) {
		return nil, fmt.Errorf("the stored request %s is not bound to client %q by this service (edited or foreign row)", id, d.Client)
	}
	req, err := request.Parse(d.Body)
	if err != nil {
		return nil, fmt.Errorf("the stored request %s does not parse: %v", id, err)
	}
	if dg := req.Digest(); hex.EncodeToString(dg[:]) != id {
		return nil, fmt.Errorf("the stored request body has digest %x, not its id %s", dg, id)
	}
	v := &verifiedRequest{req: req, client: d.Client}
	s.docs.put(id, v)
	return v, nil
}

// recheck decides, right before signing, whether claim c may still be
// signed, and returns the bytes to sign: those of the verified request
// body. An error wrapping errTransient means "try again later"; any other
// error is a refusal.
func (s *Server) recheck(c *store.Claim) ([]byte, error) {
	ctx := context.Background()
	v, err := s.document(ctx, c.Request)
	if err != nil {
		return nil, err
	}
	if c.Seq < 0 || c.Seq >= len(v.req.Items) {
		return nil, fmt.Errorf("item %d is not in the stored request %s", c.Seq, c.Request)
	}
	it := &v.req.Items[c.Seq]
	switch {
	case it.ID != c.ID, it.Key != c.Key, string(it.Kind) != c.Kind, it.Hash != c.Hash:
		return nil, fmt.Errorf("the stored item row (%s, key %s, %s, %s) differs from the submitted item (%s, key %s, %s, %s)",
			c.ID, c.Key, c.Kind, c.Hash, it.ID, it.Key, it.Kind, it.Hash)
	case string(it.TBS) != string(c.TBS):
		return nil, fmt.Errorf("the stored item row's tbs differs from the submitted item's")
	case c.Client != v.client:
		return nil, fmt.Errorf("the stored item row names client %q, the request was submitted by %q", c.Client, v.client)
	}
	if err := s.allowed(v.client, it); err != nil {
		return nil, err
	}
	if err := check.Item(it); err != nil {
		return nil, err
	}
	if k := s.keys[it.Key]; k != nil && k.cfg.Approvals > 0 {
		as, err := s.store.Approvals(ctx, c.Request)
		if err != nil {
			return nil, fmt.Errorf("%w: reading approvals: %v", errTransient, err)
		}
		n := 0
		for _, a := range as {
			if hmac.Equal(a.Binding, s.bind.approval(c.Request, a.Approver)) && a.Approver != v.client && s.mayApprove(a.Approver, it.Key) {
				n++
			}
		}
		if n < k.cfg.Approvals {
			return nil, fmt.Errorf("key %q needs %d approvals by current approvers, the request has %d valid ones", it.Key, k.cfg.Approvals, n)
		}
	}
	return it.TBS, nil
}

// allowed checks, against the current configuration, that client may have
// key sign item's kind.
func (s *Server) allowed(client string, it *request.Item) error {
	id := s.byName[client]
	k := s.keys[it.Key]
	switch {
	case id == nil:
		return fmt.Errorf("client %q is no longer configured", client)
	case !id.keys[it.Key]:
		return fmt.Errorf("client %s may no longer use key %q", client, it.Key)
	case k != nil && !slices.Contains(k.cfg.Kinds, string(it.Kind)):
		return fmt.Errorf("key %q no longer signs %s items", it.Key, it.Kind)
	case len(id.kinds) > 0 && !id.kinds[string(it.Kind)]:
		return fmt.Errorf("client %s may no longer submit %s items", client, it.Kind)
	}
	return nil
}

// refuseClaim ends a claimed item that failed its recheck, audited.
func (s *Server) refuseClaim(c store.Claim, why error) {
	reason := "refused at signing: " + why.Error()
	s.metrics.recheckRefused.Inc()
	s.log.Warn("item refused at signing", "request", c.Request, "item", c.ID, "key", c.Key, "reason", why)
	e := &audit.Entry{Time: time.Now().UTC(), Type: audit.TypeRefuse, Client: c.Client, Request: c.Request,
		Item: c.ID, Key: c.Key, Kind: c.Kind, Reason: reason}
	if _, err := s.store.Refuse(context.Background(), []store.Refused{{Claim: c, Reason: reason, Entry: e}}); err != nil {
		// Left leased: claimed and rechecked again after the lease.
		s.log.Error("storing a refusal", "request", c.Request, "item", c.ID, "err", err)
		return
	}
	s.endedBroadcast(c.Request)
}
