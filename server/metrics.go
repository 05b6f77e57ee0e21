package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	reg           *prometheus.Registry
	http          *prometheus.CounterVec
	submissions   *prometheus.CounterVec
	signed        *prometheus.CounterVec
	signErrors    *prometheus.CounterVec
	signSeconds   *prometheus.HistogramVec
	commitSeconds prometheus.Histogram
	// recheckRefused counts items refused right before signing (an
	// edited row, a revoked client, an approval that no longer counts).
	recheckRefused prometheus.Counter
	// Anomalies: what hostile or broken clients cause.
	bodyTooLarge prometheus.Counter
	slowClients  *prometheus.CounterVec
	busy         *prometheus.CounterVec
	rateLimited  prometheus.Counter
	authRefused  *prometheus.CounterVec
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		http: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "signet_http_requests_total", Help: "API calls by route and status code.",
		}, []string{"route", "code"}),
		submissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "signet_submissions_total", Help: "Submitted requests by outcome (accepted, duplicate, refused, invalid).",
		}, []string{"result"}),
		signed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "signet_items_signed_total", Help: "Signatures stored, by key.",
		}, []string{"key"}),
		signErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "signet_sign_errors_total", Help: "Failed signing attempts, by key.",
		}, []string{"key"}),
		signSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "signet_sign_seconds", Help: "Time of one signature by the key (token round trip included).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"key"}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "signet_commit_seconds", Help: "Time to store one batch of signatures with its audit entries.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		recheckRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "signet_items_refused_at_signing_total", Help: "Items refused right before signing because they no longer passed their checks.",
		}),
	}
	m.bodyTooLarge = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "signet_request_body_too_large_total", Help: "Submissions refused because their body exceeded limits.max_request_bytes.",
	})
	m.slowClients = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "signet_slow_clients_total", Help: "Calls cut off by a timeout: reading the body (read) or writing the answer (write).",
	}, []string{"phase"})
	m.busy = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "signet_concurrency_refusals_total", Help: "Calls answered 429 because the client already had limits.max_concurrent calls in progress, by route.",
	}, []string{"route"})
	m.rateLimited = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "signet_rate_limited_total", Help: "Calls answered 429 by the per-client rate limit.",
	})
	m.authRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "signet_auth_refusals_total", Help: "Calls answered 401, by reason (unknown, multiple_cn, ambiguous, chain, pinned_outside_validity).",
	}, []string{"reason"})
	pending := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "signet_items_pending", Help: "Items queued for signing (all replicas).",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		n, err := s.store.Pending(ctx)
		if err != nil {
			return -1
		}
		return float64(n)
	})
	m.reg.MustRegister(m.bodyTooLarge, m.slowClients, m.busy, m.rateLimited, m.authRefused)
	m.reg.MustRegister(m.http, m.submissions, m.signed, m.signErrors, m.signSeconds, m.commitSeconds, m.recheckRefused, pending,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
