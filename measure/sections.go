// Package measure predicts the PCR 11 values systemd-stub and
// systemd-pcrphase produce when a unified kernel image (UKI) boots, and
// builds the signed PCR policies (the .pcrsig JSON) systemd-measure makes
// from them.
//
// PCR 11 starts at zero in every bank. For each UKI section the stub
// measures, in the canonical order of systemd's UnifiedSection enum, two
// events are extended: the section name with its terminating NUL, then the
// section's contents. Empty sections are skipped. Each boot phase word
// (enter-initrd, leave-initrd, sysinit, ready, ...) is then extended as
// H(word), without a NUL:
//
//	extend(d): PCR = H(PCR || d)
//	for each section: extend(H(name || 0x00)); extend(H(contents))
//	for each word of the phase path: extend(H(word))
//
// A signature over a PCR value signs its TPM2 PolicyPCR digest (pol, see
// package tpm2policy), so the signing itself follows signet's prepare, sign,
// join shape: Prepare yields one Entry per bank and phase whose
// to-be-signed bytes are the 32 bytes of pol with crypto.SHA256; Join checks
// the raw signatures and builds the PCRSig document.
package measure

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// Section is a UKI section in the canonical measurement order (systemd's
// enum UnifiedSection, "PLEASE DO NOT REORDER").
type Section int

const (
	Linux Section = iota
	OSRel
	Cmdline
	Initrd
	UCode
	Splash
	DTB
	UName
	SBAT
	PCRSigSection // .pcrsig, never measured
	PCRPKey
	Profile
	DTBAuto
	HWIDs
	EFIFW
	numSections
)

var sectionNames = [numSections]string{
	".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb",
	".uname", ".sbat", ".pcrsig", ".pcrpkey", ".profile", ".dtbauto", ".hwids", ".efifw",
}

// AllSections lists every known section in canonical order.
func AllSections() []Section {
	s := make([]Section, numSections)
	for i := range s {
		s[i] = Section(i)
	}
	return s
}

// String returns the PE section name, e.g. ".linux".
func (s Section) String() string {
	if s < 0 || s >= numSections {
		return fmt.Sprintf("Section(%d)", int(s))
	}
	return sectionNames[s]
}

// SectionByName returns the section with PE name name (".linux").
func SectionByName(name string) (Section, bool) {
	for i, n := range sectionNames {
		if n == name {
			return Section(i), true
		}
	}
	return 0, false
}

// Measured reports whether systemd ever measures s into PCR 11 (.pcrsig,
// which carries the signatures, is the one exception).
func (s Section) Measured() bool { return s >= 0 && s < numSections && s != PCRSigSection }

// Input is the content of one section: Size bytes read from R at offset 0.
type Input struct {
	Section Section
	R       io.ReaderAt
	Size    int64
	// Origin names where the content came from, for error messages.
	Origin string
}

// BytesInput returns an Input over b.
func BytesInput(s Section, b []byte) Input {
	return Input{Section: s, R: bytes.NewReader(b), Size: int64(len(b)), Origin: s.String()}
}

// ErrEmptySection is returned by OpenFile for an empty file: systemd skips
// empty sections, and an empty file given for one is almost always a
// mistake in the build.
var ErrEmptySection = errors.New("file is empty")

// OpenFile opens path as the content of section s. The caller closes the
// returned file after use.
func OpenFile(s Section, path string) (Input, *os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return Input{}, nil, fmt.Errorf("%s for %s: %w", path, s, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return Input{}, nil, fmt.Errorf("%s for %s: %w", path, s, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return Input{}, nil, fmt.Errorf("%s for %s: not a regular file", path, s)
	}
	if fi.Size() == 0 {
		f.Close()
		return Input{}, nil, fmt.Errorf("%s for %s: %w", path, s, ErrEmptySection)
	}
	return Input{Section: s, R: f, Size: fi.Size(), Origin: path}, f, nil
}
