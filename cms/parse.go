package cms

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"signet.dev/keys"
)

// Parse decodes a DER ContentInfo holding SignedData. It is strict: BER
// (indefinite lengths), trailing data and unknown versions are errors.
func Parse(der []byte) (*SignedData, error) {
	s := cryptobyte.String(der)
	var ci, sdOuter, sd cryptobyte.String
	var oid asn1.ObjectIdentifier
	if !s.ReadASN1(&ci, cbasn1.SEQUENCE) || !s.Empty() {
		return nil, errors.New("pkcs7: not a DER ContentInfo")
	}
	if !ci.ReadASN1ObjectIdentifier(&oid) || !oid.Equal(OIDSignedData) {
		return nil, errors.New("pkcs7: not SignedData")
	}
	if !ci.ReadASN1(&sdOuter, cbasn1.Tag(0).Constructed().ContextSpecific()) || !ci.Empty() ||
		!sdOuter.ReadASN1(&sd, cbasn1.SEQUENCE) || !sdOuter.Empty() {
		return nil, errors.New("pkcs7: malformed SignedData")
	}
	var version int64
	var digestAlgs, encap cryptobyte.String
	if !sd.ReadASN1Integer(&version) || version < 1 || version > 5 ||
		!sd.ReadASN1(&digestAlgs, cbasn1.SET) || !sd.ReadASN1(&encap, cbasn1.SEQUENCE) {
		return nil, errors.New("pkcs7: malformed SignedData header")
	}
	out := &SignedData{}
	if !encap.ReadASN1ObjectIdentifier(&out.ContentType) {
		return nil, errors.New("pkcs7: malformed encapsulated content")
	}
	if !encap.Empty() {
		var content cryptobyte.String
		if !encap.ReadASN1(&content, cbasn1.Tag(0).Constructed().ContextSpecific()) || !encap.Empty() {
			return nil, errors.New("pkcs7: malformed encapsulated content")
		}
		if out.ContentType.Equal(OIDData) {
			var octets cryptobyte.String
			if !content.ReadASN1(&octets, cbasn1.OCTET_STRING) || !content.Empty() {
				return nil, errors.New("pkcs7: data content is not an OCTET STRING")
			}
			out.Content = append([]byte{}, octets...)
		} else {
			out.Content = append([]byte{}, content...)
		}
	}
	var certs cryptobyte.String
	var hasCerts bool
	if !sd.ReadOptionalASN1(&certs, &hasCerts, cbasn1.Tag(0).Constructed().ContextSpecific()) {
		return nil, errors.New("pkcs7: malformed certificates")
	}
	for hasCerts && !certs.Empty() {
		var raw cryptobyte.String
		if !certs.ReadASN1Element(&raw, cbasn1.SEQUENCE) {
			return nil, errors.New("pkcs7: malformed certificate")
		}
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return nil, fmt.Errorf("pkcs7: embedded certificate: %w", err)
		}
		out.Certificates = append(out.Certificates, c)
	}
	var skip cryptobyte.String
	var hasCRLs bool
	if !sd.ReadOptionalASN1(&skip, &hasCRLs, cbasn1.Tag(1).Constructed().ContextSpecific()) {
		return nil, errors.New("pkcs7: malformed CRLs")
	}
	var infos cryptobyte.String
	if !sd.ReadASN1(&infos, cbasn1.SET) || !sd.Empty() {
		return nil, errors.New("pkcs7: malformed signer infos")
	}
	for !infos.Empty() {
		var raw cryptobyte.String
		if !infos.ReadASN1(&raw, cbasn1.SEQUENCE) {
			return nil, errors.New("pkcs7: malformed signer info")
		}
		si, err := parseSignerInfo(raw)
		if err != nil {
			return nil, err
		}
		out.Signers = append(out.Signers, si)
	}
	if len(out.Signers) == 0 {
		return nil, errors.New("pkcs7: no signer infos")
	}
	return out, nil
}

func readAlgorithm(s *cryptobyte.String) (asn1.ObjectIdentifier, bool) {
	var alg cryptobyte.String
	var oid asn1.ObjectIdentifier
	if !s.ReadASN1(&alg, cbasn1.SEQUENCE) || !alg.ReadASN1ObjectIdentifier(&oid) {
		return nil, false
	}
	// Parameters, if any, are NULL or ignored.
	return oid, true
}

func parseSignerInfo(s cryptobyte.String) (SignerInfo, error) {
	var si SignerInfo
	var version int64
	var ias cryptobyte.String
	bad := errors.New("pkcs7: malformed signer info")
	if !s.ReadASN1Integer(&version) || version != 1 || !s.ReadASN1(&ias, cbasn1.SEQUENCE) {
		return si, bad
	}
	var issuer cryptobyte.String
	si.Serial = new(big.Int)
	if !ias.ReadASN1Element(&issuer, cbasn1.SEQUENCE) || !ias.ReadASN1Integer(si.Serial) || !ias.Empty() {
		return si, bad
	}
	si.IssuerRaw = append([]byte{}, issuer...)
	hoid, ok := readAlgorithm(&s)
	if !ok {
		return si, bad
	}
	h, ok := hashFromOID(hoid)
	if !ok {
		return si, fmt.Errorf("pkcs7: unsupported digest algorithm %v", hoid)
	}
	si.Hash = h
	var attrs cryptobyte.String
	var hasAttrs bool
	if !s.ReadOptionalASN1(&attrs, &hasAttrs, cbasn1.Tag(0).Constructed().ContextSpecific()) {
		return si, bad
	}
	if hasAttrs {
		// Re-tag [0] IMPLICIT as the universal SET the signature covers.
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) { b.AddBytes(attrs) })
		si.SignedAttributes = b.BytesOrPanic()
	}
	if si.SignatureAlgorithm, ok = readAlgorithm(&s); !ok {
		return si, bad
	}
	var sig cryptobyte.String
	if !s.ReadASN1(&sig, cbasn1.OCTET_STRING) {
		return si, bad
	}
	si.Signature = append([]byte{}, sig...)
	// Unsigned attributes (timestamps, nested signatures) may follow.
	var unsigned cryptobyte.String
	var hasUnsigned bool
	if !s.ReadOptionalASN1(&unsigned, &hasUnsigned, cbasn1.Tag(1).Constructed().ContextSpecific()) || !s.Empty() {
		return si, bad
	}
	return si, nil
}

// Certificate returns the embedded certificate that issued si, or nil.
func (sd *SignedData) Certificate(si *SignerInfo) *x509.Certificate {
	for _, c := range sd.Certificates {
		if bytes.Equal(c.RawIssuer, si.IssuerRaw) && c.SerialNumber.Cmp(si.Serial) == 0 {
			return c
		}
	}
	return nil
}

// SignedBytes returns what si's signature covers: its signed attributes if
// it has any, else the content.
func (si *SignerInfo) SignedBytes(content []byte) []byte {
	if si.SignedAttributes != nil {
		return si.SignedAttributes
	}
	return content
}

// VerifyWith checks si against the public key of cert over content (the
// data for detached or OIDData signatures; for other content types the
// bytes the messageDigest attribute covers). It checks the messageDigest
// attribute when signed attributes are present, then the signature.
// It does not check certificate chains or validity: callers decide which
// certificate they trust.
func (si *SignerInfo) VerifyWith(cert *x509.Certificate, content []byte) error {
	if si.SignedAttributes != nil {
		md, err := MessageDigest(si.SignedAttributes)
		if err != nil {
			return err
		}
		d := si.Hash.New()
		d.Write(content)
		if !bytes.Equal(d.Sum(nil), md) {
			return ErrDigestMismatch
		}
	}
	if err := keys.Verify(cert.PublicKey, si.Hash, si.SignedBytes(content), si.Signature); err != nil {
		return ErrBadSignature
	}
	return nil
}

// Verify checks every signer of a SignedData with data content against the
// content (sd.Content when attached, or the detached data given) and
// returns the signer certificates. If trusted is non-empty, each signer's
// certificate must be one of them (by DER), or be issued by one of them.
func (sd *SignedData) Verify(detached []byte, trusted []*x509.Certificate) ([]*x509.Certificate, error) {
	content := sd.Content
	if content == nil {
		content = detached
	}
	if content == nil {
		return nil, errors.New("pkcs7: detached signature and no content given")
	}
	var signers []*x509.Certificate
	for i := range sd.Signers {
		si := &sd.Signers[i]
		cert := sd.Certificate(si)
		if cert == nil {
			for _, t := range trusted {
				if bytes.Equal(t.RawIssuer, si.IssuerRaw) && t.SerialNumber.Cmp(si.Serial) == 0 {
					cert = t
				}
			}
		}
		if cert == nil {
			return nil, ErrNoSigner
		}
		if err := si.VerifyWith(cert, content); err != nil {
			return nil, err
		}
		if len(trusted) > 0 && !isTrusted(cert, trusted) {
			return nil, fmt.Errorf("pkcs7: signer %q is not a trusted certificate", cert.Subject.String())
		}
		signers = append(signers, cert)
	}
	return signers, nil
}

func isTrusted(cert *x509.Certificate, trusted []*x509.Certificate) bool {
	for _, t := range trusted {
		if bytes.Equal(t.Raw, cert.Raw) {
			return true
		}
		if bytes.Equal(cert.RawIssuer, t.RawSubject) && cert.CheckSignatureFrom(t) == nil {
			return true
		}
	}
	return false
}

// SignNoAttr signs data without signed attributes, as the kernel wants for
// dm-verity root hashes and IPE policies: the signature is over the hash of
// data itself. With detached, data is left out of the container.
func SignNoAttr(signer crypto.Signer, cert *x509.Certificate, data []byte, h crypto.Hash, detached bool) ([]byte, error) {
	sig, err := keys.Sign(signer, h, data)
	if err != nil {
		return nil, err
	}
	return AssembleNoAttr(cert, data, h, sig, detached)
}

// AssembleNoAttr builds the same container from a raw signature made
// elsewhere over data (e.g. `openssl dgst -sha256 -sign`). The signature
// must verify against cert, or nothing is built.
func AssembleNoAttr(cert *x509.Certificate, data []byte, h crypto.Hash, sig []byte, detached bool) ([]byte, error) {
	if err := keys.Verify(cert.PublicKey, h, data, sig); err != nil {
		return nil, fmt.Errorf("signature does not verify against certificate %q over the data", cert.Subject.String())
	}
	si, err := NewSignerInfo(cert, h)
	if err != nil {
		return nil, err
	}
	si.Signature = sig
	sd := &SignedData{ContentType: OIDData, Certificates: []*x509.Certificate{cert}, Signers: []SignerInfo{si}}
	if !detached {
		sd.Content = data
		if sd.Content == nil {
			sd.Content = []byte{}
		}
	}
	return sd.Marshal()
}
