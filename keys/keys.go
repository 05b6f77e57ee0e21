// Package keys turns a key reference into a crypto.Signer, wherever the key
// lives: a PEM file, or a PKCS#11 token named by an RFC 7512 URI.
//
// Every signature signet makes goes through a crypto.Signer, so artifact code
// never knows where a key is. A reference is given as systemd's tools take it,
// a key and a source:
//
//	keys.Open("file", "/etc/signet/db.key")
//	keys.Open("provider:pkcs11", "pkcs11:token=signing;object=db?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234")
//
// A reference that starts with "pkcs11:" selects PKCS#11 whatever the source.
// PKCS#11 needs cgo; a build without it reports ErrPKCS11Unavailable.
package keys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Signer is a private key that can sign and must be closed after use
// (a PKCS#11 session, say). Closing a file key does nothing.
type Signer interface {
	crypto.Signer
	io.Closer
}

// ErrPKCS11Unavailable is returned for PKCS#11 references by a build
// without cgo.
var ErrPKCS11Unavailable = errors.New("PKCS#11 support is not available in this build (built without cgo)")

// Open returns the signer for a key reference. source is "file" (or empty),
// or "provider:pkcs11"; other sources are refused by name.
//
// The key must meet CheckPolicy: a weaker or unknown key is refused here,
// before anything is signed with it.
func Open(source, ref string) (Signer, error) {
	s, err := open(source, ref)
	if err != nil {
		return nil, err
	}
	if err := CheckPolicy(s.Public()); err != nil {
		s.Close()
		return nil, fmt.Errorf("private key %s: %w", Redact(ref), err)
	}
	return s, nil
}

// ErrKeyPolicy marks a key refused by CheckPolicy.
var ErrKeyPolicy = errors.New("signet signs with RSA 2048 to 4096 bits, ECDSA P-256 or P-384, or Ed25519")

// CheckPolicy accepts the keys signet signs with: RSA of 2048 to 4096 bits,
// ECDSA on P-256 or P-384, and Ed25519.
func CheckPolicy(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n >= 2048 && n <= 4096 {
			return nil
		}
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
	case ed25519.PublicKey:
		return nil
	}
	return fmt.Errorf("%s: %w", Describe(pub), ErrKeyPolicy)
}

// PCRPolicyWarning is a warning for a PCR policy signing key that TPMs may
// refuse to load (many take RSA-2048 only), or "".
func PCRPolicyWarning(pub crypto.PublicKey) string {
	if k, ok := pub.(*rsa.PublicKey); ok && k.N.BitLen() > 2048 {
		return fmt.Sprintf("warning: the PCR policy key is RSA-%d: many TPMs load only RSA-2048 keys for policy checks (TPM2_LoadExternal), so systemd may fail to unlock with it", k.N.BitLen())
	}
	return ""
}

func open(source, ref string) (Signer, error) {
	if ref == "" {
		return nil, errors.New("no private key given")
	}
	switch {
	case strings.HasPrefix(ref, "pkcs11:"):
		if source != "" && source != "file" && source != "provider:pkcs11" && source != "pkcs11" {
			return nil, fmt.Errorf("private key source %q: not supported for a pkcs11: URI", source)
		}
		return openPKCS11(ref)
	case source == "" || source == "file":
		return LoadPrivateKeyFile(ref)
	case source == "provider:pkcs11" || source == "pkcs11":
		return nil, fmt.Errorf("private key %q: provider:pkcs11 needs a pkcs11: URI", Redact(ref))
	default:
		return nil, fmt.Errorf("private key source %q: not supported (use file or provider:pkcs11)", source)
	}
}

type fileSigner struct{ crypto.Signer }

func (fileSigner) Close() error { return nil }

// LoadPrivateKeyFile reads an unencrypted PEM private key: PKCS#1 RSA, SEC 1
// EC, or PKCS#8 (RSA, ECDSA, Ed25519).
func LoadPrivateKeyFile(path string) (Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	s, err := ParsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("private key %s: %w", path, err)
	}
	return fileSigner{s}, nil
}

// ParsePrivateKeyPEM parses the first private key block in data.
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM private key found")
		}
		if _, enc := b.Headers["Proc-Type"]; enc || b.Type == "ENCRYPTED PRIVATE KEY" {
			return nil, errors.New("encrypted private keys are not supported; decrypt it or use a token")
		}
		switch b.Type {
		case "RSA PRIVATE KEY":
			k, err := x509.ParsePKCS1PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("bad PKCS#1 RSA key: %w", err)
			}
			return k, nil
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("bad EC key: %w", err)
			}
			return k, nil
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("bad PKCS#8 key: %w", err)
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("unsupported key type %T", k)
			}
			return s, nil
		}
	}
}

// LoadCertificate reads one X.509 certificate, PEM or DER. With PEM, the
// first CERTIFICATE block is the certificate.
func LoadCertificate(path string) (*x509.Certificate, error) {
	certs, err := LoadCertificates(path)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// LoadCertificates reads a certificate file holding one or more
// certificates (PEM, or a single DER certificate); the first is the signer,
// the rest its chain.
func LoadCertificates(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	certs, err := ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", path, err)
	}
	return certs, nil
}

// ParseCertificates parses PEM CERTIFICATE blocks, or one DER certificate.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("bad certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) > 0 {
		return certs, nil
	}
	c, err := x509.ParseCertificate(data)
	if err != nil {
		return nil, errors.New("no PEM or DER certificate found")
	}
	return []*x509.Certificate{c}, nil
}

// LoadPublicKey reads a PEM public key (SubjectPublicKeyInfo, or PKCS#1 RSA),
// or takes the key of a certificate.
func LoadPublicKey(path string) (crypto.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	pub, err := ParsePublicKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("public key %s: %w", path, err)
	}
	return pub, nil
}

// ParsePublicKeyPEM parses a PEM PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE.
func ParsePublicKeyPEM(data []byte) (crypto.PublicKey, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM public key found")
		}
		switch b.Type {
		case "PUBLIC KEY":
			return x509.ParsePKIXPublicKey(b.Bytes)
		case "RSA PUBLIC KEY":
			return x509.ParsePKCS1PublicKey(b.Bytes)
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, err
			}
			return c.PublicKey, nil
		}
	}
}

// MarshalPublicKeyPEM encodes pub as a PEM SubjectPublicKeyInfo, the form
// `openssl pkey -pubout` and systemd-keyutil public write.
func MarshalPublicKeyPEM(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

type equaler interface{ Equal(crypto.PublicKey) bool }

// CheckPair reports an error unless signer's public key is the
// certificate's.
func CheckPair(signer crypto.Signer, cert *x509.Certificate) error {
	if !SamePublicKey(signer.Public(), cert.PublicKey) {
		return fmt.Errorf("private key does not match certificate %q", cert.Subject.String())
	}
	return nil
}

// SamePublicKey reports whether a and b are the same key.
func SamePublicKey(a, b crypto.PublicKey) bool {
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// Sign hashes msg with h and signs the digest: RSASSA-PKCS1-v1_5 for RSA
// keys, ASN.1 DER ECDSA-Sig-Value for ECDSA. Ed25519 keys sign msg itself.
// This is the one operation every signet signature reduces to: the bytes a
// request calls "to be signed" go in, a raw signature comes out.
func Sign(s crypto.Signer, h crypto.Hash, msg []byte) ([]byte, error) {
	if _, ok := s.Public().(ed25519.PublicKey); ok {
		return s.Sign(nil, msg, crypto.Hash(0))
	}
	if !h.Available() {
		return nil, fmt.Errorf("hash %v not available", h)
	}
	d := h.New()
	d.Write(msg)
	return SignDigest(s, h, d.Sum(nil))
}

// SignDigest signs a digest already computed with h.
func SignDigest(s crypto.Signer, h crypto.Hash, digest []byte) ([]byte, error) {
	if _, ok := s.Public().(ed25519.PublicKey); ok {
		return nil, errors.New("Ed25519 keys sign messages, not digests")
	}
	if len(digest) != h.Size() {
		return nil, fmt.Errorf("digest is %d bytes, %v needs %d", len(digest), h, h.Size())
	}
	// crypto.Signer implementations read rand only where the algorithm needs
	// it (ECDSA); RSA PKCS#1 v1.5 is deterministic.
	return s.Sign(randReader, digest, h)
}

// Verify checks a raw signature over msg hashed with h, as Sign makes it.
func Verify(pub crypto.PublicKey, h crypto.Hash, msg, sig []byte) error {
	if k, ok := pub.(ed25519.PublicKey); ok {
		if !ed25519.Verify(k, msg, sig) {
			return ErrBadSignature
		}
		return nil
	}
	if !h.Available() {
		return fmt.Errorf("hash %v not available", h)
	}
	d := h.New()
	d.Write(msg)
	return VerifyDigest(pub, h, d.Sum(nil), sig)
}

// ErrBadSignature is returned when a signature does not verify.
var ErrBadSignature = errors.New("signature does not verify")

// VerifyDigest checks a raw signature over a digest computed with h.
func VerifyDigest(pub crypto.PublicKey, h crypto.Hash, digest, sig []byte) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if rsa.VerifyPKCS1v15(k, h, digest, sig) != nil {
			return ErrBadSignature
		}
		return nil
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, digest, sig) {
			return ErrBadSignature
		}
		return nil
	default:
		return fmt.Errorf("unsupported public key type %T", pub)
	}
}

// Describe names a key's algorithm and size, e.g. "RSA-2048" or "ECDSA P-256".
func Describe(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	default:
		return fmt.Sprintf("%T", pub)
	}
}
