package main

import (
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"signet.dev/internal/atomicfile"
	"signet.dev/internal/buildtime"
	"signet.dev/manifest"
	"signet.dev/mkosiobs"
	"signet.dev/openpgp"
	"signet.dev/request"
)

func newMkosiBuildCmd() *cobra.Command {
	var recipe, packages, mkosiCmd, output, keyName, keyRef, certRef, mirror, version, pgpTime, reqDir string
	var mkosiArgs []string
	var sf serverFlags
	var rf resultFlags
	cmd := &cobra.Command{
		Use:   "build --recipe=DIR --packages=DIR --mkosi=CMD --output=DIR (--key=KEY --certificate=CERT | --server=URL --certificate=CERT)",
		Short: "Run mkosi's mkosi-obs rounds as OBS does, signing each through signet, and publish SHA256SUMS(.gpg)",
		Long: `Copies the recipe (a mkosi project including mkosi-obs) and the project
certificate into the build root's /usr/src/packages/SOURCES (--packages= is that
directory as seen from here), runs mkosi with OBS's command line through
--mkosi= (a command run by sh with mkosi's arguments appended; it must run
mkosi in the build root), signs the archive each round leaves, stages OBS's
next sources, and stops when a round writes no archive (failing after OBS's
three follow-ups). The final artifacts are copied to --output= with a
SHA256SUMS and its binary OpenPGP signature SHA256SUMS.gpg. See docs/mkosi.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, f := range []struct{ name, v string }{{"recipe", recipe}, {"packages", packages}, {"mkosi", mkosiCmd}, {"output", output}} {
				if f.v == "" {
					return fmt.Errorf("no --%s= given", f.name)
				}
			}
			if (keyRef == "") == (sf.url == "") {
				return errors.New("give either --key= (with --certificate=) or --server= (with --certificate=)")
			}
			ref := certRef
			if ref == "" && strings.HasPrefix(keyRef, "pkcs11:") {
				ref = keyRef
			}
			if ref == "" {
				return errors.New("no --certificate= given (the project certificate mkosi builds with, _projectcert.crt)")
			}
			cert, _, err := loadCert(ref)
			if err != nil {
				return err
			}
			if err := requireRSA(cert); err != nil {
				return err
			}
			o := mkosiobs.Options{Key: keyName, Certificate: cert}
			epoch := os.Getenv("SOURCE_DATE_EPOCH")
			if epoch != "" {
				t, err := mkosiobs.SourceDateEpoch(epoch)
				if err != nil {
					return err
				}
				o.AuthVarTime = &t
			}
			sign := func(round int, r *request.Request) (*request.Response, error) {
				if reqDir != "" {
					data, err := r.Marshal()
					if err != nil {
						return nil, err
					}
					if err := atomicfile.WriteFile(filepath.Join(reqDir, fmt.Sprintf("round%d.json", round)), data, 0o644); err != nil {
						return nil, err
					}
				}
				if keyRef != "" {
					return signMkosiLocal(r, keyName, keyRef, certRef)
				}
				resp, err := signMkosiServer(cmd, r, &sf, &rf)
				if err != nil {
					return nil, err
				}
				return resp, signedBy(resp, cert)
			}
			stderr := cmd.ErrOrStderr()
			rounds := &mkosiobs.Rounds{
				Packages: packages, Recipe: recipe,
				CertificatePEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
				LocalMirror:    mirror, ImageVersion: version, Args: mkosiArgs, Options: o, Sign: sign, Log: stderr,
				Mkosi: func(round int, a []string) error {
					c := exec.CommandContext(cmd.Context(), "/bin/sh", append([]string{"-c", mkosiCmd + ` "$@"`, "mkosi"}, a...)...)
					c.Stdout, c.Stderr = stderr, stderr
					return c.Run()
				},
			}
			n, err := rounds.Run()
			if err != nil {
				return err
			}
			sums, err := mkosiobs.Publish(filepath.Join(packages, "OTHER"), output)
			if err != nil {
				return err
			}
			created := cert.NotBefore
			if pgpTime != "" {
				if created, err = parseTime(pgpTime); err != nil {
					return fmt.Errorf("--openpgp-key-time: %v", err)
				}
			}
			pk, err := openpgp.NewKey(cert.PublicKey, created)
			if err != nil {
				return err
			}
			gpg, err := signManifestOpenPGP(sums, pk, keyName, func(r *request.Request) (*request.Response, error) { return sign(n+1, r) })
			if err != nil {
				return err
			}
			if err := atomicfile.WriteFile(filepath.Join(output, "SHA256SUMS.gpg"), gpg, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(stderr, "%d mkosi rounds; published %s with SHA256SUMS and SHA256SUMS.gpg (key %s)\n", n, output, pk.FingerprintHex())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&recipe, "recipe", "", "the mkosi project (mkosi.conf with [Include] Include=mkosi-obs)")
	f.StringVar(&packages, "packages", "/usr/src/packages", "the build root's /usr/src/packages, as seen from here")
	f.StringVar(&mkosiCmd, "mkosi", "", "command that runs mkosi in the build root (sh; mkosi's arguments are appended)")
	f.StringVar(&mirror, "local-mirror", "", "mkosi --local-mirror= (OBS: file:///.build.binaries/)")
	f.StringVar(&version, "image-version", "0", "mkosi --image-version=")
	f.StringArrayVar(&mkosiArgs, "mkosi-arg", nil, "another mkosi option (repeatable), e.g. --package-cache-directory=DIR")
	f.StringVar(&output, "output", "", "directory to publish the final artifacts, SHA256SUMS and SHA256SUMS.gpg into")
	f.StringVar(&keyName, "key-name", "mkosi", "name of the signing key in the requests (the service's key name)")
	f.StringVar(&keyRef, "key", "", "private key: PEM file or pkcs11: URI (RSA)")
	f.StringVar(&certRef, "certificate", "", "the project certificate (_projectcert.crt; default for a pkcs11: key: the token's)")
	f.StringVar(&pgpTime, "openpgp-key-time", "", "creation time of the OpenPGP key SHA256SUMS.gpg is made by (its fingerprint; default the certificate's notBefore)")
	f.StringVar(&reqDir, "requests", "", "also write each round's request here (roundN.json)")
	sf.register(f)
	f.StringVar(&rf.vkey, "audit-key", "", "note verifier key of the service's audit log (or a file holding it): check the proofs")
	return cmd
}

// signManifestOpenPGP signs a SHA256SUMS as a manifest-openpgp item and
// returns the binary detached signature (SHA256SUMS.gpg).
func signManifestOpenPGP(sums []byte, pk *openpgp.Key, keyName string, sign func(*request.Request) (*request.Response, error)) ([]byte, error) {
	when, err := buildtime.Now()
	if err != nil {
		return nil, err
	}
	if when.Before(pk.Created) {
		when = pk.Created
	}
	p, err := manifest.PrepareOpenPGP(sums, pk, when)
	if err != nil {
		return nil, err
	}
	hashName, err := request.HashName(p.Hash)
	if err != nil {
		return nil, err
	}
	ctx := &request.ManifestContext{File: "SHA256SUMS", Entries: []request.ManifestEntry{}}
	for _, e := range p.Entries {
		ctx.Entries = append(ctx.Entries, request.ManifestEntry{Name: e.Name, SHA256: hex.EncodeToString(e.Digest[:])})
	}
	r := &request.Request{Format: request.FormatRequest, Build: "mkosi SHA256SUMS", Items: []request.Item{{
		ID: "SHA256SUMS", Kind: request.KindManifestOpenPGP, Key: keyName, Hash: hashName, TBS: p.TBS, Manifest: ctx}}}
	resp, err := sign(r)
	if err != nil {
		return nil, err
	}
	return p.Join(resp.Items[0].Signature)
}
