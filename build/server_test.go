package build

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"signet.dev/internal/testkeys"
	"signet.dev/request"
	"signet.dev/server/api"
	"signet.dev/server/client"
)

// service is a real `signet serve` child process on a loopback port.
type service struct {
	url    string
	vkey   string            // file holding the audit note verifier key
	tokens map[string]string // client name → bearer token
}

// signetBinary builds cmd/signet (with cgo, for PKCS#11) once per test.
func signetBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "signet")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/signet").CombinedOutput()
	if err != nil {
		t.Fatalf("go build ../cmd/signet: %v\n%s", err, out)
	}
	return bin
}

// startService writes a server configuration holding the example's four
// keys (SoftHSM URIs, the example's certificates) and starts `signet
// serve` on it. Client "ci" may use every key, "no-pcr" every key but
// pcr; approvals > 0 gates key db behind that many approvals by client
// "alice".
func startService(t *testing.T, bin, cfgPath string, uris map[string]string, approvals int) *service {
	t.Helper()
	dir := t.TempDir()
	skey, vkey, err := note.GenerateKey(rand.Reader, "signet.test/build-audit")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "audit.key"), []byte(skey+"\n"), 0o600)
	// As a file: an inline key whose base64 holds a '/' is taken for a
	// path by the CLI.
	vkeyFile := filepath.Join(dir, "audit.pub")
	os.WriteFile(vkeyFile, []byte(vkey+"\n"), 0o644)
	s := &service{vkey: vkeyFile, tokens: map[string]string{}}
	var b strings.Builder
	fmt.Fprintf(&b, "listen = \"127.0.0.1:0\"\naudit_key = \"audit.key\"\n[store]\ndriver = \"sqlite\"\ndsn = \"signet.db\"\n")
	kinds := map[string]string{
		"db":      `["authenticode"]`,
		"pcr":     `["pcr-policy"]`,
		"verity":  `["verity-roothash", "ipe-policy"]`,
		"release": `["manifest-openpgp", "manifest-pkcs7"]`,
	}
	keysDir := filepath.Join(filepath.Dir(cfgPath), "gen", "keys")
	for _, name := range []string{"db", "pcr", "verity", "release"} {
		fmt.Fprintf(&b, "[[keys]]\nname = %q\nprivate_key = %q\nprivate_key_source = \"provider:pkcs11\"\ncertificate = %q\nkinds = %s\n",
			name, uris[name], filepath.Join(keysDir, name+".crt"), kinds[name])
		if name == "db" && approvals > 0 {
			fmt.Fprintf(&b, "approvals = %d\n", approvals)
		}
	}
	for name, rights := range map[string]string{
		"ci":     `keys = ["db", "pcr", "verity", "release"]`,
		"no-pcr": `keys = ["db", "verity", "release"]`,
		"alice":  `approve = ["db"]`,
	} {
		var tok [16]byte
		rand.Read(tok[:])
		s.tokens[name] = hex.EncodeToString(tok[:])
		sum := sha256.Sum256([]byte(s.tokens[name]))
		fmt.Fprintf(&b, "[[clients]]\nname = %q\ntoken_sha256 = [%q]\n%s\n", name, hex.EncodeToString(sum[:]), rights)
	}
	conf := filepath.Join(dir, "server.toml")
	os.WriteFile(conf, []byte(b.String()), 0o644)

	cmd := exec.Command(bin, "serve", "--config="+conf, "--log-level=info")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var logMu sync.Mutex
	var logBuf bytes.Buffer
	addr := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logMu.Lock()
			logBuf.Write(append(sc.Bytes(), '\n'))
			logMu.Unlock()
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "serving" {
				addr <- line.Addr
			}
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		<-done
		if t.Failed() {
			logMu.Lock()
			t.Logf("signet serve log:\n%s", logBuf.String())
			logMu.Unlock()
		}
	})
	select {
	case a := <-addr:
		s.url = "http://" + a
	case <-done:
		t.Fatalf("signet serve exited:\n%s", logBuf.String())
	case <-time.After(30 * time.Second):
		t.Fatal("signet serve did not start in 30s")
	}
	return s
}

// runSignet runs the CLI and returns its exit status and stderr.
func runSignet(t *testing.T, bin string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode(), stderr.String()
	case err != nil:
		t.Fatal(err)
	}
	return 0, stderr.String()
}

// errLine is the error line signet prints last.
func errLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// serverConfig writes a copy of the example's configuration whose pcr and
// db keys have no certificate: the build takes them from the service.
func serverConfig(t *testing.T, cfgPath string) string {
	t.Helper()
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for _, name := range []string{"pcr", "db"} {
		line := fmt.Sprintf("certificate = \"gen/keys/%s.crt\"\n", name)
		if !strings.Contains(s, line) {
			t.Fatalf("example configuration has no %q", line)
		}
		s = strings.Replace(s, line, "", 1)
	}
	p := filepath.Join(filepath.Dir(cfgPath), "image-server.toml")
	os.WriteFile(p, []byte(s), 0o644)
	return p
}

func verifyAll(t *testing.T, dir, cfgPath string) {
	t.Helper()
	checks, err := verifyWith(t, dir, cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	peers := map[string]bool{}
	for _, ch := range checks {
		if ch.Err != nil {
			t.Errorf("%s: %s [%s]: %v", ch.File, ch.What, ch.By, ch.Err)
		}
		peers[ch.By] = true
	}
	for _, p := range []string{"sbverify", "osslsigncode", "openssl", "veritysetup", "gpg", "sha256sum", "systemd-measure", "signet"} {
		if !peers[p] {
			t.Errorf("no check by %s", p)
		}
	}
}

func sameOutputs(t *testing.T, what, a, b string) {
	t.Helper()
	for _, name := range outputs {
		x, _ := os.ReadFile(filepath.Join(a, name))
		y, _ := os.ReadFile(filepath.Join(b, name))
		if len(x) == 0 || !bytes.Equal(x, y) {
			t.Errorf("%s: %s differs", what, name)
		}
	}
}

// TestServer builds the example image through a real `signet serve`
// (SQLite, SoftHSM keys, token auth) in one command: a refused round
// first (a token not allowed to use key pcr) that leaves the build
// resumable, then all three rounds signed, their audit proofs checked,
// every output accepted by the real peers and byte-identical to an
// online build with the same keys. The pcr and db certificates come from
// the service's key list.
func TestServer(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	cfgPath, uris := example(t)
	bin := signetBinary(t)
	svc := startService(t, bin, cfgPath, uris, 0)
	srvCfg := serverConfig(t, cfgPath)
	dir := filepath.Join(t.TempDir(), "served")

	// A configured certificate that is not the service's key: refused
	// before anything is submitted or written.
	wrong := testkeys.Generate(t, testkeys.P256) // the example's keys are RSA (and cached per kind)
	data, _ := os.ReadFile(srvCfg)
	wrongCfg := filepath.Join(filepath.Dir(srvCfg), "image-wrong.toml")
	os.WriteFile(wrongCfg, bytes.Replace(data, []byte(`"gen/keys/verity.crt"`), []byte(strconv.Quote(wrong.CertPath)), 1), 0o644)
	wrongDir := filepath.Join(t.TempDir(), "wrong")
	code, stderr := runSignet(t, bin, "build", wrongCfg, "--dir="+wrongDir, "--server="+svc.url, "--token="+svc.tokens["ci"])
	if line := errLine(stderr); code != 1 || !strings.HasPrefix(line, "signet: key verity: the configured certificate "+wrong.CertPath+" (public key sha256 ") ||
		!strings.Contains(line, `is not for the signing service's key "verity"`) {
		t.Fatalf("wrong certificate: exit %d, last line %q", code, line)
	}
	if _, err := os.Stat(wrongDir); err == nil {
		t.Error("a build refused before its first pass created its directory")
	}

	// Refused: the service names the item and the reason; the round
	// stays pending.
	code, stderr = runSignet(t, bin, "build", srvCfg, "--dir="+dir, "--server="+svc.url, "--token="+svc.tokens["no-pcr"], "--audit-key="+svc.vkey)
	line := errLine(stderr)
	if code != 1 || !strings.HasPrefix(line, "signet: round 1 (") || !strings.Contains(line, "refused by the signing service (403)") ||
		!strings.Contains(line, `items "pcrs/example.efi/`) || !strings.HasSuffix(line, `: client no-pcr may not use key "pcr"`) {
		t.Fatalf("refused build: exit %d, last line %q\n%s", code, line, stderr)
	}
	t.Logf("refusal: %s", line)
	st, err := LoadState(dir)
	if err != nil || st.Pending == nil || st.Pending.Round != 1 {
		t.Fatalf("after a refusal the build should wait for round 1: %+v %v", st, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "round-1.response.json")); err == nil {
		t.Fatal("a refused round left a response")
	}

	// The same command with a token allowed to use every key: done.
	code, stderr = runSignet(t, bin, "build", srvCfg, "--dir="+dir, "--server="+svc.url, "--token="+svc.tokens["ci"], "--audit-key="+svc.vkey)
	if code != 0 {
		t.Fatalf("build --server: exit %d\n%s", code, stderr)
	}
	t.Logf("build --server:\n%s", stderr)
	for round := 1; round <= 3; round++ {
		for _, want := range []string{fmt.Sprintf("round %d: %s verified (audit proofs checked)", round, map[int]string{1: "7 signatures", 2: "1 signature", 3: "2 signatures"}[round])} {
			if !strings.Contains(stderr, want) {
				t.Errorf("stderr lacks %q:\n%s", want, stderr)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("round-%d.response.json", round))); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "round-4.request.json")); err == nil {
		t.Error("a fourth round was requested")
	}
	verifyAll(t, dir, cfgPath)

	// Online, with the same keys: the same bytes.
	online := filepath.Join(t.TempDir(), "online")
	c, err := LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetKeys(uris); err != nil {
		t.Fatal(err)
	}
	if res, err := Run(c, Options{Dir: online}); err != nil || !res.Done {
		t.Fatalf("online build: %+v %v", res, err)
	}
	sameOutputs(t, "served and online builds", dir, online)

	// Every response was joined: resuming one by hand is refused.
	c2, _ := LoadConfig(srvCfg)
	resp, _ := os.ReadFile(filepath.Join(dir, "round-2.response.json"))
	if _, err := Run(c2, Options{Dir: dir, Responses: [][]byte{resp}}); !errors.Is(err, ErrAlreadyJoined) {
		t.Errorf("joining a served response again: %v", err)
	}
}

// TestServerWaitResumed has round 2 wait for an approval: the build is
// killed while it waits; run again with a timeout it picks up the same
// request and exits 75 when the time is up, the request still submitted;
// after the approval, the same command finishes with the same bytes as an
// online build.
func TestServerWaitResumed(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	cfgPath, uris := example(t)
	bin := signetBinary(t)
	svc := startService(t, bin, cfgPath, uris, 1)
	dir := filepath.Join(t.TempDir(), "waited")
	args := []string{"build", cfgPath, "--dir=" + dir, "--server=" + svc.url, "--token=" + svc.tokens["ci"], "--audit-key=" + svc.vkey}

	// The build dies while it waits for round 2.
	killed := exec.Command(bin, args...)
	pipe, err := killed.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := killed.Start(); err != nil {
		t.Fatal(err)
	}
	var firstLog strings.Builder
	for sc := bufio.NewScanner(pipe); sc.Scan(); {
		firstLog.WriteString(sc.Text() + "\n")
		if strings.HasPrefix(sc.Text(), "round 2: 1 item at the signing service") {
			killed.Process.Kill()
			break
		}
	}
	killed.Wait()
	if !strings.Contains(firstLog.String(), "round 2: 1 item at the signing service") {
		t.Fatalf("the first run never waited for round 2:\n%s", firstLog.String())
	}

	// Run again, with a timeout: it picks up round 2's request and waits.
	code, stderr := runSignet(t, bin, append(args, "--timeout=2s")...)
	line := errLine(stderr)
	if code != 75 || !strings.Contains(line, "round 2: still waiting for the signing service") {
		t.Fatalf("timed-out build: exit %d, last line %q\n%s", code, line, stderr)
	}
	if strings.Contains(stderr, "round 1:") {
		t.Errorf("the rerun went back to round 1:\n%s", stderr)
	}
	t.Logf("timed out:\n%s", stderr)
	if !strings.Contains(stderr, "approvals: db needs 1") {
		t.Errorf("no approval progress on stderr:\n%s", stderr)
	}
	// The library reports the wait's progress while it lasts.
	cl, err := client.New(svc.url, client.Options{Token: svc.tokens["ci"]})
	if err != nil {
		t.Fatal(err)
	}
	c0, err := LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	_, err = RunService(context.Background(), c0, Options{Dir: dir, Log: &log}, &Service{Client: cl, Timeout: 1500 * time.Millisecond, Progress: 400 * time.Millisecond})
	if !errors.Is(err, ErrStillWaiting) || !strings.Contains(log.String(), "approval, 0/1 items signed; approvals: db needs 1\n") ||
		!regexp.MustCompile(`(?m)^round 2: waiting [0-9]s for request [0-9a-f]{64}: approval, 0/1 items signed; approvals: db needs 1$`).MatchString(log.String()) {
		t.Errorf("RunService while waiting: %v\n%s", err, log.String())
	}

	data, err := os.ReadFile(filepath.Join(dir, "round-2.request.json"))
	if err != nil {
		t.Fatal(err)
	}
	req, err := request.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimPrefix(req.DigestString(), "sha256:")
	alice, err := client.New(svc.url, client.Options{Token: svc.tokens["alice"]})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before, err := alice.Approve(ctx, id)
	if err != nil {
		t.Fatalf("approving the pending round-2 request %s: %v", id, err)
	}

	code, stderr = runSignet(t, bin, args...)
	if code != 0 {
		t.Fatalf("rerun: exit %d\n%s", code, stderr)
	}
	if !strings.Contains(stderr, "round 2: 1 item at the signing service as request "+id) {
		t.Errorf("the rerun did not pick up request %s:\n%s", id, stderr)
	}
	after, err := alice.Status(ctx, id)
	if err != nil || after.Created != before.Created || after.State != "signed" {
		t.Errorf("request %s: created %s then %s, state %s (%v)", id, before.Created, after.Created, after.State, err)
	}

	online := filepath.Join(t.TempDir(), "online")
	c, _ := LoadConfig(cfgPath)
	c.SetKeys(uris)
	if res, err := Run(c, Options{Dir: online}); err != nil || !res.Done {
		t.Fatalf("online build: %+v %v", res, err)
	}
	sameOutputs(t, "resumed served and online builds", dir, online)
}

// TestCertificateFromState: a key configured without a certificate needs
// one from the service; once a run recorded it in the build state, later
// runs (a resume by hand, without --server) take it from there.
func TestCertificateFromState(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(p, []byte("name = \"remote\"\n[keys.db]\nkey = \"offline\"\n"), 0o644)
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "b")
	if _, err := Run(c, Options{Dir: dir}); !errors.Is(err, ErrNoCertificate) || !strings.Contains(err.Error(), "key db") {
		t.Fatalf("no certificate anywhere: %v", err)
	}
	k := testkeys.Generate(t, testkeys.RSA2048)
	c.setRemote("db", []*x509.Certificate{k.Cert})
	if res, err := Run(c, Options{Dir: dir}); err != nil || !res.Done {
		t.Fatalf("with the service's certificate: %+v %v", res, err)
	}
	c2, _ := LoadConfig(p)
	if res, err := Run(c2, Options{Dir: dir}); err != nil || !res.Done {
		t.Fatalf("with the state's certificate: %+v %v", res, err)
	}
	if cert, _, err := c2.Certificate("db"); err != nil || !bytes.Equal(cert.Raw, k.Cert.Raw) {
		t.Fatalf("certificate from the state: %v", err)
	}
	// An online key still needs its certificate configured.
	os.WriteFile(p, []byte("[keys.db]\nkey = \"db.key\"\n"), 0o644)
	if _, err := LoadConfig(p); err == nil {
		t.Fatal("an online key without a certificate was accepted")
	}
}

// TestServiceCertificateChanged: a build whose state recorded a key's
// certificate from the service refuses a service now holding another
// certificate for that key, and names a key the service lacks.
func TestServiceCertificateChanged(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(p, []byte("name = \"remote\"\n[keys.db]\nkey = \"offline\"\n"), 0o644)
	first, second := testkeys.Generate(t, testkeys.RSA2048), testkeys.Generate(t, testkeys.P256)
	var served []api.Key
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/keys" {
			http.Error(w, `{"error":"not here"}`, http.StatusNotFound)
			return
		}
		w.Write(api.Marshal(served))
	}))
	t.Cleanup(hs.Close)
	cl, err := client.New(hs.URL, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	key := func(k *testkeys.Key) api.Key {
		cert, _ := os.ReadFile(k.CertPath)
		pub, _ := os.ReadFile(k.PubPath)
		return api.Key{Name: "db", Certificate: string(cert), PublicKey: string(pub)}
	}
	dir := filepath.Join(t.TempDir(), "b")
	c, _ := LoadConfig(p)
	if _, err := RunService(context.Background(), c, Options{Dir: dir}, &Service{Client: cl}); err == nil ||
		!strings.Contains(err.Error(), `key db: no certificate in the configuration, and the signing service has no key "db"`) {
		t.Fatalf("service without the key: %v", err)
	}
	served = []api.Key{key(first)}
	c, _ = LoadConfig(p)
	if res, err := RunService(context.Background(), c, Options{Dir: dir}, &Service{Client: cl}); err != nil || !res.Done {
		t.Fatalf("with the service's certificate: %+v %v", res, err)
	}
	st, _ := LoadState(dir)
	if !bytes.Equal(st.Certificates["db"], first.Cert.Raw) {
		t.Fatal("the state did not record the service's certificate")
	}
	served = []api.Key{key(second)}
	c, _ = LoadConfig(p)
	if _, err := RunService(context.Background(), c, Options{Dir: dir}, &Service{Client: cl}); err == nil ||
		!strings.Contains(err.Error(), "key db: the signing service's certificate (sha256 ") || !strings.Contains(err.Error(), "is not the one this build started with") {
		t.Fatalf("changed certificate: %v", err)
	}
}
