package uki

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"signet.dev/measure"
)

// sectionOrder is where ukify (258 and later) puts each section it adds:
// .linux before .initrd, the firmware and microcode after it, .sbat last
// (the stub's own .sbat is replaced in place). .profile and .pcrsig follow.
var sectionOrder = []string{".osrel", ".cmdline", ".dtb", ".dtbauto", ".hwids", ".uname", ".splash", ".pcrpkey", ".linux", ".initrd", ".efifw", ".ucode", ".sbat"}

// DefaultSBAT is the SBAT text ukify merges into every UKI when no other is
// given (its STUB_SBAT).
const DefaultSBAT = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n" +
	"uki,1,UKI,uki,1,https://uapi-group.org/specifications/specs/unified_kernel_image/\n"

// ProfileSections are the sections a joined profile PE may contribute
// (ukify --join-profile).
var ProfileSections = []string{".linux", ".osrel", ".cmdline", ".initrd", ".efifw", ".ucode", ".splash", ".dtb", ".uname", ".sbat", ".profile"}

// Plan is a UKI about to be assembled: the stub, the sections to add and
// the profiles to join. Its PCR 11 predictions are known before anything is
// written, so the .pcrsig sections can be prepared, signed and joined.
type Plan struct {
	stub     *File
	release  Release
	replace  []Part // sections replacing the stub's own (.sbat)
	base     []Part // in output order
	profiles [][]Part
	// Timestamp is written as the COFF TimeDateStamp.
	Timestamp uint32
}

// NewPlan checks the stub and orders the sections. parts are the main
// UKI's sections (at most one each; .linux required; a .sbat is the SBAT
// text to merge with the stub's and the kernel's, DefaultSBAT when not
// given, as ukify does); profiles are the
// sections of each additional profile, each with exactly one .profile. A
// main .profile, if given, makes the main UKI profile 0.
func NewPlan(stub *File, parts []Part, profiles [][]Part) (*Plan, error) {
	rel, err := stub.StubRelease()
	if err != nil {
		return nil, err
	}
	if _, err := MeasuredSections(rel.Major); err != nil {
		return nil, err
	}
	if stub.Signed() {
		return nil, errors.New("stub is Secure Boot signed; add sections to an unsigned stub and sign the UKI")
	}
	p := &Plan{stub: stub, release: rel, Timestamp: stub.TimeDateStamp}
	// ukify keeps the stub's TimeDateStamp (it never reads
	// SOURCE_DATE_EPOCH), which is what makes its output reproducible.
	byName := map[string]Part{}
	for _, s := range parts {
		if _, dup := byName[s.Name]; dup {
			return nil, fmt.Errorf("section %s given twice", s.Name)
		}
		if s.Name == ".pcrsig" {
			return nil, errors.New(".pcrsig is made from the PCR signatures, not given")
		}
		if s.Size == 0 {
			return nil, fmt.Errorf("section %s is empty", s.Name)
		}
		byName[s.Name] = s
	}
	linux, ok := byName[".linux"]
	if !ok {
		return nil, errors.New("no .linux section: a UKI needs a kernel")
	}
	sbat, err := mergedSBAT(stub, linux, byName)
	if err != nil {
		return nil, err
	}
	if sbat != nil {
		byName[".sbat"] = *sbat
	} else {
		delete(byName, ".sbat")
	}
	for _, n := range sectionOrder {
		s, ok := byName[n]
		if !ok {
			continue
		}
		if stub.Section(n) != nil {
			p.replace = append(p.replace, s)
		} else {
			p.base = append(p.base, s)
		}
		delete(byName, n)
	}
	prof, hasProfile := byName[".profile"]
	delete(byName, ".profile")
	for n := range byName {
		return nil, fmt.Errorf("section %s: not a UKI section signet places", n)
	}
	if (hasProfile || len(profiles) > 0) && rel.Major < SinceRelease(measure.Profile) {
		return nil, fmt.Errorf("systemd-stub %s does not support profiles (%d and later do)", rel.Version, SinceRelease(measure.Profile))
	}
	if hasProfile {
		// The base ends before the first .profile: everything before it
		// is shared by every profile.
		p.profiles = append(p.profiles, []Part{prof})
	}
	for i, ps := range profiles {
		n := 0
		seen := map[string]bool{}
		var ordered []Part
		for _, s := range ps {
			if !slices.Contains(ProfileSections, s.Name) {
				return nil, fmt.Errorf("profile %d: section %s cannot be part of a profile", i, s.Name)
			}
			if seen[s.Name] {
				return nil, fmt.Errorf("profile %d: section %s twice", i, s.Name)
			}
			seen[s.Name] = true
			if s.Name == ".profile" {
				n++
				ordered = append([]Part{s}, ordered...)
			} else {
				ordered = append(ordered, s)
			}
		}
		if n != 1 {
			return nil, fmt.Errorf("profile %d has %d .profile sections, want 1", i, n)
		}
		p.profiles = append(p.profiles, ordered)
	}
	return p, nil
}

// Release is the stub's release.
func (p *Plan) Release() Release { return p.release }

// Contexts is the number of .pcrsig sections the UKI gets: one per profile,
// or one for a UKI without profiles.
func (p *Plan) Contexts() int {
	if len(p.profiles) == 0 {
		return 1
	}
	return len(p.profiles)
}

// effective returns the named sections of the whole image (without
// .pcrsig), in output order, as the stub will see them.
func (p *Plan) effective() []*Named {
	var out []*Named
	for _, s := range p.stub.Sections {
		n := &Named{Name: s.Name, R: s.Open(), Size: s.Size()}
		for _, r := range p.replace {
			if r.Name == s.Name {
				n = &Named{Name: r.Name, R: r.R, Size: r.Size}
			}
		}
		out = append(out, n)
	}
	for _, s := range p.base {
		out = append(out, &Named{Name: s.Name, R: s.R, Size: s.Size})
	}
	for _, ps := range p.profiles {
		for _, s := range ps {
			out = append(out, &Named{Name: s.Name, R: s.R, Size: s.Size})
		}
	}
	return out
}

// Predict returns PCR 11 per context (profile), predicting what this
// stub's release measures.
func (p *Plan) Predict(phases []string, banks []measure.Bank) ([]*measure.Result, error) {
	var out []*measure.Result
	for _, prof := range Profiles(p.effective()) {
		ins, _, err := MeasuredInputs(prof.Sections, p.release.Major)
		if err != nil {
			return nil, err
		}
		r, err := measure.Calculate(ins, phases, banks)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Prepare returns the PCR policies to sign, per context.
func (p *Plan) Prepare(phases []string, banks []measure.Bank, pub crypto.PublicKey) ([][]measure.Entry, error) {
	res, err := p.Predict(phases, banks)
	if err != nil {
		return nil, err
	}
	out := make([][]measure.Entry, len(res))
	for i, r := range res {
		if out[i], err = measure.Prepare(r, pub); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// InitrdPolicyRef is the policy reference of the extra enter-initrd
// policies ukify --sign-initrd-pcrs signs (ukify's INITRD_PCR_POLICY).
const InitrdPolicyRef = "initrd"

// PrepareContext returns the PCR policies to sign for context (profile) i
// alone.
func (p *Plan) PrepareContext(i int, phases []string, banks []measure.Bank, pub crypto.PublicKey) ([]measure.Entry, error) {
	res, err := p.Predict(phases, banks)
	if err != nil {
		return nil, err
	}
	if i < 0 || i >= len(res) {
		return nil, fmt.Errorf("no profile %d", i)
	}
	return measure.Prepare(res[i], pub)
}

// unsignedPad is the room ukify leaves per policy in an unsigned .pcrsig
// (1024 spaces for every "pol"), so that a later join fits in place.
const unsignedPad = 1024

// pcrsigBytes is the .pcrsig section content of doc as ukify embeds it:
// Python json.dumps() layout, and for a document still waiting for its
// signatures, ukify's padding.
func pcrsigBytes(doc *measure.PCRSig) []byte {
	b := doc.Marshal(measure.Python)
	n, unsigned := 0, false
	for _, bk := range doc.Banks {
		for _, e := range bk.Entries {
			n++
			unsigned = unsigned || e.Sig == nil
		}
	}
	if unsigned {
		b = append(b, bytes.Repeat([]byte{' '}, unsignedPad*n)...)
	}
	return b
}

// WriteTo writes the UKI with pcrsigs[i] as context i's .pcrsig section
// (ukify's JSON formatting, no trailing NUL; an unsigned document padded
// as ukify pads it); pcrsigs may be nil for a UKI without PCR signatures.
func (p *Plan) WriteTo(w io.Writer, pcrsigs []*measure.PCRSig) (int64, error) {
	if pcrsigs != nil && len(pcrsigs) != p.Contexts() {
		return 0, fmt.Errorf("%d .pcrsig documents for %d profiles", len(pcrsigs), p.Contexts())
	}
	sig := func(i int) []Part {
		if pcrsigs == nil || pcrsigs[i] == nil {
			return nil
		}
		return []Part{BytesPart(".pcrsig", pcrsigBytes(pcrsigs[i]))}
	}
	im := newImage(p.stub, len(p.stub.Sections))
	im.timestamp = p.Timestamp
	for _, r := range p.replace {
		if err := im.replaceInPlace(r); err != nil {
			return 0, err
		}
	}
	var parts []Part
	if len(p.profiles) == 0 {
		parts = append(parts, p.base...)
		parts = append(parts, sig(0)...)
	} else {
		parts = append(parts, p.base...)
		for i, ps := range p.profiles {
			parts = append(parts, ps...)
			parts = append(parts, sig(i)...)
		}
	}
	for _, s := range parts {
		if err := im.add(s); err != nil {
			return 0, err
		}
	}
	return im.WriteTo(w)
}

// MergeSBAT merges SBAT CSV texts like ukify (258 and later): one
// "sbat,1,..." header, then the lines after each text's own header, in
// order, every line newline-terminated, no NUL. A text whose first line is
// not an SBAT header contributes all its lines (ukify would drop it).
func MergeSBAT(texts ...[]byte) []byte {
	var b bytes.Buffer
	b.WriteString("sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n")
	for _, t := range texts {
		lines := splitLines(strings.TrimRight(string(t), "\x00"))
		if len(lines) > 0 && strings.HasPrefix(lines[0], "sbat,") {
			lines = lines[1:]
		}
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
	}
	return b.Bytes()
}

// splitLines splits as Python's str.splitlines() does for the line ends
// SBAT texts use (\n, \r\n, \r), without a final empty line.
func splitLines(s string) []string {
	s = strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\r", "\n")
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// peSBAT returns the SBAT text of a PE's .sbat section, nil for input that
// is not a PE or has none or whose .sbat does not start with an SBAT header
// (ukify skips those).
func peSBAT(r io.ReaderAt, size int64) ([]byte, error) {
	f, err := Parse(r, size)
	if err != nil {
		return nil, nil
	}
	s := f.Section(".sbat")
	if s == nil {
		return nil, nil
	}
	if s.Size() > 1<<20 {
		return nil, errors.New(".sbat: larger than 1 MiB")
	}
	b, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf(".sbat: %w", err)
	}
	if !bytes.HasPrefix(bytes.TrimLeft(b, "\x00"), []byte("sbat,")) {
		return nil, nil
	}
	return b, nil
}

// mergedSBAT is the .sbat ukify 258+ writes: the stub's and the kernel's
// SBAT lines, then those of the given .sbat text or DefaultSBAT. When no
// text was given and the result does not fit an older stub's .sbat (Debian
// 12's leaves 256 bytes), the stub's .sbat stays as it is (nil), the layout
// of ukify ≤ 256; a given text that does not fit is an error later.
func mergedSBAT(stub *File, linux Part, byName map[string]Part) (*Part, error) {
	var own []byte
	var room int64 = -1
	for i, s := range stub.Sections {
		if s.Name != ".sbat" {
			continue
		}
		var err error
		if own, err = s.Data(); err != nil {
			return nil, fmt.Errorf("stub .sbat: %w", err)
		}
		room = int64(s.SizeOfRawData)
		if i+1 < len(stub.Sections) {
			room = min(room, int64(stub.Sections[i+1].VirtualAddress)-int64(s.VirtualAddress))
		}
	}
	kernel, err := peSBAT(linux.R, linux.Size)
	if err != nil {
		return nil, fmt.Errorf(".linux %w", err)
	}
	text := []byte(DefaultSBAT)
	given, ok := byName[".sbat"]
	if ok {
		if given.Size > 1<<20 {
			return nil, errors.New(".sbat: larger than 1 MiB")
		}
		text = make([]byte, given.Size)
		if _, err := given.R.ReadAt(text, 0); err != nil && err != io.EOF {
			return nil, fmt.Errorf(".sbat: %w", err)
		}
	}
	m := MergeSBAT(own, kernel, text)
	if !ok && room >= 0 && int64(len(m)) > room {
		return nil, nil
	}
	part := BytesPart(".sbat", m)
	return &part, nil
}

// Concat returns a Part reading the given inputs one after the other, each
// zero-padded to a multiple of 4 bytes: how ukify joins several initrds
// into one .initrd (the kernel unpacks concatenated cpio archives).
func Concat(name string, inputs []Part) Part {
	if len(inputs) == 1 {
		p := inputs[0]
		p.Name = name
		return p
	}
	c := &concat{}
	for _, in := range inputs {
		c.parts = append(c.parts, in)
		c.offs = append(c.offs, c.size)
		c.size += alignUp(in.Size, 4)
	}
	return Part{Name: name, R: c, Size: c.size}
}

type concat struct {
	parts []Part
	offs  []int64
	size  int64
}

func (c *concat) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for i, part := range c.parts {
		if len(p) == 0 {
			break
		}
		start, end := c.offs[i], c.offs[i]+alignUp(part.Size, 4)
		if off+int64(n) >= end || off+int64(n) < start {
			continue
		}
		rel := off + int64(n) - start
		for rel < end-start && len(p) > 0 {
			var k int
			if rel < part.Size {
				m := min(int64(len(p)), part.Size-rel)
				var err error
				k, err = part.R.ReadAt(p[:m], rel)
				if int64(k) < m {
					if err == nil || err == io.EOF {
						err = io.ErrUnexpectedEOF
					}
					return n + k, err
				}
			} else {
				m := min(int64(len(p)), end-start-rel)
				for j := int64(0); j < m; j++ {
					p[j] = 0
				}
				k = int(m)
			}
			n += k
			rel += int64(k)
			p = p[k:]
		}
	}
	if len(p) > 0 {
		return n, io.EOF
	}
	return n, nil
}
