package main

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"signet.dev/internal/atomicfile"
	"signet.dev/keys"
	"signet.dev/mkosiobs"
	"signet.dev/request"
	"signet.dev/request/check"
	"signet.dev/server/api"
	"signet.dev/server/client"
)

func init() { commands = append(commands, newMkosiCmd) }

func newMkosiCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mkosi",
		Short: "Sign the archives of mkosi's mkosi-obs profile (OBS's offline rounds)",
		Long:  `See docs/mkosi.md.`,
	}
	cmd.AddCommand(newMkosiSignCmd(), newMkosiBuildCmd())
	return cmd
}

// maxArchive bounds a hashes.cpio.rsasign read whole: its members are a
// few hundred bytes each.
const maxArchive = 64 << 20

// readMkosiArchive reads and parses a hashes.cpio.rsasign.
func readMkosiArchive(path string) (*mkosiobs.Archive, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxArchive+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > maxArchive {
		return nil, fmt.Errorf("%s: over %d bytes: not a mkosi-obs archive", path, maxArchive)
	}
	a, err := mkosiobs.ReadArchive(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return a, nil
}

// requireRSA refuses a certificate OBS's format cannot carry: obs-sign
// answers raw RSASSA-PKCS1-v1_5 signatures only.
func requireRSA(cert *x509.Certificate) error {
	if _, ok := cert.PublicKey.(*rsa.PublicKey); !ok {
		return fmt.Errorf("certificate %q: a %T key; mkosi-obs archives are signed with RSA (PKCS#1 v1.5, SHA-256) only", cert.Subject, cert.PublicKey)
	}
	return nil
}

func newMkosiSignCmd() *cobra.Command {
	var outputDir, output, keyName, keyRef, certRef, reqOut, sourcesDir, epoch string
	var sf serverFlags
	var rf resultFlags
	cmd := &cobra.Command{
		Use:   "sign hashes.cpio.rsasign --output-dir=DIR (--key=KEY --certificate=CERT | --server=URL) [--output=hashes.cpio.rsasign.sig]",
		Short: "Check and sign a mkosi-obs hashes.cpio.rsasign, writing OBS's .sig answer",
		Long: `Reads the archive mkosi's mkosi-obs profile wrote, turns every member into a
signing request item with its context from mkosi's output directory
(--output-dir, OBS's OTHER/), checks each item as signet checks its own,
signs (a key file or pkcs11: URI, or the signing service with --server=, where
the archive is one request with its approvals and audit), and writes the
answer in obs-sign's layout: <member>.sig with the raw RSASSA-PKCS1-v1_5
SHA-256 signature, headers copied from the input.

Unknown paths, members that are not what their path says, and members that
disagree with the output directory are refused, naming the member; nothing is
written then. --request= also writes the request built (for review, or for
signet submit).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if outputDir == "" {
				return errors.New("no --output-dir= given (mkosi's output directory the archive was made in)")
			}
			if (keyRef == "") == (sf.url == "") {
				return errors.New("give either --key= (with --certificate=) or --server=")
			}
			if output == "" {
				output = args[0] + ".sig"
			}
			a, err := readMkosiArchive(args[0])
			if err != nil {
				return err
			}
			o := mkosiobs.Options{OutputDir: outputDir, Key: keyName, SourcesDir: sourcesDir}
			if err := authVarContext(&o, keyRef, certRef, epoch); err != nil {
				return err
			}
			r, err := mkosiobs.Request(a, o)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if reqOut != "" {
				data, err := r.Marshal()
				if err != nil {
					return err
				}
				if err := atomicfile.WriteFile(reqOut, data, 0o644); err != nil {
					return err
				}
			}
			var resp *request.Response
			if keyRef != "" {
				resp, err = signMkosiLocal(r, keyName, keyRef, certRef)
			} else if resp, err = signMkosiServer(cmd, r, &sf, &rf); err == nil {
				err = signedBy(resp, o.Certificate)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			var buf bytes.Buffer
			if err := mkosiobs.WriteSignatures(&buf, a, mkosiobs.SignatureMap(resp)); err != nil {
				return err
			}
			if err := atomicfile.WriteFile(output, buf.Bytes(), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "signed %d members into %s\n", len(resp.Items), output)
			return nil
		},
	}
	cmd.Flags().StringVar(&outputDir, "output-dir", "", "mkosi's output directory of the round (OBS's OTHER/)")
	cmd.Flags().StringVarP(&output, "output", "o", "", "answer to write (default: the archive's name with .sig)")
	cmd.Flags().StringVar(&keyName, "key-name", "mkosi", "name of the signing key in the request (the service's key name)")
	cmd.Flags().StringVar(&keyRef, "key", "", "private key: PEM file or pkcs11: URI (RSA)")
	cmd.Flags().StringVar(&certRef, "certificate", "", "its certificate (_projectcert.crt; default for a pkcs11: key: the token's); with --server=, the project certificate authvars/ enroll")
	cmd.Flags().StringVar(&sourcesDir, "sources", "", "the round's sources (OBS's SOURCES/): their */mkosi.uefi.{KEK,db}/*.crt are in KEK and db")
	cmd.Flags().StringVar(&epoch, "source-date-epoch", os.Getenv("SOURCE_DATE_EPOCH"), "the SOURCE_DATE_EPOCH mkosi ran with: the time of authvars/ (default $SOURCE_DATE_EPOCH)")
	cmd.Flags().StringVar(&reqOut, "request", "", "also write the signing request built from the archive here")
	sf.register(cmd.Flags())
	cmd.Flags().StringVar(&rf.vkey, "audit-key", "", "note verifier key of the service's audit log (or a file holding it): check the proofs")
	cmd.Flags().StringVar(&rf.proofs, "audit-proofs", "", "also write the audit checkpoint and inclusion proofs here")
	return cmd
}

// authVarContext fills in what authvars/ members are rebuilt from: the
// project certificate (--certificate=, or a pkcs11: key's) and the time.
func authVarContext(o *mkosiobs.Options, keyRef, certRef, epoch string) error {
	if certRef == "" && strings.HasPrefix(keyRef, "pkcs11:") {
		certRef = keyRef
	}
	if certRef != "" {
		cert, _, err := loadCert(certRef)
		if err != nil {
			return err
		}
		o.Certificate = cert
	}
	if epoch != "" {
		t, err := mkosiobs.SourceDateEpoch(epoch)
		if err != nil {
			return err
		}
		o.AuthVarTime = &t
	}
	return nil
}

// signedBy refuses an answer of the service that is not by the key of
// cert, the project certificate mkosi joins with (when one was given).
func signedBy(resp *request.Response, cert *x509.Certificate) error {
	if cert == nil {
		return nil
	}
	for _, s := range resp.Items {
		if !bytes.Equal(s.Certificate, cert.Raw) {
			return fmt.Errorf("item %s: the service signed with another certificate than --certificate= (%s), which mkosi joins with", s.ID, cert.Subject)
		}
	}
	return nil
}

// signMkosiLocal signs every item of r with one key: mkosi-obs signs
// everything (PCR policies, Authenticode, verity) with the project key,
// so the key is declared for all of them.
func signMkosiLocal(r *request.Request, name, keyRef, certRef string) (*request.Response, error) {
	if certRef == "" {
		if !strings.HasPrefix(keyRef, "pkcs11:") {
			return nil, errors.New("no --certificate= given")
		}
		certRef = keyRef
	}
	cert, chain, err := loadCert(certRef)
	if err != nil {
		return nil, err
	}
	if err := requireRSA(cert); err != nil {
		return nil, err
	}
	s, err := keys.Open("file", keyRef)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if err := keys.CheckPair(s, cert); err != nil {
		return nil, fmt.Errorf("%s and %s: %w", keys.Redact(keyRef), keys.Redact(certRef), err)
	}
	named := map[string]request.Key{name: {Signer: s, Certificate: cert, Chain: chain, Kinds: request.Kinds}}
	return request.Sign(r, named, check.Item)
}

// signMkosiServer submits r to the service, waits for its approvals and
// signatures, and verifies them (and the audit proofs with --audit-key).
func signMkosiServer(cmd *cobra.Command, r *request.Request, sf *serverFlags, rf *resultFlags) (*request.Response, error) {
	vk, err := auditKeyArg(rf.vkey)
	if err != nil {
		return nil, err
	}
	data, err := r.Marshal()
	if err != nil {
		return nil, err
	}
	c, err := sf.client()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), sf.timeout)
	defer cancel()
	st, err := c.Submit(ctx, data)
	if err != nil {
		return nil, fmt.Errorf("submitting: %w", err)
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "submitted as request %s\n", st.ID)
	res, err := c.WaitReporting(ctx, st.ID, 0, reportWait(cmd.ErrOrStderr(), st.ID))
	if err != nil {
		return nil, err
	}
	if err := client.VerifyResult(r, res, vk); err != nil {
		return nil, fmt.Errorf("response from the service: %w", err)
	}
	if rf.proofs != "" {
		if err := atomicfile.WriteFile(rf.proofs, api.Marshal(&res.Audit), 0o644); err != nil {
			return nil, err
		}
	}
	for _, s := range res.Response.Items {
		cert, err := x509.ParseCertificate(s.Certificate)
		if err != nil {
			return nil, err
		}
		if err := requireRSA(cert); err != nil {
			return nil, err
		}
	}
	return res.Response, nil
}
