package check

import (
	"bytes"
	"encoding/hex"

	"signet.dev/authenticode"
	"signet.dev/request"
)

// Authenticode checks an Authenticode item by rebuilding it: the context's
// SpcIndirectDataContent must be byte for byte the one package authenticode
// makes for the context's PE digest, and the TBS byte for byte the signed
// attributes it makes for that structure and the TBS's own signingTime
// (what `systemd-sbsign --prepare-offline-signing` writes). Nothing of the
// client's bytes is interpreted beyond the signing time: firmware takes the
// image digest from the end of the SpcIndirectDataContent, not from where a
// DER reader finds it, so only the canonical encoding is safe to sign.
func Authenticode(it *request.Item) error {
	c := it.Authenticode
	if it.CryptoHash() != authenticode.Hash {
		return refuse("authenticode items are signed with sha256, not %s", it.Hash)
	}
	digest, err := hex.DecodeString(c.Digest)
	if err != nil {
		return refuse("context digest %q is not hex", c.Digest)
	}
	spc, err := authenticode.SpcIndirectDataContent(authenticode.Hash, digest)
	if err != nil {
		return refuse("%v", err)
	}
	if !bytes.Equal(c.SpcIndirectData, spc) {
		return refuse("context spcIndirectData is not the canonical SpcIndirectDataContent for PE digest %s: %s", c.Digest, firstDiff(c.SpcIndirectData, spc))
	}
	attrs, err := authenticode.ParseSignedAttributes(it.TBS)
	if err != nil {
		return refuse("tbs: %v", err)
	}
	if attrs.SigningTime.IsZero() {
		return refuse("tbs has no signingTime attribute")
	}
	want, err := authenticode.PrepareDigest(digest, attrs.SigningTime)
	if err != nil {
		return refuse("%v", err)
	}
	if !bytes.Equal(it.TBS, want.SignedAttributes) {
		return refuse("tbs is not the canonical signed attributes for PE digest %s at %s: %s",
			c.Digest, attrs.SigningTime.Format("2006-01-02T15:04:05Z"), firstDiff(it.TBS, want.SignedAttributes))
	}
	return nil
}
