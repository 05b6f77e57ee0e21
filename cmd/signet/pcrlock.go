package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"signet.dev/internal/atomicfile"
	"signet.dev/pcrlock"
)

func init() { commands = append(commands, newPcrlockCmd) }

func newPcrlockCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pcrlock",
		Short: "Make systemd-pcrlock .pcrlock files offline and check how many PCR values they allow",
	}
	cmd.AddCommand(newPcrlockLockUKICmd(), newPcrlockLockPECmd(), newPcrlockCheckCmd())
	return cmd
}

// writePcrlock writes b to path atomically, or to stdout when path is "".
func writePcrlock(cmd *cobra.Command, path string, b []byte) error {
	if path == "" {
		_, err := cmd.OutOrStdout().Write(b)
		return err
	}
	return atomicfile.WriteFile(path, b, 0o644)
}

func openInput(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%s: not a regular file", path)
	}
	return f, fi.Size(), nil
}

// variantName is the file a profile's variant gets in a .pcrlock.d
// directory: the UKI's name without .efi, and the profile.
func variantName(uki string, v pcrlock.Variant) string {
	base := strings.TrimSuffix(filepath.Base(uki), ".efi")
	if v.Profile < 0 {
		return base + ".pcrlock"
	}
	return fmt.Sprintf("%s-profile%d.pcrlock", base, v.Profile)
}

// writeVariants writes every variant into dir, the whole set or nothing.
func writeVariants(dir, uki string, vs []pcrlock.Variant) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var done []string
	for _, v := range vs {
		p := filepath.Join(dir, variantName(uki, v))
		if err := atomicfile.WriteFile(p, v.File.Marshal(), 0o644); err != nil {
			for _, d := range done {
				os.Remove(d)
			}
			return err
		}
		done = append(done, p)
	}
	return nil
}

func isVariantDir(path string) bool {
	return strings.HasSuffix(strings.TrimRight(path, "/"), ".pcrlock.d")
}

// checkPcrlockTarget refuses, before anything is written, a single file
// for a UKI with several boot profiles.
func checkPcrlockTarget(path string, profiles int) error {
	if path != "" && profiles > 1 && !isVariantDir(path) {
		return fmt.Errorf("--pcrlock=%s: %d boot profiles, one .pcrlock variant each: give a DIR.pcrlock.d", path, profiles)
	}
	return nil
}

// writeUKIPcrlock writes the .pcrlock of the UKI at uki to path (a file or
// a DIR.pcrlock.d); "" writes nothing.
func writeUKIPcrlock(path, uki string) error {
	if path == "" {
		return nil
	}
	f, size, err := openInput(uki)
	if err != nil {
		return err
	}
	defer f.Close()
	vs, err := pcrlock.LockUKI(f, size)
	if err != nil {
		return fmt.Errorf("%s: %w", uki, err)
	}
	if isVariantDir(path) {
		return writeVariants(path, uki, vs)
	}
	if err := checkPcrlockTarget(path, len(vs)); err != nil {
		return err
	}
	return atomicfile.WriteFile(path, vs[0].File.Marshal(), 0o644)
}

func newPcrlockLockUKICmd() *cobra.Command {
	var out string
	var profile int
	cmd := &cobra.Command{
		Use:   "lock-uki UKI [--pcrlock=FILE|DIR.pcrlock.d] [--profile=N]",
		Short: "Write the .pcrlock of a UKI: its PCR 4 record and the PCR 11 records of what its stub measures",
		Long: `Writes what systemd-pcrlock lock-uki writes for UKI (byte for byte where the
UKI's stub measures what lock-uki assumes): the PCR 4 record (the Authenticode
hash, unchanged by Secure Boot signing) and, in canonical order, the PCR 11
records of every section the UKI's own systemd-stub release measures, skipping
empty sections. A multi-profile UKI has one variant per boot profile: give
--pcrlock=DIR.pcrlock.d to write them all (UKI-profileN.pcrlock), or --profile=N
for one. --pcrlock=DIR.pcrlock.d with a single-profile UKI writes DIR.pcrlock.d/UKI.pcrlock
(UKI without .efi).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, size, err := openInput(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			vs, err := pcrlock.LockUKI(f, size)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if cmd.Flags().Changed("profile") {
				var pick []pcrlock.Variant
				for _, v := range vs {
					if v.Profile == profile {
						pick = append(pick, v)
					}
				}
				if len(pick) == 0 {
					return fmt.Errorf("%s: no boot profile %d (it has %d)", args[0], profile, len(vs))
				}
				vs = pick
			}
			if isVariantDir(out) {
				return writeVariants(out, args[0], vs)
			}
			if len(vs) > 1 {
				return fmt.Errorf("%s: %d boot profiles, one .pcrlock variant each: give --pcrlock=DIR.pcrlock.d or --profile=N", args[0], len(vs))
			}
			return writePcrlock(cmd, out, vs[0].File.Marshal())
		},
	}
	cmd.Flags().StringVar(&out, "pcrlock", "", "file to write (default: standard output), or a DIR.pcrlock.d directory for one file per profile")
	cmd.Flags().IntVar(&profile, "profile", 0, "only this boot profile's variant")
	return cmd
}

func newPcrlockLockPECmd() *cobra.Command {
	var out string
	var pcr int
	cmd := &cobra.Command{
		Use:   "lock-pe PE [--pcrlock=FILE] [--pcr=4]",
		Short: "Write the .pcrlock of a PE image (boot loader, UKI) as the firmware measures it",
		Long: `Writes what systemd-pcrlock lock-pe writes: one record of the PE image's
Authenticode hash in all four banks, on PCR 4 unless --pcr= says otherwise.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, size, err := openInput(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			lf, err := pcrlock.LockPE(f, size, pcr)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			return writePcrlock(cmd, out, lf.Marshal())
		},
	}
	cmd.Flags().StringVar(&out, "pcrlock", "", "file to write (default: standard output)")
	cmd.Flags().IntVar(&pcr, "pcr", pcrlock.PEPCR, "PCR the image is measured into")
	return cmd
}

// readVariants reads a .pcrlock file (one variant) or the *.pcrlock files
// of a .pcrlock.d directory (one variant each).
func readVariants(path string) ([]*pcrlock.File, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	paths := []string{path}
	if fi.IsDir() {
		if paths, err = filepath.Glob(filepath.Join(path, "*.pcrlock")); err != nil {
			return nil, err
		}
		if len(paths) == 0 {
			return nil, fmt.Errorf("%s: no .pcrlock files in the directory", path)
		}
	}
	var out []*pcrlock.File
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		f, err := pcrlock.Parse(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		out = append(out, f)
	}
	return out, nil
}

// componentID is systemd-pcrlock's id of a component file or directory.
func componentID(path string) string {
	b := filepath.Base(strings.TrimRight(path, "/"))
	if c, ok := strings.CutSuffix(b, ".pcrlock.d"); ok {
		return c
	}
	return strings.TrimSuffix(b, ".pcrlock")
}

func newPcrlockCheckCmd() *cobra.Command {
	var (
		component, location string
		dirs                []string
	)
	cmd := &cobra.Command{
		Use:   "check RELEASE.pcrlock|DIR.pcrlock.d... [--component=650-uki] [--components=DIR]... [--location=770]",
		Short: "Count the values per PCR a set of releases' .pcrlock files lets a pcrlock policy allow",
		Long: `Takes the .pcrlock files of every release a machine may hold at once (each a
variant of one component, --component=, 650-uki by default; a DIR.pcrlock.d
counts each file in it) and optionally directories laid out like pcrlock.d
with the other components (the phase files of /usr/lib/pcrlock.d), and prints
per PCR how many values systemd-pcrlock predict would allow within the
--location= window, trying every combination of variants. Fails when a PCR has
more than 8: systemd-pcrlock make-policy cannot build that policy (the TPM's
PolicyOR takes 8 branches).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w := pcrlock.DefaultWindow
			if location != "" {
				var err error
				if w, err = pcrlock.ParseWindow(location); err != nil {
					return err
				}
			}
			byID := map[string]*pcrlock.Component{}
			var comps []*pcrlock.Component
			add := func(id string, vs []*pcrlock.File) {
				c := byID[id]
				if c == nil {
					c = &pcrlock.Component{ID: id}
					byID[id] = c
					comps = append(comps, c)
				}
				c.Variants = append(c.Variants, vs...)
			}
			for _, a := range args {
				vs, err := readVariants(a)
				if err != nil {
					return err
				}
				add(component, vs)
			}
			for _, d := range dirs {
				ents, err := os.ReadDir(d)
				if err != nil {
					return err
				}
				for _, e := range ents {
					n := e.Name()
					if !strings.HasSuffix(n, ".pcrlock") && !strings.HasSuffix(n, ".pcrlock.d") {
						continue
					}
					vs, err := readVariants(filepath.Join(d, n))
					if err != nil {
						return err
					}
					add(componentID(n), vs)
				}
			}
			var list []pcrlock.Component
			for _, c := range comps {
				list = append(list, *c)
			}
			counts := pcrlock.Predict(list, w)
			over := false
			for _, c := range counts {
				mark := ""
				if c.Values > pcrlock.MaxAlternatives {
					mark = fmt.Sprintf(" (more than %d: make-policy fails)", pcrlock.MaxAlternatives)
					over = true
				}
				unit := "values"
				if c.Values == 1 {
					unit = "value"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "PCR %d: %d %s%s\n", c.PCR, c.Values, unit, mark)
			}
			if over {
				advice := "ship only the booted and the next release's .pcrlock"
				if w != (pcrlock.Window{Start: "770", End: "770"}) {
					advice += ", or make the policy for the initrd only (make-policy --location=770, as the stock service does: one PCR 11 value per release)"
				}
				return fmt.Errorf("a TPM policy allows at most %d values per PCR: %s", pcrlock.MaxAlternatives, advice)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&component, "component", "650-uki", "component id the release files are variants of")
	cmd.Flags().StringArrayVar(&dirs, "components", nil, "directory of further components, laid out like /usr/lib/pcrlock.d (repeatable)")
	cmd.Flags().StringVar(&location, "location", "", "location window START:END or one point (default 760-:940-, systemd-pcrlock's)")
	return cmd
}
