package build

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"signet.dev/internal/atomicfile"
	"signet.dev/keys"
	"signet.dev/request"
	"signet.dev/server/api"
	"signet.dev/server/client"
)

// Errors of a build signed through a signing service.
var (
	// ErrRefused: the service refused a round's request (policy, or an
	// item failing its kind's check). The build directory still waits
	// for that round and can be resumed.
	ErrRefused = errors.New("refused by the signing service")
	// ErrStillWaiting: Service.Timeout passed before the round was
	// signed. The request stays submitted; running the build again picks
	// it up.
	ErrStillWaiting = errors.New("still waiting for the signing service")
	// ErrNoCertificate: a key configured without a certificate, with no
	// service to take it from and none recorded in the build state.
	ErrNoCertificate = errors.New("no certificate configured (an offline key without one takes it from the signing service: signet build --server=URL)")
)

// Service is a signing service (signet serve) that signs a build's rounds.
type Service struct {
	Client *client.Client
	// AuditKey is the note verifier key of the service's audit log
	// (pinned, not fetched from the service). When set, every signature's
	// inclusion proof is checked against a checkpoint it signed.
	AuditKey string
	// Timeout bounds the wait for one round's signatures (0: until ctx
	// ends). Submission itself is not bounded by it.
	Timeout time.Duration
	// Progress is how often a wait reports on Options.Log (default 15s).
	Progress time.Duration
}

// RunService runs the build to its end with every round signed by the
// service: each pending round-N.request.json is submitted (submission is
// idempotent: a request pending from an earlier, interrupted run is the
// same request and is not signed twice), waited for, verified with
// client.VerifyResult (and then again by the join, against the
// configured certificates), stored as round-N.response.json (with its
// audit proofs in round-N.audit.json) and joined; then the build goes on.
//
// Keys configured without a certificate take theirs from the service's
// key list (same name) before the first pass; the build state records it
// and later runs refuse a service whose certificate for the key changed.
//
// On ErrRefused and ErrStillWaiting the build directory waits for the
// round's response as after a plain Run, so either RunService again or
// Run with Options.Responses continues it.
func RunService(ctx context.Context, c *Config, o Options, s *Service) (*Result, error) {
	if s == nil || s.Client == nil {
		return nil, errors.New("build: RunService without a service client")
	}
	dir := o.Dir
	if dir == "" {
		dir = c.BuildDir()
	}
	o.Dir = dir
	log := o.Log
	if log == nil {
		log = io.Discard
	}
	st, err := LoadState(dir)
	if err != nil && !errors.Is(err, ErrNoState) {
		return nil, err
	}
	if st != nil && st.Config != hex.EncodeToString(c.digest[:]) {
		// Run reports it, before anything is submitted.
		return Run(c, Options{Dir: dir})
	}
	if err := s.certificates(ctx, c, st); err != nil {
		return nil, err
	}
	if len(o.Responses) > 0 {
		res, err := Run(c, o)
		if err != nil || res.Done {
			return res, err
		}
	}
	for {
		st, err := LoadState(dir)
		if err != nil && !errors.Is(err, ErrNoState) {
			return nil, err
		}
		if st == nil || st.Pending == nil {
			res, err := Run(c, Options{Dir: dir, Log: o.Log})
			if err != nil || res.Done {
				return res, err
			}
			continue
		}
		resp, err := s.round(ctx, dir, st.Pending, log)
		if err != nil {
			return nil, err
		}
		res, err := Run(c, Options{Dir: dir, Responses: [][]byte{resp}, Log: o.Log})
		if err != nil || res.Done {
			return res, err
		}
		if res.Round <= st.Pending.Round {
			// Cannot happen: a join always advances the round.
			return nil, fmt.Errorf("round %d: the build did not advance after its response was joined", res.Round)
		}
	}
}

// certificates fills in, from the service's key list, the certificates of
// keys configured without one, and checks before anything is submitted
// that the service's key of each offline key's name is the configured
// certificate's key (or a round would be signed, and audited, in vain).
func (s *Service) certificates(ctx context.Context, c *Config, st *State) error {
	var need, offline []string
	for _, name := range c.KeyNames() {
		switch k := c.Keys[name]; {
		case k.Certificate == "":
			need = append(need, name)
		case k.Key == Offline:
			offline = append(offline, name)
		}
	}
	if len(need)+len(offline) == 0 {
		return nil
	}
	list, err := s.Client.Keys(ctx)
	if err != nil {
		return fmt.Errorf("listing the signing service's keys (for keys %s): %w", strings.Join(append(need, offline...), ", "), err)
	}
	byName := map[string]*api.Key{}
	for i := range list {
		byName[list[i].Name] = &list[i]
	}
	for _, name := range need {
		k := byName[name]
		if k == nil {
			return fmt.Errorf("key %s: no certificate in the configuration, and the signing service has no key %q", name, name)
		}
		certs, err := keys.ParseCertificates([]byte(k.Certificate + "\n" + k.Chain))
		if err != nil || len(certs) == 0 {
			return fmt.Errorf("key %s: the signing service's certificate: %v", name, err)
		}
		if pub, err := keys.ParsePublicKeyPEM([]byte(k.PublicKey)); err == nil && !keys.SamePublicKey(pub, certs[0].PublicKey) {
			return fmt.Errorf("key %s: the signing service's certificate is not for its public key", name)
		}
		if st != nil && st.Certificates[name] != nil && !bytes.Equal(st.Certificates[name], certs[0].Raw) {
			return fmt.Errorf("key %s: the signing service's certificate (sha256 %s) is not the one this build started with (sha256 %s, in state.json)",
				name, certSum(certs[0].Raw), certSum(st.Certificates[name]))
		}
		c.setRemote(name, certs)
	}
	for _, name := range offline {
		k := byName[name]
		if k == nil {
			continue // the service says so if a round uses it
		}
		cert, _, err := c.Certificate(name)
		if err != nil {
			return err
		}
		pub, err := keys.ParsePublicKeyPEM([]byte(k.PublicKey))
		if err != nil {
			return fmt.Errorf("key %s: the signing service's public key: %w", name, err)
		}
		if !keys.SamePublicKey(pub, cert.PublicKey) {
			return fmt.Errorf("key %s: the configured certificate %s (public key sha256 %s) is not for the signing service's key %q (public key sha256 %s)",
				name, c.Keys[name].Certificate, pubSum(cert.PublicKey), name, pubSum(pub))
		}
	}
	return nil
}

func certSum(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:8])
}

// pubSum names a public key by its SubjectPublicKeyInfo's SHA-256 prefix.
func pubSum(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "?"
	}
	return certSum(der)
}

func (c *Config) setRemote(name string, certs []*x509.Certificate) {
	if c.remote == nil {
		c.remote = map[string][]*x509.Certificate{}
	}
	c.remote[name] = certs
}

// certificatesFromState gives keys configured without a certificate the
// one the build state recorded (from the service, at the first run), so a
// build started with --server can be resumed by hand.
func (c *Config) certificatesFromState(st *State) {
	for name, k := range c.Keys {
		if k.Certificate != "" || len(c.remote[name]) > 0 || st.Certificates[name] == nil {
			continue
		}
		if cert, err := x509.ParseCertificate(st.Certificates[name]); err == nil {
			c.setRemote(name, []*x509.Certificate{cert})
		}
	}
}

// round has the service sign a pending request and returns the verified
// response document, also stored in the build directory.
func (s *Service) round(ctx context.Context, dir string, p *PendingRequest, log io.Writer) ([]byte, error) {
	path := filepath.Join(dir, p.File)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	req, err := request.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if req.DigestString() != p.Digest {
		return nil, fmt.Errorf("%s was modified since the build wrote it", path)
	}
	st, err := s.Client.Submit(ctx, data)
	if err != nil {
		var e *client.Error
		if errors.As(err, &e) && e.Status/100 == 4 {
			return nil, fmt.Errorf("round %d (%s): %w (%d): %s", p.Round, path, ErrRefused, e.Status, refusal(&e.Body))
		}
		return nil, fmt.Errorf("round %d (%s): submitting to the signing service: %w", p.Round, path, err)
	}
	fmt.Fprintf(log, "round %d: %s at the signing service as request %s (%s)\n", p.Round, plural(len(req.Items), "item"), st.ID, st.Summary())

	wctx, cancel := ctx, context.CancelFunc(func() {})
	if s.Timeout > 0 {
		wctx, cancel = context.WithTimeout(ctx, s.Timeout)
	}
	defer cancel()
	res, err := s.wait(wctx, p.Round, st.ID, log)
	if err != nil {
		return nil, err
	}
	if err := client.VerifyResult(req, res, s.AuditKey); err != nil {
		return nil, fmt.Errorf("round %d: the signing service's response to request %s: %w", p.Round, st.ID, err)
	}
	out, err := res.Response.Marshal()
	if err != nil {
		return nil, err
	}
	base := strings.TrimSuffix(p.File, ".request.json")
	if err := atomicfile.WriteFile(filepath.Join(dir, base+".audit.json"), api.Marshal(&res.Audit), 0o644); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, base+".response.json"), out, 0o644); err != nil {
		return nil, err
	}
	proofs := "audit proofs not checked: no audit key"
	if s.AuditKey != "" {
		proofs = "audit proofs checked"
	}
	fmt.Fprintf(log, "round %d: %s verified (%s); response in %s\n", p.Round, plural(len(res.Response.Items), "signature"), proofs, base+".response.json")
	return out, nil
}

// wait waits for request id, reporting its progress every s.Progress.
func (s *Service) wait(ctx context.Context, round int, id string, log io.Writer) (*api.Result, error) {
	start := time.Now()
	res, err := s.Client.WaitReporting(ctx, id, s.Progress, func(st *api.Status, waited time.Duration) {
		fmt.Fprintf(log, "round %d: waiting %s for request %s: %s\n", round, waited.Round(time.Second), id, st.Summary())
	})
	if err == nil {
		return res, nil
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("round %d: %w after %s (request %s stays submitted; run the build again to keep waiting)",
			round, ErrStillWaiting, time.Since(start).Round(time.Second), id)
	}
	return nil, fmt.Errorf("round %d: waiting for request %s: %w", round, id, err)
}

// refusal renders the service's reasons on one line, naming each refused
// item once under its reason (a key refused to a client refuses all its
// items alike).
func refusal(e *api.Error) string {
	var reasons []string
	items := map[string][]string{}
	for _, it := range e.Items {
		if items[it.Reason] == nil {
			reasons = append(reasons, it.Reason)
		}
		items[it.Reason] = append(items[it.Reason], strconv.Quote(it.ID))
	}
	s := strings.Join(strings.Fields(e.Error), " ")
	for _, r := range reasons {
		word := "item"
		if len(items[r]) > 1 {
			word = "items"
		}
		s += fmt.Sprintf("; %s %s: %s", word, strings.Join(items[r], ", "), strings.Join(strings.Fields(r), " "))
	}
	return s
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
