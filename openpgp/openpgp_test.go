package openpgp

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/keys"
)

var (
	keyTime = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	sigTime = time.Unix(1700000000, 0)
	data    = []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef *image.raw\n")
)

// gpgHome makes a fresh gpg home that imported only pub (binary or
// armored), and a binary keyring file ring for gpgv (gpgv, like gpg's
// --keyring, reads binary keyrings only: systemd's import-pubring.pgp).
func gpgHome(t *testing.T, pub, binaryPub []byte) (home, ring string) {
	t.Helper()
	home = t.TempDir()
	os.Chmod(home, 0o700)
	in := filepath.Join(home, "import.pgp")
	ring = filepath.Join(home, "ring.pgp")
	os.WriteFile(ring, binaryPub, 0o600)
	if err := os.WriteFile(in, pub, 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "gpg", "--homedir", home, "--batch", "--import", in)
	return home, ring
}

// gpgVerify runs gpg --verify and gpgv against sig over content and reports
// gpg's status lines; both must agree on good or bad.
func gpgVerify(t *testing.T, home, ring string, sig, content []byte) (bool, string) {
	t.Helper()
	dir := t.TempDir()
	sp, cp := filepath.Join(dir, "data.sig"), filepath.Join(dir, "data")
	os.WriteFile(sp, sig, 0o600)
	os.WriteFile(cp, content, 0o600)
	cmd := exec.Command(testenv.Tool(t, "gpg"), "--homedir", home, "--batch", "--status-fd", "1", "--verify", sp, cp)
	out, err := cmd.CombinedOutput()
	good := err == nil && bytes.Contains(out, []byte("[GNUPG:] GOODSIG")) && bytes.Contains(out, []byte("[GNUPG:] VALIDSIG"))
	vout, verr := testenv.RunErr(t, "gpgv", "--homedir", home, "--keyring", ring, sp, cp)
	if good != (verr == nil) {
		t.Fatalf("gpg (good=%v) and gpgv (%v) disagree:\n%s\ngpgv: %s", good, verr, out, vout)
	}
	return good, string(out)
}

type testKey struct {
	name   string
	signer crypto.Signer
	pub    crypto.PublicKey
}

func testKeys(t *testing.T) []testKey {
	var out []testKey
	for _, kind := range []testkeys.Kind{testkeys.RSA2048, testkeys.P256, testkeys.P384, testkeys.Ed25519} {
		k := testkeys.Generate(t, kind)
		out = append(out, testKey{string(kind), k.Signer, k.Signer.Public()})
	}
	// An RSA key on a PKCS#11 token.
	k := testkeys.Generate(t, testkeys.RSA2048)
	hsm := testkeys.NewSoftHSM(t)
	s, err := keys.Open("provider:pkcs11", hsm.Import(t, k, "openpgp-rsa"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	out = append(out, testKey{"pkcs11-rsa2048", s, s.Public()})
	return out
}

func TestGPGAcceptsKeysAndSignatures(t *testing.T) {
	for _, tk := range testKeys(t) {
		t.Run(tk.name, func(t *testing.T) {
			key, err := NewKey(tk.pub, keyTime)
			if err != nil {
				t.Fatal(err)
			}
			pub, err := ExportPublicKey(tk.signer, key, "signet test <test@signet.dev>")
			if err != nil {
				t.Fatal(err)
			}
			sig, err := SignDetached(tk.signer, key, data, sigTime)
			if err != nil {
				t.Fatal(err)
			}
			for _, armored := range []bool{false, true} {
				pubIn, sigIn := pub, sig
				if armored {
					pubIn, sigIn = Armor(pub, ArmorPublicKey), Armor(sig, ArmorSignature)
				}
				home, ring := gpgHome(t, pubIn, pub)
				good, out := gpgVerify(t, home, ring, sigIn, data)
				if !good {
					t.Fatalf("armored=%v: gpg rejects the signature:\n%s", armored, out)
				}
				m := regexp.MustCompile(`VALIDSIG ([0-9A-F]{40}) \S+ (\d+) \d+ 4 \d+ (\d+) (\d+) `).FindStringSubmatch(out)
				if m == nil || m[1] != key.FingerprintHex() || m[2] != "1700000000" {
					t.Fatalf("VALIDSIG does not name key %s at 1700000000:\n%s", key.FingerprintHex(), out)
				}
				if want := map[crypto.Hash]string{crypto.SHA256: "8", crypto.SHA384: "9"}[key.Hash()]; m[4] != want {
					t.Errorf("hash algorithm %s, want %s", m[4], want)
				}
				bad := bytes.Clone(data)
				bad[3] ^= 1
				if good, out := gpgVerify(t, home, ring, sigIn, bad); good || !strings.Contains(out, "BADSIG") {
					t.Fatalf("gpg accepts a signature over changed data:\n%s", out)
				}
				v, err := VerifyDetached(pubIn, data, sigIn)
				if err != nil {
					t.Fatalf("VerifyDetached: %v", err)
				}
				if v.Fingerprint != key.FingerprintHex() || !v.Created.Equal(sigTime) {
					t.Errorf("VerifyDetached = %+v", v)
				}
				if _, err := VerifyDetached(pubIn, bad, sigIn); err == nil {
					t.Error("VerifyDetached accepts changed data")
				}
			}
		})
	}
}

// Offline signing (TBS out, raw signature made by openssl, joined) gives
// the same bytes as online signing.
func TestOfflineEqualsOnline(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	key, err := NewKey(k.Signer.Public(), k.Cert.NotBefore)
	if err != nil {
		t.Fatal(err)
	}
	online, err := SignDetached(k.Signer, key, data, sigTime)
	if err != nil {
		t.Fatal(err)
	}
	p, err := PrepareDetached(key, data, sigTime)
	if err != nil {
		t.Fatal(err)
	}
	tbs := filepath.Join(t.TempDir(), "tbs")
	os.WriteFile(tbs, p.TBS, 0o600)
	raw := testenv.Run(t, "openssl", "dgst", "-sha256", "-sign", k.KeyPath, tbs)
	offline, err := p.Join(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(online, offline) {
		t.Fatal("offline signature differs from the online one")
	}
	raw[10] ^= 1
	if _, err := p.Join(raw); err != ErrBadSignature {
		t.Fatalf("Join of a corrupted signature: %v", err)
	}
	other := testkeys.Generate(t, testkeys.RSA3072)
	if _, err := p.Sign(other.Signer); err == nil {
		t.Fatal("signing with another key than the OpenPGP key's succeeded")
	}
}

func TestRefusals(t *testing.T) {
	k := testkeys.Generate(t, testkeys.P256)
	key, _ := NewKey(k.Signer.Public(), keyTime)
	if _, err := PrepareDetached(key, data, keyTime.Add(-time.Hour)); err == nil {
		t.Error("a signature older than its key was prepared")
	}
	if _, err := NewKey(k.Signer.Public(), time.Unix(-1, 0)); err == nil {
		t.Error("a key before 1970 was accepted")
	}
	if _, err := PrepareCertification(key, "two\nlines"); err == nil {
		t.Error("a user ID with a newline was accepted")
	}
	if _, err := NewKey(struct{}{}, keyTime); err != ErrUnsupportedKey {
		t.Errorf("unknown key type: %v", err)
	}
}

func TestFingerprintIsStable(t *testing.T) {
	k := testkeys.Generate(t, testkeys.Ed25519)
	a, _ := NewKey(k.Signer.Public(), keyTime)
	b, _ := NewKey(k.Signer.Public(), keyTime)
	c, _ := NewKey(k.Signer.Public(), keyTime.Add(time.Second))
	if a.Fingerprint() != b.Fingerprint() || a.Fingerprint() == c.Fingerprint() {
		t.Fatal("fingerprint must depend on exactly key and creation time")
	}
}

// Verification reads untrusted keyrings and signatures: no input may make
// it panic, and only a real signature may verify.
func FuzzVerifyDetached(f *testing.F) {
	// A fixed key: seeds are made in the coordinator and run in workers,
	// which must see the same key.
	sk := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	key, _ := NewKey(sk.Public(), keyTime)
	pub, _ := ExportPublicKey(sk, key, "fuzz")
	sig, _ := SignDetached(sk, key, data, sigTime)
	f.Add(pub, sig)
	f.Add(Armor(pub, ArmorPublicKey), Armor(sig, ArmorSignature))
	f.Add(pub, []byte("-----BEGIN PGP SIGNATURE-----\n\nwsBc\n-----END PGP SIGNATURE-----\n"))
	f.Fuzz(func(t *testing.T, ring, s []byte) {
		if _, err := VerifyDetached(ring, data, s); err == nil && !bytes.Equal(s, sig) && !bytes.Contains(s, []byte("-----BEGIN")) {
			// A different binary signature packet may still verify only if
			// it carries the same signature values (e.g. other unhashed
			// subpackets); it must at least name this key.
			if _, err := VerifyDetached(pub, data, s); err != nil {
				t.Fatalf("verified against a fuzzed ring but not the real key: %v\nring %x\nsig %x", err, ring, s)
			}
		}
	})
}

// VerifyDetached accepts what gpg itself makes (its own packet framing and
// hash choice), from a key gpg generated.
func TestVerifyGPGMadeSignature(t *testing.T) {
	home := t.TempDir()
	os.Chmod(home, 0o700)
	gpg := func(args ...string) []byte {
		t.Helper()
		return testenv.Run(t, "gpg", append([]string{"--homedir", home, "--batch", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
	}
	gpg("--quick-gen-key", "gpg made <gpg@example.org>", "rsa2048", "sign", "never")
	// gpg started an agent for this home: stop it by its PID when done.
	if out, err := testenv.RunErr(t, "gpg-connect-agent", "--homedir", home, "getinfo pid", "/bye"); err == nil {
		if m := regexp.MustCompile(`(?m)^D (\d+)$`).FindSubmatch(out); m != nil {
			pid := string(m[1])
			t.Cleanup(func() { exec.Command("kill", pid).Run() })
		}
	}
	dir := t.TempDir()
	dp := filepath.Join(dir, "SHA256SUMS")
	os.WriteFile(dp, data, 0o600)
	gpg("--detach-sign", "--output", dp+".gpg", dp)
	gpg("--armor", "--detach-sign", "--output", dp+".asc", dp)
	ring := gpg("--export")
	for _, ext := range []string{".gpg", ".asc"} {
		sig, _ := os.ReadFile(dp + ext)
		v, err := VerifyDetached(ring, data, sig)
		if err != nil {
			t.Fatalf("%s: %v", ext, err)
		}
		if len(v.UserIDs) != 1 || v.UserIDs[0] != "gpg made <gpg@example.org>" {
			t.Errorf("%s: signer %+v", ext, v)
		}
		if _, err := VerifyDetached(ring, append(data, '\n'), sig); err == nil {
			t.Errorf("%s: changed data verifies", ext)
		}
	}
}

// TestTrailerRebuild checks that the trailer Marshal writes is the one
// PrepareDetached signs, and that ParseTrailer reads it back.
func TestTrailerRebuild(t *testing.T) {
	for _, name := range []string{"rsa", "p256", "p384"} {
		key := trailerTestKey(t, name)
		created := time.Unix(1700000000, 0).UTC()
		doc := []byte("0000000000000000000000000000000000000000000000000000000000000000 *a\n")
		p, err := PrepareDetached(key, doc, created)
		if err != nil {
			t.Fatal(err)
		}
		gotDoc, tr, err := ParseTrailer(p.TBS)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(gotDoc, doc) || !tr.Created.Equal(created) || tr.Fingerprint != key.Fingerprint() || tr.Hash != key.Hash() || tr.PubKeyAlgo != key.Algorithm() {
			t.Fatalf("%s: parsed %+v", name, tr)
		}
		again, _ := tr.Marshal()
		if !bytes.Equal(append(append([]byte{}, doc...), again...), p.TBS) {
			t.Fatalf("%s: rebuilt trailer differs", name)
		}
		// One more hashed subpacket (a notation, say) is not signet's.
		bad := append([]byte{}, p.TBS...)
		bad[len(bad)-trailerLen+5]++
		if _, _, err := ParseTrailer(bad); err == nil {
			t.Fatalf("%s: altered subpacket length accepted", name)
		}
	}
}

func FuzzParseTrailer(f *testing.F) {
	f.Add(make([]byte, trailerLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		doc, tr, err := ParseTrailer(b)
		if err != nil {
			return
		}
		again, err := tr.Marshal()
		if err != nil || !bytes.Equal(append(append([]byte{}, doc...), again...), b) {
			t.Fatalf("accepted trailer does not rebuild: %x", b)
		}
	})
}

func trailerTestKey(t *testing.T, name string) *Key {
	kind := map[string]testkeys.Kind{"rsa": testkeys.RSA2048, "p256": testkeys.P256, "p384": testkeys.P384}[name]
	k := testkeys.Generate(t, kind)
	key, err := NewKey(k.Signer.Public(), keyTime)
	if err != nil {
		t.Fatal(err)
	}
	return key
}
