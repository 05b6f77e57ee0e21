package cms

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/keys"
)

// The detached no-attribute signature over a verity root hash must equal
// systemd-repart 258.10's byte for byte (RSA signatures are deterministic).
func TestGoldenVerityRootHashSignature(t *testing.T) {
	dir := testenv.Vectors(t, "v258-repart")
	roothash, err := os.ReadFile(filepath.Join(dir, "roothash.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(filepath.Join(dir, "usr-verity-sig.p7s"))
	signer, err := keys.LoadPrivateKeyFile(filepath.Join(dir, "test-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := keys.LoadCertificate(filepath.Join(dir, "test-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := SignNoAttr(signer, cert, roothash, crypto.SHA256, true)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("signature differs from systemd-repart's (%d vs %d bytes)", len(got), len(want))
	}
	sd, err := Parse(want)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sd.Verify(roothash, []*x509.Certificate{cert}); err != nil {
		t.Fatal(err)
	}
	if _, err := sd.Verify(append(roothash, '\n'), nil); err == nil {
		t.Fatal("signature verified over different content")
	}
}

// For every key type, openssl accepts what we make, detached and attached;
// for RSA our bytes equal `openssl smime -sign -binary -noattr`.
func TestOpenSSLInterop(t *testing.T) {
	data := []byte("policy_name=test policy_version=0.0.1\nDEFAULT action=ALLOW\n")
	for _, kind := range testkeys.All {
		k := testkeys.Generate(t, kind)
		dir := t.TempDir()
		in := filepath.Join(dir, "data")
		os.WriteFile(in, data, 0o644)
		for _, detached := range []bool{true, false} {
			der, err := SignNoAttr(k.Signer, k.Cert, data, crypto.SHA256, detached)
			if err != nil {
				t.Fatal(err)
			}
			p7 := filepath.Join(dir, "sig.p7s")
			os.WriteFile(p7, der, 0o644)
			args := []string{"cms", "-verify", "-binary", "-inform", "DER", "-in", p7, "-CAfile", k.CertPath, "-out", filepath.Join(dir, "out")}
			if detached {
				args = append(args, "-content", in)
			}
			testenv.Run(t, "openssl", args...)
			if !detached {
				out, _ := os.ReadFile(filepath.Join(dir, "out"))
				if !bytes.Equal(out, data) {
					t.Fatalf("%s: openssl extracted %q", kind, out)
				}
			}
			if kind == testkeys.RSA2048 || kind == testkeys.RSA4096 {
				args := []string{"smime", "-sign", "-binary", "-noattr", "-md", "sha256", "-outform", "DER", "-signer", k.CertPath, "-inkey", k.KeyPath, "-in", in}
				if !detached {
					args = append(args, "-nodetach")
				}
				ref := testenv.Run(t, "openssl", args...)
				if !bytes.Equal(ref, der) {
					t.Fatalf("%s detached=%v: differs from openssl smime (%d vs %d bytes)", kind, detached, len(der), len(ref))
				}
			}
		}
	}
}

func TestAssembleRefusesWrongSignature(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	sig, _ := keys.Sign(k.Signer, crypto.SHA256, []byte("a"))
	if _, err := AssembleNoAttr(k.Cert, []byte("b"), crypto.SHA256, sig, true); err == nil {
		t.Fatal("assembled a signature over other data")
	}
}

func FuzzParse(f *testing.F) {
	dir := "../../shared/vectors/v258-repart"
	if b, err := os.ReadFile(filepath.Join(dir, "usr-verity-sig.p7s")); err == nil {
		f.Add(b)
	}
	f.Add([]byte{0x30, 0x03, 0x06, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		sd, err := Parse(b)
		if err != nil {
			return
		}
		sd.Verify([]byte("x"), nil)
		if _, err := sd.Marshal(); err != nil && len(sd.Signers) > 0 {
			_ = err
		}
	})
}
