package authenticode

import (
	"crypto"
	"crypto/sha256"
	"encoding/asn1"
	"fmt"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"signet.dev/cms"
)

// Encoding is one of the ways Authenticode signers encode the
// SpcIndirectDataContent their signed attributes commit to. Each is a
// fixed template around the image digest, which it ends with (firmware
// compares the last bytes of the structure with the image digest), so
// each can be rebuilt from the digest alone.
type Encoding int

// The encodings a signer accepts from offline preparers.
const (
	// EncodingSignet is what signet and systemd-sbsign write (and
	// osslsigncode's SpcPeImageData): flags an empty BIT STRING with its
	// unused-bits octet, the obsolete link "<<<Obsolete>>>".
	EncodingSignet Encoding = iota
	// EncodingPesign116 is what `pesign -E` 116 and later stage (mkosi's
	// OBS flow): flags a zero-length BIT STRING (03 00), an empty
	// obsolete link.
	EncodingPesign116
	// EncodingPesign112 is what pesign 0.112 stages: data type
	// 1.3.6.1.4.1.311.2.1.21, flags 03 01 00, an empty link.
	EncodingPesign112
)

// Encodings lists every encoding, signet's first.
var Encodings = []Encoding{EncodingSignet, EncodingPesign116, EncodingPesign112}

func (e Encoding) String() string {
	switch e {
	case EncodingSignet:
		return "signet/systemd-sbsign"
	case EncodingPesign116:
		return "pesign 116+"
	case EncodingPesign112:
		return "pesign 0.112"
	}
	return fmt.Sprintf("encoding %d", int(e))
}

var oidSpcIndividualSPKeyPurpose = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 21}

// SpcIndirectDataContentAs is SpcIndirectDataContent in encoding e.
func SpcIndirectDataContentAs(e Encoding, h crypto.Hash, digest []byte) ([]byte, error) {
	if e == EncodingSignet {
		return SpcIndirectDataContent(h, digest)
	}
	if h != crypto.SHA256 || len(digest) != sha256.Size {
		return nil, fmt.Errorf("authenticode: %v encodes SHA-256 digests only", e)
	}
	oid, flags := OIDSpcPEImageData, []byte{0x03, 0x00}
	switch e {
	case EncodingPesign116:
	case EncodingPesign112:
		oid, flags = oidSpcIndividualSPKeyPurpose, []byte{0x03, 0x01, 0x00}
	default:
		return nil, fmt.Errorf("authenticode: unknown %v", e)
	}
	return spcTemplate(oid, flags, nil, h, digest)
}

// spcTemplate is the SpcIndirectDataContent every encoding shares: data
// type oid with SpcPeImageData { flags (DER given whole), file [0] { [2]
// { [0] link } } }, then the DigestInfo, which the structure ends with.
func spcTemplate(oid asn1.ObjectIdentifier, flags, link []byte, h crypto.Hash, digest []byte) ([]byte, error) {
	hashOID, err := cms.HashOID(h)
	if err != nil {
		return nil, err
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oid)
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddBytes(flags)
				b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.Tag(2).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(link) })
					})
				})
			})
		})
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(hashOID)
				b.AddASN1NULL()
			})
			b.AddASN1OctetString(digest)
		})
	})
	return b.Bytes()
}

// SignedAttributesFor returns the four signed attributes (as Prepare
// writes them) committing to the SpcIndirectDataContent spc at signingTime.
func SignedAttributesFor(spc []byte, signingTime time.Time) ([]byte, error) {
	octets, err := contentOctets(spc)
	if err != nil {
		return nil, err
	}
	md := Hash.New()
	md.Write(octets)
	return signedAttributes(signingTime, md.Sum(nil))
}
