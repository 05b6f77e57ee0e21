package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/mod/sumdb/note"

	"signet.dev/internal/atomicfile"
	"signet.dev/request"
	"signet.dev/request/check"
	"signet.dev/server/api"
	"signet.dev/server/client"
)

func init() {
	commands = append(commands, newSubmitCmd, newStatusCmd, newFetchCmd, newApproveCmd, newRejectCmd, newCancelCmd)
}

// serverFlags are how the client verbs reach and authenticate to a
// signing service.
type serverFlags struct {
	url, token, tokenFile, cert, key, ca string
	timeout                              time.Duration
}

func (f *serverFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.url, "server", "", "signing service URL (https://host:port)")
	fs.StringVar(&f.token, "token", "", "bearer token (default $SIGNET_TOKEN)")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding the bearer token")
	fs.StringVar(&f.cert, "client-cert", "", "TLS client certificate (PEM)")
	fs.StringVar(&f.key, "client-key", "", "TLS client key (PEM)")
	fs.StringVar(&f.ca, "ca", "", "CA certificate(s) of the service (PEM)")
	fs.DurationVar(&f.timeout, "timeout", 10*time.Minute, "give up after this long")
}

func (f *serverFlags) client() (*client.Client, error) {
	if f.url == "" {
		return nil, errors.New("no --server= given")
	}
	tok := f.token
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	if tok == "" && f.cert == "" {
		tok = os.Getenv("SIGNET_TOKEN")
	}
	return client.New(f.url, client.Options{Token: tok, CertFile: f.cert, KeyFile: f.key, CAFile: f.ca})
}

// requestID takes a request id, or the path of a request file whose id
// (the hex SHA-256 of its canonical form) is meant.
func requestID(arg string) (string, error) {
	if len(arg) == 64 && strings.Trim(arg, "0123456789abcdef") == "" {
		return arg, nil
	}
	data, err := os.ReadFile(arg)
	if err != nil {
		return "", fmt.Errorf("%q is neither a request id (64 hex digits) nor a request file: %w", arg, err)
	}
	req, err := request.Parse(data)
	if err != nil {
		return "", fmt.Errorf("%s: %w", arg, err)
	}
	return strings.TrimPrefix(req.DigestString(), "sha256:"), nil
}

// auditKeyArg reads a note verifier key given inline or as a file. A
// verifier key is "name+hash+base64", and base64 may hold '+' and '/', so
// the test is whether it parses, not what characters it has.
func auditKeyArg(v string) (string, error) {
	if v == "" {
		return v, nil
	}
	if _, err := note.NewVerifier(v); err == nil {
		return v, nil
	}
	b, err := os.ReadFile(v)
	if err != nil {
		return "", fmt.Errorf("audit key: not a verifier key, nor a readable file: %w", err)
	}
	key := strings.TrimSpace(string(b))
	if _, err := note.NewVerifier(key); err != nil {
		return "", fmt.Errorf("audit key %s: %w", v, err)
	}
	return key, nil
}

// resultFlags are the options of the verbs that write a service's
// response: where to, and how to check its audit proofs.
type resultFlags struct {
	output, proofs, vkey string
}

func (r *resultFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&r.output, "output", "", "response file to write")
	fs.StringVar(&r.proofs, "audit-proofs", "", "also write the audit checkpoint and inclusion proofs here")
	fs.StringVar(&r.vkey, "audit-key", "", "note verifier key of the service's audit log (or a file holding it): check the proofs")
}

// write verifies res against req (and its audit proofs with vkey) and
// writes the response document, and the proofs if asked.
func (r *resultFlags) write(req *request.Request, res *api.Result, vkey string) error {
	if err := client.VerifyResult(req, res, vkey); err != nil {
		return fmt.Errorf("response from the service: %w", err)
	}
	data, err := res.Response.Marshal()
	if err != nil {
		return err
	}
	if r.proofs != "" {
		if err := atomicfile.WriteFile(r.proofs, api.Marshal(&res.Audit), 0o644); err != nil {
			return err
		}
	}
	return atomicfile.WriteFile(r.output, data, 0o644)
}

func newSubmitCmd() *cobra.Command {
	var sf serverFlags
	var wait bool
	var rf resultFlags
	cmd := &cobra.Command{
		Use:   "submit REQUEST --server=URL [--wait --output=RESPONSE]",
		Short: "Submit a signing request to a signing service",
		Long: `Submit a signet.request/v1 to a signing service and print its id. With
--wait, wait until it is signed, verify every signature (and, with
--audit-key, the audit log's proof of each), and write the response.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if wait && rf.output == "" {
				return errors.New("--wait needs --output=")
			}
			vk, err := auditKeyArg(rf.vkey)
			if err != nil {
				return err
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			req, err := request.Parse(data)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			c, err := sf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), sf.timeout)
			defer cancel()
			st, err := c.Submit(ctx, data)
			if err != nil {
				return fmt.Errorf("submitting %s: %w", args[0], err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), st.ID)
			if !wait {
				return nil
			}
			res, err := c.WaitReporting(ctx, st.ID, 0, reportWait(cmd.ErrOrStderr(), st.ID))
			if err != nil {
				return err
			}
			return rf.write(req, res, vk)
		},
	}
	sf.register(cmd.Flags())
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for the signatures and write the response")
	rf.register(cmd.Flags())
	return cmd
}

// reportWait is the progress line a waiting verb writes every 15 s.
func reportWait(w io.Writer, id string) func(*api.Status, time.Duration) {
	return func(st *api.Status, waited time.Duration) {
		fmt.Fprintf(w, "waiting %s for request %s: %s\n", waited.Round(time.Second), id, st.Summary())
	}
}

func newStatusCmd() *cobra.Command {
	return newRequestStateCmd("status ID|REQUEST --server=URL", "Show the state of a submitted signing request",
		func(ctx context.Context, c *client.Client, id string) (*api.Status, error) { return c.Status(ctx, id) })
}

// newRequestStateCmd makes a verb that acts on one submitted request (by id
// or by the request file) and prints the request's state.
func newRequestStateCmd(use, short string, act func(context.Context, *client.Client, string) (*api.Status, error)) *cobra.Command {
	var sf serverFlags
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := sf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), sf.timeout)
			defer cancel()
			id, err := requestID(args[0])
			if err != nil {
				return err
			}
			st, err := act(ctx, c, id)
			if err != nil {
				return err
			}
			cmd.OutOrStdout().Write(api.Marshal(st))
			return nil
		},
	}
	sf.register(cmd.Flags())
	return cmd
}

func newFetchCmd() *cobra.Command {
	var sf serverFlags
	var wait bool
	var reqPath string
	var rf resultFlags
	cmd := &cobra.Command{
		Use:   "fetch ID|REQUEST --server=URL --request=REQUEST --output=RESPONSE",
		Short: "Fetch, verify and write the response to a signed request",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reqPath == "" {
				if _, err := os.Stat(args[0]); err == nil {
					reqPath = args[0]
				}
			}
			if rf.output == "" || reqPath == "" {
				return errors.New("fetch needs the request (to verify against: as argument or --request=) and --output=")
			}
			vk, err := auditKeyArg(rf.vkey)
			if err != nil {
				return err
			}
			data, err := os.ReadFile(reqPath)
			if err != nil {
				return err
			}
			req, err := request.Parse(data)
			if err != nil {
				return fmt.Errorf("%s: %w", reqPath, err)
			}
			c, err := sf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), sf.timeout)
			defer cancel()
			id, err := requestID(args[0])
			if err != nil {
				return err
			}
			var res *api.Result
			if wait {
				res, err = c.WaitReporting(ctx, id, 0, reportWait(cmd.ErrOrStderr(), id))
			} else {
				res, err = c.Fetch(ctx, id)
			}
			if err != nil {
				return err
			}
			return rf.write(req, res, vk)
		},
	}
	sf.register(cmd.Flags())
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until it is signed")
	cmd.Flags().StringVar(&reqPath, "request", "", "the request submitted (the response is verified against it)")
	rf.register(cmd.Flags())
	return cmd
}

func newApproveCmd() *cobra.Command {
	var sf serverFlags
	var yes bool
	cmd := &cobra.Command{
		Use:   "approve ID|REQUEST --server=URL [--yes]",
		Short: "Review a signing request that waits for approvers, then approve it",
		Long: `approve fetches the request as the service holds it, checks that its
digest is the request id (approvals bind to that digest), runs every item's
check here too, shows every item decoded, and approves only after a "yes"
on standard input (or with --yes, for scripts that reviewed it otherwise).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := sf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), sf.timeout)
			defer cancel()
			id, err := requestID(args[0])
			if err != nil {
				return err
			}
			req, err := c.Document(ctx, id)
			if err != nil {
				return err
			}
			if err := check.Request(req); err != nil {
				return fmt.Errorf("request %s: not approved: %w", id, err)
			}
			out := cmd.OutOrStdout()
			if err := request.Summarize(out, req); err != nil {
				return err
			}
			if !yes {
				fmt.Fprintf(cmd.ErrOrStderr(), "\nApprove request %s? Type yes to approve: ", id)
				line, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if strings.TrimSpace(line) != "yes" {
					return fmt.Errorf("request %s: not approved (answer was not yes)", id)
				}
			}
			st, err := c.Approve(ctx, id)
			if err != nil {
				return err
			}
			out.Write(api.Marshal(st))
			return nil
		},
	}
	sf.register(cmd.Flags())
	cmd.Flags().BoolVar(&yes, "yes", false, "approve without asking (the request is still fetched, verified and shown)")
	return cmd
}

func newRejectCmd() *cobra.Command {
	return newEndCmd("reject", "Reject a signing request (an approver of its keys): nothing more of it is signed",
		func(ctx context.Context, c *client.Client, id, reason string) (*api.Status, error) {
			return c.Reject(ctx, id, reason)
		})
}

func newCancelCmd() *cobra.Command {
	return newEndCmd("cancel", "Cancel a signing request you submitted: nothing more of it is signed",
		func(ctx context.Context, c *client.Client, id, reason string) (*api.Status, error) {
			return c.Cancel(ctx, id, reason)
		})
}

func newEndCmd(verb, short string, act func(context.Context, *client.Client, string, string) (*api.Status, error)) *cobra.Command {
	var reason string
	cmd := newRequestStateCmd(verb+" ID|REQUEST --server=URL [--reason=TEXT]", short,
		func(ctx context.Context, c *client.Client, id string) (*api.Status, error) {
			return act(ctx, c, id, reason)
		})
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit log and the request's status)")
	return cmd
}
