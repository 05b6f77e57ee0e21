package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"signet.dev/build"
)

// exitPending is the status of a build that waits for offline signatures
// (EX_TEMPFAIL: try again later, with the response).
const exitPending = 75

func init() { commands = append(commands, newBuildCmd) }

func newBuildCmd() *cobra.Command {
	var resume []string
	var dir string
	var keyVals []string
	var sf serverFlags
	var vkey string
	var transfers string
	cmd := &cobra.Command{
		Use:   "build CONFIG [--resume=RESPONSE] [--dir=BUILD-DIR] [--key NAME=KEY]... [--server=URL]",
		Short: "Build and sign an image in rounds (offline keys) or in one go",
		Long: `Runs the image build CONFIG describes (see docs/build.md). Signatures by
online keys are made on the spot. When a signature needs an offline key, the
build writes round-N.request.json into the build directory and exits with
status 75; sign it (signet request sign, or OBS) and run again with
--resume=RESPONSE (several --resume= when key holders answered their items
separately with signet request sign --partial). --key NAME=KEY makes key NAME online for this run (a PEM
file or a pkcs11: URI), whatever the configuration says.

With --server=URL every round is submitted to that signing service (signet
serve), waited for (--timeout per round, progress on stderr), verified (with
--audit-key, the audit proofs too), stored as round-N.response.json and
joined, so the build completes in one command. Offline keys configured
without a certificate take theirs from the service. If the wait is cut short
(timeout, or the process dies), the same command again picks up the
submitted request; the exit status after a timeout is 75.

--transfers=DIR only writes the [sysupdate] transfer definitions into DIR
(for the image's /usr/lib/sysupdate.d) and builds nothing.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := build.LoadConfig(args[0])
			if err != nil {
				return err
			}
			if transfers != "" {
				if c.Sysupdate == nil {
					return fmt.Errorf("%s: --transfers: the configuration has no [sysupdate]", args[0])
				}
				names, err := build.WriteTransfers(c, transfers)
				if err != nil {
					return err
				}
				for _, n := range names {
					fmt.Fprintln(cmd.OutOrStdout(), n)
				}
				return nil
			}
			overrides, err := namedValues("key", keyVals)
			if err != nil {
				return err
			}
			if err := c.SetKeys(overrides); err != nil {
				return err
			}
			o := build.Options{Dir: dir, Log: cmd.ErrOrStderr()}
			for _, p := range resume {
				data, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				o.Responses = append(o.Responses, data)
			}
			var res *build.Result
			if sf.url != "" {
				vk, err := auditKeyArg(vkey)
				if err != nil {
					return err
				}
				cl, err := sf.client()
				if err != nil {
					return err
				}
				res, err = build.RunService(cmd.Context(), c, o, &build.Service{Client: cl, AuditKey: vk, Timeout: sf.timeout})
				if errors.Is(err, build.ErrStillWaiting) {
					return &exitError{code: exitPending, err: err}
				}
				if err != nil {
					return err
				}
			} else {
				for _, f := range []string{"token", "token-file", "client-cert", "client-key", "ca", "timeout", "audit-key"} {
					if cmd.Flags().Changed(f) {
						return fmt.Errorf("--%s needs --server=", f)
					}
				}
				if res, err = build.Run(c, o); err != nil {
					return err
				}
			}
			if res.Done {
				fmt.Fprintf(cmd.ErrOrStderr(), "build complete in %s\n", res.Dir)
				return nil
			}
			return &exitError{code: exitPending, err: fmt.Errorf(
				"round %d needs %d offline signatures (keys %s): sign %s (signet request sign, or signet request export --obs), then run: signet build %s --resume=RESPONSE",
				res.Round, res.Items, strings.Join(res.Keys, ", "), res.Request, args[0])}
		},
	}
	cmd.Flags().StringArrayVar(&resume, "resume", nil, "response to the pending request (repeat for partial responses by several key holders)")
	cmd.Flags().StringVar(&dir, "dir", "", "build directory (default: the configuration's)")
	cmd.Flags().StringArrayVar(&keyVals, "key", nil, "NAME=KEY: sign with key NAME online (PEM file or pkcs11: URI)")
	cmd.Flags().StringVar(&transfers, "transfers", "", "only write the sysupdate transfer definitions into this directory")
	sf.register(cmd.Flags())
	cmd.Flags().Lookup("timeout").Usage = "with --server: give up waiting for one round's signatures after this long (exit 75)"
	cmd.Flags().StringVar(&vkey, "audit-key", "", "with --server: note verifier key of the service's audit log (or a file holding it): check each signature's audit proof")
	return cmd
}
