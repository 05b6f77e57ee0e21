// Command signet signs the artifacts of a secure, measured-boot OS image:
// Secure Boot signatures on UKIs and EFI binaries, signed TPM PCR policies,
// dm-verity root hash signatures, download manifests and IPE policies, online
// or offline through signing requests.
//
// Invoked through a symlink named systemd-sbsign or systemd-measure, it
// behaves as that tool; named sign, as the part of obs-sign's client that
// the Open Build Service runs (see obssign.go).
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"signet.dev/keys"
)

// multiCall maps the names signet answers to when invoked through a symlink
// to the verb that implements them.
var multiCall = map[string]string{
	"systemd-sbsign":  "sbsign",
	"systemd-measure": "measure",
}

// commands is filled by each verb's init function.
var commands []func() *cobra.Command

// exitError carries an exit status other than 1 (e.g. a build waiting for
// offline signatures).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "signet",
		Short:         "Sign secure OS images: Secure Boot, TPM PCR policies, dm-verity, manifests, IPE",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.Version = versionString()
	root.SetVersionTemplate("{{.Version}}\n")
	for _, c := range commands {
		root.AddCommand(c())
	}
	return root
}

func main() {
	os.Exit(run(os.Args))
}

func run(argv []string) int {
	name := filepath.Base(argv[0])
	args := argv[1:]
	// obs-sign's getopt-style command line (-h is its hash option) is
	// parsed by hand.
	if name == "sign" {
		return obsSignMain(args, os.Stdout, os.Stderr)
	}
	if len(args) > 0 && args[0] == "obs-sign" {
		return obsSignMain(args[1:], os.Stdout, os.Stderr)
	}
	if verb, ok := multiCall[name]; ok {
		args = append([]string{verb}, args...)
	} else {
		name = "signet"
	}
	root := newRoot()
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		// Whatever path an error took, no PIN reaches the terminal.
		fmt.Fprintf(os.Stderr, "%s: %s\n", name, keys.RedactText(err.Error()))
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}
