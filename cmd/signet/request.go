package main

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"signet.dev/internal/atomicfile"
	"signet.dev/keys"
	"signet.dev/request"
	"signet.dev/request/check"
)

func init() { commands = append(commands, newRequestCmd) }

func newRequestCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "request",
		Short: "Inspect, sign, export and import offline signing requests",
		Long: `A signing request (signet.request/v1) batches every signature a build needs
at one point; a response (signet.response/v1) carries the raw signatures back.
See docs/request.md.`,
	}
	cmd.AddCommand(newRequestShowCmd(), newRequestSignCmd(), newRequestMergeCmd(), newRequestExportCmd(), newRequestImportCmd())
	return cmd
}

func readRequest(path string) (*request.Request, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r, err := request.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

func newRequestShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show REQUEST",
		Short: "Summarize a signing request for a person to review",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := readRequest(args[0])
			if err != nil {
				return err
			}
			return request.Summarize(cmd.OutOrStdout(), r)
		},
	}
}

// namedValues parses repeated NAME=VALUE flags.
func namedValues(flag string, vals []string) (map[string]string, error) {
	out := map[string]string{}
	for _, v := range vals {
		name, val, ok := strings.Cut(v, "=")
		if !ok || name == "" || val == "" {
			return nil, fmt.Errorf("--%s %q: want NAME=VALUE", flag, v)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("--%s: %q given twice", flag, name)
		}
		out[name] = val
	}
	return out, nil
}

// loadCert reads a certificate file, or the certificate on a PKCS#11 token.
func loadCert(ref string) (*x509.Certificate, []*x509.Certificate, error) {
	if strings.HasPrefix(ref, "pkcs11:") {
		c, err := keys.PKCS11Certificate(ref)
		if err != nil {
			return nil, nil, fmt.Errorf("certificate %s: %w", keys.Redact(ref), err)
		}
		if c == nil {
			return nil, nil, fmt.Errorf("certificate %s: not found on the token", keys.Redact(ref))
		}
		return c, nil, nil
	}
	certs, err := keys.LoadCertificates(ref)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate %s: %w", keys.Redact(ref), err)
	}
	return certs[0], certs[1:], nil
}

func loadCerts(flag string, vals []string) (map[string]*x509.Certificate, error) {
	named, err := namedValues(flag, vals)
	if err != nil {
		return nil, err
	}
	out := map[string]*x509.Certificate{}
	for name, ref := range named {
		c, _, err := loadCert(ref)
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", name, err)
		}
		out[name] = c
	}
	return out, nil
}

func newRequestSignCmd() *cobra.Command {
	var keyVals, certVals, kindVals []string
	var output string
	var partial bool
	cmd := &cobra.Command{
		Use:   "sign REQUEST --key NAME=KEY [--certificate NAME=CERT]... [--partial] --output RESPONSE",
		Short: "Check every item of a request and sign it with local keys",
		Long: `Checks each item against its kind (package signet.dev/request/check), refuses
the whole request if any item fails, signs every TBS with the key of the
item's key name, verifies each signature, and writes the response.

--key NAME=KEY names a key: a PEM private key file, or a pkcs11: URI.
--certificate NAME=CERT gives its certificate (PEM/DER file, or pkcs11: URI);
for a pkcs11: key without one, the certificate on the token with the same
URI is used. With --partial, only the items of the given keys are signed,
for signet request merge (or several signet build --resume=) to combine.

A key signs the kinds of one family: authenticode; pcr-policy;
verity-roothash, ipe-policy and manifest-pkcs7 (attribute-less PKCS#7 over
content of disjoint, strictly checked languages); manifest-openpgp. A
request asking one key for two families is refused whole, naming the item,
its kind and the key, unless --key-kinds NAME=KIND,KIND declares the kinds
that key signs (then it signs those and no other).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output == "" {
				return fmt.Errorf("no --output= given")
			}
			r, err := readRequest(args[0])
			if err != nil {
				return err
			}
			keyRefs, err := namedValues("key", keyVals)
			if err != nil {
				return err
			}
			certRefs, err := namedValues("certificate", certVals)
			if err != nil {
				return err
			}
			kindRefs, err := namedValues("key-kinds", kindVals)
			if err != nil {
				return err
			}
			named := map[string]request.Key{}
			for name, ref := range keyRefs {
				certRef := certRefs[name]
				if certRef == "" {
					if !strings.HasPrefix(ref, "pkcs11:") {
						return fmt.Errorf("key %s: no --certificate %s=CERT given", name, name)
					}
					certRef = ref
				}
				cert, chain, err := loadCert(certRef)
				if err != nil {
					return fmt.Errorf("key %s: %w", name, err)
				}
				s, err := keys.Open("file", ref)
				if err != nil {
					return fmt.Errorf("key %s: %w", name, err)
				}
				defer s.Close()
				if err := keys.CheckPair(s, cert); err != nil {
					return fmt.Errorf("key %s: %s and %s: %w", name, keys.Redact(ref), keys.Redact(certRef), err)
				}
				var kinds []request.Kind
				if kr, ok := kindRefs[name]; ok {
					if kinds, err = request.ParseKinds(kr); err != nil {
						return fmt.Errorf("--key-kinds %s: %w", name, err)
					}
				}
				named[name] = request.Key{Signer: s, Certificate: cert, Chain: chain, Kinds: kinds}
			}
			for name := range kindRefs {
				if _, ok := keyRefs[name]; !ok {
					return fmt.Errorf("--key-kinds %s: no --key %s given", name, name)
				}
			}
			for name := range certRefs {
				if _, ok := keyRefs[name]; !ok {
					return fmt.Errorf("--certificate %s: no --key %s given", name, name)
				}
			}
			signFunc := request.Sign
			if partial {
				signFunc = request.SignPartial
			}
			resp, err := signFunc(r, named, check.Item)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			data, err := resp.Marshal()
			if err != nil {
				return err
			}
			if err := atomicfile.WriteFile(output, data, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "signed %d items into %s\n", len(resp.Items), output)
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&keyVals, "key", nil, "NAME=KEY: private key (PEM file or pkcs11: URI) for key name NAME (repeatable)")
	cmd.Flags().StringArrayVar(&certVals, "certificate", nil, "NAME=CERT: certificate of key NAME (repeatable)")
	cmd.Flags().StringArrayVar(&kindVals, "key-kinds", nil, "NAME=KIND[,KIND...]: the only kinds key NAME signs (default: one kind family) (repeatable)")
	cmd.Flags().BoolVar(&partial, "partial", false, "sign only the items of the given keys")
	cmd.Flags().StringVarP(&output, "output", "o", "", "response file to write")
	return cmd
}

func newRequestMergeCmd() *cobra.Command {
	var reqPath, output string
	var certVals []string
	cmd := &cobra.Command{
		Use:   "merge --request REQUEST RESPONSE... --output RESPONSE",
		Short: "Combine partial responses into one, verifying every signature",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reqPath == "" || output == "" {
				return fmt.Errorf("--request= and --output= are required")
			}
			r, err := readRequest(reqPath)
			if err != nil {
				return err
			}
			var parts []*request.Response
			for _, p := range args {
				data, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				resp, err := request.ParseResponse(data)
				if err != nil {
					return fmt.Errorf("%s: %w", p, err)
				}
				parts = append(parts, resp)
			}
			certs, err := loadCerts("certificate", certVals)
			if err != nil {
				return err
			}
			resp, err := request.Merge(r, parts...)
			if err != nil {
				return err
			}
			if _, err := request.Verify(r, resp, certs); err != nil {
				return err
			}
			data, err := resp.Marshal()
			if err != nil {
				return err
			}
			return atomicfile.WriteFile(output, data, 0o644)
		},
	}
	cmd.Flags().StringVar(&reqPath, "request", "", "the request the responses answer")
	cmd.Flags().StringArrayVar(&certVals, "certificate", nil, "NAME=CERT: expected certificate of key NAME (optional, repeatable)")
	cmd.Flags().StringVarP(&output, "output", "o", "", "merged response to write")
	return cmd
}

func newRequestExportCmd() *cobra.Command {
	var output string
	var obs bool
	cmd := &cobra.Command{
		Use:   "export --obs REQUEST --output hashes.cpio.rsasign",
		Short: "Export a request as an OBS bulk-signing cpio",
		Long: `Writes one newc cpio entry per item, named by the item id, holding its TBS:
the input of OBS's "sign --bulk-cpio", which returns <id>.sig raw
RSASSA-PKCS1-v1_5(SHA-256) signatures (import them with
"signet request import --obs").`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !obs {
				return fmt.Errorf("no export format given (--obs)")
			}
			if output == "" {
				return fmt.Errorf("no --output= given")
			}
			r, err := readRequest(args[0])
			if err != nil {
				return err
			}
			var buf bytes.Buffer
			if err := request.ExportOBS(&buf, r); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			return atomicfile.WriteFile(output, buf.Bytes(), 0o644)
		},
	}
	cmd.Flags().BoolVar(&obs, "obs", false, "OBS *.cpio.rsasign bulk format")
	cmd.Flags().StringVarP(&output, "output", "o", "", "cpio file to write")
	return cmd
}

func newRequestImportCmd() *cobra.Command {
	var output, reqPath string
	var certVals []string
	var obs bool
	cmd := &cobra.Command{
		Use:   "import --obs SIGS.cpio --request REQUEST --certificate NAME=CERT... --output RESPONSE",
		Short: "Turn OBS's signature cpio into a response, verifying every signature",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !obs {
				return fmt.Errorf("no import format given (--obs)")
			}
			if output == "" || reqPath == "" {
				return fmt.Errorf("--request= and --output= are required")
			}
			r, err := readRequest(reqPath)
			if err != nil {
				return err
			}
			certs, err := loadCerts("certificate", certVals)
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			resp, err := request.ImportOBS(f, r, certs)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			data, err := resp.Marshal()
			if err != nil {
				return err
			}
			return atomicfile.WriteFile(output, data, 0o644)
		},
	}
	cmd.Flags().BoolVar(&obs, "obs", false, "OBS *.cpio.rsasign.sig bulk format")
	cmd.Flags().StringVar(&reqPath, "request", "", "the request the signatures answer")
	cmd.Flags().StringArrayVar(&certVals, "certificate", nil, "NAME=CERT: certificate of key NAME (repeatable)")
	cmd.Flags().StringVarP(&output, "output", "o", "", "response file to write")
	return cmd
}
