package uki

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io"
	"strings"

	"signet.dev/keys"
	"signet.dev/measure"
)

// CandidatePhases are the phase paths a .pcrsig entry is checked against
// when its phase is not recorded: every path of the known phase words in
// boot order (enter-initrd, leave-initrd, sysinit, ready, shutdown, final),
// each word used at most once, including the empty path.
func CandidatePhases() []string {
	w := measure.KnownPhaseWords
	var out []string
	for mask := 0; mask < 1<<len(w); mask++ {
		var p []string
		for i := range w {
			if mask&(1<<i) != 0 {
				p = append(p, w[i])
			}
		}
		out = append(out, strings.Join(p, ":"))
	}
	return out
}

// EntryStatus is the verdict on one .pcrsig entry.
type EntryStatus struct {
	Bank  string
	Entry measure.SigEntry
	Phase string // the phase path whose PCR 11 value pol is for, if found
	Match bool   // pol is the PolicyPCR digest of a PCR 11 value this UKI produces
	Valid bool   // sig verifies with the public key
	Err   error  // why the entry is bad, nil when Match && Valid
}

// ErrPolicyMismatch is returned for a pol that no PCR 11 value of the UKI
// produces.
var ErrPolicyMismatch = errors.New("pol does not match any PCR 11 value this UKI produces")

// CheckPCRSig checks every entry of doc against the sections the stub of
// release major measures (recomputing pol for every candidate phase path)
// and against pub (nil: signatures are not checked and entries with one
// are reported invalid).
func CheckPCRSig(secs []*Named, major int, doc *measure.PCRSig, pub crypto.PublicKey) ([]EntryStatus, error) {
	ins, _, err := MeasuredInputs(secs, major)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, b := range doc.Banks {
		names = append(names, b.Bank)
	}
	banks, err := measure.ParseBanks(names)
	if err != nil {
		return nil, err
	}
	phases := CandidatePhases()
	res, err := measure.Calculate(ins, phases, banks)
	if err != nil {
		return nil, err
	}
	pols := map[string]map[string]string{} // bank -> pol -> phase
	for _, bv := range res.Banks {
		m := map[string]string{}
		for _, pv := range bv.Phases {
			pol, err := measure.Pol(bv.Bank, pv.PCR)
			if err != nil {
				return nil, err
			}
			m[string(pol)] = pv.Phase
		}
		pols[bv.Bank.Name] = m
	}
	var fp []byte
	if pub != nil {
		if fp, err = measure.Fingerprint(pub); err != nil {
			return nil, err
		}
	}
	var out []EntryStatus
	for _, b := range doc.Banks {
		for _, e := range b.Entries {
			st := EntryStatus{Bank: b.Bank, Entry: e}
			st.Phase, st.Match = pols[b.Bank][string(e.Pol)]
			switch {
			case len(e.PCRs) != 1 || e.PCRs[0] != measure.PCR:
				st.Err = fmt.Errorf("entry covers PCRs %v, not just PCR 11", e.PCRs)
			case !st.Match:
				st.Err = ErrPolicyMismatch
			case e.Sig == nil:
				st.Err = errors.New("no signature")
			case pub == nil:
				st.Err = errors.New("no .pcrpkey to verify against")
			case e.Pkfp != nil && !bytes.Equal(e.Pkfp, fp):
				st.Err = fmt.Errorf("signed for key %x, .pcrpkey is %x", e.Pkfp, fp)
			default:
				if err := measure.VerifyEntry(pub, e.Signed(), e.Sig); err != nil {
					st.Err = err
				} else {
					st.Valid = true
				}
			}
			out = append(out, st)
		}
	}
	return out, nil
}

// PCRPublicKey parses a .pcrpkey section (PEM SubjectPublicKeyInfo).
func PCRPublicKey(secs []*Named) (crypto.PublicKey, error) {
	s := findNamed(secs, ".pcrpkey")
	if s == nil {
		return nil, nil
	}
	if s.Size > 1<<16 {
		return nil, errors.New(".pcrpkey: too large for a public key")
	}
	b := make([]byte, s.Size)
	if _, err := s.R.ReadAt(b, 0); err != nil && err != io.EOF {
		return nil, fmt.Errorf(".pcrpkey: %w", err)
	}
	pub, err := keys.ParsePublicKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf(".pcrpkey: %w", err)
	}
	return pub, nil
}

// JoinPCRSig writes a copy of the UKI f with doc as the .pcrsig section of
// profile (ukify --join-pcrsig; profile is ignored for a UKI without
// profiles), after checking that every entry's pol is one this profile's
// measured sections produce and that its signature verifies with the UKI's
// .pcrpkey. The sections after .pcrsig move to make room. The UKI must not
// be Secure Boot signed yet (the signature covers .pcrsig).
func JoinPCRSig(f *File, profile int, doc *measure.PCRSig, w io.Writer) (int64, error) {
	if f.Signed() {
		return 0, errors.New("UKI is already Secure Boot signed; join the PCR signatures first, then sign it")
	}
	rel, err := f.StubRelease()
	if err != nil {
		return 0, err
	}
	secs := f.named()
	profs := Profiles(secs)
	// [from, to) is the range of sections the .pcrsig belongs to.
	from, to := 0, len(f.Sections)
	var prof Profile
	if profs[0].Index < 0 {
		prof = profs[0]
	} else {
		if profile < 0 || profile >= len(profs) {
			return 0, fmt.Errorf("UKI has profiles 0 to %d, not %d", len(profs)-1, profile)
		}
		prof = profs[profile]
		n := -1
		for i, s := range f.Sections {
			if s.Name != ".profile" {
				continue
			}
			n++
			if n == profile {
				from = i
			} else if n == profile+1 {
				to = i
				break
			}
		}
	}
	pub, err := PCRPublicKey(prof.Sections)
	if err != nil {
		return 0, err
	}
	if pub == nil {
		return 0, errors.New("UKI has no .pcrpkey section to verify the signatures against")
	}
	st, err := CheckPCRSig(prof.Sections, rel.Major, doc, pub)
	if err != nil {
		return 0, err
	}
	if len(st) == 0 {
		return 0, errors.New(".pcrsig JSON has no entries")
	}
	for _, s := range st {
		if s.Err != nil {
			return 0, fmt.Errorf("%s entry pol %x: %w", s.Bank, s.Entry.Pol, s.Err)
		}
	}
	at, replace := -1, false
	for i := from; i < to; i++ {
		if f.Sections[i].Name == ".pcrsig" {
			at, replace = i, true
			break
		}
	}
	switch {
	case at >= 0:
	case profs[0].Index >= 0:
		at = to // a profile's .pcrsig follows its sections
	case len(f.Sections) > 0 && f.Sections[len(f.Sections)-1].Name == ".linux":
		at = len(f.Sections) - 1 // before a trailing .linux, as ukify places it
	default:
		return 0, errors.New("UKI has no .pcrsig section and does not end with .linux; cannot place one")
	}
	im := newImage(f, at)
	if err := im.add(BytesPart(".pcrsig", Signed(doc).Marshal(measure.Python))); err != nil {
		return 0, err
	}
	rest := f.Sections[at:]
	if replace {
		rest = rest[1:]
	}
	for _, s := range rest {
		if err := im.add(Part{Name: s.Name, R: s.Open(), Size: s.Size(), Characteristics: s.Characteristics}); err != nil {
			return 0, err
		}
	}
	return im.WriteTo(w)
}

// Signed returns doc without its tbs members: what systemd-measure sign
// writes and an online ukify build embeds, so a UKI joined from ukify's or
// systemd-measure's policy-digest output equals the online one.
func Signed(doc *measure.PCRSig) *measure.PCRSig {
	out := &measure.PCRSig{}
	for _, b := range doc.Banks {
		for _, e := range b.Entries {
			e.TBS = nil
			out.Add(b.Bank, e)
		}
	}
	return out
}
