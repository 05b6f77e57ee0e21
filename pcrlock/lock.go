package pcrlock

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"signet.dev/authenticode"
	"signet.dev/measure"
	"signet.dev/uki"
)

// PEPCR is the PCR the firmware measures EFI applications into.
const PEPCR = 4

// PERecord returns the record of the PE image in r (size bytes) on pcr:
// its Authenticode hash in every bank, as the firmware measures a loaded
// image (EV_EFI_BOOT_SERVICES_APPLICATION) and systemd-pcrlock lock-pe
// records it. A Secure Boot signature does not change it.
func PERecord(r io.ReaderAt, size int64, pcr int) (Record, error) {
	if pcr < 0 || pcr > 23 {
		return Record{}, fmt.Errorf("PCR %d out of range 0…23", pcr)
	}
	f, err := authenticode.Parse(r, size)
	if err != nil {
		return Record{}, err
	}
	// One pass per bank, in parallel. Zero-padded to 8 bytes, as
	// systemd-pcrlock 262 hashes an image whose length is not a
	// multiple of 8.
	ds, err := perBank(func(b measure.Bank) ([]byte, error) { return f.Digest(b.Hash) })
	if err != nil {
		return Record{}, err
	}
	return NewRecord(pcr, ds), nil
}

// LockPE returns the .pcrlock of a PE image measured into pcr.
func LockPE(r io.ReaderAt, size int64, pcr int) (*File, error) {
	rec, err := PERecord(r, size, pcr)
	if err != nil {
		return nil, err
	}
	return &File{Records: []Record{rec}}, nil
}

// Variant is the .pcrlock of one boot profile of a UKI.
type Variant struct {
	Profile int    // profile index, -1 for a UKI without .profile sections
	ID      string // ID= of the .profile text, if any
	File    *File
}

// ErrUKI is wrapped by errors about a UKI whose measurements cannot be
// known.
var ErrUKI = errors.New("cannot lock UKI")

// LockUKI returns the .pcrlock variants of the UKI in r: one per boot
// profile, each the PCR 4 record of the whole image followed by the PCR 11
// records of what the UKI's systemd-stub release measures for that
// profile, in canonical section order.
func LockUKI(r io.ReaderAt, size int64) ([]Variant, error) {
	pe, err := PERecord(r, size, PEPCR)
	if err != nil {
		return nil, err
	}
	f, err := uki.Parse(r, size)
	if err != nil {
		return nil, err
	}
	rel, err := f.StubRelease()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUKI, err)
	}
	secs := make([]*uki.Named, len(f.Sections))
	for i, s := range f.Sections {
		secs[i] = &uki.Named{Name: s.Name, R: s.Open(), Size: s.Size()}
	}
	var out []Variant
	for _, p := range uki.Profiles(secs) {
		ins, _, err := uki.MeasuredInputs(p.Sections, rel.Major)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrUKI, err)
		}
		slices.SortStableFunc(ins, func(a, b measure.Input) int { return int(a.Section - b.Section) })
		for i := 1; i < len(ins); i++ {
			if ins[i].Section == ins[i-1].Section {
				return nil, fmt.Errorf("%w: profile %d has section %s twice", ErrUKI, p.Index, ins[i].Section)
			}
		}
		v := Variant{Profile: p.Index, File: &File{Records: []Record{pe}}}
		for _, in := range ins {
			v.File.Records = append(v.File.Records, DataRecord(measure.PCR, []byte(in.Section.String()+"\x00")))
			ds, err := perBank(func(b measure.Bank) ([]byte, error) {
				h := b.Hash.New()
				_, err := io.Copy(h, io.NewSectionReader(in.R, 0, in.Size))
				return h.Sum(nil), err
			})
			if err != nil {
				return nil, fmt.Errorf("section %s: %w", in.Section, err)
			}
			v.File.Records = append(v.File.Records, NewRecord(measure.PCR, ds))
			if in.Section == measure.Profile && in.Size < 1<<16 {
				v.ID = profileID(in)
			}
		}
		out = append(out, v)
	}
	return out, nil
}

func profileID(in measure.Input) string {
	b := make([]byte, in.Size)
	if _, err := in.R.ReadAt(b, 0); err != nil && err != io.EOF {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "ID="); ok {
			return strings.Trim(strings.TrimRight(v, "\x00"), `"`)
		}
	}
	return ""
}

// perBank runs fn for every bank in parallel: large images are hashed
// once per bank, and the banks do not depend on each other.
func perBank(fn func(measure.Bank) ([]byte, error)) ([][]byte, error) {
	ds := make([][]byte, len(Banks))
	errs := make([]error, len(Banks))
	var wg sync.WaitGroup
	for i, b := range Banks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ds[i], errs[i] = fn(b)
		}()
	}
	wg.Wait()
	return ds, errors.Join(errs...)
}
