package check

import (
	"encoding/binary"
	"encoding/hex"

	"signet.dev/manifest"
	"signet.dev/request"
)

// OpenPGP v4 signature constants (RFC 4880 section 5.2).
const (
	pgpSigBinary = 0x00
	pgpHashSHA   = 8 // SHA-256; SHA-384 = 9, SHA-512 = 10
)

// SplitOpenPGPTrailer splits what an OpenPGP v4 signature over a binary
// document hashes (document ‖ version..hashed subpackets ‖ 0x04 0xFF ‖
// be32 length) into the document and the trailer. It checks the trailer's
// shape: version 4, binary-document type, a hash algorithm matching hash.
func SplitOpenPGPTrailer(tbs []byte, hash string) (doc, trailer []byte, err error) {
	if len(tbs) < 12 {
		return nil, nil, refuse("tbs is too short for an OpenPGP signature trailer")
	}
	tail := tbs[len(tbs)-6:]
	if tail[0] != 4 || tail[1] != 0xff {
		return nil, nil, refuse("tbs does not end in an OpenPGP v4 trailer (04 ff <length>)")
	}
	n := int(binary.BigEndian.Uint32(tail[2:]))
	if n < 6 || n > len(tbs)-6 {
		return nil, nil, refuse("OpenPGP trailer length %d does not fit", n)
	}
	start := len(tbs) - 6 - n
	t := tbs[start:]
	if t[0] != 4 {
		return nil, nil, refuse("OpenPGP signature version %d, not 4", t[0])
	}
	if t[1] != pgpSigBinary {
		return nil, nil, refuse("OpenPGP signature type %#x, not a binary document signature", t[1])
	}
	want := map[string]byte{"sha256": pgpHashSHA, "sha384": 9, "sha512": 10}[hash]
	if t[3] != want {
		return nil, nil, refuse("OpenPGP signature hash algorithm %d does not match the item's %s", t[3], hash)
	}
	if int(binary.BigEndian.Uint16(t[4:6])) != n-6 {
		return nil, nil, refuse("OpenPGP hashed subpacket length does not match the trailer length")
	}
	return tbs[:start], t, nil
}

// Manifest checks a manifest item: the TBS (for manifest-openpgp, the part
// before the OpenPGP trailer) parses as SHA256SUMS as systemd-sysupdate
// reads it (package manifest) and lists exactly the context's entries, in
// order.
func Manifest(it *request.Item) error {
	doc := it.TBS
	if it.Kind == request.KindManifestOpenPGP {
		var err error
		if doc, _, err = SplitOpenPGPTrailer(it.TBS, it.Hash); err != nil {
			return err
		}
	}
	entries, err := manifest.Parse(doc)
	if err != nil {
		return refuse("not a SHA256SUMS manifest: %v", err)
	}
	want := it.Manifest.Entries
	if len(entries) != len(want) {
		return refuse("manifest lists %d files, the context %d", len(entries), len(want))
	}
	for i, e := range entries {
		got := request.ManifestEntry{Name: e.Name, SHA256: hex.EncodeToString(e.Digest[:])}
		if got != want[i] {
			return refuse("manifest line %d is %s %s, the context says %s %s", i+1, got.SHA256, got.Name, want[i].SHA256, want[i].Name)
		}
	}
	return nil
}
