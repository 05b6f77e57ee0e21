package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/mod/sumdb/note"

	"signet.dev/internal/atomicfile"
	"signet.dev/server"
	"signet.dev/server/audit"
)

func init() { commands = append(commands, newAuditCmd) }

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "The signing service's audit log: keys, export, verification",
	}
	cmd.AddCommand(newAuditKeygenCmd(), newAuditExportCmd(), newAuditVerifyCmd())
	return cmd
}

func newAuditKeygenCmd() *cobra.Command {
	var name, priv, pub string
	cmd := &cobra.Command{
		Use:   "keygen --name=NAME --private=FILE --public=FILE",
		Short: "Make an Ed25519 note key pair that signs audit checkpoints",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" || priv == "" || pub == "" {
				return errors.New("keygen needs --name=, --private= and --public=")
			}
			skey, vkey, err := note.GenerateKey(rand.Reader, name)
			if err != nil {
				return fmt.Errorf("--name=%s: %w", name, err)
			}
			if err := atomicfile.WriteFile(priv, []byte(skey+"\n"), 0o600); err != nil {
				return err
			}
			return atomicfile.WriteFile(pub, []byte(vkey+"\n"), 0o644)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "log name, e.g. signer.example.org/audit (the checkpoint origin)")
	cmd.Flags().StringVar(&priv, "private", "", "signer key file to write (the service's audit_key)")
	cmd.Flags().StringVar(&pub, "public", "", "verifier key file to write (for audit verify, submit --audit-key)")
	return cmd
}

func newAuditExportCmd() *cobra.Command {
	var sf serverFlags
	var logPath, cpPath string
	cmd := &cobra.Command{
		Use:   "export --server=URL --log=FILE --checkpoint=FILE",
		Short: "Download the current signed checkpoint and the log entries it covers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if logPath == "" || cpPath == "" {
				return errors.New("export needs --log= and --checkpoint=")
			}
			c, err := sf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), sf.timeout)
			defer cancel()
			cp, err := c.Checkpoint(ctx)
			if err != nil {
				return err
			}
			n, err := note.Open(cp, unverified{})
			var uv *note.UnverifiedNoteError
			if errors.As(err, &uv) {
				n, err = uv.Note, nil
			}
			if err != nil {
				return fmt.Errorf("checkpoint: %w", err)
			}
			head, err := audit.ParseCheckpointText(n.Text)
			if err != nil {
				return err
			}
			f, err := atomicfile.Create(logPath, 0o644)
			if err != nil {
				return err
			}
			defer f.Close()
			// The whole export, entries included, is bounded by --timeout.
			if err := c.AuditLog(ctx, f, head.Size); err != nil {
				return err
			}
			if err := f.Commit(); err != nil {
				return err
			}
			return atomicfile.WriteFile(cpPath, cp, 0o644)
		},
	}
	sf.register(cmd.Flags())
	cmd.Flags().StringVar(&logPath, "log", "", "log file to write (one entry per line)")
	cmd.Flags().StringVar(&cpPath, "checkpoint", "", "checkpoint file to write (signed note)")
	return cmd
}

// unverified knows no keys: export keeps the checkpoint for a later verify.
type unverified struct{}

func (unverified) Verifier(name string, hash uint32) (note.Verifier, error) {
	return nil, &note.UnknownVerifierError{Name: name, KeyHash: hash}
}

func newAuditVerifyCmd() *cobra.Command {
	var logPath, cpPath, vkey, cfgPath string
	var strict bool
	var sf serverFlags
	cmd := &cobra.Command{
		Use:   "verify --log=FILE --checkpoint=FILE --key=VERIFIER [--config=FILE | --server=URL] [--strict]",
		Short: "Check an audit log against a signed checkpoint",
		Long: `Check that the checkpoint is signed by the verifier key, that the log's
entries hash to its tree (so none was edited, dropped, inserted or
reordered), that no item was signed twice, and that every sign entry
follows a submit entry of its request by the same client.

With the service's configuration (--config) or its key list (--server,
GET /v1/keys), items of keys that need approvals must also follow that many
approve entries of their request by distinct clients other than the
submitter (with --config, only clients whose approve list has the key).

Entries past the checkpoint are checked the same way but nothing signs
them: they are reported as unauthenticated, and --strict fails on them.
Entry types this version does not know are counted, not refused.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if logPath == "" || cpPath == "" || vkey == "" {
				return errors.New("verify needs --log=, --checkpoint= and --key=")
			}
			if cfgPath != "" && sf.url != "" {
				return errors.New("--config and --server both give key approvals: use one")
			}
			vk, err := auditKeyArg(vkey)
			if err != nil {
				return err
			}
			v, err := note.NewVerifier(vk)
			if err != nil {
				return fmt.Errorf("--key: %w", err)
			}
			cpData, err := os.ReadFile(cpPath)
			if err != nil {
				return err
			}
			cp, err := audit.OpenCheckpoint(cpData, v)
			if err != nil {
				return fmt.Errorf("%s: %w", cpPath, err)
			}
			var opt audit.VerifyOptions
			policy := "no key policy given: approvals not checked"
			switch {
			case cfgPath != "":
				cfg, err := server.LoadConfig(cfgPath)
				if err != nil {
					return err
				}
				opt.Approvals = map[string]int{}
				for _, k := range cfg.Keys {
					opt.Approvals[k.Name] = k.Approvals
				}
				opt.Approvers = map[string]map[string]bool{}
				for _, cl := range cfg.Clients {
					opt.Approvers[cl.Name] = map[string]bool{}
					for _, k := range cl.Approve {
						opt.Approvers[cl.Name][k] = true
					}
				}
				policy = "approvals checked against " + cfgPath
			case sf.url != "":
				c, err := sf.client()
				if err != nil {
					return err
				}
				ctx, cancel := context.WithTimeout(cmd.Context(), sf.timeout)
				defer cancel()
				ks, err := c.Keys(ctx)
				if err != nil {
					return err
				}
				opt.Approvals = map[string]int{}
				for _, k := range ks {
					opt.Approvals[k.Name] = k.Approvals
				}
				policy = "approvals checked against the keys of " + sf.url
			}
			f, err := os.Open(logPath)
			if err != nil {
				return err
			}
			defer f.Close()
			rep, err := audit.VerifyLog(f, cp, opt)
			if err != nil {
				return fmt.Errorf("%s: %w", logPath, err)
			}
			var b bytes.Buffer
			fmt.Fprintf(&b, "audit log OK: %d entries signed by the checkpoint: %d submit, %d sign, %d approve, %d refuse",
				cp.Size, rep.Types[audit.TypeSubmit], rep.Types[audit.TypeSign], rep.Types[audit.TypeApprove], rep.Types[audit.TypeRefuse])
			for _, t := range rep.Unknown() {
				fmt.Fprintf(&b, ", %d %s", rep.Types[t], t)
			}
			fmt.Fprintf(&b, "; %d items signed once each; %s\n", rep.Signed, policy)
			if rep.Unauthenticated > 0 {
				fmt.Fprintf(&b, "UNAUTHENTICATED: %d entries past the checkpoint (index %d on): no signature covers them\n", rep.Unauthenticated, cp.Size)
			}
			cmd.OutOrStdout().Write(b.Bytes())
			if strict && rep.Unauthenticated > 0 {
				return fmt.Errorf("%s: %d entries past the checkpoint of %d are unauthenticated (--strict)", logPath, rep.Unauthenticated, cp.Size)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&logPath, "log", "", "exported log (one entry per line)")
	cmd.Flags().StringVar(&cpPath, "checkpoint", "", "signed checkpoint")
	cmd.Flags().StringVar(&vkey, "key", "", "note verifier key (or a file holding it)")
	cmd.Flags().StringVar(&cfgPath, "config", "", "the service's configuration: key approval counts")
	cmd.Flags().BoolVar(&strict, "strict", false, "fail if the log has entries past the checkpoint")
	sf.register(cmd.Flags())
	return cmd
}
