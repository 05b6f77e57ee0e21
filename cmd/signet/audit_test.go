package main

import (
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"signet.dev/server/audit"
)

// audit export --timeout bounds the whole export: a service that answers
// the checkpoint but trickles the entries is given up on, and nothing is
// written.
func TestAuditExportTimeout(t *testing.T) {
	skey, _, err := note.GenerateKey(rand.Reader, "signet.test/audit")
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := note.NewSigner(skey)
	cp, err := audit.Checkpoint{Origin: "signet.test/audit", Size: 5}.Sign(signer)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/audit/checkpoint":
			w.Write(cp)
		case "/v1/audit/entries":
			w.Write([]byte(`{"index":0,"time":"2026-01-01T00:00:00Z","type":"submit","client":"ci"}` + "\n"))
			w.(http.Flusher).Flush()
			select { // the rest never comes
			case <-r.Context().Done():
			case <-release:
			}
		}
	}))
	defer srv.Close()
	defer close(release)
	dir := t.TempDir()
	logPath, cpPath := filepath.Join(dir, "audit.log"), filepath.Join(dir, "checkpoint")
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"signet", "audit", "export", "--server=" + srv.URL, "--token=t", "--log=" + logPath, "--checkpoint=" + cpPath, "--timeout=1s"})
	}()
	select {
	case code := <-done:
		if code == 0 {
			t.Fatal("export succeeded against a stalled entries download")
		}
	case <-time.After(30 * time.Second): // the client's own per-call timeout is 60s
		t.Fatal("export --timeout=1s still running after 30s: the entries download is unbounded")
	}
	for _, p := range []string{logPath, cpPath} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s written by a failed export", p)
		}
	}
}
