package ipe

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"

	"signet.dev/cms"
	"signet.dev/keys"
)

// Prepared is a policy ready to be signed.
type Prepared struct {
	// TBS is the policy's canonical text (Policy.String: no comments,
	// blank lines or extra spaces): what keys.Sign(signer, Hash, TBS)
	// signs and the kernel loads. Only the canonical text is signed, so
	// that no byte of a signed policy is one the kernel's parser skips.
	TBS  []byte
	Hash crypto.Hash
	// Policy is the parsed policy, for a signer to check what it signs
	// (name and version above all).
	Policy *Policy
	cert   *x509.Certificate
}

// Prepare parses text (refusing a policy the kernel would refuse) and
// prepares the signature of its canonical text by the key of cert,
// SHA-256.
func Prepare(text []byte, cert *x509.Certificate) (*Prepared, error) {
	pol, err := Parse(text)
	if err != nil {
		return nil, err
	}
	if _, err := cms.SignatureAlgorithmFor(cert.PublicKey, crypto.SHA256); err != nil {
		return nil, err
	}
	return &Prepared{TBS: []byte(pol.String()), Hash: crypto.SHA256, Policy: pol, cert: cert}, nil
}

// Join verifies sig, a raw signature of p.TBS by the certificate's key,
// and returns the signed policy: attached DER PKCS#7 without attributes.
func (p *Prepared) Join(sig []byte) ([]byte, error) {
	return cms.AssembleNoAttr(p.cert, p.TBS, p.Hash, sig, false)
}

// Sign signs p with signer in this process and joins the result.
func (p *Prepared) Sign(signer crypto.Signer) ([]byte, error) {
	if err := keys.CheckPair(signer, p.cert); err != nil {
		return nil, err
	}
	raw, err := keys.Sign(signer, p.Hash, p.TBS)
	if err != nil {
		return nil, fmt.Errorf("ipe: signing: %w", err)
	}
	return p.Join(raw)
}

// Verify checks a signed policy (attached DER PKCS#7) against cert (the
// signer, or a certificate that issued it) and returns the policy text
// and the parsed policy.
func Verify(p7b []byte, cert *x509.Certificate) ([]byte, *Policy, error) {
	sd, err := cms.Parse(p7b)
	if err != nil {
		return nil, nil, err
	}
	if sd.Content == nil {
		return nil, nil, errors.New("ipe: the PKCS#7 signature is detached; a signed policy carries the policy inside")
	}
	if !sd.ContentType.Equal(cms.OIDData) {
		return nil, nil, errors.New("ipe: the PKCS#7 content is not data")
	}
	if _, err := sd.Verify(nil, []*x509.Certificate{cert}); err != nil {
		return nil, nil, err
	}
	pol, err := Parse(sd.Content)
	if err != nil {
		return nil, nil, fmt.Errorf("ipe: signed policy: %w", err)
	}
	return sd.Content, pol, nil
}
