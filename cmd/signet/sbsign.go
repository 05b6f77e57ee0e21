package main

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"signet.dev/authenticode"
	"signet.dev/internal/atomicfile"
	"signet.dev/internal/buildtime"
	"signet.dev/keys"
)

func init() { commands = append(commands, newSbsignCmd) }

// newSbsignCmd is `signet sbsign`, with systemd-sbsign's options and
// meaning (systemd v258); invoked as systemd-sbsign the binary runs it.
func newSbsignCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sbsign",
		Short: "Sign EFI binaries and UKIs for Secure Boot (as systemd-sbsign)",
		// Runnable so that an unknown verb is an error, and `help` works
		// as systemd-sbsign's help verb.
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 || args[0] == "help" {
				return cmd.Help()
			}
			return fmt.Errorf("unknown verb %q (use sign or verify)", args[0])
		},
	}
	cmd.AddCommand(newSbsignSignCmd(), newSbsignVerifyCmd())
	return cmd
}

func newSbsignSignCmd() *cobra.Command {
	var (
		kf                      keyFlags
		output                  string
		prepareOffline          bool
		signedData, signedDataS string
	)
	cmd := &cobra.Command{
		Use:   "sign [flags] EXEFILE",
		Short: "Sign a PE image with Authenticode, online or offline",
		Long: `Sign a PE image (EFI application, UKI, kernel) with an Authenticode signature.

Online:  sign --certificate=CERT --private-key=KEY --output=OUT IN
Offline: sign --certificate=CERT --prepare-offline-signing --output=SIGNED_DATA IN
         openssl dgst -sha256 -sign KEY -out SIG SIGNED_DATA
         sign --certificate=CERT --signed-data=SIGNED_DATA --signed-data-signature=SIG --output=OUT IN

SOURCE_DATE_EPOCH (seconds) sets the signingTime attribute. An image that is
already signed gets an additional signature.`,
		Args: exactlyOne("EXEFILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			in := args[0]
			switch {
			case output == "":
				return errors.New("--output= is required")
			case kf.certificate == "":
				return errors.New("--certificate= is required")
			case prepareOffline && (kf.privateKey != "" || signedData != "" || signedDataS != ""):
				return errors.New("--prepare-offline-signing cannot be combined with --private-key=, --signed-data= or --signed-data-signature=")
			case (signedData == "") != (signedDataS == ""):
				return errors.New("--signed-data= and --signed-data-signature= must be used together")
			case signedData != "" && kf.privateKey != "":
				return errors.New("--private-key= cannot be combined with --signed-data=")
			case !prepareOffline && signedData == "" && kf.privateKey == "":
				return errors.New("one of --private-key=, --signed-data-signature= or --prepare-offline-signing is required")
			}
			cert, err := kf.cert()
			if err != nil {
				return err
			}
			fd, f, err := openPE(in)
			if err != nil {
				return err
			}
			defer fd.Close()
			when, err := buildtime.Now()
			if err != nil {
				return err
			}
			if prepareOffline {
				p, err := authenticode.Prepare(f, when)
				if err != nil {
					return fmt.Errorf("%s: %w", in, err)
				}
				return atomicfile.WriteFile(output, p.SignedAttributes, 0o644)
			}
			var sign func(w *atomicfile.File) error
			if signedData != "" {
				attrs, err := os.ReadFile(signedData)
				if err != nil {
					return err
				}
				if _, err := authenticode.ParseSignedAttributes(attrs); err != nil {
					return fmt.Errorf("signed data %s: %w", signedData, err)
				}
				sig, err := os.ReadFile(signedDataS)
				if err != nil {
					return err
				}
				sign = func(w *atomicfile.File) error {
					err := authenticode.Join(f, attrs, cert, sig, w)
					switch {
					case errors.Is(err, authenticode.ErrBadSignature):
						return fmt.Errorf("signature %s: %w", signedDataS, err)
					case errors.Is(err, authenticode.ErrImageChanged):
						return fmt.Errorf("signed data %s and %s: %w", signedData, in, err)
					case err != nil:
						return fmt.Errorf("%s: %w", in, err)
					}
					return nil
				}
			} else {
				s, err := kf.pairedSigner(cert)
				if err != nil {
					return err
				}
				defer s.Close()
				sign = func(w *atomicfile.File) error {
					if err := authenticode.Sign(f, s, cert, when, w); err != nil {
						return fmt.Errorf("%s: %w", in, err)
					}
					return nil
				}
			}
			mode := os.FileMode(0o644)
			if fi, err := fd.Stat(); err == nil {
				mode = fi.Mode().Perm()
			}
			w, err := atomicfile.Create(output, mode)
			if err != nil {
				return err
			}
			defer w.Close()
			if err := sign(w); err != nil {
				return err
			}
			return w.Commit()
		},
	}
	kf.register(cmd.Flags())
	fs := cmd.Flags()
	fs.StringVar(&output, "output", "", "signed image, or with --prepare-offline-signing the data to sign")
	fs.BoolVar(&prepareOffline, "prepare-offline-signing", false, "write the DER signed attributes to sign elsewhere instead of signing")
	fs.StringVar(&signedData, "signed-data", "", "signed attributes written by --prepare-offline-signing")
	fs.StringVar(&signedDataS, "signed-data-signature", "", "raw signature over --signed-data (openssl dgst -sha256 -sign)")
	return cmd
}

func newSbsignVerifyCmd() *cobra.Command {
	var certPath string
	cmd := &cobra.Command{
		Use:   "verify --certificate=CERT FILE",
		Short: "List a PE image's signatures; succeed only if one by CERT verifies",
		Long: `List every Authenticode signature of a PE image (signer, key, signing time,
digest) and exit 0 only if one made by CERT (or by a certificate CERT issued)
verifies over the image's current Authenticode digest. CERT may hold several
certificates.`,
		Args: exactlyOne("FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if certPath == "" {
				return errors.New("--certificate= is required")
			}
			certs, err := keys.LoadCertificates(certPath)
			if err != nil {
				return err
			}
			fd, f, err := openPE(args[0])
			if err != nil {
				return err
			}
			defer fd.Close()
			sigs, err := f.Signatures()
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			out := cmd.OutOrStdout()
			for i, s := range sigs {
				fmt.Fprintf(out, "signature %d: %s\n", i+1, describeSignature(&s))
			}
			s, err := authenticode.Verify(f, certs)
			switch {
			case errors.Is(err, authenticode.ErrNotSignedBy):
				return fmt.Errorf("%s: no signature by the certificate in %s", args[0], certPath)
			case err != nil:
				return fmt.Errorf("%s: %w", args[0], err)
			}
			for i := range sigs {
				if sigs[i].Offset == s.Offset {
					fmt.Fprintf(out, "signature %d verifies with %s\n", i+1, certPath)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&certPath, "certificate", "", "trusted certificate(s), PEM or DER")
	return cmd
}

func describeSignature(s *authenticode.Signature) string {
	if s.Err != nil {
		return s.Err.Error()
	}
	if s.SignedData == nil {
		return fmt.Sprintf("WIN_CERTIFICATE type %#x (not PKCS#7)", s.Type)
	}
	signer := "signer certificate not embedded"
	if c := s.Signer; c != nil {
		fp := sha256.Sum256(c.Raw)
		signer = fmt.Sprintf("subject %q, issuer %q, key %s, certificate sha256 %x", c.Subject, c.Issuer, keys.Describe(c.PublicKey), fp)
	}
	when := "no signing time"
	if !s.SigningTime.IsZero() {
		when = "signed " + s.SigningTime.UTC().Format("2006-01-02T15:04:05Z")
	}
	return fmt.Sprintf("%s, %s, digest %s:%x", signer, when, strings.ReplaceAll(strings.ToLower(s.Hash.String()), "-", ""), s.Digest)
}

// exactlyOne requires exactly one positional argument, named in the error.
func exactlyOne(name string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return fmt.Errorf("%s: exactly one %s argument expected, got %d", cmd.Name(), name, len(args))
		}
		return nil
	}
}

// openPE opens and parses a PE image; errors name the file.
func openPE(path string) (*os.File, *authenticode.File, error) {
	fd, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	fi, err := fd.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = errors.New("not a regular file")
	}
	if err != nil {
		fd.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	f, err := authenticode.Parse(fd, fi.Size())
	if err != nil {
		fd.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return fd, f, nil
}
