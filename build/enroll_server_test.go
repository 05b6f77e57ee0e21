package build

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// startEnrollService starts `signet serve` (SQLite, PEM keys) holding the
// enroll build's keys, each bound to its kinds. Client "ci" may use every
// key, "images" all but pk and kek. The process is stopped by its PID when
// the test ends.
func startEnrollService(t *testing.T, bin string, k *enrollKeys) *service {
	t.Helper()
	dir := t.TempDir()
	skey, vkey, err := note.GenerateKey(rand.Reader, "signet.test/enroll-audit")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "audit.key"), []byte(skey+"\n"), 0o600)
	s := &service{vkey: filepath.Join(dir, "audit.pub"), tokens: map[string]string{}}
	os.WriteFile(s.vkey, []byte(vkey+"\n"), 0o644)
	var b strings.Builder
	b.WriteString("listen = \"127.0.0.1:0\"\naudit_key = \"audit.key\"\n[store]\ndriver = \"sqlite\"\ndsn = \"signet.db\"\n")
	kinds := map[string]string{"pk": `["uefi-authvar"]`, "kek": `["uefi-authvar"]`, "db": `["authenticode"]`, "release": `["manifest-pkcs7"]`}
	for name, key := range k.all() {
		fmt.Fprintf(&b, "[[keys]]\nname = %q\nprivate_key = %q\ncertificate = %q\nkinds = %s\n", name, key.KeyPath, key.CertPath, kinds[name])
	}
	for name, rights := range map[string]string{"ci": `keys = ["pk", "kek", "db", "release"]`, "images": `keys = ["db", "release"]`} {
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
	var mu sync.Mutex
	var log bytes.Buffer
	addr := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			log.Write(append(sc.Bytes(), '\n'))
			mu.Unlock()
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
			mu.Lock()
			t.Logf("signet serve log:\n%s", log.String())
			mu.Unlock()
		}
	})
	select {
	case a := <-addr:
		s.url = "http://" + a
	case <-done:
		t.Fatalf("signet serve exited:\n%s", log.String())
	case <-time.After(30 * time.Second):
		t.Fatal("signet serve did not start in 30s")
	}
	return s
}

// TestEnrollServer builds the auto-enroll set through `signet build
// --server`: a client that may not use the PK and KEK keys is refused
// round 1, naming the authvars items, and the build stays resumable; the
// same command with a client that may is done in two rounds, with the
// same bytes as an online build, and signet verify accepts it.
func TestEnrollServer(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", fmt.Sprint(enrollEpoch.Unix()))
	dir := t.TempDir()
	k := newEnrollKeys(t, dir)
	bin := signetBinary(t)
	svc := startEnrollService(t, bin, k)
	cfg := writeEnrollConfig(t, dir, k, true, "", "")
	served := filepath.Join(dir, "served")

	code, stderr := runSignet(t, bin, "build", cfg, "--dir="+served, "--server="+svc.url, "--token="+svc.tokens["images"], "--audit-key="+svc.vkey)
	line := errLine(stderr)
	if code != 1 || !strings.Contains(line, "refused by the signing service (403)") || !strings.Contains(line, `"authvars/PK.auth"`) ||
		!strings.Contains(line, `may not use key "pk"`) {
		t.Fatalf("refused build: exit %d, last line %q\n%s", code, line, stderr)
	}
	t.Logf("refusal: %s", line)

	code, stderr = runSignet(t, bin, "build", cfg, "--dir="+served, "--server="+svc.url, "--token="+svc.tokens["ci"], "--audit-key="+svc.vkey)
	if code != 0 {
		t.Fatalf("build --server: exit %d\n%s", code, stderr)
	}
	for _, want := range []string{"round 1: 4 signatures verified (audit proofs checked)", "round 2: 1 signature verified"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}

	online := filepath.Join(dir, "online")
	c, err := LoadConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	refs := map[string]string{}
	for name, key := range k.all() {
		refs[name] = key.KeyPath
	}
	if err := c.SetKeys(refs); err != nil {
		t.Fatal(err)
	}
	if res, err := Run(c, Options{Dir: online}); err != nil || !res.Done {
		t.Fatalf("online build: %+v %v", res, err)
	}
	for _, f := range []string{"PK.auth", "KEK.auth", "db.auth", "loader/keys/auto/db.auth", "systemd-bootx64.efi", "SHA256SUMS", "SHA256SUMS.p7s"} {
		if !bytes.Equal(mustRead(t, filepath.Join(served, f)), mustRead(t, filepath.Join(online, f))) {
			t.Errorf("%s: served and online builds differ", f)
		}
	}
	checks, err := verifyWith(t, served, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range checks {
		if ch.Err != nil {
			t.Errorf("verify: %s: %s [%s]: %v", ch.File, ch.What, ch.By, ch.Err)
		}
	}
}
