package main

import (
	"crypto"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"signet.dev/internal/atomicfile"
	"signet.dev/ipe"
	"signet.dev/keys"
)

func init() { commands = append(commands, newIPECmd) }

func newIPECmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ipe",
		Short: "Check, sign and verify IPE (Integrity Policy Enforcement) policies",
	}
	cmd.AddCommand(newIPESignCmd(), newIPEVerifyCmd(), newIPECheckCmd())
	return cmd
}

func readPolicy(path string) ([]byte, *ipe.Policy, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	pol, err := ipe.Parse(text)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return text, pol, nil
}

func newIPECheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check POLICY",
		Short: "Check a policy against the kernel's grammar; print its name and version",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, pol, err := readPolicy(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s: %d rules\n", pol.Name, pol.Version, len(pol.Rules))
			return nil
		},
	}
}

func newIPESignCmd() *cobra.Command {
	var (
		kf     keyFlags
		off    offlineFlags
		output string
	)
	cmd := &cobra.Command{
		Use:   "sign POLICY --certificate=CERT --private-key=KEY --output=POLICY.p7b",
		Short: "Sign an IPE policy (attached PKCS#7, no attributes, DER)",
		Long: `Sign an IPE policy for /sys/kernel/security/ipe/new_policy: attached DER
PKCS#7 without signed attributes, SHA-256, as
'openssl smime -sign -nodetach -noattr -binary -outform DER' makes it.
The policy is checked against the kernel's grammar first; a policy the kernel
would refuse is reported with its line and column and not signed.

Offline: sign POLICY --certificate=CERT --prepare-offline-signing --output=TBS
         openssl dgst -sha256 -sign KEY -out SIG TBS
         sign POLICY --certificate=CERT --signature=SIG --output=POLICY.p7b`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case output == "":
				return errors.New("--output= is required")
			case off.check() != nil:
				return off.check()
			case !off.online() && kf.privateKey != "":
				return errors.New("--private-key= is not used with --prepare-offline-signing or --signature=")
			}
			text, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			cert, err := kf.cert()
			if err != nil {
				return err
			}
			p, err := ipe.Prepare(text, cert)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			var signer crypto.Signer
			if off.online() {
				s, err := kf.pairedSigner(cert)
				if err != nil {
					return err
				}
				defer s.Close()
				signer = s
			}
			out, err := off.finish(p, p.TBS, output, signer)
			if err != nil || out == nil {
				return err
			}
			return atomicfile.WriteFile(output, out, 0o644)
		},
	}
	kf.register(cmd.Flags())
	cmd.Flags().StringVar(&output, "output", "", "signed policy to write")
	off.register(cmd.Flags(), "the policy text")
	return cmd
}

func newIPEVerifyCmd() *cobra.Command {
	var certificate string
	cmd := &cobra.Command{
		Use:   "verify POLICY.p7b --certificate=CERT",
		Short: "Verify a signed IPE policy and print the policy it carries",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if certificate == "" {
				return errors.New("--certificate= is required")
			}
			cert, err := keys.LoadCertificate(certificate)
			if err != nil {
				return err
			}
			p7b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			text, _, err := ipe.Verify(p7b, cert)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			_, err = cmd.OutOrStdout().Write(text)
			return err
		},
	}
	cmd.Flags().StringVar(&certificate, "certificate", "", "signer's certificate (or its issuer)")
	return cmd
}
