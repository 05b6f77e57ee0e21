// Package uki reads and assembles unified kernel images (UKIs): a
// systemd-stub EFI binary with the kernel, initrd, command line and other
// resources added as PE sections, as ukify builds them, and predicts what
// the stub measures into PCR 11.
//
// The stub decides what is measured: each systemd-stub release measures
// only the sections it knows, so a signed PCR policy must follow the stub's
// release (read from its .sdmagic section), not the newest tool's list. See
// MeasuredSections.
//
// Building follows ukify 258 and later (byte for byte with ukify 262):
// sections are added after the stub's in the order .osrel .cmdline .dtb
// .dtbauto .hwids .uname .splash .pcrpkey .linux .initrd .efifw .ucode
// .sbat .profile .pcrsig, each at the next SectionAlignment boundary in
// memory after the last section, with VirtualSize the data length, raw data
// padded to FileAlignment, .linux marked as code and the others as
// initialized data. .sbat merges the stub's, the kernel's and the given (or
// ukify's default) SBAT lines and replaces the stub's in place. SizeOfImage
// covers the last section; CheckSum is zeroed as ukify does (sbsign and
// signet sbsign recompute it when signing); TimeDateStamp is the stub's, as
// ukify keeps it, so the output depends only on the inputs.
package uki

import (
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"

	"signet.dev/measure"
)

// ErrNoStub is returned for a PE image that is not a systemd-stub (no
// .sdmagic section naming systemd-stub).
var ErrNoStub = errors.New("not a systemd-stub image (no .sdmagic naming systemd-stub)")

// Release is a systemd-stub release as its .sdmagic names it.
type Release struct {
	Version string // e.g. "252.39-1~deb12u2"
	Major   int    // e.g. 252
}

var sdmagicRE = regexp.MustCompile(`^#### LoaderInfo: systemd-stub ([0-9]+)([^ ]*) ####\x00*$`)

// StubRelease reads the stub's release from its .sdmagic section
// ("#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####").
func (f *File) StubRelease() (Release, error) {
	s := f.Section(".sdmagic")
	if s == nil || s.Size() > 4096 {
		return Release{}, ErrNoStub
	}
	b, err := s.Data()
	if err != nil {
		return Release{}, err
	}
	m := sdmagicRE.FindSubmatch(b)
	if m == nil {
		return Release{}, fmt.Errorf("%w: .sdmagic is %q", ErrNoStub, b)
	}
	major, err := strconv.Atoi(string(m[1]))
	if err != nil {
		return Release{}, fmt.Errorf("%w: .sdmagic is %q", ErrNoStub, b)
	}
	return Release{Version: string(m[1]) + string(m[2]), Major: major}, nil
}

// ErrOldStub is returned for stubs older than 252, whose measurements
// signet does not model.
var ErrOldStub = errors.New("systemd-stub older than 252: its PCR 11 measurements are not modelled")

// stubSections: the release each section was first measured in. 252 is
// read from the Debian 12 stub's own name table (.linux .osrel .cmdline
// .initrd .splash .dtb .pcrsig .pcrpkey). The later boundaries are from
// systemd's release notes, not yet checked against each release's stub
// binary: UNCONFIRMED.
var stubSections = []struct {
	section measure.Section
	since   int
}{
	{measure.Linux, 252}, {measure.OSRel, 252}, {measure.Cmdline, 252}, {measure.Initrd, 252},
	{measure.Splash, 252}, {measure.DTB, 252}, {measure.PCRPKey, 252},
	{measure.UName, 253},   // UNCONFIRMED
	{measure.SBAT, 254},    // UNCONFIRMED
	{measure.UCode, 256},   // UNCONFIRMED
	{measure.Profile, 257}, // UNCONFIRMED
	{measure.DTBAuto, 257}, // UNCONFIRMED
	{measure.HWIDs, 257},   // UNCONFIRMED
	{measure.EFIFW, 258},   // UNCONFIRMED, and how the stub picks .efifw is too
}

// MeasuredSections lists, in canonical order, the sections a stub of the
// given major release measures into PCR 11.
func MeasuredSections(major int) ([]measure.Section, error) {
	if major < 252 {
		return nil, fmt.Errorf("%w (release %d)", ErrOldStub, major)
	}
	var out []measure.Section
	for _, s := range measure.AllSections() {
		for _, e := range stubSections {
			if e.section == s && major >= e.since {
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// SinceRelease returns the stub release that first measures s (0: never).
func SinceRelease(s measure.Section) int {
	for _, e := range stubSections {
		if e.section == s {
			return e.since
		}
	}
	return 0
}

// Profile is one boot profile of a UKI: the base sections with the
// profile's own sections overriding them by name.
type Profile struct {
	Index    int      // -1 for a UKI without .profile sections
	Sections []*Named // effective sections, base first, overrides in place
	// PCRSig is the .pcrsig that applies to this profile (its own, else
	// the base's), or nil.
	PCRSig *Named
}

// Named is a section's name and memory contents, from a parsed file or to
// be added.
type Named struct {
	Name string
	R    io.ReaderAt
	Size int64
}

// named returns the file's sections as Named values.
func (f *File) named() []*Named {
	out := make([]*Named, len(f.Sections))
	for i, s := range f.Sections {
		out[i] = &Named{Name: s.Name, R: s.Open(), Size: s.Size()}
	}
	return out
}

// Profiles splits sections the way the stub does: everything before the
// first .profile is the base; each .profile starts profile N. Without
// .profile sections there is one profile, index -1, of all sections.
func Profiles(secs []*Named) []Profile {
	first := -1
	for i, s := range secs {
		if s.Name == ".profile" {
			first = i
			break
		}
	}
	if first < 0 {
		return []Profile{{Index: -1, Sections: secs, PCRSig: findNamed(secs, ".pcrsig")}}
	}
	base := secs[:first]
	var out []Profile
	for i := first; i < len(secs); {
		j := i + 1
		for j < len(secs) && secs[j].Name != ".profile" {
			j++
		}
		own := secs[i:j]
		merged := make([]*Named, 0, len(base)+len(own))
		for _, b := range base {
			if findNamed(own, b.Name) == nil {
				merged = append(merged, b)
			}
		}
		merged = append(merged, own...)
		p := Profile{Index: len(out), Sections: merged, PCRSig: findNamed(own, ".pcrsig")}
		if p.PCRSig == nil {
			p.PCRSig = findNamed(base, ".pcrsig")
		}
		out = append(out, p)
		i = j
	}
	return out
}

func findNamed(secs []*Named, name string) *Named {
	for _, s := range secs {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Decision says whether one section counts for PCR 11 and why.
type Decision struct {
	Name     string
	Measured bool
	Reason   string
}

// MeasuredInputs returns the inputs a stub of release major measures for
// the given effective sections, and for every UKI section the reason it
// does or does not count.
func MeasuredInputs(secs []*Named, major int) ([]measure.Input, []Decision, error) {
	known, err := MeasuredSections(major)
	if err != nil {
		return nil, nil, err
	}
	var ins []measure.Input
	var why []Decision
	for _, s := range secs {
		sec, ok := measure.SectionByName(s.Name)
		if !ok {
			continue // the stub's own code and data
		}
		d := Decision{Name: s.Name}
		switch {
		case sec == measure.PCRSigSection:
			d.Reason = "never measured: it carries the signatures"
		case !slices.Contains(known, sec):
			d.Reason = fmt.Sprintf("not measured: systemd-stub %d does not know it (measured from %d on)", major, SinceRelease(sec))
		case s.Size == 0:
			d.Reason = "not measured: empty"
		default:
			d.Measured = true
			d.Reason = fmt.Sprintf("measured by systemd-stub %d", major)
			ins = append(ins, measure.Input{Section: sec, R: s.R, Size: s.Size, Origin: s.Name})
		}
		why = append(why, d)
	}
	return ins, why, nil
}
