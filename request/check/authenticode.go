package check

import (
	"bytes"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"

	"signet.dev/cms"
	"signet.dev/request"
)

// Authenticode object identifiers (Microsoft's Authenticode PE specification).
var (
	oidSpcIndirectData  = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 4}
	oidSpcStatementType = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 11}
	oidSpcSpOpusInfo    = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 12}
	oidSpcPEImageData   = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 15}
	oidSpcPEImageData21 = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 21} // pesign's variant
)

type spcAttributeTypeAndOptionalValue struct {
	Type  asn1.ObjectIdentifier
	Value asn1.RawValue `asn1:"optional"`
}

type digestInfo struct {
	DigestAlgorithm pkix.AlgorithmIdentifier
	Digest          []byte
}

type spcIndirectDataContent struct {
	Data          spcAttributeTypeAndOptionalValue
	MessageDigest digestInfo
}

// Authenticode checks an Authenticode item: the TBS is a DER SET OF signed
// attributes with exactly one contentType (SpcIndirectDataContent), one
// messageDigest, and otherwise only the attributes Authenticode signers
// write (signingTime, SMIMECapabilities, SpcStatementType, SpcSpOpusInfo);
// the messageDigest is the item hash of the context's SpcIndirectDataContent
// (its contents without tag and length, as Authenticode defines), and that
// structure carries the context's PE image digest.
func Authenticode(it *request.Item) error {
	c := it.Authenticode
	attrs, err := cms.ParseAttributes(it.TBS)
	if err != nil {
		return refuse("tbs is not a DER SET OF signed attributes: %v", err)
	}
	if der, err := cms.MarshalAttributes(attrs); err != nil || !bytes.Equal(der, it.TBS) {
		return refuse("tbs is not in DER (attributes unsorted or re-encoded)")
	}
	seen := map[string]bool{}
	var contentType, md []byte
	for _, a := range attrs {
		key := a.Type.String()
		if seen[key] {
			return refuse("signed attribute %s appears twice", key)
		}
		seen[key] = true
		switch {
		case a.Type.Equal(cms.OIDContentType):
			contentType = a.Values
		case a.Type.Equal(cms.OIDMessageDigest):
			md = a.Values
		case a.Type.Equal(cms.OIDSigningTime), a.Type.Equal(cms.OIDSMIMECaps),
			a.Type.Equal(oidSpcStatementType), a.Type.Equal(oidSpcSpOpusInfo):
		default:
			return refuse("signed attribute %s is not one an Authenticode signature carries", key)
		}
	}
	var ct asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(contentType, &ct); contentType == nil || err != nil || len(rest) != 0 {
		return refuse("no single contentType attribute")
	}
	if !ct.Equal(oidSpcIndirectData) {
		return refuse("contentType is %s, not SpcIndirectDataContent (%s)", ct, oidSpcIndirectData)
	}
	var digest []byte
	if rest, err := asn1.Unmarshal(md, &digest); md == nil || err != nil || len(rest) != 0 {
		return refuse("no single messageDigest attribute")
	}

	var spc spcIndirectDataContent
	rest, err := asn1.Unmarshal(c.SpcIndirectData, &spc)
	if err != nil || len(rest) != 0 {
		return refuse("context spcIndirectData is not a DER SpcIndirectDataContent")
	}
	if t := spc.Data.Type; !t.Equal(oidSpcPEImageData) && !t.Equal(oidSpcPEImageData21) {
		return refuse("SpcIndirectDataContent data type %s is not SpcPEImageData", t)
	}
	hashOID, err := cms.HashOID(it.CryptoHash())
	if err != nil {
		return refuse("%v", err)
	}
	if !spc.MessageDigest.DigestAlgorithm.Algorithm.Equal(hashOID) {
		return refuse("SpcIndirectDataContent digest algorithm %s is not %s", spc.MessageDigest.DigestAlgorithm.Algorithm, it.Hash)
	}
	if got := hex.EncodeToString(spc.MessageDigest.Digest); got != c.Digest {
		return refuse("SpcIndirectDataContent carries PE digest %s, not the context's %s", got, c.Digest)
	}
	var outer asn1.RawValue
	if _, err := asn1.Unmarshal(c.SpcIndirectData, &outer); err != nil {
		return refuse("context spcIndirectData: %v", err)
	}
	h := it.CryptoHash().New()
	h.Write(outer.Bytes)
	if !bytes.Equal(h.Sum(nil), digest) {
		return refuse("messageDigest %x is not the %s of the SpcIndirectDataContent for PE digest %s", digest, it.Hash, c.Digest)
	}
	return nil
}
