package server

import (
	"context"
	"sync"
	"time"

	"signet.dev/keys"
	"signet.dev/request"
	"signet.dev/server/audit"
	"signet.dev/server/store"
)

// wake tells idle lanes there may be work (a submission or approval here).
func (s *Server) wake() {
	for range lanes {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// lane claims a batch of pending items, signs them in parallel, and stores
// the signatures with their audit entries in one transaction, until Stop.
// A batch in progress is always finished, whatever the shutdown: its
// context is not the server's.
func (s *Server) lane() {
	defer s.lanes.Done()
	poll := time.NewTicker(s.cfg.Poll.Duration)
	defer poll.Stop()
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		claims, err := s.store.Claim(context.Background(), s.owner, s.cfg.Lease.Duration, s.cfg.Batch)
		if err != nil {
			s.log.Error("claiming items", "err", err)
		}
		if len(claims) == 0 {
			select {
			case <-s.stop:
				return
			case <-s.kick:
			case <-poll.C:
			}
			continue
		}
		s.signBatch(claims)
	}
}

func (s *Server) signBatch(claims []store.Claim) {
	start := time.Now()
	done := make([]*store.Signed, len(claims))
	var wg sync.WaitGroup
	for i := range claims {
		c := &claims[i]
		k := s.keys[c.Key]
		if k == nil {
			// The key left the configuration after submission: leave the
			// item queued (its lease expires) rather than fail it.
			s.log.Error("item needs a key this replica does not hold", "request", c.Request, "item", c.ID, "key", c.Key)
			continue
		}
		h, err := request.HashByName(c.Hash)
		if err != nil {
			s.log.Error("stored item has a bad hash", "request", c.Request, "item", c.ID, "err", err)
			continue
		}
		k.sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-k.sem }()
			t0 := time.Now()
			sig, err := keys.Sign(k.signer, h, c.TBS)
			if err == nil {
				// Never store a signature the certificate does not verify.
				err = keys.Verify(k.cert.PublicKey, h, c.TBS, sig)
			}
			s.metrics.signSeconds.WithLabelValues(c.Key).Observe(time.Since(t0).Seconds())
			if err != nil {
				s.metrics.signErrors.WithLabelValues(c.Key).Inc()
				s.log.Error("signing", "request", c.Request, "item", c.ID, "key", c.Key, "err", err)
				return
			}
			done[i] = &store.Signed{Claim: *c, Signature: sig, Entry: &audit.Entry{
				Time: time.Now().UTC(), Type: audit.TypeSign, Client: c.Client,
				Request: c.Request, Item: c.ID, Key: c.Key, Kind: c.Kind,
				TBS: store.TBSHash(c.TBS), Sig: store.TBSHash(sig),
			}}
		}(i)
	}
	wg.Wait()
	var ok []store.Signed
	for _, d := range done {
		if d != nil {
			ok = append(ok, *d)
		}
	}
	if len(ok) == 0 {
		return
	}
	t0 := time.Now()
	n, err := s.store.Complete(context.Background(), ok)
	s.metrics.commitSeconds.Observe(time.Since(t0).Seconds())
	if err != nil {
		// Nothing stored: the items stay leased to us until the lease
		// expires, then are claimed and signed again.
		s.log.Error("storing signatures", "items", len(ok), "err", err)
		return
	}
	s.signedBroadcast()
	for _, d := range ok {
		s.metrics.signed.WithLabelValues(d.Claim.Key).Inc()
	}
	if n != len(ok) {
		s.log.Warn("signatures dropped: items were re-claimed after their lease expired", "dropped", len(ok)-n)
	}
	s.log.Debug("batch signed", "items", n, "seconds", time.Since(start).Seconds())
}
