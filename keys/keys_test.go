package keys_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/keys"
)

// Every key type loads from every PEM encoding OpenSSL writes, and the
// signature keys.Sign makes is the one `openssl dgst -sign` makes (RSA) or
// one openssl verifies (ECDSA).
func TestFileKeysAgainstOpenSSL(t *testing.T) {
	msg := []byte("to be signed\n")
	for _, kind := range testkeys.All {
		k := testkeys.Generate(t, kind)
		dir := t.TempDir()
		paths := map[string]string{"pkcs8": k.KeyPath}
		switch s := k.Signer.(type) {
		case *rsa.PrivateKey:
			paths["pkcs1"] = filepath.Join(dir, "k1.pem")
			os.WriteFile(paths["pkcs1"], pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(s)}), 0o600)
		case *ecdsa.PrivateKey:
			der, _ := x509.MarshalECPrivateKey(s)
			paths["sec1"] = filepath.Join(dir, "k1.pem")
			os.WriteFile(paths["sec1"], pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
		}
		in := filepath.Join(dir, "msg")
		os.WriteFile(in, msg, 0o644)
		for enc, p := range paths {
			s, err := keys.Open("file", p)
			if err != nil {
				t.Fatalf("%s %s: %v", kind, enc, err)
			}
			if err := keys.CheckPair(s, k.Cert); err != nil {
				t.Fatal(err)
			}
			sig, err := keys.Sign(s, crypto.SHA256, msg)
			if err != nil {
				t.Fatal(err)
			}
			sigPath := filepath.Join(dir, "sig")
			os.WriteFile(sigPath, sig, 0o644)
			out := testenv.Run(t, "openssl", "dgst", "-sha256", "-verify", k.PubPath, "-signature", sigPath, in)
			testenv.Contains(t, out, "Verified OK")
			if err := keys.Verify(k.Cert.PublicKey, crypto.SHA256, msg, sig); err != nil {
				t.Fatal(err)
			}
			if keys.Verify(k.Cert.PublicKey, crypto.SHA256, append(msg, 0), sig) == nil {
				t.Fatal("signature verified over other data")
			}
		}
		if _, ok := k.Signer.(*rsa.PrivateKey); ok {
			s, _ := keys.Open("", k.KeyPath)
			sig, _ := keys.Sign(s, crypto.SHA256, msg)
			ref := testenv.Run(t, "openssl", "dgst", "-sha256", "-sign", k.KeyPath, in)
			if string(ref) != string(sig) {
				t.Fatalf("%s: signature differs from openssl dgst -sign", kind)
			}
		}
	}
}

func TestBadKeyFiles(t *testing.T) {
	dir := t.TempDir()
	k := testkeys.Generate(t, testkeys.RSA2048)
	enc := filepath.Join(dir, "enc.pem")
	testenv.Run(t, "openssl", "pkcs8", "-topk8", "-in", k.KeyPath, "-out", enc, "-passout", "pass:x")
	garbage := filepath.Join(dir, "garbage.pem")
	os.WriteFile(garbage, []byte("not a key"), 0o600)
	for path, want := range map[string]string{
		enc:                               "encrypted",
		garbage:                           "no PEM private key",
		filepath.Join(dir, "missing.pem"): "no such file",
		k.CertPath:                        "no PEM private key",
	} {
		_, err := keys.Open("file", path)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), filepath.Base(path)) {
			t.Errorf("%s: got %v, want error naming the file and %q", path, err, want)
		}
	}
	if _, err := keys.Open("engine:foo", k.KeyPath); err == nil {
		t.Error("unknown key source accepted")
	}
	other := testkeys.Generate(t, testkeys.P256)
	s, _ := keys.Open("file", other.KeyPath)
	if err := keys.CheckPair(s, k.Cert); err == nil {
		t.Error("mismatched key and certificate accepted")
	}
}

// A key on a SoftHSM2 token signs through PKCS#11 exactly as the same key
// does from a file (RSA PKCS#1 v1.5 is deterministic), and a wrong PIN is a
// clear error.
func TestPKCS11SoftHSM(t *testing.T) {
	hsm := testkeys.NewSoftHSM(t)
	msg := []byte("to be signed")
	for _, kind := range []testkeys.Kind{testkeys.RSA2048, testkeys.P256, testkeys.P384} {
		k := testkeys.Generate(t, kind)
		uri := hsm.Import(t, k, "keys-test-"+string(kind))
		s, err := keys.Open("provider:pkcs11", uri)
		if err != nil {
			t.Fatal(err)
		}
		if err := keys.CheckPair(s, k.Cert); err != nil {
			t.Fatal(err)
		}
		sig, err := keys.Sign(s, crypto.SHA256, msg)
		if err != nil {
			t.Fatal(err)
		}
		if err := keys.Verify(k.Cert.PublicKey, crypto.SHA256, msg, sig); err != nil {
			t.Fatalf("%s: PKCS#11 signature: %v", kind, err)
		}
		if kind == testkeys.RSA2048 {
			want, _ := keys.Sign(k.Signer, crypto.SHA256, msg)
			if string(want) != string(sig) {
				t.Fatal("PKCS#11 RSA signature differs from the file key's")
			}
		}
		s.Close()
	}
	bad := strings.Replace(hsm.URI("keys-test-rsa2048"), "pin-value="+hsm.PIN, "pin-value=0000", 1)
	if _, err := keys.Open("provider:pkcs11", bad); err == nil || !strings.Contains(err.Error(), "PIN") {
		t.Fatalf("wrong PIN: got %v", err)
	}
	if _, err := keys.Open("provider:pkcs11", hsm.URI("no-such-key")); err == nil {
		t.Fatal("missing object accepted")
	}
}

func TestParsePKCS11URI(t *testing.T) {
	pin := filepath.Join(t.TempDir(), "pin")
	os.WriteFile(pin, []byte("4321\n"), 0o600)
	u, err := keys.ParsePKCS11URI("pkcs11:token=my%20token;object=db;type=private?module-path=/m.so&pin-source=file:" + pin)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.ReadPIN(); err != nil {
		t.Fatal(err)
	}
	if u.Token != "my token" || u.Object != "db" || u.ModulePath != "/m.so" || u.PIN != "4321" {
		t.Fatalf("parsed %+v", u)
	}
	for _, bad := range []string{
		"pkcs11:object=db?module-path=/m.so", // no token
		"pkcs11:token=t?module-path=/m.so",   // no object
		"pkcs11:token=t;object=o;bogus=1?module-path=/m.so",
		"pkcs11:token=t;token=u;object=o?module-path=/m.so",
		"pkcs11:token=%zz;object=o?module-path=/m.so",
		"file:/x",
	} {
		if _, err := keys.ParsePKCS11URI(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestStaticSigner(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	msg := []byte("offline")
	sig, _ := keys.Sign(k.Signer, crypto.SHA256, msg)
	st := &keys.Static{Key: k.Cert.PublicKey, Hash: crypto.SHA256, Message: msg, Signature: sig}
	got, err := keys.Sign(st, crypto.SHA256, msg)
	if err != nil || string(got) != string(sig) {
		t.Fatalf("replay: %v", err)
	}
	if _, err := keys.Sign(st, crypto.SHA256, []byte("other")); err == nil {
		t.Fatal("static signer signed other data")
	}
	st.Signature = append([]byte{}, sig...)
	st.Signature[3] ^= 1
	if _, err := keys.Sign(st, crypto.SHA256, msg); err == nil {
		t.Fatal("static signer returned a bad signature")
	}
}

func FuzzParsePKCS11URI(f *testing.F) {
	f.Add("pkcs11:token=a;object=b?module-path=/x&pin-value=1")
	f.Add("pkcs11:id=%01%02;serial=1")
	f.Fuzz(func(t *testing.T, s string) {
		keys.ParsePKCS11URI(s)
	})
}

func FuzzParsePrivateKeyPEM(f *testing.F) {
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIE\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		keys.ParsePrivateKeyPEM(b)
		keys.ParsePublicKeyPEM(b)
		keys.ParseCertificates(b)
	})
}
