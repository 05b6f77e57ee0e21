package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"signet.dev/build"
)

func init() { commands = append(commands, newVerifyCmd) }

func newVerifyCmd() *cobra.Command {
	var requirePeers bool
	var config string
	var certVals, pgpVals []string
	cmd := &cobra.Command{
		Use:   "verify --config=BUILD.toml [BUILD-DIR] [--certificate NAME=CERT]... [--openpgp-key NAME=KEYRING]...",
		Short: "Verify every output of a finished build with signet and the real peers",
		Long: `Checks each output the build definition (--config) expects in the build
directory (default: the configuration's) against trust anchors the user
gives: the certificate of each key from --certificate NAME=CERT or else the
configuration's certificate, and the OpenPGP public key from --openpgp-key
NAME=KEYRING or else its openpgp-public-key. Nothing in the directory is
trusted: its state, recorded certificates and list of outputs are ignored.
An expected output that is missing fails; so does a manifest that lists
more or fewer files than the build makes.

UKIs (Secure Boot: signet, sbverify, osslsigncode; .pcrsig: signet
recomputes PCR 11 from the file, openssl checks each policy signature),
disk images (verity signature: signet, openssl smime; tree: signet,
veritysetup), IPE policies (signet, openssl cms), manifests (signet,
sha256sum, openssl cms, gpg). openssl judges the signatures with the given
certificate as the anchor and any purpose; each certificate's extended key
usage is reported apart (INFO), since firmware, the kernel and systemd do
not judge it. A peer that is not installed is reported and skipped, unless
--require-peers.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if config == "" {
				return errors.New("no --config= given: the build definition says which outputs and keys to expect")
			}
			c, err := build.LoadConfig(config)
			if err != nil {
				return err
			}
			certs, err := namedValues("certificate", certVals)
			if err != nil {
				return err
			}
			pgp, err := namedValues("openpgp-key", pgpVals)
			if err != nil {
				return err
			}
			trust, err := build.LoadTrust(c, certs, pgp)
			if err != nil {
				return err
			}
			dir := c.BuildDir()
			if len(args) == 1 {
				dir = args[0]
			}
			checks, err := build.Verify(dir, c, trust)
			if err != nil {
				return err
			}
			failed, n := 0, 0
			for _, ch := range checks {
				if ch.Info != "" && ch.Err == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "INFO %s: %s [%s]: %s\n", ch.File, ch.What, ch.By, ch.Info)
					continue
				}
				n++
				status := "OK  "
				detail := ""
				switch {
				case errors.Is(ch.Err, build.ErrPeerMissing) && !requirePeers:
					status, detail = "SKIP", " (not installed)"
				case ch.Err != nil:
					status, detail = "FAIL", ": "+ch.Err.Error()
					failed++
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s: %s [%s]%s\n", status, ch.File, ch.What, ch.By, detail)
			}
			if failed > 0 {
				return fmt.Errorf("%s: %d of %d checks failed", dir, failed, n)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&config, "config", "", "build definition (TOML) whose outputs and keys to expect (required)")
	cmd.Flags().StringArrayVar(&certVals, "certificate", nil, "NAME=CERT: trusted certificate of key NAME, instead of the configured one (repeatable)")
	cmd.Flags().StringArrayVar(&pgpVals, "openpgp-key", nil, "NAME=KEYRING: trusted OpenPGP public key of key NAME, instead of the configured one (repeatable)")
	cmd.Flags().BoolVar(&requirePeers, "require-peers", false, "fail when a peer tool is not installed")
	return cmd
}
