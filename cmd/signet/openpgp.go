package main

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"signet.dev/internal/atomicfile"
	"signet.dev/keys"
	"signet.dev/openpgp"
)

func init() { commands = append(commands, newOpenPGPCmd) }

func newOpenPGPCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "openpgp",
		Short: "OpenPGP public keys for signet's keys (for gpg and systemd-sysupdate)",
	}
	cmd.AddCommand(newOpenPGPExportKeyCmd())
	return cmd
}

// pgpKeyFlags are the options that name a key as OpenPGP sees it: the key
// (private, or public for offline work) and its fixed creation time.
type pgpKeyFlags struct {
	keyFlags
	publicKey string
	keyTime   string
}

func (f *pgpKeyFlags) register(fs *pflag.FlagSet) {
	f.keyFlags.register(fs)
	fs.StringVar(&f.privateKey, "key", "", "private key (same as --private-key=)")
	fs.StringVar(&f.publicKey, "public-key", "", "PEM public key, when neither the private key nor a certificate is at hand (offline)")
	fs.StringVar(&f.keyTime, "key-time", "", "OpenPGP key creation time, RFC 3339 or Unix seconds (default: the certificate's notBefore)")
}

// key works out the OpenPGP key: the public key from the certificate, the
// public key file or the private key (opened only if needed; the caller
// closes the returned signer), dated --key-time= or the certificate's
// notBefore. The creation time is part of the fingerprint, so it is never
// taken from the clock.
func (f *pgpKeyFlags) key(needSigner bool) (*openpgp.Key, *x509.Certificate, keys.Signer, error) {
	var cert *x509.Certificate
	var pub crypto.PublicKey
	var err error
	if f.certificate != "" {
		if cert, err = f.cert(); err != nil {
			return nil, nil, nil, err
		}
		pub = cert.PublicKey
	}
	if f.publicKey != "" {
		p, err := keys.LoadPublicKey(f.publicKey)
		if err != nil {
			return nil, nil, nil, err
		}
		if pub != nil && !keys.SamePublicKey(pub, p) {
			return nil, nil, nil, fmt.Errorf("%s is not the key of certificate %s", f.publicKey, keys.Redact(f.certificate))
		}
		pub = p
	}
	var signer keys.Signer
	if needSigner || pub == nil {
		if f.privateKey == "" {
			return nil, nil, nil, errors.New("no key given: use --key= (or --certificate=/--public-key= to prepare or join offline)")
		}
		if signer, err = f.signer(); err != nil {
			return nil, nil, nil, err
		}
		if pub != nil && !keys.SamePublicKey(pub, signer.Public()) {
			signer.Close()
			return nil, nil, nil, fmt.Errorf("private key %s does not match the public key of %s%s", keys.Redact(f.privateKey), keys.Redact(f.certificate), f.publicKey)
		}
		pub = signer.Public()
	}
	var created time.Time
	switch {
	case f.keyTime != "":
		if created, err = parseTime(f.keyTime); err != nil {
			err = fmt.Errorf("--key-time=%s: %w", f.keyTime, err)
		}
	case cert != nil:
		created = cert.NotBefore
	default:
		err = errors.New("the OpenPGP key creation time is part of its fingerprint: give --certificate= (its notBefore is used) or --key-time=")
	}
	var k *openpgp.Key
	if err == nil {
		k, err = openpgp.NewKey(pub, created)
	}
	if err != nil {
		if signer != nil {
			signer.Close()
		}
		return nil, nil, nil, err
	}
	return k, cert, signer, nil
}

// parseTime reads RFC 3339 or Unix seconds (optionally as @SECONDS).
func parseTime(s string) (time.Time, error) {
	if n, err := strconv.ParseInt(strings.TrimPrefix(s, "@"), 10, 64); err == nil {
		return time.Unix(n, 0).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, errors.New("not RFC 3339 (2024-01-31T12:00:00Z) or Unix seconds")
	}
	return t.UTC(), nil
}

func newOpenPGPExportKeyCmd() *cobra.Command {
	var (
		kf             pgpKeyFlags
		userID, output string
		armor          bool
		off            offlineFlags
	)
	cmd := &cobra.Command{
		Use:   "export-key --key=KEY --certificate=CERT --output=pubring.pgp",
		Short: "Write the OpenPGP public key (self-signed, one user ID) of a key",
		Long: `Write the OpenPGP public key of a signing key, certified by itself with one
user ID: what gpg imports and what systemd-sysupdate reads from
/etc/systemd/import-pubring.pgp (binary; --armor for an .asc to publish).

The key's creation time, which the OpenPGP fingerprint covers, is the
certificate's notBefore (or --key-time=), never the clock: the same key always
gives the same fingerprint, so 'signet manifest sign' signatures match it.
The fingerprint is printed on standard output.

Offline: export-key --certificate=CERT --prepare-offline-signing --output=TBS
         openssl dgst -sha256 -sign KEY -out SIG TBS
         export-key --certificate=CERT --signature=SIG --output=pubring.pgp`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output == "" {
				return errors.New("--output= is required")
			}
			if err := off.check(); err != nil {
				return err
			}
			online := off.online()
			key, cert, signer, err := kf.key(online)
			if err != nil {
				return err
			}
			if signer != nil {
				defer signer.Close()
			}
			if userID == "" {
				if userID = defaultUserID(cert); userID == "" {
					return errors.New("no --user-id= given and no certificate subject to take it from")
				}
			}
			p, err := openpgp.PrepareCertification(key, userID)
			if err != nil {
				return err
			}
			out, err := off.finish(p, p.TBS, output, signer)
			if err != nil || out == nil {
				return err
			}
			if armor {
				out = openpgp.Armor(out, openpgp.ArmorPublicKey)
			}
			if err := atomicfile.WriteFile(output, out, 0o644); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), key.FingerprintHex())
			return nil
		},
	}
	kf.register(cmd.Flags())
	cmd.Flags().StringVar(&userID, "user-id", "", `user ID, e.g. "Release Signing <release@example.org>" (default: the certificate's common name and e-mail)`)
	cmd.Flags().BoolVar(&armor, "armor", false, "write ASCII armor")
	cmd.Flags().StringVar(&output, "output", "", "output file")
	off.register(cmd.Flags(), "the key's self-signature data")
	return cmd
}

// defaultUserID is "CN <email>" from a certificate, or "".
func defaultUserID(cert *x509.Certificate) string {
	if cert == nil || cert.Subject.CommonName == "" {
		return ""
	}
	if len(cert.EmailAddresses) > 0 {
		return fmt.Sprintf("%s <%s>", cert.Subject.CommonName, cert.EmailAddresses[0])
	}
	return cert.Subject.CommonName
}
