package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"signet.dev/internal/testkeys"
	"signet.dev/request"
	"signet.dev/server/client"
)

// env is a service on a loopback httptest server with SQLite, three keys
// (a PEM file key, a SoftHSM2 key, an approval-gated key) and clients
// with bearer tokens.
type env struct {
	t       *testing.T
	dir     string
	cfg     *Config
	srv     *Server
	http    *httptest.Server
	tokens  map[string]string // client name → token
	vkey    string            // audit note verifier key
	fileKey *testkeys.Key
	hsmKey  *testkeys.Key
	gateKey *testkeys.Key
	// beforeStart, when set, runs after New and before the pipeline
	// starts (to swap a key's signer, say).
	beforeStart func(*Server)
}

var (
	hsmOnce sync.Once
	hsmURI  string
	hsmKey  *testkeys.Key
	hsmDir  string
)

// softHSMKey imports one RSA-2048 key into the process-wide token once.
func softHSMKey(t testing.TB) (*testkeys.Key, string) {
	hsmOnce.Do(func() {
		h := testkeys.NewSoftHSM(t)
		hsmKey = testkeys.Generate(t, testkeys.RSA2048)
		// Keep the PEM files past this test: later tests use the cert.
		// TestMain removes the directory.
		dir, err := os.MkdirTemp("", "signet-server-hsm-")
		if err != nil {
			t.Fatal(err)
		}
		hsmDir = dir
		hsmKey = testkeys.Write(t, testkeys.RSA2048, hsmKey.Signer, dir)
		hsmURI = h.Import(t, hsmKey, "server-test")
	})
	return hsmKey, hsmURI
}

func newToken() string {
	var b [24]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func writeNoteKey(t testing.TB, dir string) (path, vkey string) {
	skey, vkey, err := note.GenerateKey(rand.Reader, "signet.test/audit")
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "audit.key")
	if err := os.WriteFile(path, []byte(skey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, vkey
}

// testConfig builds the configuration the tests share.
func testConfig(t testing.TB, dir string) (*Config, map[string]string, string, [3]*testkeys.Key) {
	fileKey := testkeys.Generate(t, testkeys.RSA3072)
	hk, uri := softHSMKey(t)
	gateKey := testkeys.Generate(t, testkeys.P256)
	auditKey, vkey := writeNoteKey(t, dir)
	tokens := map[string]string{}
	client := func(name string, keys, kinds, approve []string) ClientConfig {
		tok := newToken()
		tokens[name] = tok
		return ClientConfig{Name: name, TokenSHA256: []string{tokenHash(tok)}, Keys: keys, Kinds: kinds, Approve: approve}
	}
	cfg := &Config{
		Listen:   "127.0.0.1:0",
		AuditKey: auditKey,
		Store:    StoreConfig{Driver: "sqlite", DSN: filepath.Join(dir, "signet.db")},
		Keys: []KeyConfig{
			{Name: "verity", PrivateKey: fileKey.KeyPath, Certificate: fileKey.CertPath, Kinds: []string{"verity-roothash", "manifest-pkcs7"}},
			{Name: "hsm", PrivateKey: uri, PrivateKeySource: "provider:pkcs11", Certificate: hk.CertPath, Kinds: []string{"verity-roothash"}, Workers: 4},
			{Name: "gated", PrivateKey: gateKey.KeyPath, Certificate: gateKey.CertPath, Kinds: []string{"verity-roothash"}, Approvals: 2},
		},
		Clients: []ClientConfig{
			client("ci", []string{"verity", "hsm", "gated"}, nil, nil),
			client("alice", nil, nil, []string{"gated"}),
			client("bob", nil, nil, []string{"gated"}),
			client("limited", []string{"verity"}, []string{"manifest-pkcs7"}, nil),
		},
	}
	cfg.Clients = append(cfg.Clients, client("approver-ci", []string{"gated", "verity"}, nil, []string{"gated"}))
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	return cfg, tokens, vkey, [3]*testkeys.Key{fileKey, hk, gateKey}
}

func newEnv(t *testing.T, mutate func(*Config)) *env {
	return newEnvHook(t, mutate, nil)
}

func newEnvHook(t *testing.T, mutate func(*Config), beforeStart func(*Server)) *env {
	t.Helper()
	dir := t.TempDir()
	cfg, tokens, vkey, ks := testConfig(t, dir)
	if mutate != nil {
		mutate(cfg)
	}
	e := &env{t: t, dir: dir, cfg: cfg, tokens: tokens, vkey: vkey, fileKey: ks[0], hsmKey: ks[1], gateKey: ks[2], beforeStart: beforeStart}
	e.start()
	return e
}

// start runs a server replica on e's configuration.
func (e *env) start() {
	t, cfg := e.t, e.cfg
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	s, err := New(context.Background(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if e.beforeStart != nil {
		e.beforeStart(s)
	}
	hs := httptest.NewServer(s.Handler())
	s.Start()
	e.srv, e.http = s, hs
	t.Cleanup(e.stop)
}

func (e *env) stop() {
	e.http.Close()
	e.srv.Stop(context.Background())
	e.srv.Close()
}

func (e *env) client(name string) *client.Client {
	c, err := client.New(e.http.URL, client.Options{Token: e.tokens[name]})
	if err != nil {
		e.t.Fatal(err)
	}
	c.Poll = 20 * time.Millisecond
	return c
}

// verityItem is a verity-roothash item over a random root hash.
func verityItem(id, key string) request.Item {
	var rh [32]byte
	rand.Read(rh[:])
	h := hex.EncodeToString(rh[:])
	return request.Item{ID: id, Kind: request.KindVerityRootHash, Key: key, Hash: "sha256", TBS: []byte(h),
		Verity: &request.VerityContext{Image: "root.raw", RootHash: h}}
}

// newRequest makes a request of n verity items for key.
func newRequest(t testing.TB, n int, key string) (*request.Request, []byte) {
	r := &request.Request{Format: request.FormatRequest, Build: "test"}
	for i := range n {
		r.Items = append(r.Items, verityItem(fmt.Sprintf("roothashes/img%d.roothash", i), key))
	}
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return r, b
}

// metric returns the value of one series of the service's /metrics ("0"
// when absent).
func (e *env) metric(series string) string {
	e.t.Helper()
	resp, err := http.Get(e.http.URL + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			return v
		}
	}
	return "0"
}
