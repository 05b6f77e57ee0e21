package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"signet.dev/image"
	"signet.dev/verity"
)

func init() { commands = append(commands, newRepartCmd) }

func newRepartCmd() *cobra.Command {
	var key keyFlags
	var defsDir, seedArg, deferArg, split, jsonMode, empty, size, dryRun string
	var joins []string
	var legacySize bool
	c := &cobra.Command{
		Use:   "repart --definitions=DIR [options] IMAGE",
		Short: "Build a GPT disk image with dm-verity and signature partitions from repart.d definitions (as systemd-repart)",
		Long: `Builds IMAGE from repart.d-style definitions, as
systemd-repart 262 --empty=create --size=auto does, byte for byte (see
docs/verity.md for the supported keys; any other key is an error).
--legacy-auto-size sizes the image as systemd-repart 252 to 261 did.

Online: --private-key= and --certificate= sign each verity-sig partition.
Offline: --defer-partitions=usr-verity-sig builds the image without the
signature partitions and reports the root hashes to sign (--json=); a second
run with --certificate= and --join-signature=ROOTHASH:SIG.p7s (or
ROOTHASH:base64:...) adds them. A signature that does not verify, or whose root
hash the image does not have, is an error and leaves the image untouched.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			img := args[0]
			if defsDir == "" {
				return errors.New("no --definitions= given")
			}
			for flag, v := range map[string][2]string{"empty": {empty, "create|force"}, "size": {size, "auto"}, "dry-run": {dryRun, "no"}} {
				if v[0] != "" && !strings.Contains("|"+v[1]+"|", "|"+v[0]+"|") {
					return fmt.Errorf("--%s=%s is not supported (signet supports %s)", flag, v[0], v[1])
				}
			}
			indent := map[string]string{"short": "", "pretty": " "}
			if _, ok := indent[jsonMode]; !ok && jsonMode != "off" {
				return fmt.Errorf("--json=%s: want short, pretty or off", jsonMode)
			}
			doSplit, err := parseYesNo("split", split)
			if err != nil {
				return err
			}
			seed, err := repartSeed(seedArg)
			if err != nil {
				return err
			}
			defs, err := image.ReadDefinitions(defsDir)
			if err != nil {
				return err
			}
			o := image.Options{Seed: seed, Split: doSplit, LegacySize: legacySize}
			var rep *image.Report
			if len(joins) > 0 {
				if key.privateKey != "" {
					return errors.New("--join-signature= takes no --private-key=")
				}
				cert, err := key.cert()
				if err != nil {
					return fmt.Errorf("--join-signature= needs --certificate=: %w", err)
				}
				var payloads []*verity.SignaturePayload
				for _, j := range joins {
					root, p7, err := parseJoin(j)
					if err != nil {
						return err
					}
					p, err := verity.JoinPKCS7(cert, root, p7)
					if err != nil {
						return fmt.Errorf("--join-signature=%s: %w", shorten(j), err)
					}
					payloads = append(payloads, p)
				}
				if rep, err = image.Join(img, defs, cert, payloads, o); err != nil {
					return err
				}
			} else {
				if _, err := os.Stat(img); err == nil && empty == "" {
					return fmt.Errorf("%s exists; use --empty=create to replace it, or --join-signature= to add signatures", img)
				}
				if deferArg != "" {
					types := map[image.GUID]bool{}
					for _, n := range strings.Split(deferArg, ",") {
						t, err := image.LookupType(strings.TrimSpace(n))
						if err != nil {
							return fmt.Errorf("--defer-partitions=: %v", err)
						}
						types[t.UUID] = true
					}
					o.Defer = func(t image.PartType) bool { return types[t.UUID] }
				}
				if key.privateKey != "" {
					s, cert, err := key.signerAndCert()
					if err != nil {
						return err
					}
					defer s.Close()
					o.Signer, o.Certificate = s, cert
				}
				var done func()
				o.Progress, done = progress("repart " + img)
				rep, err = image.Build(img, defs, o)
				done()
				if err != nil {
					return err
				}
			}
			if jsonMode != "off" {
				cmd.OutOrStdout().Write(rep.JSON(indent[jsonMode]))
			}
			for _, p := range rep.Partitions {
				if p.Deferred && p.RootHash != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s deferred: sign root hash %s\n", p.Label, p.RootHash)
				}
			}
			return nil
		},
	}
	fs := c.Flags()
	key.register(fs)
	fs.StringVar(&defsDir, "definitions", "", "directory of repart.d *.conf partition definitions")
	fs.StringVar(&seedArg, "seed", "", "UUID to derive partition UUIDs and the verity salt from, or random (default: /etc/machine-id)")
	fs.StringVar(&deferArg, "defer-partitions", "", "comma-separated partition types to leave out, e.g. usr-verity-sig")
	fs.StringArrayVar(&joins, "join-signature", nil, "ROOTHASH:PKCS7-FILE or ROOTHASH:base64:DATA to add to the image (repeatable)")
	fs.StringVar(&split, "split", "no", "also write each partition to IMAGE.TYPE.raw (IMAGE.TYPE for a name without .raw)")
	fs.BoolVar(&legacySize, "legacy-auto-size", false, "size the image as systemd-repart 252-261 (end + backup GPT rounded to 4096) instead of as 262")
	fs.StringVar(&jsonMode, "json", "off", "report: short, pretty or off")
	fs.StringVar(&empty, "empty", "", "create or force: make a new image, replacing an existing one (without it, an existing IMAGE is refused)")
	fs.StringVar(&size, "size", "", "only auto (the smallest image that fits)")
	fs.StringVar(&dryRun, "dry-run", "", "only no (signet always writes)")
	return c
}

func parseYesNo(flag, v string) (bool, error) {
	switch v {
	case "yes", "true", "1", "on":
		return true, nil
	case "no", "false", "0", "off", "":
		return false, nil
	}
	return false, fmt.Errorf("--%s=%s: want yes or no", flag, v)
}

func repartSeed(arg string) (image.GUID, error) {
	switch arg {
	case "random":
		var g image.GUID
		if _, err := rand.Read(g[:]); err != nil {
			return g, err
		}
		return g, nil
	case "":
		b, err := os.ReadFile("/etc/machine-id")
		if err != nil {
			return image.GUID{}, fmt.Errorf("no --seed= given and /etc/machine-id unreadable: %w", err)
		}
		g, err := image.ParseGUID(strings.TrimSpace(string(b)))
		if err != nil {
			return g, fmt.Errorf("/etc/machine-id: %v", err)
		}
		return g, nil
	}
	g, err := image.ParseGUID(arg)
	if err != nil {
		return g, fmt.Errorf("--seed=: %v", err)
	}
	return g, nil
}

// parseJoin parses repart's --join-signature=HASH:PATH|HASH:base64:DATA.
func parseJoin(s string) ([]byte, []byte, error) {
	h, rest, ok := strings.Cut(s, ":")
	if !ok || rest == "" {
		return nil, nil, fmt.Errorf("--join-signature=%s: want ROOTHASH:FILE or ROOTHASH:base64:DATA", shorten(s))
	}
	root, err := image.ParseRootHash(h)
	if err != nil {
		return nil, nil, fmt.Errorf("--join-signature=: %v", err)
	}
	if b64, ok := strings.CutPrefix(rest, "base64:"); ok {
		p7, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return nil, nil, fmt.Errorf("--join-signature=%s: bad base64: %v", shorten(s), err)
		}
		return root, p7, nil
	}
	p7, err := os.ReadFile(rest)
	if err != nil {
		return nil, nil, fmt.Errorf("--join-signature=: %w", err)
	}
	return root, p7, nil
}

func shorten(s string) string {
	if len(s) > 90 {
		return s[:87] + "..."
	}
	return s
}
