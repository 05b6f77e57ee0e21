package server

import (
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
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
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
