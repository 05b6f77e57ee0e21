package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"signet.dev/internal/atomicfile"
	"signet.dev/internal/buildtime"
	"signet.dev/keys"
	"signet.dev/manifest"
	"signet.dev/openpgp"
)

func init() { commands = append(commands, newManifestCmd) }

func newManifestCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "manifest",
		Short: "Create, sign and verify SHA256SUMS download manifests (systemd-sysupdate, mkosi)",
	}
	cmd.AddCommand(newManifestCreateCmd(), newManifestSignCmd(), newManifestVerifyCmd())
	return cmd
}

// hashingProgress reports bytes hashed on stderr when it is a terminal,
// and stays quiet in pipes and CI.
func hashingProgress(total int64) (manifest.Progress, func()) {
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		return nil, func() {}
	}
	var done atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	show := func() {
		d := done.Load()
		fmt.Fprintf(os.Stderr, "\rhashing: %3d%% (%d/%d MiB)", d*100/max(total, 1), d>>20, total>>20)
	}
	go func() {
		defer wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				show()
			case <-stop:
				return
			}
		}
	}()
	return func(n int64) { done.Add(n) }, func() {
		close(stop)
		wg.Wait()
		show()
		fmt.Fprintln(os.Stderr)
	}
}

func totalSize(files []string) int64 {
	var n int64
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil {
			n += fi.Size()
		}
	}
	return n
}

func newManifestCreateCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "create FILE|DIR... --output=SHA256SUMS",
		Short: "Write a SHA256SUMS manifest of files",
		Long: `Write a SHA256SUMS manifest ("<sha256> *<name>" lines, sorted by name) that
systemd-sysupdate and 'sha256sum -c' accept. A directory contributes the
regular files directly in it, except hidden files and SHA256SUMS and its
signatures. Files are hashed on all cores. Names that sysupdate would refuse
(control characters, backslash, invalid UTF-8) are refused.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output == "" {
				return errors.New("--output= is required")
			}
			files, err := manifest.Collect(args, output)
			if err != nil {
				return err
			}
			progress, done := hashingProgress(totalSize(files))
			entries, err := manifest.HashEntries(files, progress)
			done()
			if err != nil {
				return err
			}
			data, err := manifest.Marshal(entries)
			if err != nil {
				return err
			}
			return atomicfile.WriteFile(output, data, 0o644)
		},
	}
	cmd.Flags().StringVar(&output, "output", "", "manifest to write")
	return cmd
}

func newManifestSignCmd() *cobra.Command {
	var (
		kf                      pgpKeyFlags
		format, output, sigTime string
		armor                   bool
		off                     offlineFlags
	)
	cmd := &cobra.Command{
		Use:   "sign SHA256SUMS --key=KEY --output=SHA256SUMS.gpg",
		Short: "Sign a manifest: detached OpenPGP (.gpg/.asc) or PKCS#7 (.p7s)",
		Long: `Sign a SHA256SUMS manifest with a detached signature.

--format=openpgp (default): an OpenPGP signature as gpg --detach-sign makes it,
binary or --armor, that systemd-sysupdate verifies with the key from
'signet openpgp export-key'. The key's creation time (its fingerprint) is the
certificate's notBefore or --key-time=; the signature's time is --time= or
SOURCE_DATE_EPOCH or now. Hash: SHA-256 (SHA-384 for ECDSA P-384 keys).
--format=pkcs7: detached DER PKCS#7 without attributes, SHA-256; needs
--certificate=.

Offline: sign SHA256SUMS --certificate=CERT --prepare-offline-signing --output=TBS
         openssl dgst -sha256 -sign KEY -out SIG TBS      (RSA, ECDSA P-256)
         sign SHA256SUMS --certificate=CERT --signature=SIG --output=SHA256SUMS.gpg
Prepare and join must see the same SOURCE_DATE_EPOCH (or --time=).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case output == "":
				return errors.New("--output= is required")
			case off.check() != nil:
				return off.check()
			case format != string(manifest.OpenPGP) && format != string(manifest.PKCS7):
				return fmt.Errorf("--format=%s: use openpgp or pkcs7", format)
			case armor && format != string(manifest.OpenPGP):
				return errors.New("--armor applies to --format=openpgp only")
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			online := off.online()
			var p *manifest.Prepared
			var signer keys.Signer
			if format == string(manifest.OpenPGP) {
				var key *openpgp.Key
				key, _, signer, err = kf.key(online)
				if err != nil {
					return err
				}
				when, terr := signatureTime(sigTime)
				if terr != nil {
					if signer != nil {
						signer.Close()
					}
					return terr
				}
				p, err = manifest.PrepareOpenPGP(data, key, when)
			} else {
				cert, cerr := kf.cert()
				if cerr != nil {
					return cerr
				}
				if online {
					if signer, err = kf.signer(); err != nil {
						return err
					}
				}
				p, err = manifest.PreparePKCS7(data, cert)
			}
			if signer != nil {
				defer signer.Close()
			}
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			out, err := off.finish(p, p.TBS, output, signer)
			if err != nil || out == nil {
				return err
			}
			if armor {
				out = openpgp.Armor(out, openpgp.ArmorSignature)
			}
			return atomicfile.WriteFile(output, out, 0o644)
		},
	}
	kf.register(cmd.Flags())
	cmd.Flags().StringVar(&format, "format", "openpgp", "signature format: openpgp or pkcs7")
	cmd.Flags().BoolVar(&armor, "armor", false, "ASCII-armored OpenPGP signature (.asc)")
	cmd.Flags().StringVar(&output, "output", "", "signature file to write")
	cmd.Flags().StringVar(&sigTime, "time", "", "OpenPGP signature time, RFC 3339 or Unix seconds (default: SOURCE_DATE_EPOCH, else now)")
	off.register(cmd.Flags(), "the manifest and the OpenPGP trailer, or the manifest for PKCS#7")
	return cmd
}

func signatureTime(flag string) (time.Time, error) {
	if flag == "" {
		return buildtime.Now()
	}
	t, err := parseTime(flag)
	if err != nil {
		return t, fmt.Errorf("--time=%s: %w", flag, err)
	}
	return t, nil
}

func newManifestVerifyCmd() *cobra.Command {
	var (
		signature, key, certificate string
		checkFiles                  bool
	)
	cmd := &cobra.Command{
		Use:   "verify SHA256SUMS --signature=SIG --key=PUB",
		Short: "Verify a manifest's signature (and, with --check-files, the files)",
		Long: `Verify a detached manifest signature. For OpenPGP signatures (.gpg, .asc),
--key= is an OpenPGP public key or keyring (binary or armored); for PKCS#7
(.p7s), --key= (or --certificate=) is the signer's certificate or its issuer.
With --check-files, every listed file in the manifest's directory is hashed
and compared.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if signature == "" {
				return errors.New("--signature= is required")
			}
			if key == "" {
				key = certificate
			}
			if key == "" {
				return errors.New("--key= is required (OpenPGP public key, or certificate for PKCS#7)")
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			sig, err := os.ReadFile(signature)
			if err != nil {
				return err
			}
			var entries []manifest.Entry
			var who string
			if len(sig) > 0 && sig[0] == 0x30 { // DER SEQUENCE: PKCS#7
				cert, err := keys.LoadCertificate(key)
				if err != nil {
					return err
				}
				if entries, err = manifest.VerifyPKCS7(data, sig, cert); err != nil {
					return fmt.Errorf("%s: %s: %w", args[0], signature, err)
				}
				who = fmt.Sprintf("%q", cert.Subject.String())
			} else {
				ring, err := os.ReadFile(key)
				if err != nil {
					return err
				}
				v, e, err := manifest.VerifyOpenPGP(data, sig, ring)
				if err != nil {
					return fmt.Errorf("%s: %s: %w", args[0], signature, err)
				}
				entries = e
				who = v.Fingerprint
				if len(v.UserIDs) > 0 {
					who += fmt.Sprintf(" (%s)", v.UserIDs[0])
				}
				who += " at " + v.Created.Format(time.RFC3339)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Good signature over %s (%d files) by %s\n", args[0], len(entries), who)
			if !checkFiles {
				return nil
			}
			var total int64
			for _, e := range entries {
				if fi, err := os.Stat(filepath.Join(filepath.Dir(args[0]), e.Name)); err == nil {
					total += fi.Size()
				}
			}
			progress, done := hashingProgress(total)
			err = manifest.Check(filepath.Dir(args[0]), entries, progress)
			done()
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "All %d files match\n", len(entries))
			return nil
		},
	}
	cmd.Flags().StringVar(&signature, "signature", "", "detached signature (.gpg, .asc or .p7s)")
	cmd.Flags().StringVar(&key, "key", "", "OpenPGP public key/keyring, or X.509 certificate for .p7s")
	cmd.Flags().StringVar(&certificate, "certificate", "", "X.509 certificate for .p7s (same as --key=)")
	cmd.Flags().BoolVar(&checkFiles, "check-files", false, "also hash and compare the listed files")
	return cmd
}
