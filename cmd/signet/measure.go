package main

import (
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"signet.dev/internal/atomicfile"
	"signet.dev/keys"
	"signet.dev/measure"
)

func init() { commands = append(commands, newMeasureCmd) }

// measureFlags are systemd-measure's options.
type measureFlags struct {
	sections  map[measure.Section]*string
	phases    []string
	banks     []string
	key       keyFlags
	publicKey string
	appendTo  string
	policyRef string
	json      string
	jflag     bool
	tpmDevice string
	output    string
}

func (m *measureFlags) register(fs *pflag.FlagSet, signing bool) {
	m.sections = map[measure.Section]*string{}
	for _, s := range measure.AllSections() {
		if s == measure.PCRSigSection {
			continue
		}
		name := strings.TrimPrefix(s.String(), ".")
		m.sections[s] = fs.String(name, "", "file with the contents of the "+s.String()+" section")
	}
	fs.StringArrayVar(&m.phases, "phase", nil, "boot phase path to predict for, e.g. enter-initrd:leave-initrd (repeatable)")
	fs.StringArrayVar(&m.banks, "bank", nil, "PCR bank: sha1, sha256, sha384, sha512 (repeatable; default all four)")
	fs.StringVar(&m.json, "json", "", "output format: off, short or pretty")
	fs.BoolVarP(&m.jflag, "json-auto", "j", false, "same as --json=pretty on a terminal, --json=short otherwise")
	fs.StringVar(&m.tpmDevice, "tpm2-device", "", "accepted for compatibility; signet needs no TPM")
	fs.StringVar(&m.output, "output", "", "write the output to this file (atomically) instead of stdout")
	if signing {
		m.key.register(fs)
		fs.StringVar(&m.publicKey, "public-key", "", "public key (PEM) the policies are signed for: its fingerprint goes into pkfp")
		fs.StringVar(&m.appendTo, "append", "", "existing .pcrsig JSON to append the new entries to")
		fs.StringVar(&m.policyRef, "policyref", "", "TPM2 policy reference to bind the signatures to (signed: pol followed by SHA256 of it)")
	}
}

// style resolves --json/-j; def applies when neither is given.
func (m *measureFlags) style(def bool) (measure.Style, bool, error) {
	auto := func() measure.Style {
		if m.output == "" && term.IsTerminal(int(os.Stdout.Fd())) {
			return measure.Pretty
		}
		return measure.Short
	}
	if m.jflag && m.json == "" {
		return auto(), true, nil
	}
	if m.json == "" {
		return auto(), def, nil
	}
	st, on, ok := measure.ParseStyle(m.json)
	if !ok {
		return 0, false, fmt.Errorf("--json=%s: unknown format (use off, short or pretty)", m.json)
	}
	return st, on, nil
}

// inputs opens the section files; close closes them.
func (m *measureFlags) inputs() (ins []measure.Input, closeAll func(), err error) {
	var files []*os.File
	closeAll = func() {
		for _, f := range files {
			f.Close()
		}
	}
	for _, s := range measure.AllSections() {
		p := m.sections[s]
		if p == nil || *p == "" {
			continue
		}
		in, f, err := measure.OpenFile(s, *p)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		files = append(files, f)
		ins = append(ins, in)
	}
	if m.sections[measure.Linux] == nil || *m.sections[measure.Linux] == "" {
		closeAll()
		return nil, nil, errors.New("no --linux= given (the kernel is what PCR 11 is about)")
	}
	return ins, closeAll, nil
}

func (m *measureFlags) calculate() (*measure.Result, error) {
	phases, err := measure.ParsePhases(m.phases)
	if err != nil {
		return nil, err
	}
	banks, err := measure.ParseBanks(m.banks)
	if err != nil {
		return nil, err
	}
	ins, closeAll, err := m.inputs()
	if err != nil {
		return nil, err
	}
	defer closeAll()
	return measure.Calculate(ins, phases, banks)
}

// publicKeyFor resolves the key pkfp names: --public-key, else
// --certificate's key, else the signer's. A signer that does not match it is
// refused.
func (m *measureFlags) publicKeyFor(signer crypto.Signer) (crypto.PublicKey, error) {
	if m.publicKey != "" && m.key.certificate != "" {
		return nil, errors.New("--public-key= and --certificate= are mutually exclusive")
	}
	var pub crypto.PublicKey
	switch {
	case m.publicKey != "":
		p, err := keys.LoadPublicKey(m.publicKey)
		if err != nil {
			return nil, err
		}
		pub = p
	case m.key.certificate != "":
		c, err := m.key.cert()
		if err != nil {
			return nil, err
		}
		pub = c.PublicKey
	case signer != nil:
		return signer.Public(), nil
	default:
		return nil, nil
	}
	if signer != nil && !keys.SamePublicKey(signer.Public(), pub) {
		src := m.publicKey
		if src == "" {
			src = m.key.certificate
		}
		return nil, fmt.Errorf("private key %s does not match the public key in %s", keys.Redact(m.key.privateKey), keys.Redact(src))
	}
	return pub, nil
}

// emit writes JSON (plus newline) to --output or stdout.
func (m *measureFlags) emit(cmd *cobra.Command, data []byte) error {
	data = append(data, '\n')
	if m.output != "" {
		return atomicfile.WriteFile(m.output, data, 0o644)
	}
	_, err := cmd.OutOrStdout().Write(data)
	return err
}

func (m *measureFlags) loadAppend(doc *measure.PCRSig) (*measure.PCRSig, error) {
	if m.appendTo == "" {
		return doc, nil
	}
	data, err := os.ReadFile(m.appendTo)
	if err != nil {
		return nil, err
	}
	base, err := measure.ParsePCRSig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m.appendTo, err)
	}
	base.Merge(doc)
	return base, nil
}

func newMeasureCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "measure",
		Short: "Predict and sign a UKI's TPM PCR 11 values (as systemd-measure)",
		Long: `Predicts the PCR 11 values systemd-stub and systemd-pcrphase produce for a
unified kernel image, and signs their TPM2 PolicyPCR digests, with the options
and output of systemd-measure. Every bank's policy is signed with SHA-256, as
systemd does since 258. --policyref= binds the signatures to a TPM2 policy
reference (systemd 262).`,
	}

	var cf measureFlags
	calc := &cobra.Command{
		Use:   "calculate --linux=FILE [--osrel= --cmdline= --initrd= ...] [--phase=]... [--bank=]...",
		Short: "Print the predicted PCR 11 values",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, on, err := cf.style(false)
			if err != nil {
				return err
			}
			res, err := cf.calculate()
			if err != nil {
				return err
			}
			if on {
				return cf.emit(cmd, measure.MarshalResult(res, st))
			}
			return measure.WriteText(cmd.OutOrStdout(), cmd.ErrOrStderr(), res)
		},
	}
	cf.register(calc.Flags(), false)

	var sf measureFlags
	sign := &cobra.Command{
		Use:   "sign --linux=FILE ... --private-key=KEY [--public-key=PEM|--certificate=CERT]",
		Short: "Print the .pcrsig JSON: predicted policies signed with the key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, _, err := sf.style(true)
			if err != nil {
				return err
			}
			signer, err := sf.key.signer()
			if err != nil {
				return err
			}
			defer signer.Close()
			if w := keys.PCRPolicyWarning(signer.Public()); w != "" {
				fmt.Fprintln(cmd.ErrOrStderr(), w)
			}
			pub, err := sf.publicKeyFor(signer)
			if err != nil {
				return err
			}
			res, err := sf.calculate()
			if err != nil {
				return err
			}
			entries, err := measure.Prepare(res, pub)
			if err != nil {
				return err
			}
			doc, err := measure.Sign(measure.WithRef(entries, sf.policyRef), signer)
			if err != nil {
				return err
			}
			if doc, err = sf.loadAppend(doc); err != nil {
				return err
			}
			return sf.emit(cmd, doc.Marshal(st))
		},
	}
	sf.register(sign.Flags(), true)

	var pf measureFlags
	pol := &cobra.Command{
		Use:   "policy-digest --linux=FILE ... [--public-key=PEM|--certificate=CERT]",
		Short: "Print the .pcrsig JSON without signatures, for signing elsewhere",
		Long: `Prints the policies to sign: for each bank and phase, pol is the 32-byte
PolicyPCR digest and tbs the bytes to sign, as raw bytes with SHA-256
(openssl dgst -sha256 -sign KEY tbs.bin): pol itself, or with --policyref=
pol followed by the SHA-256 of the reference. "signet measure join" puts
the signatures in.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, _, err := pf.style(true)
			if err != nil {
				return err
			}
			var signer keys.Signer
			if pf.key.privateKey != "" {
				if signer, err = pf.key.signer(); err != nil {
					return err
				}
				defer signer.Close()
				if w := keys.PCRPolicyWarning(signer.Public()); w != "" {
					fmt.Fprintln(cmd.ErrOrStderr(), w)
				}
			}
			var cs crypto.Signer
			if signer != nil {
				cs = signer
			}
			pub, err := pf.publicKeyFor(cs)
			if err != nil {
				return err
			}
			if pf.publicKey == "" && pf.key.certificate == "" {
				pub = nil
			}
			res, err := pf.calculate()
			if err != nil {
				return err
			}
			entries, err := measure.Prepare(res, pub)
			if err != nil {
				return err
			}
			entries = measure.WithRef(entries, pf.policyRef)
			doc := measure.PolicyDigest(entries)
			if signer != nil {
				// systemd-measure policy-digest signs too when given a
				// private key, keeping the tbs members.
				if doc, err = measure.Sign(entries, signer); err != nil {
					return err
				}
				doc.AddTBS()
				if pf.publicKey == "" && pf.key.certificate == "" {
					// pkfp names only a key given as --public-key= or
					// --certificate=, as in systemd's policy-digest.
					for i := range doc.Banks {
						for j := range doc.Banks[i].Entries {
							doc.Banks[i].Entries[j].Pkfp = nil
						}
					}
				}
			}
			doc, err = pf.loadAppend(doc)
			if err != nil {
				return err
			}
			return pf.emit(cmd, doc.Marshal(st))
		},
	}
	pf.register(pol.Flags(), true)

	root.AddCommand(calc, sign, pol, newMeasureJoinCmd(),
		&cobra.Command{
			Use:   "status",
			Short: "Show current PCR values (not supported: signet does not read TPMs)",
			Args:  cobra.NoArgs,
			RunE: func(*cobra.Command, []string) error {
				return errors.New("status: reading the live PCRs is not supported; use systemd-measure status")
			},
		})
	return root
}

// readArg returns TEXT, or the contents of FILE for @FILE.
func readArg(v string) ([]byte, string, error) {
	if strings.HasPrefix(v, "@") {
		b, err := os.ReadFile(v[1:])
		return b, v[1:], err
	}
	return []byte(v), "the given JSON", nil
}

// readPCRSigArg reads and parses a .pcrsig JSON document given as
// --pcrsig=JSON or --pcrsig=@FILE.
func readPCRSigArg(v string) (*measure.PCRSig, error) {
	data, src, err := readArg(v)
	if err != nil {
		return nil, err
	}
	doc, err := measure.ParsePCRSig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	return doc, nil
}

func newMeasureJoinCmd() *cobra.Command {
	var (
		pcrsig, sigDir, publicKey, certificate, output, jsonMode string
		sigs                                                     []string
	)
	cmd := &cobra.Command{
		Use:   "join --pcrsig=JSON|@FILE (--signature=POLHEX=FILE... | --signature-dir=DIR) --public-key=PEM --output=JSON",
		Short: "Fill the sig fields of a policy-digest document from raw signatures, verifying each",
		Long: `Takes the JSON printed by "signet measure policy-digest" (or
"systemd-measure policy-digest") and raw signatures over each entry's tbs
(openssl dgst -sha256 -sign KEY): the 32-byte pol, or pol followed by
SHA256(ref) for an entry with a policy reference. They are given per entry as
--signature=TBSHEX=FILE or as files <tbshex>.sig in --signature-dir (as the
OBS flow names them; for an entry without ref the tbs is the pol). Every
signature is verified against the public key before anything is written;
the output carries no tbs members, as systemd-measure sign writes it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pcrsig == "" {
				return errors.New("no --pcrsig= given")
			}
			if output == "" {
				return errors.New("no --output= given")
			}
			st, ok := measure.Short, true
			if jsonMode != "" {
				var on bool
				st, on, ok = measure.ParseStyle(jsonMode)
				if !ok || !on {
					return fmt.Errorf("--json=%s: use short, pretty or python", jsonMode)
				}
			}
			doc, err := readPCRSigArg(pcrsig)
			if err != nil {
				return err
			}
			var pub crypto.PublicKey
			switch {
			case publicKey != "" && certificate != "":
				return errors.New("--public-key= and --certificate= are mutually exclusive")
			case publicKey != "":
				if pub, err = keys.LoadPublicKey(publicKey); err != nil {
					return err
				}
			case certificate != "":
				c, err := keys.LoadCertificate(certificate)
				if err != nil {
					return err
				}
				pub = c.PublicKey
			default:
				return errors.New("no --public-key= or --certificate= given")
			}
			m := map[string][]byte{}
			for _, s := range sigs {
				tbshex, file, ok := strings.Cut(s, "=")
				tbs, err := hex.DecodeString(tbshex)
				if !ok || err != nil || (len(tbs) != 32 && len(tbs) != 64) {
					return fmt.Errorf("--signature=%s: want TBSHEX=FILE with the 64- or 128-digit hex tbs (pol, or pol and SHA256(ref))", s)
				}
				b, err := os.ReadFile(file)
				if err != nil {
					return err
				}
				m[string(tbs)] = b
			}
			if sigDir != "" {
				for _, b := range doc.Banks {
					for _, e := range b.Entries {
						tbs := e.Signed()
						p := filepath.Join(sigDir, hex.EncodeToString(tbs)+".sig")
						s, err := os.ReadFile(p)
						if errors.Is(err, os.ErrNotExist) {
							continue
						}
						if err != nil {
							return err
						}
						if _, dup := m[string(tbs)]; !dup {
							m[string(tbs)] = s
						}
					}
				}
			}
			out, err := measure.FillSignatures(doc, pub, m)
			if err != nil {
				return err
			}
			return atomicfile.WriteFile(output, append(out.Marshal(st), '\n'), 0o644)
		},
	}
	f := cmd.Flags()
	f.StringVar(&pcrsig, "pcrsig", "", "policy-digest JSON, or @FILE")
	f.StringArrayVar(&sigs, "signature", nil, "TBSHEX=FILE: raw signature over that tbs (repeatable)")
	f.StringVar(&sigDir, "signature-dir", "", "directory of <tbshex>.sig raw signatures")
	f.StringVar(&publicKey, "public-key", "", "public key (PEM) the signatures must verify with")
	f.StringVar(&certificate, "certificate", "", "certificate whose key the signatures must verify with")
	f.StringVar(&output, "output", "", "signed .pcrsig JSON to write")
	f.StringVar(&jsonMode, "json", "", "output format: short (default), pretty or python")
	return cmd
}
