package main

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"signet.dev/authvar"
	"signet.dev/internal/atomicfile"
	"signet.dev/keys"
)

func init() { commands = append(commands, newAuthVarCmd) }

func newAuthVarCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "authvar",
		Short: "Create and verify UEFI authenticated variables (PK, KEK, db, dbx .auth files)",
	}
	cmd.AddCommand(newAuthVarCreateCmd(), newAuthVarVerifyCmd())
	return cmd
}

// authVarTime parses --time=: RFC 3339, Unix seconds, or sign-efi-sig-list's
// "YYYY-MM-DD HH:MM:SS" (UTC); empty means SOURCE_DATE_EPOCH or now.
func authVarTime(flag string) (time.Time, error) {
	if t, err := time.Parse(time.DateTime, flag); err == nil {
		return t, nil
	}
	return signatureTime(flag)
}

func loadCertificates(paths []string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, p := range paths {
		cs, err := keys.LoadCertificates(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		out = append(out, cs...)
	}
	return out, nil
}

func newAuthVarCreateCmd() *cobra.Command {
	var (
		kf                     keyFlags
		off                    offlineFlags
		name, owner, when, out string
		certs                  []string
		appendWrite            bool
	)
	cmd := &cobra.Command{
		Use:   "create --var=PK|KEK|db|dbx --certificate=CERT... --signing-certificate=C --private-key=K --output=VAR.auth",
		Short: "Write a signed .auth file that firmware enrolls as PK, KEK, db or dbx",
		Long: `Write a time-based authenticated variable update (EFI_VARIABLE_AUTHENTICATION_2
and the EFI_SIGNATURE_LISTs, one X.509 list per certificate), as
'sign-efi-sig-list -t TIME -k KEY -c CERT VAR ESL OUT' writes it, byte for byte.
systemd-boot enrolls such files from /loader/keys/auto/ when the firmware is in
setup mode. The usual chain: PK signed by itself, KEK signed by PK, db and dbx
signed by KEK (or PK).

--time= is the EFI_TIME (UTC; RFC 3339, Unix seconds or "YYYY-MM-DD HH:MM:SS";
default SOURCE_DATE_EPOCH, else now); prepare and join must see the same time.

Offline: create ... --signing-certificate=C --prepare-offline-signing --output=VAR.tbs
         openssl dgst -sha256 -sign KEY -out VAR.sig VAR.tbs
         create ... --signing-certificate=C --signature=VAR.sig --output=VAR.auth`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case out == "":
				return errors.New("--output= is required")
			case name == "":
				return errors.New("--var= is required (PK, KEK, db or dbx)")
			case len(certs) == 0:
				return errors.New("--certificate= is required: the certificates the variable is to hold")
			case off.check() != nil:
				return off.check()
			case !off.online() && kf.privateKey != "":
				return errors.New("--private-key= is not used with --prepare-offline-signing or --signature=")
			}
			og, err := authvar.ParseGUID(owner)
			if err != nil {
				return fmt.Errorf("--owner=: %w", err)
			}
			list, err := loadCertificates(certs)
			if err != nil {
				return err
			}
			var et authvar.Time
			if !appendWrite || when != "" {
				t, err := authVarTime(when)
				if err != nil {
					return err
				}
				et = authvar.TimeOf(t)
			}
			v, err := authvar.NewSecureBootVariable(name, og, list, et)
			if err != nil {
				return err
			}
			if appendWrite {
				v.Attributes |= authvar.AppendWrite
			}
			signing, err := kf.cert()
			if err != nil {
				return fmt.Errorf("signing certificate: %w", err)
			}
			p, err := authvar.Prepare(v, signing)
			if err != nil {
				return err
			}
			var signer crypto.Signer
			if off.online() {
				s, err := kf.pairedSigner(signing)
				if err != nil {
					return err
				}
				defer s.Close()
				signer = s
			}
			b, err := off.finish(p, p.TBS, out, signer)
			if err != nil || b == nil {
				return err
			}
			return atomicfile.WriteFile(out, b, 0o644)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&name, "var", "", "variable: PK, KEK, db or dbx")
	fs.StringArrayVar(&certs, "certificate", nil, "certificate the variable holds (PEM or DER; repeat, or several in one PEM file)")
	fs.StringVar(&owner, "owner", "00000000-0000-0000-0000-000000000000", "signature owner GUID of the lists")
	fs.StringVar(&when, "time", "", "EFI_TIME of the update, UTC (default: SOURCE_DATE_EPOCH, else now)")
	fs.BoolVar(&appendWrite, "append", false, "an APPEND_WRITE update (zero time unless --time= is given)")
	fs.StringVar(&kf.certificate, "signing-certificate", "", "certificate of the signing key (PK's own for PK, PK's for KEK, KEK's for db)")
	fs.StringVar(&kf.certificateSource, "signing-certificate-source", "file", "where the signing certificate is: file or provider:pkcs11")
	fs.StringVar(&kf.privateKey, "private-key", "", "signing private key: PEM file, or pkcs11: URI")
	fs.StringVar(&kf.privateKeySource, "private-key-source", "file", "where the private key is: file or provider:pkcs11")
	fs.StringVar(&out, "output", "", ".auth file to write")
	off.register(fs, "the variable name, vendor GUID, attributes, time and signature lists")
	return cmd
}

func newAuthVarVerifyCmd() *cobra.Command {
	var name, signer string
	cmd := &cobra.Command{
		Use:   "verify VAR.auth --var=PK|KEK|db|dbx --signing-certificate=CERT",
		Short: "Verify a .auth file as firmware does and list the certificates it holds",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			vendor, ok := authvar.VendorGUID(name)
			if !ok {
				return fmt.Errorf("--var=%q: not one of PK, KEK, db, dbx", name)
			}
			if signer == "" {
				return errors.New("--signing-certificate= is required: the certificate that must have signed it (or its issuer)")
			}
			trusted, err := loadCertificates([]string{signer})
			if err != nil {
				return err
			}
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			a, err := authvar.Parse(b)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			attrs := authvar.DefaultAttributes
			if a.Time == (authvar.Time{}) {
				attrs |= authvar.AppendWrite
			}
			if _, err := authvar.Verify(b, name, vendor, attrs, trusted); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			lists, err := authvar.ParseLists(a.Data)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%s: %s, time %s, %d signature lists\n", args[0], name, a.Time, len(lists))
			for _, l := range lists {
				for _, s := range l.Signatures {
					if l.Type == authvar.CertX509 {
						c, _ := x509.ParseCertificate(s.Data)
						fmt.Fprintf(w, "  x509 owner %s: %s\n", s.Owner, c.Subject)
					} else {
						fmt.Fprintf(w, "  %s owner %s: %x\n", l.Type, s.Owner, s.Data)
					}
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "var", "", "variable: PK, KEK, db or dbx")
	cmd.Flags().StringVar(&signer, "signing-certificate", "", "certificate that signed it, or its issuer")
	return cmd
}
