// Package server is signet's signing service: it holds keys (PKCS#11
// tokens or PEM files, through keys.Open), authenticates clients (TLS
// client certificates or bearer tokens, stored only as SHA-256 hashes),
// checks every item of a submitted signet.request/v1 by its kind (package
// signet.dev/request/check, the same checks as `signet request sign`) and
// against policy (which client may use which key for which kind), waits for
// approvals where a key requires them, signs, and records every
// submission, refusal, approval and signature in a tamper-evident audit log
// (package signet.dev/server/audit).
//
// State lives in package signet.dev/server/store: SQLite for one node,
// PostgreSQL for replicas sharing a queue. A replica claims pending items
// with a lease, signs them with a worker pool sized to the key's sessions,
// and stores the signatures, their state change and audit entries in one
// transaction, so a crash (kill -9) loses nothing and signs nothing twice.
//
// The HTTP API (all JSON, versioned under /v1) is documented with examples
// in docs/server.md; package signet.dev/server/client is its Go client.
package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/mod/sumdb/note"

	"signet.dev/keys"
	"signet.dev/server/store"
)

// Server is a running signing service replica.
type Server struct {
	cfg     *Config
	log     *slog.Logger
	store   *store.Store
	keys    map[string]*key
	clients []*identity
	byName  map[string]*identity
	bind    binder               // MACs binding stored rows to what the service accepted
	docs    docCache             // verified stored requests
	tokens  map[string]*identity // by hex SHA-256 of the token
	certFP  map[string]*identity // by hex SHA-256 of the certificate DER
	certCN  map[string]*identity
	certSAN map[string]*identity // by NormalizeSAN form
	caPool  *x509.CertPool       // issuers of certificate_cn clients
	note    note.Signer
	noteV   string // verifier key, published at /v1/audit/key
	owner   string // lease owner id of this process
	limits  *limiter
	gate    *gate // concurrent expensive calls per client
	metrics *metrics
	lockf   *os.File // sqlite: held flock

	kick     chan struct{}
	stop     chan struct{}
	draining chan struct{} // closed when shutdown begins: long polls return
	// signedMu guards signedCh: per request id, a channel closed when this
	// replica stores one of its signatures (long-polling fetches wait on it).
	signedMu sync.Mutex
	signedCh map[string]*waiters
	lanes    sync.WaitGroup // the signing pipeline
	closed   sync.Once
}

type key struct {
	cfg    KeyConfig
	signer keys.Signer
	cert   *x509.Certificate
	chain  []*x509.Certificate
	sem    chan struct{}
	// signTime observes signing times (the key's series of
	// signet_sign_seconds, looked up once).
	signTime prometheus.Observer
}

type identity struct {
	name    string
	keys    map[string]bool
	kinds   map[string]bool // empty: any
	approve map[string]bool
}

// New opens the keys and the store named by cfg. The caller must Close it.
func New(ctx context.Context, cfg *Config, log *slog.Logger) (_ *Server, err error) {
	if log == nil {
		log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	s := &Server{
		cfg: cfg, log: log,
		keys: map[string]*key{}, byName: map[string]*identity{},
		tokens: map[string]*identity{}, certFP: map[string]*identity{}, certCN: map[string]*identity{}, certSAN: map[string]*identity{},
		kick: make(chan struct{}, 1), stop: make(chan struct{}), draining: make(chan struct{}), signedCh: map[string]*waiters{},
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	var rnd [8]byte
	rand.Read(rnd[:])
	host, _ := os.Hostname()
	s.owner = fmt.Sprintf("%s/%d/%x", host, os.Getpid(), rnd)

	skey, err := os.ReadFile(cfg.AuditKey)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	s.note, err = note.NewSigner(strings.TrimSpace(string(skey)))
	if err != nil {
		return nil, fmt.Errorf("audit key %s: %w", cfg.AuditKey, err)
	}
	s.noteV, err = verifierKey(strings.TrimSpace(string(skey)))
	if err != nil {
		return nil, fmt.Errorf("audit key %s: %w", cfg.AuditKey, err)
	}
	if s.bind, err = newBinder(strings.TrimSpace(string(skey))); err != nil {
		return nil, fmt.Errorf("audit key %s: %w", cfg.AuditKey, err)
	}

	for _, kc := range cfg.Keys {
		k, err := openKey(kc)
		if err != nil {
			return nil, err
		}
		s.keys[kc.Name] = k
	}
	for i := range cfg.Clients {
		cc := &cfg.Clients[i]
		id := &identity{name: cc.Name, keys: set(cc.Keys), kinds: set(cc.Kinds), approve: set(cc.Approve)}
		s.clients = append(s.clients, id)
		s.byName[id.name] = id
		for _, h := range cc.TokenSHA256 {
			s.tokens[strings.ToLower(h)] = id
		}
		for _, h := range cc.CertificateSHA256 {
			s.certFP[strings.ToLower(h)] = id
		}
		for _, cn := range cc.CertificateCN {
			s.certCN[cn] = id
		}
		for _, san := range cc.CertificateSAN {
			n, err := NormalizeSAN(san)
			if err != nil {
				return nil, fmt.Errorf("client %q: certificate_san %q: %w", cc.Name, san, err)
			}
			s.certSAN[n] = id
		}
	}
	if len(s.certFP) > 0 {
		// The pinning contract: a pin names one certificate, and that
		// certificate still counts only within its validity period.
		log.Info("pinned client certificates (certificate_sha256) are refused before their notBefore and after their notAfter", "pins", len(s.certFP))
	}

	if cfg.Store.Driver == "sqlite" {
		// One node owns a SQLite queue: hold a lock so a second process
		// cannot share it (that is what PostgreSQL is for).
		f, err := os.OpenFile(cfg.Store.DSN+".lock", os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			return nil, fmt.Errorf("store %s: in use by another signet serve (SQLite is single-node; use PostgreSQL for replicas)", cfg.Store.DSN)
		}
		s.lockf = f
	}
	s.store, err = store.Open(ctx, cfg.Store.Driver, cfg.Store.DSN)
	if err != nil {
		return nil, err
	}
	if cfg.Store.Driver == "sqlite" {
		if err := s.store.ReleaseLeases(ctx); err != nil {
			return nil, err
		}
	}
	s.limits = newLimiter(cfg.Limits.Rate, cfg.Limits.Burst)
	s.gate = newGate(cfg.Limits.MaxConcurrent)
	s.metrics = newMetrics(s)
	return s, nil
}

func set(list []string) map[string]bool {
	m := map[string]bool{}
	for _, v := range list {
		m[v] = true
	}
	return m
}

// verifierKey derives the note verifier key from a signer key
// "PRIVATE+KEY+<name>+<hash>+<base64 key>".
func verifierKey(skey string) (string, error) {
	s, err := note.NewSigner(skey)
	if err != nil {
		return "", err
	}
	parts := strings.SplitN(skey, "+", 5) // base64 may hold '+'
	if len(parts) != 5 {
		return "", errors.New("malformed note signer key")
	}
	priv, err := decodeNoteKey(parts[4])
	if err != nil {
		return "", err
	}
	return note.NewEd25519VerifierKey(s.Name(), priv)
}

func openKey(kc KeyConfig) (*key, error) {
	k := &key{cfg: kc}
	var certs []*x509.Certificate
	if strings.HasPrefix(kc.Certificate, "pkcs11:") {
		c, err := keys.PKCS11Certificate(kc.Certificate)
		if err != nil {
			return nil, fmt.Errorf("key %q: certificate %s: %w", kc.Name, kc.Certificate, err)
		}
		if c == nil {
			return nil, fmt.Errorf("key %q: certificate %s: not on the token", kc.Name, kc.Certificate)
		}
		certs = []*x509.Certificate{c}
	} else {
		var err error
		certs, err = keys.LoadCertificates(kc.Certificate)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", kc.Name, err)
		}
	}
	k.cert, k.chain = certs[0], certs[1:]
	s, err := keys.Open(kc.PrivateKeySource, kc.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("key %q: %w", kc.Name, err)
	}
	k.signer = s
	if err := keys.CheckPair(s, k.cert); err != nil {
		s.Close()
		return nil, fmt.Errorf("key %q: %s and %s: %w", kc.Name, kc.PrivateKey, kc.Certificate, err)
	}
	n := kc.Workers
	if n <= 0 {
		n = 2 * runtime.NumCPU()
	}
	k.sem = make(chan struct{}, n)
	return k, nil
}

// Close releases keys, the store and the store lock. It does not wait for
// work; Serve does that on shutdown.
func (s *Server) Close() error {
	s.closed.Do(func() {
		for _, k := range s.keys {
			k.signer.Close()
		}
		if s.store != nil {
			s.store.Close()
		}
		if s.lockf != nil {
			s.lockf.Close()
		}
	})
	return nil
}

// TLSConfig returns the server's TLS configuration, or nil for plain HTTP.
// Serve calls it; call it before Handler when serving TLS another way.
func (s *Server) TLSConfig() (*tls.Config, error) {
	tc := s.cfg.TLS
	if tc == nil {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(tc.Certificate, tc.Key)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, ClientAuth: tls.RequestClientCert}
	if tc.ClientCA != "" {
		cas, err := keys.LoadCertificates(tc.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("tls client_ca: %w", err)
		}
		pool := x509.NewCertPool()
		for _, c := range cas {
			pool.AddCert(c)
		}
		// The handshake only requests a certificate; identify verifies it
		// (pinned fingerprint, or chain to client_ca), so an unknown
		// certificate gets a 401 naming the problem, not a TLS alert.
		s.caPool = pool
	}
	return c, nil
}

// Serve accepts connections on l until ctx is cancelled, running the
// signing workers meanwhile. On cancellation (SIGTERM) it stops accepting,
// lets in-flight API calls finish, finishes the batches being signed, and
// returns; items not yet claimed stay queued for the next start.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	tlsc, err := s.TLSConfig()
	if err != nil {
		return err
	}
	if tlsc != nil {
		l = tls.NewListener(l, tlsc)
	}
	// Every phase of a connection is bounded, so slow or stalled clients
	// release what they hold: a long-polling fetch extends its own write
	// deadline by its wait (see longPoll).
	lim := s.cfg.Limits
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: min(10*time.Second, lim.ReadTimeout.Duration),
		ReadTimeout:       lim.ReadTimeout.Duration,
		WriteTimeout:      lim.WriteTimeout.Duration,
		IdleTimeout:       lim.IdleTimeout.Duration,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	s.Start()
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(l) }()
	s.log.Info("serving", "addr", l.Addr().String(), "tls", tlsc != nil, "store", s.cfg.Store.Driver, "replica", s.owner)
	select {
	case err := <-errc:
		s.Stop(context.Background())
		return err
	case <-ctx.Done():
	}
	s.log.Info("shutting down: finishing in-flight work")
	close(s.draining)
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout.Duration)
	defer cancel()
	herr := hs.Shutdown(sctx)
	s.Stop(sctx)
	s.log.Info("stopped")
	if herr != nil && !errors.Is(herr, http.ErrServerClosed) {
		return herr
	}
	return nil
}

// Start starts the signing workers (Serve does it; for tests that drive
// Handler directly).
func (s *Server) Start() {
	s.lanes.Add(1)
	go s.pipeline()
}

// Stop asks the workers to stop after their current batch and waits for
// them (or ctx).
func (s *Server) Stop(ctx context.Context) {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	done := make(chan struct{})
	go func() { s.lanes.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("shutdown timeout: leaving claimed items to lease expiry")
	}
}

// waiters of one request's signatures.
type waiters struct {
	ch     chan struct{} // closed, and replaced, when signatures of the request are stored
	n      int           // handlers waiting
	stored int           // signatures of the request stored by this replica while watched
}

// watch starts watching request id. next returns the channel to wait on
// now (closed when this replica next stores signatures of the request) and
// how many of its signatures this replica stored since the watch began;
// release ends the watch.
func (s *Server) watch(id string) (next func() (<-chan struct{}, int), release func()) {
	s.signedMu.Lock()
	defer s.signedMu.Unlock()
	w := s.signedCh[id]
	if w == nil {
		w = &waiters{ch: make(chan struct{})}
		s.signedCh[id] = w
	}
	w.n++
	next = func() (<-chan struct{}, int) {
		s.signedMu.Lock()
		defer s.signedMu.Unlock()
		return w.ch, w.stored
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			s.signedMu.Lock()
			defer s.signedMu.Unlock()
			w.n--
			if w.n == 0 && s.signedCh[id] == w {
				delete(s.signedCh, id)
			}
		})
	}
	return next, release
}

// signedBroadcast counts the signatures of batch for their requests'
// waiters and wakes them.
func (s *Server) signedBroadcast(batch []store.Signed) {
	s.signedMu.Lock()
	defer s.signedMu.Unlock()
	var woken []*waiters
	for _, d := range batch {
		if w := s.signedCh[d.Claim.Request]; w != nil {
			if w.stored++; !slices.Contains(woken, w) {
				woken = append(woken, w)
			}
		}
	}
	for _, w := range woken {
		close(w.ch)
		w.ch = make(chan struct{})
	}
}

// endedBroadcast wakes the fetches waiting on request id because items of
// it ended unsigned (refused, rejected, cancelled): it counts as many
// stored signatures as any request has, so each waiter asks the store.
func (s *Server) endedBroadcast(id string) {
	s.signedMu.Lock()
	defer s.signedMu.Unlock()
	if w := s.signedCh[id]; w != nil {
		w.stored += 1 << 30
		close(w.ch)
		w.ch = make(chan struct{})
	}
}

// tokenHash is how tokens are stored in the configuration.
func tokenHash(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}
