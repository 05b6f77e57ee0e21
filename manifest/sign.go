package manifest

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"signet.dev/cms"
	"signet.dev/keys"
	"signet.dev/openpgp"
)

// Format is a kind of manifest signature.
type Format string

const (
	OpenPGP Format = "openpgp" // SHA256SUMS.gpg (binary) or .asc (armored)
	PKCS7   Format = "pkcs7"   // SHA256SUMS.p7s, detached DER SignedData
)

// Prepared is a manifest signature waiting for its raw signature.
type Prepared struct {
	Format Format
	// TBS is what keys.Sign(signer, Hash, TBS) signs; see
	// openpgp.Prepared.TBS for OpenPGP, the manifest itself for PKCS#7.
	TBS  []byte
	Hash crypto.Hash
	// Entries is what the signature vouches for: the parsed manifest.
	Entries []Entry

	pgp      *openpgp.Prepared
	cert     *x509.Certificate
	manifest []byte
}

// PrepareOpenPGP prepares a detached OpenPGP signature over manifest by key,
// dated created. The manifest must parse.
func PrepareOpenPGP(manifest []byte, key *openpgp.Key, created time.Time) (*Prepared, error) {
	entries, err := Parse(manifest)
	if err != nil {
		return nil, err
	}
	p, err := openpgp.PrepareDetached(key, manifest, created)
	if err != nil {
		return nil, err
	}
	return &Prepared{Format: OpenPGP, TBS: p.TBS, Hash: p.Hash, Entries: entries, pgp: p}, nil
}

// PreparePKCS7 prepares a detached PKCS#7 signature over manifest by the
// key of cert (RSA or ECDSA), SHA-256. The manifest must parse.
func PreparePKCS7(manifest []byte, cert *x509.Certificate) (*Prepared, error) {
	entries, err := Parse(manifest)
	if err != nil {
		return nil, err
	}
	if _, err := cms.SignatureAlgorithmFor(cert.PublicKey, crypto.SHA256); err != nil {
		return nil, err
	}
	return &Prepared{Format: PKCS7, TBS: manifest, Hash: crypto.SHA256, Entries: entries, cert: cert, manifest: manifest}, nil
}

// Join verifies sig, a raw signature of p.TBS, and returns the encoded
// detached signature (binary OpenPGP, or DER PKCS#7).
func (p *Prepared) Join(sig []byte) ([]byte, error) {
	switch p.Format {
	case OpenPGP:
		return p.pgp.Join(sig)
	case PKCS7:
		return cms.AssembleNoAttr(p.cert, p.manifest, p.Hash, sig, true)
	}
	return nil, fmt.Errorf("manifest: unknown signature format %q", p.Format)
}

// Sign signs p with signer in this process and joins the result.
func (p *Prepared) Sign(signer crypto.Signer) ([]byte, error) {
	var pub crypto.PublicKey
	switch p.Format {
	case OpenPGP:
		pub = p.pgp.Key.Public
	case PKCS7:
		pub = p.cert.PublicKey
	}
	if !keys.SamePublicKey(signer.Public(), pub) {
		return nil, errors.New("manifest: the private key does not match the signing key's public key")
	}
	raw, err := keys.Sign(signer, p.Hash, p.TBS)
	if err != nil {
		return nil, fmt.Errorf("manifest: signing: %w", err)
	}
	return p.Join(raw)
}

// VerifyOpenPGP checks a detached OpenPGP signature (binary or armored)
// over manifest against keyring (binary or armored public keys) and
// returns the signer and the manifest's entries.
func VerifyOpenPGP(manifest, sig, keyring []byte) (*openpgp.Verified, []Entry, error) {
	v, err := openpgp.VerifyDetached(keyring, manifest, sig)
	if err != nil {
		return nil, nil, err
	}
	entries, err := Parse(manifest)
	if err != nil {
		return nil, nil, err
	}
	return v, entries, nil
}

// VerifyPKCS7 checks a detached DER PKCS#7 signature over manifest made by
// cert (or a certificate cert issued) and returns the manifest's entries.
func VerifyPKCS7(manifest, p7s []byte, cert *x509.Certificate) ([]Entry, error) {
	sd, err := cms.Parse(p7s)
	if err != nil {
		return nil, err
	}
	if sd.Content != nil {
		return nil, errors.New("manifest: PKCS#7 signature is not detached")
	}
	if _, err := sd.Verify(manifest, []*x509.Certificate{cert}); err != nil {
		return nil, err
	}
	return Parse(manifest)
}
