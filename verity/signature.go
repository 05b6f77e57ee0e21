package verity

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"signet.dev/cms"
	"signet.dev/keys"
)

// ErrSignature reports a verity signature that does not belong to the root
// hash or certificate it is joined with.
var ErrSignature = errors.New("verity: bad signature")

// SignaturePayload is the content of a verity-sig partition (Discoverable
// Partitions Specification, "Verity"): the root hash, the SHA-256
// fingerprint of the signer's DER certificate, and a detached PKCS#7
// signature without signed attributes over the lowercase hex root hash.
type SignaturePayload struct {
	RootHash               []byte
	CertificateFingerprint []byte
	Signature              []byte // DER PKCS#7
}

type payloadJSON struct {
	RootHash               string `json:"rootHash"`
	CertificateFingerprint string `json:"certificateFingerprint,omitempty"`
	Signature              string `json:"signature"`
}

// Marshal returns the compact JSON systemd-repart writes, fields in its
// order, without padding or trailing newline.
func (s *SignaturePayload) Marshal() []byte {
	b, _ := json.Marshal(payloadJSON{
		RootHash:               hex.EncodeToString(s.RootHash),
		CertificateFingerprint: hex.EncodeToString(s.CertificateFingerprint),
		Signature:              base64.StdEncoding.EncodeToString(s.Signature),
	})
	return b
}

// ParseSignaturePayload parses a verity-sig partition's content; trailing
// NUL padding is ignored.
func ParseSignaturePayload(b []byte) (*SignaturePayload, error) {
	b = bytes.TrimRight(b, "\x00")
	var j payloadJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return nil, fmt.Errorf("%w: verity signature JSON: %v", ErrSignature, err)
	}
	s := new(SignaturePayload)
	var err error
	if s.RootHash, err = hex.DecodeString(j.RootHash); err != nil || len(s.RootHash) < 16 {
		return nil, fmt.Errorf("%w: rootHash %q is not a hex root hash", ErrSignature, j.RootHash)
	}
	if j.CertificateFingerprint != "" {
		if s.CertificateFingerprint, err = hex.DecodeString(j.CertificateFingerprint); err != nil || len(s.CertificateFingerprint) != sha256.Size {
			return nil, fmt.Errorf("%w: certificateFingerprint %q is not a SHA-256 hex digest", ErrSignature, j.CertificateFingerprint)
		}
	}
	if s.Signature, err = base64.StdEncoding.DecodeString(j.Signature); err != nil || len(s.Signature) == 0 {
		return nil, fmt.Errorf("%w: signature is not base64", ErrSignature)
	}
	return s, nil
}

// Verify checks the PKCS#7 signature over the hex root hash against the
// trusted certificates (any signer certificate issued by or equal to one).
func (s *SignaturePayload) Verify(trusted []*x509.Certificate) error {
	sd, err := cms.Parse(s.Signature)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrSignature, err)
	}
	tbs, _ := PrepareSignature(s.RootHash)
	if _, err := sd.Verify(tbs, trusted); err != nil {
		return fmt.Errorf("%w: %v", ErrSignature, err)
	}
	return nil
}

// PrepareSignature returns what is signed for a root hash: its lowercase
// hex, with no newline, hashed with SHA-256 (as systemd-repart and
// `openssl smime -sign -binary -noattr` do).
func PrepareSignature(rootHash []byte) (tbs []byte, h crypto.Hash) {
	return []byte(hex.EncodeToString(rootHash)), crypto.SHA256
}

// JoinSignature builds the payload from a raw signature over the prepared
// TBS (keys.Sign output), after checking it against cert.
func JoinSignature(cert *x509.Certificate, rootHash, sig []byte) (*SignaturePayload, error) {
	tbs, h := PrepareSignature(rootHash)
	if err := keys.Verify(cert.PublicKey, h, tbs, sig); err != nil {
		return nil, fmt.Errorf("%w: the signature over root hash %x does not verify against the certificate %q: %v",
			ErrSignature, rootHash, cert.Subject.String(), err)
	}
	p7, err := cms.AssembleNoAttr(cert, tbs, h, sig, true)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	return newPayload(cert, rootHash, p7), nil
}

// JoinPKCS7 builds the payload from a detached PKCS#7 made elsewhere
// (systemd-keyutil pkcs7, openssl smime -sign), after checking that it
// signs this root hash and that cert is its signer.
func JoinPKCS7(cert *x509.Certificate, rootHash, p7 []byte) (*SignaturePayload, error) {
	s := newPayload(cert, rootHash, p7)
	sd, err := cms.Parse(p7)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	tbs, _ := PrepareSignature(rootHash)
	signers, err := sd.Verify(tbs, []*x509.Certificate{cert})
	if err != nil {
		return nil, fmt.Errorf("%w: not a signature of root hash %x by %q: %v", ErrSignature, rootHash, cert.Subject.String(), err)
	}
	// The payload names cert by fingerprint, so cert must be the signer.
	for _, c := range signers {
		if !bytes.Equal(c.Raw, cert.Raw) {
			return nil, fmt.Errorf("%w: signed by %q, not by the given certificate", ErrSignature, c.Subject.String())
		}
	}
	return s, nil
}

// Sign is prepare, sign and join in one: the online path.
func Sign(signer crypto.Signer, cert *x509.Certificate, rootHash []byte) (*SignaturePayload, error) {
	tbs, h := PrepareSignature(rootHash)
	sig, err := keys.Sign(signer, h, tbs)
	if err != nil {
		return nil, err
	}
	return JoinSignature(cert, rootHash, sig)
}

func newPayload(cert *x509.Certificate, rootHash, p7 []byte) *SignaturePayload {
	fp := sha256.Sum256(cert.Raw)
	return &SignaturePayload{RootHash: bytes.Clone(rootHash), CertificateFingerprint: fp[:], Signature: p7}
}
