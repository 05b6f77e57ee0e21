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

func (b binder) submitter(id, client string) []byte { return b.mac("submitter", id, client) }

// verifiedRequest is what the worker keeps of a stored request whose
// body, id and client binding were verified: per item, a digest of what
// is to be signed and the verdict of its kind's check (a pure function of
// those bytes). It is immutable, so it may be cached, and small: 4096
// items take 160 KiB, where the parsed request would take megabytes.
type verifiedRequest struct {
	client string
	// others are the clients that submitted the same request later,
	// with a valid binding, when it was verified.
	others []string
	items  []itemSeal
}

type itemSeal struct {
	sum   [32]byte  // itemSum of the submitted item
	check error     // its kind's check (canonical rebuild), nil if it passed
	time  time.Time // the signing time it claims (check.SigningTime), if any
}

// itemSum commits to everything of an item the worker signs with.
func itemSum(id, key, kind, hash string, tbs []byte) [32]byte {
	h := sha256.New()
	for _, p := range []string{id, key, kind, hash} {
		fmt.Fprintf(h, "%d:%s,", len(p), p)
	}
	fmt.Fprintf(h, "%d:", len(tbs))
	h.Write(tbs)
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// docCache holds verified requests by id, each loaded once however many
// signers ask at the same time. It is bounded: when full it starts over
// (a request is verified again, which is only slower).
type docCache struct {
	mu sync.Mutex
	m  map[string]*docEntry
}

type docEntry struct {
	once sync.Once
	v    *verifiedRequest
	err  error
}

const docCacheSize = 1024

func (c *docCache) load(id string, f func() (*verifiedRequest, error)) (*verifiedRequest, error) {
	c.mu.Lock()
	if c.m == nil || len(c.m) >= docCacheSize {
		c.m = map[string]*docEntry{}
	}
	e := c.m[id]
	if e == nil {
		e = &docEntry{}
		c.m[id] = e
	}
	c.mu.Unlock()
	e.once.Do(func() { e.v, e.err = f() })
	if errors.Is(e.err, errTransient) {
		c.mu.Lock()
		if c.m[id] == e {
			delete(c.m, id) // try again next time
		}
		c.mu.Unlock()
	}
	return e.v, e.err
}

// errTransient marks a recheck that could not be done now (the store did
// not answer): the item is retried, not refused.
var errTransient = errors.New("transient")

// document returns the verified stored request id.
func (s *Server) document(ctx context.Context, id string) (*verifiedRequest, error) {
	return s.docs.load(id, func() (*verifiedRequest, error) {
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
		v := &verifiedRequest{client: d.Client, items: make([]itemSeal, len(req.Items))}
		subs, err := s.store.Submitters(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("%w: reading submitters: %v", errTransient, err)
		}
		for _, a := range subs {
			if hmac.Equal(a.Binding, s.bind.submitter(id, a.Approver)) {
				v.others = append(v.others, a.Approver)
			}
		}
		for i := range req.Items {
			it := &req.Items[i]
			t, _ := check.SigningTime(it)
			v.items[i] = itemSeal{sum: itemSum(it.ID, it.Key, string(it.Kind), it.Hash, it.TBS), check: check.Item(it), time: t}
		}
		return v, nil
	})
}

// recheck decides, right before signing, whether claim c may still be
// signed. The claim's row must be exactly an item of the verified request
// body (so its bytes are the body's, not an edited row's), the item must
// have passed its kind's check, and the client's rights and the approvals
// must hold under the current configuration. An error wrapping
// errTransient means "try again later"; any other error is a refusal.
func (s *Server) recheck(c *store.Claim) error {
	ctx := context.Background()
	v, err := s.document(ctx, c.Request)
	if err != nil {
		return err
	}
	if c.Seq < 0 || c.Seq >= len(v.items) {
		return fmt.Errorf("item %d is not in the stored request %s", c.Seq, c.Request)
	}
	seal := v.items[c.Seq]
	switch {
	case seal.sum != itemSum(c.ID, c.Key, c.Kind, c.Hash, c.TBS):
		return fmt.Errorf("the stored item row %d (%s, key %s, %s) differs from the submitted item", c.Seq, c.ID, c.Key, c.Kind)
	case c.Client != v.client:
		return fmt.Errorf("the stored item row names client %q, the request was submitted by %q", c.Client, v.client)
	case seal.check != nil:
		return seal.check
	}
	if err := s.timeAllowed(seal.time, time.Now()); err != nil {
		return err
	}
	// Some client that submitted it must still have the right.
	err = s.allowed(v.client, c.Key, request.Kind(c.Kind))
	for _, o := range v.others {
		if err == nil {
			break
		}
		if s.allowed(o, c.Key, request.Kind(c.Kind)) == nil {
			err = nil
		}
	}
	if err != nil {
		return err
	}
	if k := s.keys[c.Key]; k != nil && k.cfg.Approvals > 0 {
		as, err := s.store.Approvals(ctx, c.Request)
		if err != nil {
			return fmt.Errorf("%w: reading approvals: %v", errTransient, err)
		}
		n := 0
		for _, a := range as {
			if hmac.Equal(a.Binding, s.bind.approval(c.Request, a.Approver)) && a.Approver != v.client && !slices.Contains(v.others, a.Approver) && s.mayApprove(a.Approver, c.Key) {
				n++
			}
		}
		if n < k.cfg.Approvals {
			return fmt.Errorf("key %q needs %d approvals by current approvers, the request has %d valid ones", c.Key, k.cfg.Approvals, n)
		}
	}
	return nil
}

// timeAllowed applies limits.signing_time_window to a claimed signing
// time (zero: the item claims none).
func (s *Server) timeAllowed(t, now time.Time) error {
	w := s.cfg.Limits.SigningTimeWindow.Duration
	if w <= 0 || t.IsZero() {
		return nil
	}
	if d := t.Sub(now); d > w || d < -w {
		return fmt.Errorf("%w: signing time %s is more than %s from the service's clock (limits.signing_time_window)",
			check.ErrRefused, t.UTC().Format(time.RFC3339), w)
	}
	return nil
}

// allowed checks, against the current configuration, that client may have
// key sign item's kind.
func (s *Server) allowed(client, key string, kind request.Kind) error {
	id := s.byName[client]
	k := s.keys[key]
	switch {
	case id == nil:
		return fmt.Errorf("client %q is no longer configured", client)
	case !id.keys[key]:
		return fmt.Errorf("client %s may no longer use key %q", client, key)
	case k != nil && !slices.Contains(k.cfg.Kinds, string(kind)):
		return fmt.Errorf("key %q no longer signs %s items", key, kind)
	case len(id.kinds) > 0 && !id.kinds[string(kind)]:
		return fmt.Errorf("client %s may no longer submit %s items", client, kind)
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
