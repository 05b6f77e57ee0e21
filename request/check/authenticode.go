package check

import (
	"bytes"
	"encoding/hex"

	"signet.dev/authenticode"
	"signet.dev/request"
)

// Authenticode checks an Authenticode item by rebuilding it: the context's
// SpcIndirectDataContent must be byte for byte one that package
// authenticode makes for the context's PE digest (signet's and
// systemd-sbsign's encoding, or pesign's, which mkosi's OBS flow stages),
// and the TBS byte for byte the signed attributes it makes for that
// structure and the TBS's own signingTime (what `systemd-sbsign
// --prepare-offline-signing` and `pesign -E` write). Nothing of the
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
	// The context names one of the known encodings, each rebuilt from the
	// digest alone.
	var spc []byte
	enc := authenticode.EncodingSignet
	for _, e := range authenticode.Encodings {
		b, err := authenticode.SpcIndirectDataContentAs(e, authenticode.Hash, digest)
		if err == nil && bytes.Equal(b, c.SpcIndirectData) {
			spc, enc = b, e
			break
		}
	}
	if spc == nil {
		want, err := authenticode.SpcIndirectDataContent(authenticode.Hash, digest)
		if err != nil {
			return refuse("%v", err)
		}
		return refuse("context spcIndirectData is not the canonical SpcIndirectDataContent for PE digest %s in any known encoding: %s", c.Digest, firstDiff(c.SpcIndirectData, want))
	}
	attrs, err := authenticode.ParseSignedAttributes(it.TBS)
	if err != nil {
		return refuse("tbs: %v", err)
	}
	if attrs.SigningTime.IsZero() {
		return refuse("tbs has no signingTime attribute")
	}
	want, err := authenticode.SignedAttributesFor(spc, attrs.SigningTime)
	if err != nil {
		return refuse("%v", err)
	}
	if !bytes.Equal(it.TBS, want) {
		return refuse("tbs is not the canonical signed attributes for PE digest %s (%v) at %s: %s",
			c.Digest, enc, attrs.SigningTime.Format("2006-01-02T15:04:05Z"), firstDiff(it.TBS, want))
	}
	return nil
}
