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
			if err := c.AuditLog(context.Background(), f, head.Size); err != nil {
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
	var logPath, cpPath, vkey string
	cmd := &cobra.Command{
		Use:   "verify --log=FILE --checkpoint=FILE --key=VERIFIER",
		Short: "Check an audit log against a signed checkpoint",
		Long: `Check that the checkpoint is signed by the verifier key, that the log's
entries hash to its tree (so none was edited, dropped, inserted or
reordered), and that no item was signed twice.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if logPath == "" || cpPath == "" || vkey == "" {
				return errors.New("verify needs --log=, --checkpoint= and --key=")
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
			f, err := os.Open(logPath)
			if err != nil {
				return err
			}
			defer f.Close()
			rep, err := audit.VerifyLog(f, cp)
			if err != nil {
				return fmt.Errorf("%s: %w", logPath, err)
			}
			var b bytes.Buffer
			fmt.Fprintf(&b, "audit log OK: %d entries (checkpoint %d): %d submit, %d sign, %d approve, %d refuse; %d items signed once each\n",
				rep.Entries, cp.Size, rep.Types[audit.TypeSubmit], rep.Types[audit.TypeSign], rep.Types[audit.TypeApprove], rep.Types[audit.TypeRefuse], rep.Signed)
			cmd.OutOrStdout().Write(b.Bytes())
			return nil
		},
	}
	cmd.Flags().StringVar(&logPath, "log", "", "exported log (one entry per line)")
	cmd.Flags().StringVar(&cpPath, "checkpoint", "", "signed checkpoint")
	cmd.Flags().StringVar(&vkey, "key", "", "note verifier key (or a file holding it)")
	return cmd
}
