package openpgp

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"encoding/binary"
	"math/big"
	"strings"
	"testing"

	"signet.dev/internal/testkeys"
)

// makeV3 writes a version 3 binary-document signature packet (old format,
// as OBS writes it) by key over data: the format signet reads, written here
// by hand because no installed tool makes v3 signatures any more; gpg,
// which still verifies them, judges it.
func makeV3(t *testing.T, priv *rsa.PrivateKey, keyID uint64, h crypto.Hash, hashID byte, data []byte, created uint32) []byte {
	t.Helper()
	d := h.New()
	d.Write(data)
	d.Write([]byte{0})
	binary.Write(d, binary.BigEndian, created)
	digest := d.Sum(nil)
	sig, err := rsa.SignPKCS1v15(rand.Reader, priv, h, digest)
	if err != nil {
		t.Fatal(err)
	}
	m := new(big.Int).SetBytes(sig)
	body := []byte{3, 5, 0}
	body = binary.BigEndian.AppendUint32(body, created)
	body = binary.BigEndian.AppendUint64(body, keyID)
	body = append(body, 1, hashID, digest[0], digest[1])
	body = binary.BigEndian.AppendUint16(body, uint16(m.BitLen()))
	body = append(body, m.Bytes()...)
	return append([]byte{0x89, byte(len(body) >> 8), byte(len(body))}, body...)
}

func TestVerifyV3(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	key, err := NewKey(k.Cert.PublicKey, keyTime)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ExportPublicKey(k.Signer, key, "signet v3 test")
	if err != nil {
		t.Fatal(err)
	}
	home, ring := gpgHome(t, pub, pub)
	priv := k.Signer.(*rsa.PrivateKey)
	created := uint32(sigTime.Unix())

	sig := makeV3(t, priv, key.KeyID(), crypto.SHA256, 8, data, created)
	if good, out := gpgVerify(t, home, ring, sig, data); !good {
		t.Fatalf("gpg refuses the v3 fixture:\n%s", out)
	}
	v, err := VerifyDetached(pub, data, sig)
	if err != nil {
		t.Fatalf("v3 signature: %v", err)
	}
	if v.Fingerprint != key.FingerprintHex() || !v.Created.Equal(sigTime.UTC()) {
		t.Errorf("verified %+v, want %s at %v", v, key.FingerprintHex(), sigTime)
	}
	// Armored, as OBS serves it.
	if _, err := VerifyDetached(pub, data, Armor(sig, ArmorSignature)); err != nil {
		t.Errorf("armored v3 signature: %v", err)
	}

	// Other data, another signer, SHA-1 and truncation are refused; gpg
	// agrees where it judges.
	other := append([]byte("x"), data...)
	if good, _ := gpgVerify(t, home, ring, sig, other); good {
		t.Fatal("gpg accepts the v3 fixture over other data")
	}
	if _, err := VerifyDetached(pub, other, sig); err == nil {
		t.Error("v3 signature over other data accepted")
	}
	if _, err := VerifyDetached(pub, data, makeV3(t, priv, key.KeyID()^1, crypto.SHA256, 8, data, created)); err != ErrUnknownSigner {
		t.Errorf("unknown key ID: %v", err)
	}
	otherKey := testkeys.Generate(t, testkeys.RSA3072)
	if _, err := VerifyDetached(pub, data, makeV3(t, otherKey.Signer.(*rsa.PrivateKey), key.KeyID(), crypto.SHA256, 8, data, created)); err == nil {
		t.Error("v3 signature by another key under this key's ID accepted")
	}
	if _, err := VerifyDetached(pub, data, makeV3(t, priv, key.KeyID(), crypto.SHA1, 2, data, created)); err == nil || !strings.Contains(err.Error(), "SHA-1") {
		t.Errorf("SHA-1 v3 signature: %v", err)
	}
	for i := 1; i < len(sig); i += 7 {
		if _, err := VerifyDetached(pub, data, sig[:i]); err == nil {
			t.Fatalf("truncated v3 signature (%d bytes) accepted", i)
		}
	}
}

func FuzzParseV3(f *testing.F) {
	f.Add([]byte{0x89, 0, 21, 3, 5, 0, 1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7, 8, 1, 8, 0, 0, 0, 8, 0xff})
	f.Add([]byte{0xc2, 21, 3, 5, 0, 1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7, 8, 1, 8, 0, 0, 0, 8, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		isV3(b)
		parseV3(b)
	})
}

func TestKeyCreationTime(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	key, _ := NewKey(k.Cert.PublicKey, keyTime)
	pub, err := ExportPublicKey(k.Signer, key, "signet created test")
	if err != nil {
		t.Fatal(err)
	}
	for _, ring := range [][]byte{pub, Armor(pub, ArmorPublicKey)} {
		got, err := KeyCreationTime(ring, k.Cert.PublicKey)
		if err != nil || !got.Equal(keyTime) {
			t.Errorf("KeyCreationTime = %v, %v; want %v", got, err, keyTime)
		}
	}
	other := testkeys.Generate(t, testkeys.RSA3072)
	if _, err := KeyCreationTime(pub, other.Cert.PublicKey); err == nil {
		t.Error("another key's creation time found")
	}
	if _, err := KeyCreationTime([]byte("junk"), k.Cert.PublicKey); err == nil {
		t.Error("junk keyring accepted")
	}
}
