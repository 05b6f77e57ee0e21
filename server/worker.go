package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"signet.dev/keys"
	"signet.dev/request"
	"signet.dev/server/audit"
	"signet.dev/server/store"
)

// The signing pipeline has three stages, so the token never waits for the
// database: a claimer keeps a buffer of leased items topped up, a pool of
// signers (as many as the keys' workers) signs them, and a committer
// verifies whatever signatures are ready and stores them in one
// transaction (group commit: while one commit syncs, the next batch
// accumulates).

// wake tells the claimer there may be work (a submission or approval
// here) or room for it (a signer took the buffer down to half).
func (s *Server) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// pipeline runs until Stop; what was claimed by then is signed and stored
// before it returns, whatever the shutdown: its contexts are not the
// server's.
func (s *Server) pipeline() {
	defer s.lanes.Done()
	work := make(chan store.Claim, s.cfg.Batch)
	results := make(chan *store.Signed, s.cfg.Batch)
	var more atomic.Bool // the last claim filled its room: more may be queued
	go s.claimer(work, &more)
	signers := 0
	for name, k := range s.keys {
		signers += cap(k.sem)
		k.signTime = s.metrics.signSeconds.WithLabelValues(name)
	}
	var wg sync.WaitGroup
	for range max(signers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				if len(work) <= cap(work)/2 && more.Load() {
					s.wake() // room to claim more
				}
				d, f := s.sign(c)
				if d != nil {
					results <- d
				}
				if f != nil {
					s.retry([]store.Failed{*f})
				}
			}
		}()
	}
	go func() { wg.Wait(); close(results) }()
	s.committer(results)
}

func (s *Server) claimer(work chan<- store.Claim, more *atomic.Bool) {
	defer close(work)
	poll := time.NewTicker(s.cfg.Poll.Duration)
	defer poll.Stop()
	// idle waits for a wake-up or the next poll; false once stopping.
	idle := func() bool {
		select {
		case <-s.stop:
			return false
		case <-s.kick:
		case <-poll.C:
		}
		return true
	}
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		// Claim when the buffer is at most half full, and only what fits:
		// a claimed item should wait for a signer, not for a lease. A
		// signer wakes the claimer when it takes the buffer to half and
		// the last claim left items queued; submissions wake it too.
		room := cap(work) - len(work)
		if room < cap(work)/2 {
			if !idle() {
				return
			}
			continue
		}
		claims, err := s.store.Claim(context.Background(), s.owner, s.cfg.Lease.Duration, room)
		if err != nil {
			s.log.Error("claiming items", "err", err)
		}
		more.Store(len(claims) == room)
		if len(claims) == 0 {
			if !idle() {
				return
			}
			continue
		}
		for _, c := range claims {
			work <- c
		}
	}
}

// sign signs one claimed item with its key and returns the signature with
// its audit entry, or why it failed (the item is given back and tried
// again after the retry interval). The committer verifies the signature.
func (s *Server) sign(c store.Claim) (*store.Signed, *store.Failed) {
	k := s.keys[c.Key]
	if k == nil {
		// The key left the configuration after submission: keep the item
		// queued, with the reason in its status, rather than fail it.
		s.log.Error("item needs a key this replica does not hold", "request", c.Request, "item", c.ID, "key", c.Key)
		return nil, &store.Failed{Claim: c, Err: fmt.Sprintf("key %q is not configured on this service", c.Key)}
	}
	err := s.recheck(&c)
	if errors.Is(err, errTransient) {
		s.log.Error("rechecking an item", "request", c.Request, "item", c.ID, "err", err)
		return nil, &store.Failed{Claim: c, Err: err.Error()}
	}
	if err != nil {
		s.refuseClaim(c, err)
		return nil, nil
	}
	// c.TBS is now known to be the verified request body's bytes.
	h, err := request.HashByName(c.Hash)
	if err != nil {
		return nil, &store.Failed{Claim: c, Err: err.Error()}
	}
	k.sem <- struct{}{}
	t0 := time.Now()
	sig, err := keys.Sign(k.signer, h, c.TBS)
	<-k.sem
	k.signTime.Observe(time.Since(t0).Seconds())
	if err != nil {
		s.metrics.signErrors.WithLabelValues(c.Key).Inc()
		s.log.Error("signing", "request", c.Request, "item", c.ID, "key", c.Key, "err", err)
		return nil, &store.Failed{Claim: c, Err: "signing: " + err.Error()}
	}
	return &store.Signed{Claim: c, Signature: sig, Entry: &audit.Entry{
		Time: time.Now().UTC(), Type: audit.TypeSign, Client: c.Client,
		Request: c.Request, Item: c.ID, Key: c.Key, Kind: c.Kind,
		TBS: store.TBSHash(c.TBS), Sig: store.TBSHash(sig),
	}}, nil
}

// retry gives failed items back to the queue, to be claimed again after
// the retry interval. If that fails too they stay leased, and are claimed
// again when the lease expires.
func (s *Server) retry(failed []store.Failed) {
	if len(failed) == 0 {
		return
	}
	if _, err := s.store.Retry(context.Background(), failed, time.Now().Add(s.cfg.Retry.Duration)); err != nil {
		s.log.Error("giving back failed items", "items", len(failed), "err", err)
	}
}

// gatherWindow is how long the committer collects signatures before
// storing them (unless Batch are ready sooner). At a few hundred
// signatures per second per core, 25 ms gathers tens of items per commit.
const gatherWindow = 25 * time.Millisecond

// committer stores signatures as they come, as many per transaction as
// are ready (up to Batch), until results is closed and drained.
func (s *Server) committer(results <-chan *store.Signed) {
	for {
		first, ok := <-results
		if !ok {
			return
		}
		// Gather for a while: a commit costs a sync and a few statements
		// whatever its size, so fewer, larger ones leave more CPU to the
		// token. The window is short next to a request's signing time.
		batch := []store.Signed{*first}
		timeout := time.NewTimer(gatherWindow)
	gather:
		for len(batch) < s.cfg.Batch {
			select {
			case d, ok := <-results:
				if !ok {
					break gather
				}
				batch = append(batch, *d)
			case <-timeout.C:
				break gather
			}
		}
		timeout.Stop()
		s.commit(batch)
	}
}

func (s *Server) commit(batch []store.Signed) {
	batch, failed := s.verified(batch)
	s.retry(failed)
	if len(batch) == 0 {
		return
	}
	t0 := time.Now()
	n, err := s.store.Complete(context.Background(), batch)
	s.metrics.commitSeconds.Observe(time.Since(t0).Seconds())
	if err != nil {
		// Nothing stored: the items stay leased to us until the lease
		// expires, then are claimed and signed again.
		s.log.Error("storing signatures", "items", len(batch), "err", err)
		return
	}
	s.signedBroadcast(batch)
	for _, d := range batch {
		s.metrics.signed.WithLabelValues(d.Claim.Key).Inc()
	}
	if n != len(batch) {
		s.log.Warn("signatures dropped: items were re-claimed after their lease expired", "dropped", len(batch)-n)
	}
	s.log.Debug("batch stored", "items", n, "seconds", time.Since(t0).Seconds())
}

// verified returns the signatures of batch that their key's certificate
// verifies, and the others as failures: the service never stores or
// returns a signature that does not verify (a token answering with a
// faulty signature, or with another key's, fails here; its items are
// signed again after the retry interval). Verifying a
// batch in one loop here, rather than each signature on its signer between
// two token calls, costs about half as much CPU: the verifier's code and
// data stay in cache.
func (s *Server) verified(batch []store.Signed) ([]store.Signed, []store.Failed) {
	kept := batch[:0]
	var failed []store.Failed
	for _, d := range batch {
		k := s.keys[d.Claim.Key]
		h, err := request.HashByName(d.Claim.Hash)
		if err == nil {
			err = keys.Verify(k.cert.PublicKey, h, d.Claim.TBS, d.Signature)
		}
		if err != nil {
			s.metrics.signErrors.WithLabelValues(d.Claim.Key).Inc()
			s.log.Error("signature does not verify: not stored", "request", d.Claim.Request, "item", d.Claim.ID, "key", d.Claim.Key, "err", err)
			failed = append(failed, store.Failed{Claim: d.Claim, Err: "the token's signature does not verify with the key's certificate"})
			continue
		}
		kept = append(kept, d)
	}
	return kept, failed
}
