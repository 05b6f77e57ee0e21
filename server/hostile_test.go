package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"signet.dev/server/audit"
	"signet.dev/server/client"
	"signet.dev/server/internal/pgtest"
)

// Hostile-client bounds of a real signet serve process.
const (
	slowClients  = 16              // connections declaring the maximum body and trickling it
	stalledReads = 8               // audit entries answers nobody reads
	rssLimit     = 160 << 20       // the process's peak RSS (VmHWM) must stay below this
	hostileLimit = 16 << 20        // limits.max_request_bytes (the default)
	hostileIO    = 3 * time.Second // limits.read_timeout and write_timeout
)

// procStatus returns a field of /proc/PID/status in bytes ("VmHWM").
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s: %q", field, l)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// metricOf reads one series from a service's /metrics ("0" when absent).
func metricOf(t *testing.T, url, series string) float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// slowSubmit opens a connection, declares a body of the maximum size and
// trickles it a byte at a time until the service cuts it off; it returns
// the status line the service answered (or "" if it just closed) and how
// long the connection lasted.
func slowSubmit(addr, token string, stop <-chan struct{}) (string, time.Duration, error) {
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "", 0, err
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/requests HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", addr, token, hostileLimit)
	answered := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(c).ReadString('\n')
		answered <- strings.TrimSpace(line)
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case line := <-answered:
			return line, time.Since(start), nil
		case <-stop:
			return "", time.Since(start), errors.New("never cut off")
		case <-tick.C:
			c.Write([]byte(" "))
		}
	}
}

// Sixteen connections declaring the maximum body size and trickling it,
// eight audit log reads that are never read, and a client past its
// concurrency bound, against a real signet serve: its peak RSS stays below
// rssLimit, every hostile connection is cut off within its timeout, each
// anomaly shows in /metrics, and an ordinary client submits, waits
// (long poll beyond the write timeout included) and fetches meanwhile.
func TestHostileClients(t *testing.T) {
	for _, driver := range []string{"sqlite", "postgres"} {
		t.Run(driver, func(t *testing.T) { hostileClients(t, driver) })
	}
}

func hostileClients(t *testing.T, driver string) {
	bin := signetBinary(t)
	dir := t.TempDir()
	cfg, tokens, vkey, _ := testConfig(t, dir)
	if driver == "postgres" {
		cfg.Store = StoreConfig{Driver: "postgres", DSN: pgtest.Start(t).NewDatabase(t)}
	}
	port := pgtest.FreePort(t)
	cfg.Listen = fmt.Sprintf("127.0.0.1:%d", port)
	cfg.Limits.Rate, cfg.Limits.Burst = 1000, 1000
	conf := filepath.Join(dir, "signet.toml")
	writeTOML(t, cfg, conf)
	b, _ := os.ReadFile(conf)
	b = bytes.Replace(b, []byte("\n[limits]\n"), fmt.Appendf(nil, "\n[limits]\nread_timeout = %q\nwrite_timeout = %q\nmax_concurrent = %d\n", hostileIO, hostileIO, slowClients), 1)
	os.WriteFile(conf, b, 0o600)
	n := startNode(t, bin, conf, port, filepath.Join(dir, "serve.log"))
	pid := n.cmd.Process.Pid
	addr := cfg.Listen
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// An audit log larger than the socket buffers (tcp_wmem's 4 MiB
	// maximum): two requests of 4096 items with 250-byte ids on the P-256
	// key (fast to sign), approved by alice and bob.
	t0 := time.Now()
	ci, _ := client.New(n.url, client.Options{Token: tokens["ci"]})
	ci.Poll = 20 * time.Millisecond
	var ids []string
	for k := range 2 {
		r, _ := newRequest(t, 4096, "gated")
		for i := range r.Items {
			r.Items[i].ID = fmt.Sprintf("%d/%04d/%s", k, i, strings.Repeat("x", 240))
		}
		body, _ := r.Marshal()
		st, err := ci.Submit(ctx, body)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, st.ID)
		for _, who := range []string{"alice", "bob"} {
			c, _ := client.New(n.url, client.Options{Token: tokens[who]})
			if _, err := c.Approve(ctx, st.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, id := range ids {
		if _, err := ci.Wait(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	idle := procStatus(t, pid, "VmRSS")
	t.Logf("8192 items signed in %s", time.Since(t0).Round(time.Millisecond))

	stop := make(chan struct{})
	var wg sync.WaitGroup
	type cut struct {
		line string
		took time.Duration
		err  error
	}
	cuts := make(chan cut, slowClients)
	for range slowClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			line, took, err := slowSubmit(addr, tokens["ci"], stop)
			cuts <- cut{line, took, err}
		}()
	}
	// Audit log answers nobody reads, from another client, on sockets
	// with a small receive buffer.
	stalled := make([]net.Conn, 0, stalledReads)
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	for range stalledReads {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /v1/audit/entries?start=0&end=100000 HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n", addr, tokens["alice"])
		stalled = append(stalled, c)
	}
	// Let every slow connection reach the service, then one more call of
	// ci's finds all its slots taken.
	deadline := time.Now().Add(hostileIO / 2)
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	_, body := newRequest(t, 1, "verity")
	req, _ := http.NewRequest("POST", n.url+"/v1/requests", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tokens["ci"])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("call past the concurrency bound: %d (Retry-After %q), want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}

	// Meanwhile an ordinary client is served: submit, long-poll past the
	// write timeout on a gated request, then its own request signed.
	oc, _ := client.New(n.url, client.Options{Token: tokens["approver-ci"]})
	oc.Poll = 20 * time.Millisecond
	st, err := oc.Submit(ctx, body)
	if err != nil {
		t.Fatalf("ordinary submit during the attack: %v", err)
	}
	if _, err := oc.Wait(ctx, st.ID); err != nil {
		t.Fatalf("ordinary fetch during the attack: %v", err)
	}
	_, gbody := newRequest(t, 1, "gated")
	gst, err := oc.Submit(ctx, gbody)
	if err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	preq, _ := http.NewRequest("GET", fmt.Sprintf("%s/v1/requests/%s/response?wait=%s", n.url, gst.ID, 2*hostileIO), nil)
	preq.Header.Set("Authorization", "Bearer "+tokens["approver-ci"])
	presp, err := http.DefaultClient.Do(preq)
	if err != nil {
		t.Fatalf("long poll longer than the write timeout: %v", err)
	}
	presp.Body.Close()
	if presp.StatusCode != http.StatusConflict || time.Since(t0) < 2*hostileIO {
		t.Errorf("long poll: %d after %s, want 409 after the wait of %s", presp.StatusCode, time.Since(t0), 2*hostileIO)
	}

	// Every slow connection is cut off (by the read timeout, well before
	// its body would be complete).
	guard := time.AfterFunc(4*hostileIO, func() { close(stop) })
	wg.Wait()
	guard.Stop()
	close(cuts)
	for c := range cuts {
		if c.err != nil {
			t.Errorf("slow client: %v after %s", c.err, c.took)
		}
	}
	peak := procStatus(t, pid, "VmHWM")
	t.Logf("signet serve RSS: %d MiB idle after signing 8192 items, peak %d MiB with %d slow submissions of %d MiB declared and %d unread audit answers", idle>>20, peak>>20, slowClients, hostileLimit>>20, stalledReads)
	if peak >= rssLimit {
		t.Errorf("peak RSS %d MiB, limit %d MiB", peak>>20, rssLimit>>20)
	}
	// The unread answers were cut off by the write timeout: read now,
	// each is a truncated transfer on a connection the service closed.
	for i, c := range stalled {
		c.SetReadDeadline(time.Now().Add(4 * hostileIO))
		var got int64
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			// Cut short mid-answer (else before its headers were out).
			got, err = io.Copy(io.Discard, resp.Body)
		}
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("unread audit answer %d: %d bytes, %v: want a transfer the service cut short", i, got, err)
		}
	}
	if v := metricOf(t, n.url, `signet_slow_clients_total{phase="read"}`); v < slowClients {
		t.Errorf("signet_slow_clients_total{phase=read} = %g, want >= %d", v, slowClients)
	}
	if v := metricOf(t, n.url, `signet_slow_clients_total{phase="write"}`); v < 1 {
		t.Errorf("signet_slow_clients_total{phase=write} = %g, want >= 1", v)
	}
	if v := metricOf(t, n.url, `signet_concurrency_refusals_total{route="POST /v1/requests"}`); v < 1 {
		t.Errorf("signet_concurrency_refusals_total = %g", v)
	}

	// A body over the limit is refused from its Content-Length, counted.
	big := bytes.Repeat([]byte(" "), hostileLimit+1)
	req, _ = http.NewRequest("POST", n.url+"/v1/requests", bytes.NewReader(big))
	req.Header.Set("Authorization", "Bearer "+tokens["ci"])
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("body over the limit: %d", resp.StatusCode)
		}
	}
	if v := metricOf(t, n.url, "signet_request_body_too_large_total"); v < 1 {
		t.Errorf("signet_request_body_too_large_total = %g", v)
	}

	// Afterwards the service answers and its log verifies.
	c2, _ := client.New(n.url, client.Options{Token: tokens["ci"]})
	r, _ := newRequest(t, 1, "verity")
	if _, err := c2.Sign(ctx, r, vkey); err != nil {
		t.Fatalf("after the attack: %v", err)
	}
	cpData, _ := c2.Checkpoint(ctx)
	v, _ := noteVerifier(vkey)
	cp, err := audit.OpenCheckpoint(cpData, v)
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	if err := c2.AuditLog(ctx, &log, cp.Size); err != nil {
		t.Fatal(err)
	}
	if _, err := audit.VerifyLog(&log, cp, audit.VerifyOptions{Approvals: map[string]int{"gated": 2}}); err != nil {
		t.Fatal(err)
	}
	if err := n.term(); err != nil {
		t.Fatal(err)
	}
}
