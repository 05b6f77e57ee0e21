package check

import (
	"encoding/hex"
	"time"

	"signet.dev/manifest"
	"signet.dev/openpgp"
	"signet.dev/request"
)

// Manifest checks a manifest item: the TBS (for manifest-openpgp, the part
// before the OpenPGP trailer) parses as SHA256SUMS as systemd-sysupdate
// reads it (package manifest; a strict parse, so every byte is part of a
// file line) and lists exactly the context's entries, in order. A
// manifest-openpgp TBS must end in exactly the trailer signet writes
// (package openpgp: creation time and issuer fingerprint, nothing else),
// with the item's hash: no subpacket a client chose is signed.
func Manifest(it *request.Item) error {
	doc := it.TBS
	if it.Kind == request.KindManifestOpenPGP {
		var tr *openpgp.Trailer
		var err error
		if doc, tr, err = openpgp.ParseTrailer(it.TBS); err != nil {
			return refuse("tbs does not end in the OpenPGP trailer signet writes: %v", err)
		}
		if tr.Hash != it.CryptoHash() {
			return refuse("OpenPGP trailer hash %v does not match the item's %s", tr.Hash, it.Hash)
		}
		if t := OpenPGPTime(it); t.IsZero() {
			return refuse("OpenPGP signature creation time is zero")
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

// OpenPGPTime returns the signature creation time of a manifest-openpgp
// item that passed Manifest, or the zero time.
func OpenPGPTime(it *request.Item) time.Time {
	if it.Kind != request.KindManifestOpenPGP {
		return time.Time{}
	}
	_, tr, err := openpgp.ParseTrailer(it.TBS)
	if err != nil || tr.Created.Unix() == 0 {
		return time.Time{}
	}
	return tr.Created
}

// OpenPGPFingerprint returns the issuer fingerprint in a manifest-openpgp
// item's trailer (the signer checks it is its own key's).
func OpenPGPFingerprint(it *request.Item) ([20]byte, bool) {
	_, tr, err := openpgp.ParseTrailer(it.TBS)
	if err != nil || it.Kind != request.KindManifestOpenPGP {
		return [20]byte{}, false
	}
	return tr.Fingerprint, true
}
