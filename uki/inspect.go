package uki

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"

	"signet.dev/authenticode"
	"signet.dev/measure"
)

// Report describes a UKI: what `signet uki inspect` prints.
type Report struct {
	Stub       string          `json:"stub"`       // stub release, e.g. "252.39-1~deb12u2"
	Sections   []SectionReport `json:"sections"`   // every PE section in file order
	Profiles   []ProfileReport `json:"profiles"`   // one entry (index -1) for a UKI without profiles
	Signatures []SignatureInfo `json:"signatures"` // Authenticode signatures
}

// SectionReport is one PE section.
type SectionReport struct {
	Name           string `json:"name"`
	VirtualAddress uint32 `json:"virtualAddress"`
	VirtualSize    uint32 `json:"virtualSize"`
	SizeOfRawData  uint32 `json:"sizeOfRawData"`
	SHA256         string `json:"sha256"` // of the contents as loaded (VirtualSize bytes)
}

// ProfileReport is one boot profile: what its PCR 11 covers, the
// predictions and the embedded signatures.
type ProfileReport struct {
	Index    int            `json:"index"`
	ID       string         `json:"id,omitempty"` // ID= from the .profile text
	Sections []Decision     `json:"sections"`
	PCR11    []BankReport   `json:"pcr11"`
	PCRSig   []PCRSigReport `json:"pcrsig"`
}

// BankReport is the predicted PCR 11 of one bank, per phase.
type BankReport struct {
	Bank   string        `json:"bank"`
	Phases []PhaseReport `json:"phases"`
}

// PhaseReport is PCR 11 at one boot phase.
type PhaseReport struct {
	Phase string `json:"phase"`
	Value string `json:"value"`
}

// PCRSigReport is one .pcrsig entry and whether it holds.
type PCRSigReport struct {
	Bank     string `json:"bank"`
	Pol      string `json:"pol"`
	Ref      string `json:"ref,omitempty"` // policy reference the signature is bound to
	Pkfp     string `json:"pkfp,omitempty"`
	Phase    string `json:"phase,omitempty"`
	Signed   bool   `json:"signed"`
	Verifies bool   `json:"verifies"`
	Problem  string `json:"problem,omitempty"`
}

// SignatureInfo is one Authenticode signature.
type SignatureInfo struct {
	Signer      string `json:"signer,omitempty"`
	Hash        string `json:"hash"`
	Digest      string `json:"digest"`
	DigestMatch bool   `json:"digestMatches"` // the image still has the digest the signature commits to
	SigningTime string `json:"signingTime,omitempty"`
}

// Inspect describes the UKI in r, predicting PCR 11 for phases and banks.
func Inspect(r io.ReaderAt, size int64, phases []string, banks []measure.Bank) (*Report, error) {
	f, err := Parse(r, size)
	if err != nil {
		return nil, err
	}
	rel, err := f.StubRelease()
	if err != nil {
		return nil, err
	}
	rep := &Report{Stub: rel.Version, Signatures: []SignatureInfo{}}
	for _, s := range f.Sections {
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(s.Open(), 0, s.Size())); err != nil {
			return nil, fmt.Errorf("section %s: %w", s.Name, err)
		}
		rep.Sections = append(rep.Sections, SectionReport{s.Name, s.VirtualAddress, s.VirtualSize, s.SizeOfRawData, hex.EncodeToString(h.Sum(nil))})
	}
	secs := f.named()
	pub, err := PCRPublicKey(secs)
	if err != nil {
		return nil, err
	}
	for _, p := range Profiles(secs) {
		pr := ProfileReport{Index: p.Index, PCRSig: []PCRSigReport{}}
		if ps := findNamed(p.Sections, ".profile"); ps != nil && ps.Size < 1<<16 {
			b := make([]byte, ps.Size)
			ps.R.ReadAt(b, 0)
			for _, l := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(l, "ID="); ok {
					pr.ID = strings.Trim(strings.TrimRight(v, "\x00"), `"`)
				}
			}
		}
		ins, why, err := MeasuredInputs(p.Sections, rel.Major)
		if err != nil {
			return nil, err
		}
		pr.Sections = why
		res, err := measure.Calculate(ins, phases, banks)
		if err != nil {
			return nil, err
		}
		for _, b := range res.Banks {
			br := BankReport{Bank: b.Bank.Name}
			for _, ph := range b.Phases {
				br.Phases = append(br.Phases, PhaseReport{measure.PhaseLabel(ph.Phase), hex.EncodeToString(ph.PCR)})
			}
			pr.PCR11 = append(pr.PCR11, br)
		}
		if p.PCRSig != nil {
			b := make([]byte, p.PCRSig.Size)
			if _, err := p.PCRSig.R.ReadAt(b, 0); err != nil && err != io.EOF {
				return nil, err
			}
			doc, err := measure.ParsePCRSig(b)
			if err != nil {
				pr.PCRSig = append(pr.PCRSig, PCRSigReport{Problem: err.Error()})
			} else {
				st, err := CheckPCRSig(p.Sections, rel.Major, doc, pub)
				if err != nil {
					return nil, err
				}
				for _, s := range st {
					r := PCRSigReport{Bank: s.Bank, Pol: hex.EncodeToString(s.Entry.Pol), Ref: s.Entry.Ref, Signed: s.Entry.Sig != nil, Verifies: s.Err == nil}
					if s.Entry.Pkfp != nil {
						r.Pkfp = hex.EncodeToString(s.Entry.Pkfp)
					}
					if s.Match {
						r.Phase = measure.PhaseLabel(s.Phase)
					}
					if s.Err != nil {
						r.Problem = s.Err.Error()
					}
					pr.PCRSig = append(pr.PCRSig, r)
				}
			}
		}
		rep.Profiles = append(rep.Profiles, pr)
	}
	if f.Signed() {
		af, err := authenticode.Parse(r, size)
		if err != nil {
			return nil, fmt.Errorf("Authenticode: %w", err)
		}
		sigs, err := af.Signatures()
		if err != nil {
			return nil, fmt.Errorf("Authenticode: %w", err)
		}
		for _, s := range sigs {
			si := SignatureInfo{Hash: strings.ToLower(strings.ReplaceAll(s.Hash.String(), "-", "")), Digest: hex.EncodeToString(s.Digest)}
			if s.Signer != nil {
				si.Signer = s.Signer.Subject.String()
			}
			if !s.SigningTime.IsZero() {
				si.SigningTime = s.SigningTime.UTC().Format("2006-01-02T15:04:05Z")
			}
			if s.Hash.Available() {
				if d, err := af.Digest(s.Hash); err == nil {
					si.DigestMatch = bytes.Equal(d, s.Digest)
				}
			}
			rep.Signatures = append(rep.Signatures, si)
		}
	}
	return rep, nil
}

// WriteText prints the report for people.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "stub: systemd-stub %s\n", r.Stub)
	fmt.Fprintf(&b, "sections:\n")
	for _, s := range r.Sections {
		fmt.Fprintf(&b, "  %-9s va %#08x size %10d raw %10d sha256 %s\n", s.Name, s.VirtualAddress, s.VirtualSize, s.SizeOfRawData, s.SHA256)
	}
	for _, p := range r.Profiles {
		if p.Index >= 0 {
			fmt.Fprintf(&b, "profile @%d", p.Index)
			if p.ID != "" {
				fmt.Fprintf(&b, " (ID=%s)", p.ID)
			}
			b.WriteString(":\n")
		}
		b.WriteString("  PCR 11 measurement:\n")
		for _, d := range p.Sections {
			fmt.Fprintf(&b, "    %-9s %s\n", d.Name, d.Reason)
		}
		b.WriteString("  predicted PCR 11:\n")
		for _, bank := range p.PCR11 {
			for _, ph := range bank.Phases {
				fmt.Fprintf(&b, "    %-6s %-40s %s\n", bank.Bank, ph.Phase, ph.Value)
			}
		}
		if len(p.PCRSig) == 0 {
			b.WriteString("  .pcrsig: none\n")
		}
		for _, e := range p.PCRSig {
			verdict := "verifies"
			if !e.Verifies {
				verdict = "FAILS: " + e.Problem
			}
			if e.Pol == "" {
				fmt.Fprintf(&b, "  .pcrsig: %s\n", verdict)
				continue
			}
			ref := ""
			if e.Ref != "" {
				ref = fmt.Sprintf(" ref %q", e.Ref)
			}
			fmt.Fprintf(&b, "  .pcrsig %-6s phase %-40s pol %s%s %s\n", e.Bank, e.Phase, e.Pol, ref, verdict)
		}
	}
	if len(r.Signatures) == 0 {
		b.WriteString("Authenticode: not signed\n")
	}
	for i, s := range r.Signatures {
		m := "digest matches the image"
		if !s.DigestMatch {
			m = "DIGEST DOES NOT MATCH the image"
		}
		fmt.Fprintf(&b, "Authenticode signature %d: %s, %s %s, %s\n", i, s.Signer, s.Hash, s.Digest, m)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
