// Command benchserve measures the signing service under load (run by
// scripts/bench-serve): the raw PKCS#11 signing rate of a SoftHSM2 RSA key
// in-process, then items signed per second through signet serve's HTTP API
// with the same key (concurrent clients on loopback submitting batched
// requests and waiting for their responses), with request latency
// percentiles and the ratio of the two rates.
package main

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/mod/sumdb/note"

	"signet.dev/keys"
	"signet.dev/request"
	"signet.dev/server"
	"signet.dev/server/client"
	"signet.dev/server/internal/pgtest"
)

var (
	signet   = flag.String("signet", "", "signet binary (built with cgo)")
	clients  = flag.Int("clients", 8, "concurrent API clients")
	batch    = flag.Int("batch", 64, "items per request")
	requests = flag.Int("requests", 420, "requests to submit (over all rounds)")
	workers  = flag.Int("workers", 2*runtime.NumCPU(), "signing sessions (raw run and service)")
	rawDur   = flag.Duration("raw", 2*time.Second, "length of each raw signing run")
	rounds   = flag.Int("rounds", 7, "rounds of raw, API, raw")
	store    = flag.String("store", "sqlite", "sqlite; postgres (a throwaway cluster on loopback); or a postgres DSN")
	inproc   = flag.Bool("inprocess", false, "run the service in this process (for -cpuprofile) instead of signet serve")
	cpuprof  = flag.String("cpuprofile", "", "write a CPU profile of the API run here")
	memprof  = flag.String("memprofile", "", "write an allocation profile here (with -inprocess: the service's allocations too)")
)

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchserve:", err)
		os.Exit(1)
	}
}

func run(name string, args ...string) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		must(fmt.Errorf("%s %v: %v\n%s", name, args, err, out))
	}
}

func main() {
	flag.Parse()
	if *signet == "" {
		must(fmt.Errorf("no -signet binary"))
	}
	dir, err := os.MkdirTemp("", "signet-bench-")
	must(err)
	defer os.RemoveAll(dir)

	// A SoftHSM2 token with an RSA-2048 key; the certificate is a file.
	os.Mkdir(filepath.Join(dir, "tokens"), 0o700)
	conf := filepath.Join(dir, "softhsm2.conf")
	must(os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600))
	os.Setenv("SOFTHSM2_CONF", conf)
	run("softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", "1234", "--so-pin", "5678")
	keyPath, certPath := filepath.Join(dir, "k.pem"), filepath.Join(dir, "k.crt")
	run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", keyPath, "-out", certPath, "-subj", "/CN=bench", "-days", "30")
	run("softhsm2-util", "--import", keyPath, "--token", "bench", "--label", "bench", "--id", "01", "--pin", "1234")
	uri := "pkcs11:token=bench;object=bench?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234"

	skey, vkey, err := note.GenerateKey(rand.Reader, "bench/audit")
	must(err)
	must(os.WriteFile(filepath.Join(dir, "audit.key"), []byte(skey), 0o600))
	tok := "bench-token"
	th := sha256.Sum256([]byte(tok))
	port := freePort()
	dsn, driver := filepath.Join(dir, "signet.db"), "sqlite"
	switch *store {
	case "sqlite":
	case "postgres":
		b := &benchTB{}
		defer b.cleanup()
		dsn, driver = pgtest.Start(b).NewDatabase(b), "postgres"
	default:
		dsn, driver = *store, "postgres"
	}
	cfg := fmt.Sprintf(`listen = "127.0.0.1:%d"
audit_key = "audit.key"
batch = 256
[store]
driver = %q
dsn = %q
[limits]
rate = 100000
max_items = 100000
[[keys]]
name = "bench"
private_key = %q
certificate = %q
kinds = ["verity-roothash"]
workers = %d
[[clients]]
name = "bench"
token_sha256 = ["%x"]
keys = ["bench"]
`, port, driver, dsn, uri, certPath, *workers, th)
	cfgPath := filepath.Join(dir, "signet.toml")
	must(os.WriteFile(cfgPath, []byte(cfg), 0o600))
	if *inproc {
		sc, err := server.LoadConfig(cfgPath)
		must(err)
		s, err := server.New(context.Background(), sc, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
		must(err)
		l, err := net.Listen("tcp", sc.Listen)
		must(err)
		ctx, cancel := context.WithCancel(context.Background())
		go s.Serve(ctx, l)
		defer cancel()
	} else {
		srv := exec.Command(*signet, "serve", "--config", cfgPath, "--log-level", "warn")
		defer func() { serverPID = 0 }()
		srv.Stderr = os.Stderr
		must(srv.Start())
		serverPID = srv.Process.Pid
		defer func() {
			srv.Process.Signal(syscall.SIGTERM)
			srv.Wait()
		}()
	}
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	for i := 0; ; i++ {
		if resp, err := http.Get(url + "/healthz"); err == nil && resp.StatusCode == 200 {
			resp.Body.Close()
			break
		}
		if i > 300 {
			must(fmt.Errorf("signet serve did not start"))
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Prepare every request first: the clients only submit and wait.
	bodies := make([][]byte, *requests)
	reqs := make([]*request.Request, *requests)
	for i := range bodies {
		r := &request.Request{Format: request.FormatRequest}
		for j := range *batch {
			var rh [32]byte
			rand.Read(rh[:])
			h := hex.EncodeToString(rh[:])
			r.Items = append(r.Items, request.Item{ID: fmt.Sprintf("roothashes/%d.roothash", j), Kind: request.KindVerityRootHash, Key: "bench", Hash: "sha256", TBS: []byte(h), Verity: &request.VerityContext{Image: "img", RootHash: h}})
		}
		b, err := r.Marshal()
		must(err)
		bodies[i], reqs[i] = b, r
	}
	c, err := client.New(url, client.Options{Token: tok})
	must(err)
	c.Poll = 20 * time.Millisecond
	if *cpuprof != "" {
		f, err := os.Create(*cpuprof)
		must(err)
		must(pprof.StartCPUProfile(f))
	}
	// Rounds of (raw, API, raw): on a shared machine the load changes
	// from second to second, so each API run is compared with the raw
	// rate measured right around it, and the median round is reported.
	var ratios, cpuRatios, rawPers, srvPers, rawIdles, apiIdles []float64
	var lat []time.Duration
	var rates []float64
	per := len(bodies) / *rounds
	for r := range *rounds {
		m0 := machineCPU()
		before, rawCPU1 := rawRate(uri)
		m1 := machineCPU()
		srvCPU0, selfCPU0 := procCPU(serverPID), selfCPU()
		rate, l := apiRun(c, bodies[r*per:(r+1)*per], reqs[r*per:(r+1)*per], vkey)
		srvCPU, clientCPU := procCPU(serverPID)-srvCPU0, selfCPU()-selfCPU0
		m2 := machineCPU()
		after, rawCPU2 := rawRate(uri)
		m3 := machineCPU()
		raw := (before + after) / 2
		// Idle CPU of the whole machine: what neither run used (nor the
		// machine's other jobs).
		rawIdle := idleShare(m0, m1, m2, m3)
		apiIdle := idleShare(m1, m2)
		rawIdles, apiIdles = append(rawIdles, rawIdle), append(apiIdles, apiIdle)
		lat = append(lat, l...)
		rates = append(rates, rate)
		ratios = append(ratios, rate/raw)
		fmt.Printf("round %d: raw PKCS#11 %.0f signatures/s (before %.0f, after %.0f); API %.0f items/s; ratio %.0f%%\n", r+1, raw, before, after, rate, 100*rate/raw)
		if serverPID != 0 {
			// CPU cost per signature does not depend on what else the
			// machine runs: raw, in the server, and in the load generator.
			items := float64(len(reqs[r*per:(r+1)*per]) * *batch)
			rawPer := (rawCPU1 + rawCPU2) / 2
			fmt.Printf("         CPU per signature: raw %.2f ms, signet serve %.2f ms (%.0f%% of raw), load generator %.2f ms\n",
				1000*rawPer, 1000*srvCPU/items, 100*srvCPU/items/rawPer, 1000*clientCPU/items)
			cpuRatios = append(cpuRatios, rawPer/(srvCPU/items))
			rawPers, srvPers = append(rawPers, rawPer), append(srvPers, srvCPU/items)
		}
		fmt.Printf("         machine idle: %.0f%% during the raw runs, %.0f%% during the API run\n", 100*rawIdle, 100*apiIdle)
	}
	if *cpuprof != "" {
		pprof.StopCPUProfile()
	}
	if *memprof != "" {
		f, err := os.Create(*memprof)
		must(err)
		must(pprof.Lookup("allocs").WriteTo(f, 0))
		must(f.Close())
	}
	slices.Sort(lat)
	slices.Sort(ratios)
	slices.Sort(rates)
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	fmt.Printf("signet serve (%s, %d clients, %d requests × %d items, %d rounds): median %.0f items/s; request latency p50 %v, p99 %v\n",
		driver, *clients, per**rounds, *batch, *rounds, rates[len(rates)/2], pct(0.50).Round(time.Millisecond), pct(0.99).Round(time.Millisecond))
	fmt.Printf("raw PKCS#11: crypto11, SoftHSM2 RSA-2048, %d goroutines, in-process\n", *workers)
	fmt.Printf("median ratio API / raw: %.0f%%\n", 100*ratios[len(ratios)/2])
	fmt.Printf("median machine idle: %.0f%% during raw runs, %.0f%% during API runs\n", 100*median(rawIdles), 100*median(apiIdles))
	if len(cpuRatios) > 0 {
		fmt.Printf("median CPU per signature: raw %.2f ms, signet serve %.2f ms\n", 1000*median(rawPers), 1000*median(srvPers))
		slices.Sort(cpuRatios)
		fmt.Printf("median CPU-bound ratio (raw CPU per signature / signet serve CPU per item): %.0f%%\n", 100*cpuRatios[len(cpuRatios)/2])
	}
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

// machineCPU returns the machine's idle and total CPU ticks so far
// (/proc/stat: idle and iowait count as idle).
func machineCPU() [2]float64 {
	b, err := os.ReadFile("/proc/stat")
	must(err)
	line, _, _ := strings.Cut(string(b), "\n")
	var idle, total float64
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseFloat(f, 64)
		if i < 8 { // user nice system idle iowait irq softirq steal; guest is inside user
			total += v
			if i == 3 || i == 4 {
				idle += v
			}
		}
	}
	return [2]float64{idle, total}
}

// idleShare is the idle fraction over the intervals [m0,m1], [m2,m3], ...
func idleShare(m ...[2]float64) float64 {
	var idle, total float64
	for i := 0; i+1 < len(m); i += 2 {
		idle += m[i+1][0] - m[i][0]
		total += m[i+1][1] - m[i][1]
	}
	if total == 0 {
		return 0
	}
	return idle / total
}

// serverPID is the signet serve child, 0 when in-process.
var serverPID int

// procCPU returns the user+system CPU seconds of process pid so far.
func procCPU(pid int) float64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	must(err)
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of the whole line, in clock ticks (USER_HZ = 100).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}

// selfCPU returns this process's user+system CPU seconds so far.
func selfCPU() float64 {
	var ru syscall.Rusage
	must(syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// apiRun submits bodies from the concurrent clients, each waiting for its
// response, and returns items per second and each request's latency.
func apiRun(c *client.Client, bodies [][]byte, reqs []*request.Request, vkey string) (float64, []time.Duration) {
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	start := time.Now()
	for range *clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(bodies) {
					return
				}
				t0 := time.Now()
				st, err := c.Submit(context.Background(), bodies[i])
				must(err)
				res, err := c.Wait(context.Background(), st.ID)
				must(err)
				d := time.Since(t0)
				if i%10 == 0 { // spot-check the responses
					must(client.VerifyResult(reqs[i], res, vkey))
				}
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	items := 0
	for _, r := range reqs {
		items += len(r.Items)
	}
	return float64(items) / time.Since(start).Seconds(), lat
}

// rawRate signs with workers goroutines for rawDur and returns signatures
// per second and CPU seconds per signature (the process does nothing else
// meanwhile).
func rawRate(uri string) (float64, float64) {
	s, err := keys.Open("provider:pkcs11", uri)
	must(err)
	defer s.Close()
	tbs := []byte("5e0f6d4ad1a0e58f6a5c3f0c7b9d2e1f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d")
	var n atomic.Int64
	deadline := time.Now().Add(*rawDur)
	var wg sync.WaitGroup
	cpu0 := selfCPU()
	start := time.Now()
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				_, err := keys.Sign(s, crypto.SHA256, tbs)
				must(err)
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	return float64(n.Load()) / el.Seconds(), (selfCPU() - cpu0) / float64(n.Load())
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// benchTB lets the test helper that runs a throwaway PostgreSQL cluster
// work in this program.
type benchTB struct{ cleanups []func() }

func (*benchTB) Helper()                      {}
func (*benchTB) Fatal(args ...any)            { must(fmt.Errorf("%s", fmt.Sprint(args...))) }
func (*benchTB) Fatalf(f string, args ...any) { must(fmt.Errorf(f, args...)) }
func (b *benchTB) Cleanup(f func())           { b.cleanups = append(b.cleanups, f) }
func (b *benchTB) cleanup() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
}
