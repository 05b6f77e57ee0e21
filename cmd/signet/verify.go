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
	cmd := &cobra.Command{
		Use:   "verify BUILD-DIR",
		Short: "Verify every output of a finished build with signet and the real peers",
		Long: `Checks each output of a build directory against the certificates recorded in
its state: UKIs (Secure Boot: signet, sbverify, osslsigncode; .pcrsig: signet
recomputes PCR 11 from the file, openssl checks each policy signature), disk
images (verity signature: signet, openssl smime; tree: signet, veritysetup),
IPE policies (signet, openssl cms), manifests (signet, sha256sum, openssl
cms, gpg). A peer that is not installed is reported and skipped, unless
--require-peers.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			checks, err := build.Verify(args[0])
			if err != nil {
				return err
			}
			failed := 0
			for _, c := range checks {
				status := "OK  "
				detail := ""
				switch {
				case errors.Is(c.Err, build.ErrPeerMissing) && !requirePeers:
					status, detail = "SKIP", " (not installed)"
				case c.Err != nil:
					status, detail = "FAIL", ": "+c.Err.Error()
					failed++
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s: %s [%s]%s\n", status, c.File, c.What, c.By, detail)
			}
			if failed > 0 {
				return fmt.Errorf("%s: %d of %d checks failed", args[0], failed, len(checks))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&requirePeers, "require-peers", false, "fail when a peer tool is not installed")
	return cmd
}
