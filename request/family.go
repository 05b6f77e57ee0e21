package request

import (
	"fmt"
	"slices"
	"strings"
)

// families groups the kinds one key may sign without a declaration. The
// kinds of one family cannot be confused with each other by a verifier:
// verity-roothash, ipe-policy and manifest-pkcs7 are all attribute-less
// PKCS#7 over their content, but the content languages (64 or 128 hex
// digits; an IPE policy; a SHA256SUMS file) are disjoint and each kind's
// check parses its TBS strictly. Authenticode signed attributes, TPM
// policy digests and OpenPGP trailers each stand alone.
var families = map[Kind]string{
	KindAuthenticode:    "authenticode",
	KindPCRPolicy:       "pcr-policy",
	KindVerityRootHash:  "pkcs7-content",
	KindIPEPolicy:       "pkcs7-content",
	KindManifestPKCS7:   "pkcs7-content",
	KindManifestOpenPGP: "manifest-openpgp",
}

// Family names the kind family of k, or "" for an unknown kind.
func Family(k Kind) string { return families[k] }

// CheckKeyKinds checks that one key may sign all of kinds: they must all
// be of one family, or shared must list exactly the distinct kinds (a
// declaration that this key is meant to sign across families). The error
// names the kinds and their families.
func CheckKeyKinds(kinds []Kind, shared []Kind) error {
	set := distinct(kinds)
	fams := map[string][]Kind{}
	for _, k := range set {
		f := Family(k)
		if f == "" {
			return fmt.Errorf("kind %q: not one of %v", k, Kinds)
		}
		fams[f] = append(fams[f], k)
	}
	if len(fams) <= 1 {
		return nil
	}
	decl := distinct(shared)
	if slices.Equal(set, decl) {
		return nil
	}
	var parts []string
	for _, k := range set {
		parts = append(parts, fmt.Sprintf("%s (family %s)", k, Family(k)))
	}
	msg := "kinds of " + fmt.Sprint(len(fams)) + " families: " + strings.Join(parts, ", ")
	if len(decl) > 0 {
		return fmt.Errorf("%s; the declaration %v does not list exactly these kinds", msg, decl)
	}
	return fmt.Errorf("%s; a key signs one family unless its kinds are declared", msg)
}

// distinct returns kinds sorted in the order of Kinds, without repeats;
// unknown kinds sort last by name.
func distinct(kinds []Kind) []Kind {
	var out []Kind
	for _, k := range kinds {
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	slices.SortFunc(out, func(a, b Kind) int {
		ia, ib := slices.Index(Kinds, a), slices.Index(Kinds, b)
		if ia < 0 {
			ia = len(Kinds)
		}
		if ib < 0 {
			ib = len(Kinds)
		}
		if ia != ib {
			return ia - ib
		}
		return strings.Compare(string(a), string(b))
	})
	return out
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
