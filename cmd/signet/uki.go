package main

import (
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"signet.dev/internal/atomicfile"
	"signet.dev/keys"
	"signet.dev/measure"
	"signet.dev/uki"
)

func init() { commands = append(commands, newUKICmd) }

func newUKICmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "uki",
		Short: "Assemble, inspect and PCR-sign unified kernel images (as ukify)",
	}
	root.AddCommand(newUKIBuildCmd(), newUKIJoinCmd(), newUKIInspectCmd())
	return root
}

// openPart opens a file as a section's content.
func openPart(name, path string, closers *[]*os.File) (uki.Part, error) {
	f, err := os.Open(path)
	if err != nil {
		return uki.Part{}, fmt.Errorf("%s for %s: %w", path, name, err)
	}
	*closers = append(*closers, f)
	fi, err := f.Stat()
	if err != nil {
		return uki.Part{}, fmt.Errorf("%s for %s: %w", path, name, err)
	}
	if !fi.Mode().IsRegular() {
		return uki.Part{}, fmt.Errorf("%s for %s: not a regular file", path, name)
	}
	if fi.Size() == 0 {
		return uki.Part{}, fmt.Errorf("%s for %s: file is empty", path, name)
	}
	return uki.Part{Name: name, R: f, Size: fi.Size()}, nil
}

// textPart is TEXT or @FILE.
func textPart(name, v string) (uki.Part, error) {
	b, src, err := readArg(v)
	if err != nil {
		return uki.Part{}, fmt.Errorf("%s for %s: %w", src, name, err)
	}
	if len(b) == 0 {
		return uki.Part{}, fmt.Errorf("%s for %s: empty", src, name)
	}
	return uki.BytesPart(name, b), nil
}

// openUKI parses a PE file.
func openUKI(path string, closers *[]*os.File) (*uki.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	*closers = append(*closers, f)
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	u, err := uki.Parse(f, fi.Size())
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	return u, fi.Size(), nil
}

func splitList(v string) []string {
	return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' })
}

func newUKIBuildCmd() *cobra.Command {
	var (
		stub, linux, cmdline, osrel, uname, splash, dtb, sbat, profile, output string
		pcrlockOut                                                             string
		initrds, joinProfiles                                                  []string
		pcrKey, pcrKeySource, pcrPub, pcrCert, phases, banks, policyRef        string
		policyDigest, signInitrd                                               bool
	)
	cmd := &cobra.Command{
		Use:   "build --stub=STUB --linux=KERNEL [--initrd=F]... [--cmdline=TEXT|@F] [--os-release=TEXT|@F] [--pcr-private-key=KEY --pcr-public-key=PEM] --output=UKI",
		Short: "Assemble a UKI from the systemd stub, predict and sign its PCR 11 policy",
		Long: `Assembles a unified kernel image from a systemd-stub binary as ukify lays it
out, and embeds .pcrpkey and a .pcrsig with signed PCR 11 policies for exactly
the sections that stub release measures. With --policy-digest the .pcrsig
carries the policies without signatures and they are printed (one JSON line
per profile) for signing elsewhere; "signet uki join-pcrsig" adds the
signatures later. --policyref= binds the policies to a TPM2 policy reference;
--sign-initrd-pcrs adds, as ukify 262 does, an enter-initrd policy per bank
bound to the reference "initrd" (what systemd 262's NvPCR setup wants).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if stub == "" || linux == "" || output == "" {
				return errors.New("--stub=, --linux= and --output= are required")
			}
			var closers []*os.File
			defer func() {
				for _, f := range closers {
					f.Close()
				}
			}()
			st, _, err := openUKI(stub, &closers)
			if err != nil {
				return fmt.Errorf("stub %w", err)
			}
			var parts []uki.Part
			add := func(p uki.Part, err error) error {
				if err == nil {
					parts = append(parts, p)
				}
				return err
			}
			if err := add(openPart(".linux", linux, &closers)); err != nil {
				return err
			}
			if len(initrds) > 0 {
				var ins []uki.Part
				for _, p := range initrds {
					in, err := openPart(".initrd", p, &closers)
					if err != nil {
						return err
					}
					ins = append(ins, in)
				}
				parts = append(parts, uki.Concat(".initrd", ins))
			}
			for _, t := range []struct{ name, v string }{{".cmdline", cmdline}, {".osrel", osrel}, {".uname", uname}, {".profile", profile}} {
				if t.v != "" {
					if err := add(textPart(t.name, t.v)); err != nil {
						return err
					}
				}
			}
			for _, t := range []struct{ name, v string }{{".splash", splash}, {".dtb", dtb}} {
				if t.v != "" {
					if err := add(openPart(t.name, t.v, &closers)); err != nil {
						return err
					}
				}
			}
			if sbat != "" {
				b, src, err := readArg(sbat)
				if err != nil {
					return fmt.Errorf("%s for .sbat: %w", src, err)
				}
				parts = append(parts, uki.BytesPart(".sbat", b))
			}

			// The PCR key: .pcrpkey is the given PEM verbatim, else the
			// certificate's or private key's public key as PEM.
			var signer keys.Signer
			var pub crypto.PublicKey
			var pcrpkey []byte
			if pcrPub != "" && pcrCert != "" {
				return errors.New("--pcr-public-key= and --pcr-certificate= are mutually exclusive")
			}
			if pcrKey != "" {
				if signer, err = keys.Open(pcrKeySource, pcrKey); err != nil {
					return err
				}
				defer signer.Close()
				pub = signer.Public()
				if w := keys.PCRPolicyWarning(pub); w != "" {
					fmt.Fprintln(cmd.ErrOrStderr(), w)
				}
			}
			switch {
			case pcrPub != "":
				if pcrpkey, err = os.ReadFile(pcrPub); err != nil {
					return err
				}
				p, err := keys.ParsePublicKeyPEM(pcrpkey)
				if err != nil {
					return fmt.Errorf("%s: %w", pcrPub, err)
				}
				if pub != nil && !keys.SamePublicKey(pub, p) {
					return fmt.Errorf("private key %s does not match the public key in %s", pcrKey, pcrPub)
				}
				pub = p
			case pcrCert != "":
				c, err := keys.LoadCertificate(pcrCert)
				if err != nil {
					return err
				}
				if pub != nil && !keys.SamePublicKey(pub, c.PublicKey) {
					return fmt.Errorf("private key %s does not match the certificate %s", pcrKey, pcrCert)
				}
				pub = c.PublicKey
			}
			if pub != nil && pcrpkey == nil {
				if pcrpkey, err = keys.MarshalPublicKeyPEM(pub); err != nil {
					return err
				}
			}
			if signInitrd && pub == nil {
				return errors.New("--sign-initrd-pcrs needs --pcr-private-key= or --policy-digest")
			}
			if policyDigest && pub == nil {
				return errors.New("--policy-digest needs --pcr-public-key= or --pcr-certificate=")
			}
			if !policyDigest && pub != nil && signer == nil {
				return errors.New("a PCR public key without --pcr-private-key=: give the private key, or --policy-digest to sign offline")
			}
			if pcrpkey != nil {
				parts = append(parts, uki.BytesPart(".pcrpkey", pcrpkey))
			}

			var profiles [][]uki.Part
			for _, jp := range joinProfiles {
				pf, _, err := openUKI(jp, &closers)
				if err != nil {
					return fmt.Errorf("profile %w", err)
				}
				var ps []uki.Part
				for _, s := range pf.Sections {
					for _, n := range uki.ProfileSections {
						if s.Name == n {
							ps = append(ps, uki.Part{Name: s.Name, R: s.Open(), Size: s.Size()})
						}
					}
				}
				profiles = append(profiles, ps)
			}

			plan, err := uki.NewPlan(st, parts, profiles)
			if err != nil {
				return fmt.Errorf("%s: %w", stub, err)
			}
			if err := checkPcrlockTarget(pcrlockOut, plan.Contexts()); err != nil {
				return err
			}
			var docs []*measure.PCRSig
			if pub != nil {
				ph, err := measure.ParsePhases(splitList(phases))
				if err != nil {
					return err
				}
				bk, err := measure.ParseBanks(splitList(banks))
				if err != nil {
					return err
				}
				entries, err := plan.Prepare(ph, bk, pub)
				if err != nil {
					return err
				}
				for i, es := range entries {
					es = measure.WithRef(es, policyRef)
					if signInitrd {
						// ukify's extra signing group: the first key,
						// phase enter-initrd, policy reference "initrd".
						ie, err := plan.PrepareContext(i, []string{"enter-initrd"}, bk, pub)
						if err != nil {
							return err
						}
						es = append(es, measure.WithRef(ie, uki.InitrdPolicyRef)...)
					}
					var doc *measure.PCRSig
					if policyDigest {
						doc = measure.PolicyDigest(es)
						fmt.Fprintf(cmd.OutOrStdout(), "%s\n", doc.Marshal(measure.Short))
					} else if doc, err = measure.Sign(es, signer); err != nil {
						return err
					}
					docs = append(docs, doc)
				}
			}
			out, err := atomicfile.Create(output, 0o644)
			if err != nil {
				return err
			}
			defer out.Close()
			if _, err := plan.WriteTo(out, docs); err != nil {
				return fmt.Errorf("%s: %w", output, err)
			}
			if err := out.Commit(); err != nil {
				return err
			}
			return writeUKIPcrlock(pcrlockOut, output)
		},
	}
	f := cmd.Flags()
	f.StringVar(&stub, "stub", "", "systemd-stub EFI binary (e.g. /usr/lib/systemd/boot/efi/linuxx64.efi.stub)")
	f.StringVar(&linux, "linux", "", "kernel image [.linux]")
	f.StringArrayVar(&initrds, "initrd", nil, "initrd [.initrd] (repeatable; concatenated like ukify)")
	f.StringVar(&cmdline, "cmdline", "", "kernel command line TEXT or @FILE [.cmdline]")
	f.StringVar(&osrel, "os-release", "", "os-release TEXT or @FILE [.osrel]")
	f.StringVar(&uname, "uname", "", "kernel version [.uname]")
	f.StringVar(&splash, "splash", "", "splash image file [.splash]")
	f.StringVar(&dtb, "dtb", "", "devicetree file [.dtb]")
	f.StringVar(&sbat, "sbat", "", "SBAT TEXT or @FILE, merged with the stub's and kernel's [.sbat] (default: ukify's uki line)")
	f.StringVar(&profile, "profile", "", "profile metadata TEXT or @FILE for the main UKI [.profile]")
	f.StringArrayVar(&joinProfiles, "join-profile", nil, "PE with a profile's sections to append (repeatable)")
	f.StringVar(&pcrKey, "pcr-private-key", "", "key that signs the PCR 11 policies: PEM file or pkcs11: URI")
	f.StringVar(&pcrKeySource, "pcr-private-key-source", "file", "where --pcr-private-key is: file or provider:pkcs11")
	f.StringVar(&pcrPub, "pcr-public-key", "", "PEM public key, embedded verbatim as .pcrpkey")
	f.StringVar(&pcrCert, "pcr-certificate", "", "certificate whose public key becomes .pcrpkey")
	f.StringVar(&phases, "phases", "", "phase paths to sign for, comma or space separated (default: the four systemd-measure signs)")
	f.StringVar(&banks, "pcr-banks", "", "PCR banks, comma separated (default: sha1,sha256,sha384,sha512)")
	f.BoolVar(&policyDigest, "policy-digest", false, "embed and print the policies unsigned, for offline signing")
	f.StringVar(&policyRef, "policyref", "", "TPM2 policy reference to bind the PCR signatures to")
	f.BoolVar(&signInitrd, "sign-initrd-pcrs", false, "also sign an enter-initrd policy per bank bound to the policy reference \"initrd\" (ukify 262)")
	f.StringVar(&output, "output", "", "UKI to write")
	f.StringVar(&pcrlockOut, "pcrlock", "", "also write the UKI's .pcrlock (signet pcrlock lock-uki) to this file, or DIR.pcrlock.d")
	return cmd
}

func newUKIJoinCmd() *cobra.Command {
	var (
		pcrsig, output string
		profile        int
	)
	cmd := &cobra.Command{
		Use:   "join-pcrsig UKI --pcrsig=JSON|@FILE [--profile-index=N] --output=OUT",
		Short: "Replace a UKI's .pcrsig with signed policies, verifying them first",
		Long: `Writes a copy of UKI with the given .pcrsig JSON (ukify --join-pcrsig). Every
entry's pol must be the PolicyPCR digest of a PCR 11 value the UKI's measured
sections produce, and its signature must verify with the UKI's .pcrpkey.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if pcrsig == "" || output == "" {
				return errors.New("--pcrsig= and --output= are required")
			}
			doc, err := readPCRSigArg(pcrsig)
			if err != nil {
				return err
			}
			var closers []*os.File
			defer func() {
				for _, f := range closers {
					f.Close()
				}
			}()
			u, _, err := openUKI(args[0], &closers)
			if err != nil {
				return err
			}
			out, err := atomicfile.Create(output, 0o644)
			if err != nil {
				return err
			}
			defer out.Close()
			if _, err := uki.JoinPCRSig(u, profile, doc, out); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			return out.Commit()
		},
	}
	cmd.Flags().StringVar(&pcrsig, "pcrsig", "", "signed .pcrsig JSON, or @FILE")
	cmd.Flags().StringVar(&output, "output", "", "UKI to write")
	cmd.Flags().IntVar(&profile, "profile-index", 0, "profile whose .pcrsig to replace, in a multi-profile UKI")
	return cmd
}

func newUKIInspectCmd() *cobra.Command {
	var (
		asJSON        bool
		phases, banks []string
	)
	cmd := &cobra.Command{
		Use:   "inspect UKI [--json]",
		Short: "Show a UKI's sections, profiles, PCR 11 predictions, .pcrsig and Authenticode signatures",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ph, err := measure.ParsePhases(phases)
			if err != nil {
				return err
			}
			bk, err := measure.ParseBanks(banks)
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			rep, err := uki.Inspect(f, fi.Size(), ph, bk)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			return rep.WriteText(cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringArrayVar(&phases, "phase", nil, "phase path to predict (repeatable; default the four systemd-measure signs)")
	cmd.Flags().StringArrayVar(&banks, "bank", nil, "PCR bank (repeatable; default all four)")
	return cmd
}
