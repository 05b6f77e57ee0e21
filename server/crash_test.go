package server

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"signet.dev/request"
	"signet.dev/server/audit"
	"signet.dev/server/client"
	"signet.dev/server/internal/pgtest"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range []string{buildDir, hsmDir} {
		if d != "" {
			os.RemoveAll(d)
		}
	}
	os.Exit(code)
}

// signetBinary builds the real signet command once per test process.
func signetBinary(t testing.TB) string {
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "signet-bin-")
		if buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(buildDir, "signet"), "signet.dev/cmd/signet").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build signet: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "signet")
}

// writeTOML writes cfg as a configuration file for signet serve.
func writeTOML(t testing.TB, cfg *Config, path string) {
	var b strings.Builder
	q := strconv.Quote
	list := func(v []string) string {
		var qs []string
		for _, s := range v {
			qs = append(qs, q(s))
		}
		return "[" + strings.Join(qs, ", ") + "]"
	}
	fmt.Fprintf(&b, "listen = %s\naudit_key = %s\nlease = %s\npoll = %s\nbatch = %d\n", q(cfg.Listen), q(cfg.AuditKey), q(cfg.Lease.String()), q(cfg.Poll.String()), cfg.Batch)
	fmt.Fprintf(&b, "\n[store]\ndriver = %s\ndsn = %s\n", q(cfg.Store.Driver), q(cfg.Store.DSN))
	l := cfg.Limits
	fmt.Fprintf(&b, "\n[limits]\nmax_request_bytes = %d\nmax_items = %d\nrate = %g\nburst = %d\n", l.MaxRequestBytes, l.MaxItems, l.Rate, l.Burst)
	if cfg.TLS != nil {
		fmt.Fprintf(&b, "\n[tls]\ncertificate = %s\nkey = %s\nclient_ca = %s\n", q(cfg.TLS.Certificate), q(cfg.TLS.Key), q(cfg.TLS.ClientCA))
	}
	for _, k := range cfg.Keys {
		fmt.Fprintf(&b, "\n[[keys]]\nname = %s\nprivate_key = %s\nprivate_key_source = %s\ncertificate = %s\nkinds = %s\napprovals = %d\nworkers = %d\n",
			q(k.Name), q(k.PrivateKey), q(k.PrivateKeySource), q(k.Certificate), list(k.Kinds), k.Approvals, k.Workers)
	}
	for _, c := range cfg.Clients {
		fmt.Fprintf(&b, "\n[[clients]]\nname = %s\ntoken_sha256 = %s\ncertificate_sha256 = %s\ncertificate_cn = %s\nkeys = %s\nkinds = %s\napprove = %s\n",
			q(c.Name), list(c.TokenSHA256), list(c.CertificateSHA256), list(c.CertificateCN), list(c.Keys), list(c.Kinds), list(c.Approve))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// node is a signet serve child process.
type node struct {
	t    testing.TB
	cmd  *exec.Cmd
	url  string
	done chan struct{}
	err  error
}

func startNode(t testing.TB, bin, config string, port int, logPath string) *node {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--config", config)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, cmd: cmd, url: fmt.Sprintf("http://127.0.0.1:%d", port), done: make(chan struct{})}
	go func() { n.err = cmd.Wait(); logf.Close(); close(n.done) }()
	t.Cleanup(func() { n.kill() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(n.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return n
			}
		}
		select {
		case <-n.done:
			log, _ := os.ReadFile(logPath)
			t.Fatalf("signet serve exited: %v\n%s", n.err, log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("signet serve did not become healthy")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (n *node) kill() {
	select {
	case <-n.done:
		return
	default:
	}
	n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.done
}

// term stops the node gracefully and returns its exit error.
func (n *node) term() error {
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
		return n.err
	case <-time.After(60 * time.Second):
		n.kill()
		return errors.New("did not stop within 60s of SIGTERM")
	}
}

// load submits nreq requests of per items from 4 concurrent clients,
// spreading them over urls and moving to another url when one fails; it
// calls chaos once half the requests are accepted, and returns the
// verified results. Every request must be accepted, signed and verify.
func load(t *testing.T, urls []string, token, vkey string, nreq, per int, chaos func()) map[string]*request.Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	clients := make([]*client.Client, len(urls))
	for i, u := range urls {
		c, err := client.New(u, client.Options{Token: token, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		c.Poll = 25 * time.Millisecond
		clients[i] = c
	}
	type job struct {
		req  *request.Request
		body []byte
	}
	jobs := make(chan job)
	var accepted atomic.Int32
	var chaosOnce sync.Once
	var mu sync.Mutex
	done := map[string]*request.Request{}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ci := w % len(clients)
			for j := range jobs {
				var id string
				for id == "" {
					st, err := clients[ci].Submit(ctx, j.body)
					if err != nil {
						var ce *client.Error
						if errors.As(err, &ce) && ce.Status < 500 {
							t.Errorf("submit refused: %v", err)
							return
						}
						if ctx.Err() != nil {
							t.Errorf("submit never accepted: %v", err)
							return
						}
						ci = (ci + 1) % len(clients)
						time.Sleep(20 * time.Millisecond)
						continue
					}
					id = st.ID
				}
				if accepted.Add(1) == int32(nreq/2) && chaos != nil {
					go chaosOnce.Do(chaos)
				}
				for {
					res, err := clients[ci].Fetch(ctx, id)
					if err == nil {
						if err := client.VerifyResult(j.req, res, vkey); err != nil {
							t.Errorf("request %s: %v", id, err)
						}
						mu.Lock()
						done[id] = j.req
						mu.Unlock()
						break
					}
					if ctx.Err() != nil {
						t.Errorf("request %s never signed: %v", id, err)
						return
					}
					if !errors.Is(err, client.ErrNotSigned) {
						ci = (ci + 1) % len(clients) // that replica is down
					}
					time.Sleep(25 * time.Millisecond)
				}
			}
		}()
	}
	for range nreq {
		r, b := newRequest(t, per, "hsm")
		for i := range r.Items {
			if i%3 == 0 {
				r.Items[i].Key = "verity"
			}
		}
		b, _ = r.Marshal()
		jobs <- job{r, b}
	}
	close(jobs)
	wg.Wait()
	if len(done) != nreq && !t.Failed() {
		t.Fatalf("%d of %d requests completed", len(done), nreq)
	}
	return done
}

// checkAudit exports the log through url and checks it against the
// signed checkpoint: intact, and every item of done signed exactly once.
func checkAudit(t *testing.T, url, token, vkey string, done map[string]*request.Request, per int) {
	t.Helper()
	c, _ := client.New(url, client.Options{Token: token})
	cp, _, log := exportLog(t, c, vkey)
	rep, err := audit.VerifyLog(bytes.NewReader(log), cp)
	if err != nil {
		t.Fatal(err) // includes ErrDoubleSigned
	}
	if want := int64(len(done) * per); rep.Signed != want || rep.Types[audit.TypeSign] != want {
		t.Fatalf("audit log: %d sign entries for %d items, want %d", rep.Types[audit.TypeSign], rep.Signed, want)
	}
	signed := map[string]bool{}
	for _, e := range entriesOf(t, log) {
		if e.Type == audit.TypeSign {
			signed[e.Request+"/"+e.Item] = true
		}
	}
	for id, r := range done {
		for _, it := range r.Items {
			if !signed[id+"/"+it.ID] {
				t.Fatalf("item %s of %s has no sign entry", it.ID, id)
			}
		}
	}
}

// killMidBatch waits until the node's process holds leased, unsigned items
// (it is signing a batch), then kills it with SIGKILL and returns how many
// items it held.
func killMidBatch(t *testing.T, n *node, driver, dsn string) int {
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Error(err)
		n.kill()
		return 0
	}
	defer db.Close()
	q := `SELECT COUNT(*) FROM items WHERE state = 'pending' AND lease_owner LIKE '%/` + strconv.Itoa(n.cmd.Process.Pid) + `/%'`
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var held int
		if err := db.QueryRow(q).Scan(&held); err == nil && held > 0 {
			n.kill()
			return held
		}
		time.Sleep(time.Millisecond)
	}
	n.kill()
	return 0
}

// kill -9 of the single SQLite node under load, then a restart: every
// accepted request completes, every signature verifies, each item is signed
// exactly once; SIGTERM then stops it cleanly.
func TestCrashSQLite(t *testing.T) {
	bin := signetBinary(t)
	dir := t.TempDir()
	cfg, tokens, vkey, _ := testConfig(t, dir)
	port := pgtest.FreePort(t)
	cfg.Listen = fmt.Sprintf("127.0.0.1:%d", port)
	cfg.Batch = 16
	conf := filepath.Join(dir, "signet.toml")
	writeTOML(t, cfg, conf)
	logPath := filepath.Join(dir, "serve.log")
	n := startNode(t, bin, conf, port, logPath)
	var restarted *node
	var rmu sync.Mutex
	var held int
	done := load(t, []string{n.url}, tokens["ci"], vkey, 20, 10, func() {
		held = killMidBatch(t, n, "sqlite", cfg.Store.DSN)
		r := startNode(t, bin, conf, port, logPath)
		rmu.Lock()
		restarted = r
		rmu.Unlock()
	})
	rmu.Lock()
	defer rmu.Unlock()
	if restarted == nil || held == 0 {
		t.Fatalf("the node was never killed while signing (held %d items)", held)
	}
	t.Logf("killed holding %d claimed items", held)
	checkAudit(t, restarted.url, tokens["ci"], vkey, done, 10)
	if err := restarted.term(); err != nil {
		log, _ := os.ReadFile(logPath)
		t.Fatalf("SIGTERM: %v\n%s", err, log)
	}
	log, _ := os.ReadFile(logPath)
	if !bytes.Contains(log, []byte(`"msg":"stopped"`)) {
		t.Fatalf("no clean stop in the log:\n%s", log)
	}
}

// Three replicas share a PostgreSQL queue; one is killed mid-way. Its
// leased items are re-claimed by the others after the lease; nothing is
// lost or signed twice.
func TestCrashPostgres(t *testing.T) {
	bin := signetBinary(t)
	pg := pgtest.Start(t)
	dir := t.TempDir()
	cfg, tokens, vkey, _ := testConfig(t, dir)
	cfg.Store = StoreConfig{Driver: "postgres", DSN: pg.NewDatabase(t)}
	cfg.Batch = 16
	cfg.Lease.Duration = 2 * time.Second
	cfg.Poll.Duration = 100 * time.Millisecond
	var nodes []*node
	var urls []string
	for i := range 3 {
		port := pgtest.FreePort(t)
		cfg.Listen = fmt.Sprintf("127.0.0.1:%d", port)
		conf := filepath.Join(dir, fmt.Sprintf("signet%d.toml", i))
		writeTOML(t, cfg, conf)
		n := startNode(t, bin, conf, port, filepath.Join(dir, fmt.Sprintf("serve%d.log", i)))
		nodes = append(nodes, n)
		urls = append(urls, n.url)
	}
	var held int
	done := load(t, urls, tokens["ci"], vkey, 20, 10, func() { held = killMidBatch(t, nodes[0], "pgx", cfg.Store.DSN) })
	select {
	case <-nodes[0].done:
	default:
		t.Fatal("replica 0 was never killed")
	}
	if held == 0 {
		t.Fatal("replica 0 was never killed while signing")
	}
	t.Logf("replica 0 killed holding %d claimed items", held)
	checkAudit(t, urls[1], tokens["ci"], vkey, done, 10)
	for _, n := range nodes[1:] {
		if err := n.term(); err != nil {
			t.Fatalf("SIGTERM: %v", err)
		}
	}
}
