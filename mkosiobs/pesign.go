package mkosiobs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"signet.dev/authenticode"
	"signet.dev/cms"
	"signet.dev/request"
	"signet.dev/request/check"
)

// mkosi-obs stages Authenticode members with `pesign -E`, whose signed
// attributes commit to pesign's own SpcIndirectDataContent, not the one
// signet writes (SpcPeImageData with an empty flags BIT STRING and the
// obsolete link "<<<Obsolete>>>"). pesign's encodings seen in use:
//
//   - pesign 116 and later (Debian sid's 117): data type SpcPeImageData
//     (1.3.6.1.4.1.311.2.1.15), flags as a zero-length BIT STRING (03 00,
//     without the unused-bits octet), an empty obsolete link
//     (file [0] { [2] { [0] "" } });
//   - pesign 0.112 (Debian 12): data type 1.3.6.1.4.1.311.2.1.21
//     (SPC_INDIVIDUAL_SP_KEY_PURPOSE), flags 03 01 00, an empty link.
//
// sbverify and firmware accept all of them (they read only the digest); the
// signature must be over the bytes pesign will join (`pesign -I attrs -R
// sig`), so such members are rebuilt with pesign's encoding.

// PesignVariant is one of the SpcIndirectDataContent encodings pesign
// writes.
type PesignVariant int

// The pesign encodings.
const (
	Pesign116 PesignVariant = iota // pesign 116 and later
	Pesign112                      // pesign 0.112
)

// PesignVariants lists every pesign encoding, newest first.
var PesignVariants = []PesignVariant{Pesign116, Pesign112}

// PesignSpcIndirectData returns the DER SpcIndirectDataContent pesign
// writes for a SHA-256 PE image digest.
func PesignSpcIndirectData(v PesignVariant, digest []byte) ([]byte, error) {
	if len(digest) != sha256.Size {
		return nil, fmt.Errorf("%d-byte digest: pesign stages SHA-256 Authenticode only", len(digest))
	}
	oid, flags := oidSpcPEImageData, []byte{0x03, 0x00}
	if v == Pesign112 {
		oid, flags = oidPesign112DataType, []byte{0x03, 0x01, 0x00}
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oid)
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddBytes(flags)
				b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.Tag(2).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(b *cryptobyte.Builder) {})
					})
				})
			})
		})
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oidSHA256)
				b.AddASN1NULL()
			})
			b.AddASN1OctetString(digest)
		})
	})
	return b.Bytes()
}

var (
	oidSHA256            = []int{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidSpcPEImageData    = []int{1, 3, 6, 1, 4, 1, 311, 2, 1, 15}
	oidPesign112DataType = []int{1, 3, 6, 1, 4, 1, 311, 2, 1, 21}
)

// pesignAttributes rebuilds the signed attributes `pesign -E` writes for
// spc at the given signing time: SMIMECapabilities (empty), contentType
// SpcIndirectDataContent, signingTime and messageDigest over the content
// octets of spc, DER-sorted.
func pesignAttributes(spc []byte, signingTime []byte) ([]byte, error) {
	s := cryptobyte.String(spc)
	var content cryptobyte.String
	if !s.ReadASN1(&content, cbasn1.SEQUENCE) || !s.Empty() {
		return nil, fmt.Errorf("SpcIndirectDataContent is not a DER SEQUENCE")
	}
	md := sha256.Sum256(content)
	var ct, mdv cryptobyte.Builder
	ct.AddASN1ObjectIdentifier(authenticode.OIDSpcIndirectData)
	mdv.AddASN1OctetString(md[:])
	return cms.MarshalAttributes([]cms.Attribute{
		{Type: cms.OIDSMIMECaps, Values: []byte{0x30, 0x00}},
		{Type: cms.OIDContentType, Values: ct.BytesOrPanic()},
		{Type: cms.OIDSigningTime, Values: signingTime},
		{Type: cms.OIDMessageDigest, Values: mdv.BytesOrPanic()},
	})
}

// signingTimeValue returns the DER value of the signingTime attribute of
// a signed attribute set.
func signingTimeValue(der []byte) ([]byte, error) {
	attrs, err := cms.ParseAttributes(der)
	if err != nil {
		return nil, err
	}
	for _, a := range attrs {
		if a.Type.Equal(cms.OIDSigningTime) {
			return a.Values, nil
		}
	}
	return nil, fmt.Errorf("no signingTime attribute")
}

// Check is the check a member's item passes before it is signed:
// check.Item, except for Authenticode items staged by pesign (their
// context carries pesign's SpcIndirectDataContent), whose TBS must be
// byte for byte the attributes pesign makes for the context's PE digest
// at the TBS's own signing time.
func Check(it *request.Item) error {
	if err := it.Validate(); err != nil {
		return err
	}
	c := it.Authenticode
	if it.Kind != request.KindAuthenticode || c == nil {
		return check.Item(it)
	}
	digest, err := hex.DecodeString(c.Digest)
	if err != nil {
		return fmt.Errorf("%w: context digest is not hex", check.ErrRefused)
	}
	var spc []byte
	for _, v := range PesignVariants {
		if b, err := PesignSpcIndirectData(v, digest); err == nil && bytes.Equal(b, c.SpcIndirectData) {
			spc = b
		}
	}
	if spc == nil || it.Hash != "sha256" {
		return check.Item(it)
	}
	if _, err := authenticode.ParseSignedAttributes(it.TBS); err != nil {
		return fmt.Errorf("%w: tbs: %v", check.ErrRefused, err)
	}
	t, err := signingTimeValue(it.TBS)
	if err != nil {
		return fmt.Errorf("%w: tbs: %v", check.ErrRefused, err)
	}
	want, err := pesignAttributes(spc, t)
	if err != nil {
		return fmt.Errorf("%w: %v", check.ErrRefused, err)
	}
	if !bytes.Equal(it.TBS, want) {
		return fmt.Errorf("%w: tbs is not the signed attributes pesign makes for PE digest %s", check.ErrRefused, c.Digest)
	}
	return nil
}
