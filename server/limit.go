package server

import (
	"sync"
	"time"
)

// limiter is a token bucket per client identity.
type limiter struct {
	mu      sync.Mutex
	rate    float64
	burst   float64
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(rate float64, burst int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), buckets: map[string]*bucket{}}
}

// allow takes a token from who's bucket, reporting whether there was one.
func (l *limiter) allow(who string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[who]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[who] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// gate bounds each client's concurrent expensive calls (submissions, which
// hold a body in memory; fetches and audit reads, which hold answers).
type gate struct {
	mu   sync.Mutex
	max  int
	busy map[string]int
}

func newGate(max int) *gate { return &gate{max: max, busy: map[string]int{}} }

// enter takes one of who's slots, reporting whether one was free; the
// caller calls leave when done.
func (g *gate) enter(who string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.busy[who] >= g.max {
		return false
	}
	g.busy[who]++
	return true
}

func (g *gate) leave(who string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.busy[who]--; g.busy[who] <= 0 {
		delete(g.busy, who)
	}
}
