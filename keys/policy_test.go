package keys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"math/big"
	"testing"
)

func TestCheckPolicy(t *testing.T) {
	rsaKey := func(bits int) crypto.PublicKey {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		return &k.PublicKey
	}
	ecKey := func(c elliptic.Curve) crypto.PublicKey {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return &k.PublicKey
	}
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	rsa2048 := rsaKey(2048)
	for name, c := range map[string]struct {
		pub crypto.PublicKey
		ok  bool
	}{
		"RSA-1024":    {rsaKey(1024), false},
		"RSA-2048":    {rsa2048, true},
		"ECDSA P-224": {ecKey(elliptic.P224()), false},
		"ECDSA P-256": {ecKey(elliptic.P256()), true},
		"ECDSA P-384": {ecKey(elliptic.P384()), true},
		"ECDSA P-521": {ecKey(elliptic.P521()), false},
		"Ed25519":     {edPub, true},
	} {
		err := CheckPolicy(c.pub)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrKeyPolicy)) {
			t.Errorf("%s: %v", name, err)
		}
		if err != nil && Describe(c.pub) != name {
			t.Errorf("%s described as %s", name, Describe(c.pub))
		}
	}
	// An RSA modulus above 4096 bits, without generating one.
	large := *rsa2048.(*rsa.PublicKey)
	large.N = new(big.Int).Lsh(large.N, 2100)
	if CheckPolicy(&large) == nil {
		t.Error("RSA-4148 accepted")
	}
	if PCRPolicyWarning(rsa2048) != "" || PCRPolicyWarning(&large) == "" {
		t.Error("PCR policy warning wrong")
	}
}
