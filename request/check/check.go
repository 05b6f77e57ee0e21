// Package check verifies that a signing request item is what its kind says
// it is, before anything signs it. A signer (signet request sign, the signing
// service) must never sign bytes it cannot account for: each kind's TBS is
// recomputed or parsed from the item's context, and anything else is refused
// with the reason.
//
//   - authenticode: the TBS is a DER SET OF Authenticode signed attributes
//     with content type SpcIndirectDataContent, whose messageDigest is the
//     digest of the context's SpcIndirectDataContent, which in turn carries
//     the context's PE image digest.
//   - pcr-policy: the TBS is the 32-byte TPM2 PolicyPCR digest of PCR 11,
//     recomputed from the context's section digests, phase and bank.
//   - verity-roothash: the TBS is exactly the context's root hash, as
//     lowercase hex without a newline.
//   - manifest-pkcs7: the TBS is a SHA256SUMS file listing exactly the
//     context's entries.
//   - manifest-openpgp: the TBS is such a SHA256SUMS file followed by an
//     OpenPGP v4 binary-document signature trailer for the item's hash.
//   - ipe-policy: the TBS is an IPE policy whose header names the context's
//     policy name and version.
//   - uefi-authvar: the TBS is the authenticated variable update (name,
//     vendor GUID, attributes, EFI_TIME, signature lists) rebuilt from the
//     context.
package check

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"signet.dev/authenticode"
	"signet.dev/measure"
	"signet.dev/request"
)

// ErrRefused wraps every reason an item is refused.
var ErrRefused = errors.New("refused")

func refuse(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, a...))
}

// Item checks one item's TBS against its kind and context. The item must
// have passed Item.Validate (Request.Validate does that for each item).
func Item(it *request.Item) error {
	if err := it.Validate(); err != nil {
		return err
	}
	switch it.Kind {
	case request.KindAuthenticode:
		return Authenticode(it)
	case request.KindPCRPolicy:
		return PCRPolicy(it)
	case request.KindVerityRootHash:
		return VerityRootHash(it)
	case request.KindManifestPKCS7, request.KindManifestOpenPGP:
		return Manifest(it)
	case request.KindIPEPolicy:
		return IPEPolicy(it)
	case request.KindUEFIAuthVar:
		return UEFIAuthVar(it)
	}
	return refuse("kind %q is not known", it.Kind)
}

// Request checks every item of r, returning the first refusal.
func Request(r *request.Request) error {
	if err := r.Validate(); err != nil {
		return err
	}
	for i := range r.Items {
		if err := Item(&r.Items[i]); err != nil {
			return fmt.Errorf("item %q: %w", r.Items[i].ID, err)
		}
	}
	return nil
}

// VerityRootHash checks that the TBS is exactly the lowercase hex root hash
// of the context (what the kernel and veritysetup verify: no newline, no
// NUL).
func VerityRootHash(it *request.Item) error {
	rh := it.Verity.RootHash
	switch len(rh) {
	case 64, 96, 128:
	default:
		return refuse("verity root hash %q: want 64, 96 or 128 hex digits", rh)
	}
	if _, err := hex.DecodeString(rh); err != nil || bytes.ContainsAny([]byte(rh), "ABCDEF") {
		return refuse("verity root hash %q: not lowercase hex", rh)
	}
	if !bytes.Equal(it.TBS, []byte(rh)) {
		return refuse("tbs is not the root hash %s as lowercase hex without newline", rh)
	}
	return nil
}

// canonical is systemd's UnifiedSection order (src/fundamental/uki.h): the
// order the stub measures sections in. .pcrsig is never measured.
var canonical = []string{".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat", ".pcrsig", ".pcrpkey", ".profile", ".dtbauto", ".hwids", ".efifw"}

func bankHash(bank string) crypto.Hash {
	b, err := measure.ParseBank(bank)
	if err != nil {
		return 0
	}
	return b.Hash
}

// PCR11 recomputes systemd-measure's PCR 11 prediction: from zero, extend
// H(name NUL) and the section digest for each section, then H(word) for
// each word of the phase path.
func PCR11(c *request.PCRContext) ([]byte, error) {
	h := bankHash(c.Bank)
	if h == 0 {
		return nil, refuse("PCR bank %q is not known", c.Bank)
	}
	pcr := make([]byte, h.Size())
	extend := func(d []byte) {
		x := h.New()
		x.Write(pcr)
		x.Write(d)
		pcr = x.Sum(nil)
	}
	digest := func(b []byte) []byte {
		x := h.New()
		x.Write(b)
		return x.Sum(nil)
	}
	last := -1
	for _, s := range c.Sections {
		pos := -1
		for i, n := range canonical {
			if n == s.Name {
				pos = i
			}
		}
		if pos < 0 || s.Name == ".pcrsig" {
			return nil, refuse("section %s is not measured into PCR 11", s.Name)
		}
		if pos <= last {
			return nil, refuse("section %s is out of the stub's measurement order", s.Name)
		}
		last = pos
		d, err := hex.DecodeString(s.Digest)
		if err != nil || len(d) != h.Size() {
			return nil, refuse("section %s: digest is not a %s digest", s.Name, c.Bank)
		}
		extend(digest(append([]byte(s.Name), 0)))
		extend(d)
	}
	for _, w := range bytes.Split([]byte(c.Phase), []byte(":")) {
		if len(w) > 0 {
			extend(digest(w))
		}
	}
	return pcr, nil
}

// PolicyPCR returns the TPM2 PolicyPCR digest (SHA-256 policy session, from
// an empty policy) selecting PCR 11 of bank with the given value: the `pol`
// systemd-measure signs (package measure, checked against a TPM).
func PolicyPCR(bank string, pcr []byte) ([]byte, error) {
	b, err := measure.ParseBank(bank)
	if err != nil {
		return nil, refuse("PCR bank %q: %v", bank, err)
	}
	return measure.Pol(b, pcr)
}

// PCRPolicy checks that the context's sections and phase give its PCR value
// and that the TBS is that value's PolicyPCR digest, followed by SHA256(ref)
// when the context names a policy reference. systemd 258 signs every
// bank's pol with SHA-256 (the only variant a TPM's PolicyAuthorize
// accepts), so the item's hash must be sha256.
func PCRPolicy(it *request.Item) error {
	c := it.PCR
	pcr, err := PCR11(c)
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(pcr); got != c.PCR {
		return refuse("PCR 11 recomputed from the sections and phase %q is %s, not the context's %s", c.Phase, got, c.PCR)
	}
	pol, err := PolicyPCR(c.Bank, pcr)
	if err != nil {
		return err
	}
	if want := measure.PolicyTBS(pol, c.Ref); !bytes.Equal(it.TBS, want) {
		if c.Ref != "" {
			return refuse("tbs is not the PolicyPCR digest %x of PCR 11 = %s followed by SHA256(ref %q)", pol, c.PCR, c.Ref)
		}
		return refuse("tbs is not the PolicyPCR digest %x of PCR 11 = %s", pol, c.PCR)
	}
	if it.Hash != "sha256" {
		return refuse("a PCR policy is signed with sha256, not %s", it.Hash)
	}
	return nil
}

// SigningTime returns the time an item's signature will claim to be made
// at, for kinds that carry one: an Authenticode item's signingTime, an
// OpenPGP manifest item's signature creation time. A signer bounds it
// (a signing service may refuse times far from its clock).
func SigningTime(it *request.Item) (time.Time, bool) {
	switch it.Kind {
	case request.KindAuthenticode:
		p, err := authenticode.ParseSignedAttributes(it.TBS)
		if err != nil || p.SigningTime.IsZero() {
			return time.Time{}, false
		}
		return p.SigningTime, true
	case request.KindManifestOpenPGP:
		t := OpenPGPTime(it)
		return t, !t.IsZero()
	}
	return time.Time{}, false
}
