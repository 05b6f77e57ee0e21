package server

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"signet.dev/server/client"
)

type testCert struct {
	cert     *x509.Certificate
	key      crypto.Signer
	certPath string
	keyPath  string
}

// issue makes a certificate for cn signed by parent (self-signed if nil).
func issue(t *testing.T, dir, cn string, parent *testCert, ca bool, usage x509.ExtKeyUsage) *testCert {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		BasicConstraintsValid: true, IsCA: ca,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	signerCert, signerKey := tmpl, crypto.Signer(key)
	if parent != nil {
		signerCert, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	p8, _ := x509.MarshalPKCS8PrivateKey(key)
	tc := &testCert{cert: c, key: key, certPath: filepath.Join(dir, cn+".crt"), keyPath: filepath.Join(dir, cn+".key")}
	os.WriteFile(tc.certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(tc.keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}), 0o600)
	return tc
}

// Clients authenticate with TLS client certificates: by common name when
// issued by the configured CA, or by pinned fingerprint. Others get 401.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := issue(t, dir, "signet-test-ca", nil, true, x509.ExtKeyUsageAny)
	srvCert := issue(t, dir, "server", ca, false, x509.ExtKeyUsageServerAuth)
	builder := issue(t, dir, "builder", ca, false, x509.ExtKeyUsageClientAuth)
	pinned := issue(t, dir, "pinned", nil, false, x509.ExtKeyUsageClientAuth)
	otherCA := issue(t, t.TempDir(), "other-ca", nil, true, x509.ExtKeyUsageAny)
	rogue := issue(t, t.TempDir(), "builder", otherCA, false, x509.ExtKeyUsageClientAuth)
	fp := sha256.Sum256(pinned.cert.Raw)

	cfg, _, vkey, _ := testConfig(t, dir)
	cfg.TLS = &TLSConfig{Certificate: srvCert.certPath, Key: srvCert.keyPath, ClientCA: ca.certPath}
	cfg.Clients = append(cfg.Clients,
		ClientConfig{Name: "builder", CertificateCN: []string{"builder"}, Keys: []string{"verity"}},
		ClientConfig{Name: "pinned", CertificateSHA256: []string{hex.EncodeToString(fp[:])}, Keys: []string{"verity"}})
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	s, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error)
	go func() { served <- s.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-served; s.Close() })
	url := "https://" + l.Addr().String()

	for _, tc := range []struct {
		who  *testCert
		want int
	}{{builder, 200}, {pinned, 200}, {rogue, 401}, {nil, 401}} {
		o := client.Options{CAFile: ca.certPath}
		if tc.who != nil {
			o.CertFile, o.KeyFile = tc.who.certPath, tc.who.keyPath
		}
		c, err := client.New(url, o)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Keys(ctxT(t))
		if got := status(err); (tc.want == 200 && err != nil) || (tc.want != 200 && got != tc.want) {
			t.Errorf("client %v: %v, want %d", tc.who != nil, err, tc.want)
		}
	}
	// The CN client signs end to end.
	c, _ := client.New(url, client.Options{CAFile: ca.certPath, CertFile: builder.certPath, KeyFile: builder.keyPath})
	c.Poll = 20 * time.Millisecond
	r, _ := newRequest(t, 2, "verity")
	if _, err := c.Sign(ctxT(t), r, vkey); err != nil {
		t.Fatal(err)
	}
	// Plain HTTP to the TLS port is no way in.
	if resp, err := http.Get("http://" + l.Addr().String() + "/v1/keys"); err == nil && resp.StatusCode == 200 {
		t.Fatal("plain HTTP served the API")
	}
}

// issueWith is issue for a client certificate whose template mutate
// changes (names, validity).
func issueWith(t *testing.T, dir, file string, parent *testCert, mutate func(*x509.Certificate)) *testCert {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: file},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	mutate(tmpl)
	signerCert, signerKey := tmpl, crypto.Signer(key)
	if parent != nil {
		signerCert, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	p8, _ := x509.MarshalPKCS8PrivateKey(key)
	tc := &testCert{cert: c, key: key, certPath: filepath.Join(dir, file+".crt"), keyPath: filepath.Join(dir, file+".key")}
	os.WriteFile(tc.certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(tc.keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}), 0o600)
	return tc
}

// A certificate names one identity or none: two CNs, names of two
// clients, an expired pin, or a SAN from another CA are 401 with the
// reason, counted in /metrics; SANs (DNS, URI, email) identify.
func TestCertificateIdentities(t *testing.T) {
	dir := t.TempDir()
	ca := issue(t, dir, "signet-test-ca", nil, true, x509.ExtKeyUsageAny)
	srvCert := issue(t, dir, "server", ca, false, x509.ExtKeyUsageServerAuth)
	otherCA := issue(t, t.TempDir(), "other-ca", nil, true, x509.ExtKeyUsageAny)
	spiffe, _ := url.Parse("spiffe://example.org/ci/builder")
	cn2 := func(first, second string) func(*x509.Certificate) {
		return func(c *x509.Certificate) {
			c.Subject = pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{{Type: oidCN, Value: first}, {Type: oidCN, Value: second}}}
		}
	}
	certs := map[string]*testCert{
		"builder":     issueWith(t, dir, "builder", ca, func(c *x509.Certificate) {}),
		"two-cn":      issueWith(t, dir, "two-cn", ca, cn2("builder", "intruder")),
		"two-cn-last": issueWith(t, dir, "two-cn-last", ca, cn2("intruder", "builder")),
		"dns":         issueWith(t, dir, "dns", ca, func(c *x509.Certificate) { c.Subject = pkix.Name{}; c.DNSNames = []string{"Builder.Example.ORG"} }),
		"uri":         issueWith(t, dir, "uri", ca, func(c *x509.Certificate) { c.URIs = []*url.URL{spiffe} }),
		"email":       issueWith(t, dir, "email", ca, func(c *x509.Certificate) { c.EmailAddresses = []string{"release@example.org"} }),
		"two-clients": issueWith(t, dir, "two-clients", ca, func(c *x509.Certificate) {
			c.DNSNames = []string{"builder.example.org"}
			c.EmailAddresses = []string{"release@example.org"}
		}),
		"cn-and-san":  issueWith(t, dir, "cn-and-san", ca, func(c *x509.Certificate) { c.Subject.CommonName = "builder"; c.URIs = []*url.URL{spiffe} }),
		"foreign-san": issueWith(t, t.TempDir(), "foreign", otherCA, func(c *x509.Certificate) { c.DNSNames = []string{"builder.example.org"} }),
		"pinned":      issueWith(t, dir, "pinned", nil, func(c *x509.Certificate) {}),
		"pin-expired": issueWith(t, dir, "pin-expired", nil, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)
		}),
		"pin-too-soon": issueWith(t, dir, "pin-too-soon", nil, func(c *x509.Certificate) { c.NotBefore = time.Now().Add(24 * time.Hour) }),
	}
	fp := func(name string) string {
		h := sha256.Sum256(certs[name].cert.Raw)
		return hex.EncodeToString(h[:])
	}
	cfg, _, _, _ := testConfig(t, dir)
	cfg.TLS = &TLSConfig{Certificate: srvCert.certPath, Key: srvCert.keyPath, ClientCA: ca.certPath}
	cfg.Clients = append(cfg.Clients,
		ClientConfig{Name: "builder", CertificateCN: []string{"builder"}, Keys: []string{"verity"}},
		ClientConfig{Name: "dns-builder", CertificateSAN: []string{"dns:builder.example.org"}, Keys: []string{"verity"}},
		ClientConfig{Name: "spiffe-builder", CertificateSAN: []string{"uri:spiffe://example.org/ci/builder"}, Keys: []string{"verity"}},
		ClientConfig{Name: "release", CertificateSAN: []string{"email:release@example.org"}, Keys: []string{"verity"}},
		ClientConfig{Name: "pinned", CertificateSHA256: []string{fp("pinned"), fp("pin-expired"), fp("pin-too-soon")}, Keys: []string{"verity"}})
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	var logBuf safeBuffer
	s, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(&logBuf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error)
	go func() { served <- s.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-served; s.Close() })
	base := "https://" + l.Addr().String()

	for name, want := range map[string]string{
		"builder":      "builder",
		"dns":          "dns-builder",
		"uri":          "spiffe-builder",
		"email":        "release",
		"pinned":       "pinned",
		"two-cn":       "401 subject has 2 common names",
		"two-cn-last":  "401 subject has 2 common names",
		"two-clients":  "401 names several clients",
		"cn-and-san":   "401 names several clients",
		"foreign-san":  "401 client certificate: x509: certificate signed by unknown authority",
		"pin-expired":  "401 pinned client certificate of pinned is valid from",
		"pin-too-soon": "401 pinned client certificate of pinned is valid from",
	} {
		c, err := client.New(base, client.Options{CAFile: ca.certPath, CertFile: certs[name].certPath, KeyFile: certs[name].keyPath})
		if err != nil {
			t.Fatal(err)
		}
		r, _ := newRequest(t, 1, "verity")
		body, _ := r.Marshal()
		st, err := c.Submit(ctxT(t), body)
		if code, msg, refused := strings.Cut(want, " "); refused {
			var ce *client.Error
			if !errors.As(err, &ce) || fmt.Sprint(ce.Status) != code || !strings.Contains(ce.Body.Error, msg) {
				t.Errorf("%s: %v, want %s", name, err, want)
			}
			continue
		}
		if err != nil || st.Client != want {
			t.Errorf("%s: %v (client %v), want client %s", name, err, st, want)
		}
	}
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for reason, n := range map[string]int{"multiple_cn": 2, "ambiguous": 2, "chain": 1, "pinned_outside_validity": 2} {
		if series := fmt.Sprintf("signet_auth_refusals_total{reason=%q} %d\n", reason, n); !strings.Contains(rec.Body.String(), series) {
			t.Errorf("/metrics lacks %q", series)
		}
	}
	if !strings.Contains(logBuf.String(), "pinned client certificates (certificate_sha256) are refused before their notBefore and after their notAfter") {
		t.Error("the pinning contract is not in the startup log")
	}
	if !strings.Contains(logBuf.String(), "client refused") {
		t.Error("refused certificates are not logged")
	}
}

// The configuration refuses ambiguous certificate names.
func TestCertificateNameConfig(t *testing.T) {
	dir := t.TempDir()
	cfg, _, _, _ := testConfig(t, dir)
	cfg.TLS = &TLSConfig{Certificate: "s.crt", Key: "s.key", ClientCA: "ca.crt"}
	for _, tc := range []struct {
		a, b ClientConfig
		want string
	}{
		{ClientConfig{Name: "a", CertificateCN: []string{"x"}}, ClientConfig{Name: "b", CertificateCN: []string{"x"}}, `certificate name cn:x is also client "a"'s`},
		{ClientConfig{Name: "a", CertificateSAN: []string{"dns:X.example"}}, ClientConfig{Name: "b", CertificateSAN: []string{"DNS:x.example"}}, `dns:x.example is also client "a"'s`},
		{ClientConfig{Name: "a", CertificateSAN: []string{"ip:127.0.0.1"}}, ClientConfig{Name: "b", TokenSHA256: []string{tokenHash("t")}}, `type "ip": want dns, uri or email`},
		{ClientConfig{Name: "a", CertificateSAN: []string{"dns:*.example"}}, ClientConfig{Name: "b", TokenSHA256: []string{tokenHash("t")}}, `wildcard`},
		{ClientConfig{Name: "a", CertificateSAN: []string{"spiffe://x"}}, ClientConfig{Name: "b", TokenSHA256: []string{tokenHash("t")}}, `want dns, uri or email`},
	} {
		c := *cfg
		c.Clients = append(slices.Clone(cfg.Clients), tc.a, tc.b)
		if err := c.Check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v %+v: %v, want %q", tc.a, tc.b, err, tc.want)
		}
	}
	c := *cfg
	c.TLS = nil
	c.Clients = append(slices.Clone(cfg.Clients), ClientConfig{Name: "a", CertificateSAN: []string{"dns:x.example"}})
	if err := c.Check(); err == nil || !strings.Contains(err.Error(), "need [tls] client_ca") {
		t.Errorf("SAN without client_ca: %v", err)
	}
}

// safeBuffer is a log sink shared by the server's goroutines.
type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *safeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *safeBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
