package verity

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/keys"
)

var testRoot, _ = hex.DecodeString("a35b29a57b77cdfb5c0807fb99724e4361a808c86b2a1b1615d56b1cf2ae51d8")

// TestSignMatchesRepart258: with the vector's key, the payload equals the
// JSON systemd-repart 258.10 wrote, byte for byte.
func TestSignMatchesRepart258(t *testing.T) {
	v := testenv.Vectors(t, "v258-repart")
	s, err := keys.Open("file", filepath.Join(v, "test-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cert, err := keys.LoadCertificate(filepath.Join(v, "test-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Sign(s, cert, testRoot)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(filepath.Join(v, "usr-verity-sig.json"))
	if got := p.Marshal(); !bytes.Equal(got, want) {
		t.Fatalf("payload differs from repart 258's:\n%s\n%s", got, want)
	}
	parsed, err := ParseSignaturePayload(append(want, make([]byte, 100)...))
	if err != nil || !bytes.Equal(parsed.Marshal(), want) {
		t.Fatalf("parse: %v", err)
	}
	if err := parsed.Verify(nil); err != nil {
		t.Fatal(err)
	}
	p7, _ := os.ReadFile(filepath.Join(v, "usr-verity-sig.p7s"))
	joined, err := JoinPKCS7(cert, testRoot, p7)
	if err != nil || !bytes.Equal(joined.Marshal(), want) {
		t.Fatalf("JoinPKCS7: %v", err)
	}
	other := bytes.Clone(testRoot)
	other[31] ^= 1
	if _, err := JoinPKCS7(cert, other, p7); err == nil {
		t.Fatal("JoinPKCS7 accepted a signature for another root hash")
	}
}

// TestSignatureOracles: every key kind (and a PKCS#11 key) gives a
// signature openssl cms -verify accepts over the hex root hash; RSA's equals
// openssl smime -sign -noattr byte for byte; a raw signature joined offline
// gives the online bytes; a wrong signature is refused.
func TestSignatureOracles(t *testing.T) {
	openssl := testenv.Tool(t, "openssl")
	dir := t.TempDir()
	content := filepath.Join(dir, "roothash")
	os.WriteFile(content, []byte(hex.EncodeToString(testRoot)), 0o644)
	hsm := testkeys.NewSoftHSM(t)
	for _, kind := range []testkeys.Kind{testkeys.RSA2048, testkeys.RSA4096, testkeys.P256, testkeys.P384, "pkcs11"} {
		t.Run(string(kind), func(t *testing.T) {
			var k *testkeys.Key
			var s keys.Signer
			var err error
			if kind == "pkcs11" {
				k = testkeys.Generate(t, testkeys.RSA2048)
				s, err = keys.Open("provider:pkcs11", hsm.Import(t, k, "verity-"+strings.ToLower(t.Name()[len(t.Name())-6:])))
			} else {
				k = testkeys.Generate(t, kind)
				s, err = keys.Open("file", k.KeyPath)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			p, err := Sign(s, k.Cert, testRoot)
			if err != nil {
				t.Fatal(err)
			}
			sig := filepath.Join(t.TempDir(), "sig.p7s")
			os.WriteFile(sig, p.Signature, 0o644)
			testenv.Run(t, openssl, "cms", "-verify", "-binary", "-inform", "DER", "-in", sig, "-content", content, "-CAfile", k.CertPath, "-out", "/dev/null")
			if kind == testkeys.RSA2048 || kind == testkeys.RSA4096 || kind == "pkcs11" {
				ref := testenv.Run(t, openssl, "smime", "-sign", "-binary", "-noattr", "-md", "sha256", "-outform", "DER",
					"-signer", k.CertPath, "-inkey", k.KeyPath, "-in", content, "-out", "/dev/stdout")
				if !bytes.Equal(ref, p.Signature) {
					t.Fatal("PKCS#7 differs from openssl smime -sign -noattr")
				}
			}
			// Offline: prepare, sign elsewhere, join.
			tbs, h := PrepareSignature(testRoot)
			if string(tbs) != hex.EncodeToString(testRoot) {
				t.Fatalf("TBS %q", tbs)
			}
			raw, err := keys.Sign(s, h, tbs)
			if err != nil {
				t.Fatal(err)
			}
			j, err := JoinSignature(k.Cert, testRoot, raw)
			if err != nil {
				t.Fatal(err)
			}
			if err := j.Verify([]*x509.Certificate{k.Cert}); err != nil {
				t.Fatal(err)
			}
			if kind != testkeys.P256 && kind != testkeys.P384 && !bytes.Equal(j.Marshal(), p.Marshal()) {
				t.Fatal("offline join differs from online signing")
			}
			raw[len(raw)-1] ^= 1
			if _, err := JoinSignature(k.Cert, testRoot, raw); err == nil {
				t.Fatal("JoinSignature accepted a corrupted signature")
			}
			other := testkeys.Generate(t, testkeys.RSA3072)
			if _, err := JoinPKCS7(other.Cert, testRoot, p.Signature); err == nil {
				t.Fatal("JoinPKCS7 accepted another certificate")
			}
		})
	}
}

func FuzzSignaturePayload(f *testing.F) {
	f.Add([]byte(`{"rootHash":"a35b29a57b77cdfb5c0807fb99724e43","certificateFingerprint":"","signature":"MAA="}`))
	f.Add([]byte("{}\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseSignaturePayload(b)
		if err != nil {
			return
		}
		if _, err := ParseSignaturePayload(p.Marshal()); err != nil {
			t.Fatalf("round trip: %v", err)
		}
		p.Verify(nil)
	})
}
