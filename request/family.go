package request

import (
	"fmt"
	"slices"
	"strings"
)

// A key serves one family of kinds. Kinds of one family may share a key
// because no TBS of one kind is also a valid TBS of another once each is
// checked canonically (package check); kinds of different families must
// not, because their signatures travel in containers whose verifiers
// accept what another kind's signer produces:
//
//   - "secure-boot": authenticode. Firmware accepts a PKCS#7 SignerInfo
//     without signed attributes over the SHA-256 of its content, so any
//     attribute-less PKCS#7 signer with a db key signs EFI binaries.
//   - "tpm-policy": pcr-policy. A TPM's PolicyAuthorize takes a raw
//     signature over H(approvedPolicy ‖ policyRef) for any policyRef.
//   - "content": verity-roothash, ipe-policy, manifest-pkcs7,
//     manifest-openpgp. A raw signature over a hash of the content itself
//     (attribute-less PKCS#7; OpenPGP over the manifest and signet's fixed
//     trailer): a lowercase hex root hash, canonical IPE policy text, a
//     SHA256SUMS file (ending in a newline) and a SHA256SUMS file followed
//     by signet's trailer (ending in its length) are disjoint languages,
//     no byte string is two of them, which is what lets the kernel keyring
//     key sign verity and IPE, and one release key sign both manifests.
//   - "uefi-authvar": uefi-authvar. It must not share a key with
//     authenticode: firmware checks both with the same PKCS#7 verifier
//     against certificates from the same stores (PK, KEK, db), and nothing
//     in a PKCS#7 says which purpose it was made for. What keeps a db
//     update from being an image signature, and an image key from
//     rewriting db, is that the two are made by different keys: a KEK key
//     that also signed images would make every image submitter a signer
//     with the key that rules db, and a db key that also signed variable
//     updates could, as the KEK of another machine, replace its db.
var families = map[Kind]string{
	KindAuthenticode:    "secure-boot",
	KindPCRPolicy:       "tpm-policy",
	KindVerityRootHash:  "content",
	KindIPEPolicy:       "content",
	KindManifestPKCS7:   "content",
	KindManifestOpenPGP: "content",
	KindUEFIAuthVar:     "uefi-authvar",
}

// Family returns the family of kind k ("" for an unknown kind).
func Family(k Kind) string { return families[k] }

// CheckKeyKinds accepts the kinds one key may sign when they are all of
// one family, or when shared names exactly the kinds that cross families
// (all of them): an explicit, reviewed decision to accept cross-protocol
// signatures. The error names the kinds and their families.
func CheckKeyKinds(kinds []Kind, shared []Kind) error {
	fams := map[string][]Kind{}
	for _, k := range kinds {
		f := Family(k)
		if f == "" {
			return fmt.Errorf("unknown kind %q", k)
		}
		if !slices.Contains(fams[f], k) {
			fams[f] = append(fams[f], k)
		}
	}
	if len(fams) <= 1 {
		return nil
	}
	var crossing []Kind
	var names []string
	for f, ks := range fams {
		crossing = append(crossing, ks...)
		names = append(names, f)
	}
	slices.Sort(crossing)
	slices.Sort(names)
	s := slices.Clone(shared)
	slices.Sort(s)
	s = slices.Compact(s)
	if !slices.Equal(s, crossing) {
		return fmt.Errorf("kinds %v span the families %s: a signature of one would verify as another (cross-protocol); "+
			"give each family its own key, or list exactly these kinds as shared to accept that", crossing, strings.Join(names, ", "))
	}
	return nil
}

// ParseKinds parses a comma-separated list of kinds.
func ParseKinds(s string) ([]Kind, error) {
	var out []Kind
	for _, f := range strings.Split(s, ",") {
		k := Kind(strings.TrimSpace(f))
		if Family(k) == "" {
			return nil, fmt.Errorf("kind %q: not one of %v", k, Kinds)
		}
		out = append(out, k)
	}
	return out, nil
}
