// Package cms builds and parses PKCS#7 (RFC 2315) SignedData with one or more
// signers, in the exact DER that OpenSSL's PKCS7 code writes, so that what
// signet makes is byte-identical to `openssl smime -sign -binary -noattr`
// and to systemd's pkcs7_new().
//
// Three signet artifacts use it:
//
//   - Authenticode: content type SpcIndirectDataContent, signed attributes.
//   - dm-verity root hash signatures: detached data, no signed attributes.
//   - IPE policies and manifests: attached or detached data, no attributes.
//
// Signing is split the signet way. A caller computes the to-be-signed bytes
// (the DER SET OF signed attributes, or the content itself when there are
// none), has any crypto.Signer sign them (keys.Sign), and assembles the
// container with Marshal. Nothing here touches a private key.
package cms

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"sort"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Object identifiers used in SignedData.
var (
	OIDData          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	OIDSignedData    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	OIDContentType   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 3}
	OIDMessageDigest = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 4}
	OIDSigningTime   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 5}
	OIDSMIMECaps     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 15}

	OIDSHA1   = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	OIDSHA256 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	OIDSHA384 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}
	OIDSHA512 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}

	OIDRSAEncryption   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	OIDSHA256WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	OIDSHA384WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 12}
	OIDSHA512WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 13}
	OIDECPublicKey     = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	OIDECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	OIDECDSAWithSHA384 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
	OIDECDSAWithSHA512 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 4}
)

// Errors a caller can test for.
var (
	ErrNoSigner       = errors.New("pkcs7: no signer certificate matches the signer info")
	ErrBadSignature   = errors.New("pkcs7: signature does not verify")
	ErrDigestMismatch = errors.New("pkcs7: messageDigest attribute does not match the content")
)

// SignedData is a PKCS#7 SignedData.
type SignedData struct {
	// ContentType is the type of the encapsulated content, OIDData for
	// plain data.
	ContentType asn1.ObjectIdentifier
	// Content is the encapsulated content: for OIDData the data octets;
	// for any other type the complete DER of the content value (the element
	// inside [0] EXPLICIT). Nil means detached.
	Content []byte
	// Certificates are embedded in this order (signer first is customary).
	Certificates []*x509.Certificate
	Signers      []SignerInfo
}

// SignerInfo is one signer.
type SignerInfo struct {
	IssuerRaw []byte   // DER of the issuer Name
	Serial    *big.Int // certificate serial number
	// Hash is the digest algorithm.
	Hash crypto.Hash
	// SignedAttributes is the DER SET OF Attribute (first byte 0x31) that the
	// signature covers, or nil. On the wire it is re-tagged [0] IMPLICIT.
	SignedAttributes []byte
	// SignatureAlgorithm is the digestEncryptionAlgorithm OID;
	// SignatureAlgorithmFor picks the usual one for a key.
	SignatureAlgorithm asn1.ObjectIdentifier
	// Signature is the raw signature (PKCS#1 v1.5, or DER ECDSA-Sig-Value).
	Signature []byte
}

// NewSignerInfo fills the identity and algorithms of a signer from its
// certificate; the caller adds SignedAttributes and Signature.
func NewSignerInfo(cert *x509.Certificate, h crypto.Hash) (SignerInfo, error) {
	alg, err := SignatureAlgorithmFor(cert.PublicKey, h)
	if err != nil {
		return SignerInfo{}, err
	}
	return SignerInfo{IssuerRaw: cert.RawIssuer, Serial: cert.SerialNumber, Hash: h, SignatureAlgorithm: alg}, nil
}

// SignatureAlgorithmFor returns the digestEncryptionAlgorithm OpenSSL
// writes for a key: rsaEncryption for RSA, ecdsa-with-SHAxxx for ECDSA.
func SignatureAlgorithmFor(pub crypto.PublicKey, h crypto.Hash) (asn1.ObjectIdentifier, error) {
	switch pub.(type) {
	case *rsa.PublicKey:
		return OIDRSAEncryption, nil
	case *ecdsa.PublicKey:
		switch h {
		case crypto.SHA256:
			return OIDECDSAWithSHA256, nil
		case crypto.SHA384:
			return OIDECDSAWithSHA384, nil
		case crypto.SHA512:
			return OIDECDSAWithSHA512, nil
		}
		return nil, fmt.Errorf("pkcs7: ECDSA with %v is not supported", h)
	case ed25519.PublicKey:
		return nil, errors.New("pkcs7: Ed25519 keys are not supported in PKCS#7 signatures")
	}
	return nil, fmt.Errorf("pkcs7: unsupported public key type %T", pub)
}

// HashOID returns the AlgorithmIdentifier OID of a digest.
func HashOID(h crypto.Hash) (asn1.ObjectIdentifier, error) {
	switch h {
	case crypto.SHA1:
		return OIDSHA1, nil
	case crypto.SHA256:
		return OIDSHA256, nil
	case crypto.SHA384:
		return OIDSHA384, nil
	case crypto.SHA512:
		return OIDSHA512, nil
	}
	return nil, fmt.Errorf("pkcs7: unsupported digest %v", h)
}

func hashFromOID(oid asn1.ObjectIdentifier) (crypto.Hash, bool) {
	switch {
	case oid.Equal(OIDSHA1):
		return crypto.SHA1, true
	case oid.Equal(OIDSHA256):
		return crypto.SHA256, true
	case oid.Equal(OIDSHA384):
		return crypto.SHA384, true
	case oid.Equal(OIDSHA512):
		return crypto.SHA512, true
	}
	return 0, false
}

func addAlgorithm(b *cryptobyte.Builder, oid asn1.ObjectIdentifier, nullParams bool) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		if nullParams {
			b.AddASN1NULL()
		}
	})
}

// Marshal encodes sd as DER ContentInfo{signedData}.
func (sd *SignedData) Marshal() ([]byte, error) {
	if len(sd.Signers) == 0 {
		return nil, errors.New("pkcs7: no signers")
	}
	// digestAlgorithms is a SET OF: distinct and DER-sorted.
	var digestAlgs [][]byte
	seen := map[crypto.Hash]bool{}
	for _, si := range sd.Signers {
		if seen[si.Hash] {
			continue
		}
		seen[si.Hash] = true
		oid, err := HashOID(si.Hash)
		if err != nil {
			return nil, err
		}
		var b cryptobyte.Builder
		addAlgorithm(&b, oid, true)
		digestAlgs = append(digestAlgs, b.BytesOrPanic())
	}
	var certs [][]byte
	for _, c := range sd.Certificates {
		certs = append(certs, c.Raw)
	}
	ct := sd.ContentType
	if ct == nil {
		ct = OIDData
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(OIDSignedData)
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1Int64(1)
				b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) { addSorted(b, digestAlgs) })
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier(ct)
					if sd.Content != nil {
						b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
							if ct.Equal(OIDData) {
								b.AddASN1OctetString(sd.Content)
							} else {
								b.AddBytes(sd.Content)
							}
						})
					}
				})
				if len(certs) > 0 {
					b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { addSorted(b, certs) })
				}
				b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
					var infos [][]byte
					for _, si := range sd.Signers {
						der, err := si.marshal()
						if err != nil {
							b.SetError(err)
							return
						}
						infos = append(infos, der)
					}
					addSorted(b, infos)
				})
			})
		})
	})
	return b.Bytes()
}

// addSorted writes the elements of a DER SET OF in ascending order of their
// encodings (X.690 11.6).
func addSorted(b *cryptobyte.Builder, elems [][]byte) {
	s := append([][]byte(nil), elems...)
	sort.SliceStable(s, func(i, j int) bool { return bytes.Compare(s[i], s[j]) < 0 })
	for _, e := range s {
		b.AddBytes(e)
	}
}

func (si *SignerInfo) marshal() ([]byte, error) {
	hoid, err := HashOID(si.Hash)
	if err != nil {
		return nil, err
	}
	if si.Serial == nil || len(si.IssuerRaw) == 0 {
		return nil, errors.New("pkcs7: signer info without issuer and serial")
	}
	var attrs []byte
	if si.SignedAttributes != nil {
		s := cryptobyte.String(si.SignedAttributes)
		var inner cryptobyte.String
		if !s.ReadASN1(&inner, cbasn1.SET) || !s.Empty() {
			return nil, errors.New("pkcs7: signed attributes are not a DER SET")
		}
		attrs = inner
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Int64(1)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddBytes(si.IssuerRaw)
			b.AddASN1BigInt(si.Serial)
		})
		addAlgorithm(b, hoid, true)
		if si.SignedAttributes != nil {
			b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(attrs) })
		}
		// OpenSSL writes NULL parameters for rsaEncryption and none for ECDSA.
		addAlgorithm(b, si.SignatureAlgorithm, si.SignatureAlgorithm.Equal(OIDRSAEncryption))
		b.AddASN1OctetString(si.Signature)
	})
	return b.Bytes()
}

// Attribute is one signed attribute: a type and the DER of its values
// (the elements of the SET OF AttributeValue, concatenated).
type Attribute struct {
	Type   asn1.ObjectIdentifier
	Values []byte
}

// MarshalAttributes encodes attributes as a DER SET OF Attribute, sorted as
// DER requires. The result is what a signer signs.
func MarshalAttributes(attrs []Attribute) ([]byte, error) {
	var enc [][]byte
	for _, a := range attrs {
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(a.Type)
			b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) { b.AddBytes(a.Values) })
		})
		der, err := b.Bytes()
		if err != nil {
			return nil, err
		}
		enc = append(enc, der)
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) { addSorted(b, enc) })
	return b.Bytes()
}

// ParseAttributes decodes a DER SET OF Attribute.
func ParseAttributes(der []byte) ([]Attribute, error) {
	s := cryptobyte.String(der)
	var set cryptobyte.String
	if !s.ReadASN1(&set, cbasn1.SET) || !s.Empty() {
		return nil, errors.New("pkcs7: attributes are not a DER SET")
	}
	var out []Attribute
	for !set.Empty() {
		var attr, vals cryptobyte.String
		var oid asn1.ObjectIdentifier
		if !set.ReadASN1(&attr, cbasn1.SEQUENCE) || !attr.ReadASN1ObjectIdentifier(&oid) ||
			!attr.ReadASN1(&vals, cbasn1.SET) || !attr.Empty() {
			return nil, errors.New("pkcs7: malformed attribute")
		}
		out = append(out, Attribute{Type: oid, Values: vals})
	}
	return out, nil
}

// MessageDigest returns the value of the messageDigest attribute in a DER
// SET OF Attribute.
func MessageDigest(signedAttrs []byte) ([]byte, error) {
	attrs, err := ParseAttributes(signedAttrs)
	if err != nil {
		return nil, err
	}
	for _, a := range attrs {
		if a.Type.Equal(OIDMessageDigest) {
			v := cryptobyte.String(a.Values)
			var d cryptobyte.String
			if !v.ReadASN1(&d, cbasn1.OCTET_STRING) || !v.Empty() {
				return nil, errors.New("pkcs7: malformed messageDigest attribute")
			}
			return d, nil
		}
	}
	return nil, errors.New("pkcs7: no messageDigest attribute")
}
