// Package testkeys makes throwaway keys, certificates and SoftHSM2 tokens
// for tests. Nothing here is for production use.
package testkeys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Kind names a key type.
type Kind string

const (
	RSA2048 Kind = "rsa2048"
	RSA3072 Kind = "rsa3072"
	RSA4096 Kind = "rsa4096"
	P256    Kind = "p256"
	P384    Kind = "p384"
	Ed25519 Kind = "ed25519"
)

// All lists the key types every signature path must handle (Ed25519 only
// where a format allows it).
var All = []Kind{RSA2048, RSA3072, RSA4096, P256, P384}

// Key is a generated key with a self-signed certificate, also written to
// PEM files.
type Key struct {
	Kind     Kind
	Signer   crypto.Signer
	Cert     *x509.Certificate
	KeyPath  string // PKCS#8 PEM
	CertPath string // PEM
	PubPath  string // PEM SubjectPublicKeyInfo
}

var (
	cacheMu sync.Mutex
	cache   = map[Kind]crypto.Signer{}
)

// Generate returns a key of the given kind (cached per process: RSA-4096
// generation is slow) with a fresh certificate, written into t.TempDir().
func Generate(t testing.TB, kind Kind) *Key {
	t.Helper()
	cacheMu.Lock()
	s, ok := cache[kind]
	if !ok {
		var err error
		s, err = newKey(kind)
		if err != nil {
			cacheMu.Unlock()
			t.Fatal(err)
		}
		cache[kind] = s
	}
	cacheMu.Unlock()
	return Write(t, kind, s, t.TempDir())
}

func newKey(kind Kind) (crypto.Signer, error) {
	switch kind {
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	case RSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	case P256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case P384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("unknown key kind %q", kind)
}

// Write makes a self-signed certificate for s and writes key, certificate
// and public key as PEM files into dir.
func Write(t testing.TB, kind Kind, s crypto.Signer, dir string) *Key {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(0x5167e7),
		Subject:               pkix.Name{CommonName: "signet test " + string(kind), Organization: []string{"signet"}},
		NotBefore:             time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2049, 12, 31, 0, 0, 0, 0, time.UTC),
		BasicConstraintsValid: true,
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, s.Public(), s)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p8, err := x509.MarshalPKCS8PrivateKey(s)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(s.Public())
	if err != nil {
		t.Fatal(err)
	}
	k := &Key{Kind: kind, Signer: s, Cert: cert,
		KeyPath:  filepath.Join(dir, string(kind)+".key"),
		CertPath: filepath.Join(dir, string(kind)+".crt"),
		PubPath:  filepath.Join(dir, string(kind)+".pub"),
	}
	writePEM(t, k.KeyPath, "PRIVATE KEY", p8)
	writePEM(t, k.CertPath, "CERTIFICATE", der)
	writePEM(t, k.PubPath, "PUBLIC KEY", spki)
	return k
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// SoftHSM is a SoftHSM2 token in a temporary directory.
type SoftHSM struct {
	Conf   string // SOFTHSM2_CONF value
	Module string // path of libsofthsm2.so
	Token  string
	PIN    string
}

// SoftHSMModule is where Debian's softhsm2 package installs the module.
const SoftHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

var (
	hsmOnce sync.Once
	hsm     *SoftHSM
	hsmErr  error
	hsmMu   sync.Mutex
	// imported maps token labels to the public key stored under them.
	imported = map[string]interface{ Equal(crypto.PublicKey) bool }{}
)

// NewSoftHSM returns the process-wide test token "signet-test" (PIN 1234),
// creating it on first use, and sets SOFTHSM2_CONF for the process. One token
// per process because a PKCS#11 module reads its configuration once.
func NewSoftHSM(t testing.TB) *SoftHSM {
	t.Helper()
	hsmOnce.Do(func() {
		if _, err := os.Stat(SoftHSMModule); err != nil {
			hsmErr = fmt.Errorf("softhsm2 not installed (%s): run scripts/test, which installs it", SoftHSMModule)
			return
		}
		dir, err := os.MkdirTemp("", "signet-softhsm-")
		if err != nil {
			hsmErr = err
			return
		}
		tokens := filepath.Join(dir, "tokens")
		os.Mkdir(tokens, 0o700)
		conf := filepath.Join(dir, "softhsm2.conf")
		os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600)
		os.Setenv("SOFTHSM2_CONF", conf)
		h := &SoftHSM{Conf: conf, Module: SoftHSMModule, Token: "signet-test", PIN: "1234"}
		out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", h.Token, "--pin", h.PIN, "--so-pin", "5678").CombinedOutput()
		if err != nil {
			hsmErr = fmt.Errorf("softhsm2-util --init-token: %v: %s", err, out)
			return
		}
		hsm = h
	})
	if hsmErr != nil {
		t.Fatal(hsmErr)
	}
	return hsm
}

// URI returns the RFC 7512 URI of the object label on this token,
// with module path and PIN.
func (h *SoftHSM) URI(label string) string {
	return fmt.Sprintf("pkcs11:token=%s;object=%s?module-path=%s&pin-value=%s", h.Token, label, h.Module, h.PIN)
}

// Import stores k's private key on the token under label (with id = label)
// and returns its URI. The certificate stays a file (k.CertPath). Importing
// the same key under the same label again is a no-op; another key under a
// used label is a test bug.
func (h *SoftHSM) Import(t testing.TB, k *Key, label string) string {
	t.Helper()
	hsmMu.Lock()
	defer hsmMu.Unlock()
	if prev, ok := imported[label]; ok {
		if !prev.Equal(k.Signer.Public()) {
			t.Fatalf("softhsm: label %q already holds another key", label)
		}
		return h.URI(label)
	}
	id := fmt.Sprintf("%x", label)
	out, err := exec.Command("softhsm2-util", "--import", k.KeyPath, "--token", h.Token, "--label", label, "--id", id, "--pin", h.PIN).CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --import: %v: %s", err, out)
	}
	imported[label] = k.Signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	return h.URI(label)
}
