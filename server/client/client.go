// Package client talks to a signet signing service (signet serve): submit
// a signet.request/v1, wait for it, fetch the signet.response/v1 with its
// audit proofs, approve, list keys, read the audit log. It builds without
// cgo, so a build machine needs no PKCS#11 library.
//
//	c, err := client.New("https://signer.example:8443", client.Options{Token: tok, CAFile: "ca.pem"})
//	st, err := c.Submit(ctx, reqBytes)
//	res, err := c.Wait(ctx, st.ID)        // polls until signed
//	err = c.VerifyResult(req, res, vkey)   // signatures and audit proofs
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"signet.dev/internal/strictjson"
	"signet.dev/keys"
	"signet.dev/request"
	"signet.dev/server/api"
	"signet.dev/server/audit"
)

// Options configure authentication and transport.
type Options struct {
	Token    string // bearer token
	CertFile string // TLS client certificate (PEM)
	KeyFile  string // its key (PEM)
	CAFile   string // CA certificates that issued the server's certificate (PEM)
	Timeout  time.Duration
}

// Client is a connection to one service.
type Client struct {
	base  *url.URL
	http  *http.Client
	token string
	// Poll is Wait's pause after an error (default 200ms).
	Poll time.Duration
	// LongPoll is how long one fetch in Wait asks the service to wait
	// (default 20s; it must stay below Options.Timeout).
	LongPoll time.Duration
	// RetryFor is how long a call keeps retrying while the service is
	// unreachable or answers 503/429 (default 10s; 0 disables).
	RetryFor time.Duration
}

// Error is a non-2xx answer of the service.
type Error struct {
	Status int
	Body   api.Error
}

func (e *Error) Error() string {
	return fmt.Sprintf("server: %d %s: %s", e.Status, http.StatusText(e.Status), e.Reason())
}

// Reason renders the service's reason with its per-item reasons.
func (e *Error) Reason() string {
	s := e.Body.Error
	for _, it := range e.Body.Items {
		s += fmt.Sprintf("; item %q: %s", it.ID, it.Reason)
	}
	return s
}

// ErrNotSigned is returned by Fetch while a request is not yet signed.
var ErrNotSigned = errors.New("request not signed yet")

// New returns a client for the service at baseURL.
func New(baseURL string, o Options) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("server URL %q: want http(s)://host:port", baseURL)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		cas, err := keys.LoadCertificates(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		pool := x509.NewCertPool()
		for _, c := range cas {
			pool.AddCert(c)
		}
		tc.RootCAs = pool
	}
	if o.CertFile != "" || o.KeyFile != "" {
		if o.CertFile == "" || o.KeyFile == "" {
			return nil, errors.New("a client certificate needs both certificate and key")
		}
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	tr.MaxIdleConnsPerHost = 16
	return &Client{base: u, token: o.Token, http: &http.Client{Transport: tr, Timeout: o.Timeout}, Poll: 200 * time.Millisecond, LongPoll: min(20*time.Second, o.Timeout/2), RetryFor: 10 * time.Second}, nil
}

// do makes one API call, retrying for up to RetryFor while the service is
// unreachable, unavailable (503) or rate-limiting (429): every call of
// this API is idempotent, submission included.
func (c *Client) do(ctx context.Context, method, path string, body []byte, out any) error {
	start := time.Now()
	pause := 50 * time.Millisecond
	for {
		err := c.once(ctx, method, path, body, out)
		var e *Error
		retry := err != nil && ctx.Err() == nil &&
			(!errors.As(err, &e) || e.Status == http.StatusServiceUnavailable || e.Status == http.StatusTooManyRequests)
		if !retry || time.Since(start)+pause > c.RetryFor {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(pause):
		}
		pause = min(2*pause, time.Second)
	}
}

func (c *Client) once(ctx context.Context, method, path string, body []byte, out any) error {
	u := c.base.JoinPath(path)
	if i := strings.IndexByte(path, '?'); i >= 0 {
		u = c.base.JoinPath(path[:i])
		u.RawQuery = path[i+1:]
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	const maxAnswer = 1 << 30
	var buf bytes.Buffer
	// One allocation for an ordinary answer, not a doubling series; a
	// larger declared length grows only as its bytes arrive.
	if n := resp.ContentLength; n > 0 && n <= 64<<20 {
		buf.Grow(int(n) + bytes.MinRead)
	}
	_, err = buf.ReadFrom(io.LimitReader(resp.Body, maxAnswer))
	data := buf.Bytes()
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(data, &e.Body) != nil || e.Body.Error == "" {
			e.Body.Error = strings.TrimSpace(string(data))
		}
		return e
	}
	switch o := out.(type) {
	case nil:
	case *[]byte:
		*o = data
	default:
		// Strict: the client reads an answer as any other JSON reader would.
		if err := strictjson.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: bad answer: %w", method, path, err)
		}
	}
	return nil
}

// Submit submits a request document. Submitting the same request again
// returns the existing request's status.
func (c *Client) Submit(ctx context.Context, req []byte) (*api.Status, error) {
	var st api.Status
	if err := c.do(ctx, "POST", "/v1/requests", req, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Status returns a request's status.
func (c *Client) Status(ctx context.Context, id string) (*api.Status, error) {
	var st api.Status
	if err := c.do(ctx, "GET", "/v1/requests/"+url.PathEscape(id), nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Fetch returns a signed request's response and audit proofs, or
// ErrNotSigned.
func (c *Client) Fetch(ctx context.Context, id string) (*api.Result, error) {
	return c.fetch(ctx, id, 0)
}

// fetch asks the service to wait up to wait for the signatures.
func (c *Client) fetch(ctx context.Context, id string, wait time.Duration) (*api.Result, error) {
	var res api.Result
	path := "/v1/requests/" + url.PathEscape(id) + "/response"
	if wait > 0 {
		path += "?wait=" + wait.String()
	}
	err := c.do(ctx, "GET", path, nil, &res)
	var e *Error
	if errors.As(err, &e) && e.Status == http.StatusConflict {
		return nil, fmt.Errorf("%w: %s", ErrNotSigned, e.Body.Error)
	}
	if err != nil {
		return nil, err
	}
	if res.Response == nil {
		return nil, errors.New("server answered without a response")
	}
	return &res, nil
}

// Wait returns the request's result once it is signed, long-polling the
// service (each call waits up to LongPoll there). It gives up when ctx
// ends.
func (c *Client) Wait(ctx context.Context, id string) (*api.Result, error) {
	for {
		t0 := time.Now()
		res, err := c.fetch(ctx, id, c.LongPoll)
		if err == nil {
			return res, nil
		}
		if !errors.Is(err, ErrNotSigned) {
			var e *Error
			// A restarting replica or a rate limit is worth waiting out.
			if !(errors.As(err, &e) && (e.Status == http.StatusServiceUnavailable || e.Status == http.StatusTooManyRequests)) && !isTransient(err) {
				return nil, err
			}
		}
		// The service waited already, unless it answered at once (an error,
		// or a service shutting down): then pause before asking again.
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for request %s: %w", id, ctx.Err())
		case <-time.After(c.Poll - time.Since(t0)):
		}
	}
}

// WaitReporting is Wait, calling report with the request's status and the
// time waited so far every interval (15s if 0) until it is signed.
func (c *Client) WaitReporting(ctx context.Context, id string, every time.Duration, report func(st *api.Status, waited time.Duration)) (*api.Result, error) {
	if every <= 0 {
		every = 15 * time.Second
	}
	start := time.Now()
	for {
		pctx, cancel := context.WithTimeout(ctx, every)
		res, err := c.Wait(pctx, id)
		// Only the interval's own deadline means "report and go on"; read
		// it before cancel, which sets pctx.Err for good.
		interval := errors.Is(pctx.Err(), context.DeadlineExceeded)
		cancel()
		if err == nil || ctx.Err() != nil || !interval {
			return res, err
		}
		st, err := c.Status(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("waiting for request %s: %w", id, ctx.Err())
			}
			return nil, err
		}
		report(st, time.Since(start))
	}
}

func isTransient(err error) bool {
	var e *Error
	return !errors.As(err, &e) // transport errors: connection refused while a node restarts
}

// Sign submits req, waits for its signatures, and returns the result once
// VerifyResult accepts it (with vkey, the audit proofs too): the one call a
// build needs.
func (c *Client) Sign(ctx context.Context, req *request.Request, vkey string) (*api.Result, error) {
	body, err := req.Marshal()
	if err != nil {
		return nil, err
	}
	st, err := c.Submit(ctx, body)
	if err != nil {
		return nil, err
	}
	res, err := c.Wait(ctx, st.ID)
	if err != nil {
		return nil, err
	}
	if err := VerifyResult(req, res, vkey); err != nil {
		return nil, fmt.Errorf("request %s: %w", st.ID, err)
	}
	return res, nil
}

// Approve approves a request.
func (c *Client) Approve(ctx context.Context, id string) (*api.Status, error) {
	var st api.Status
	if err := c.do(ctx, "POST", "/v1/requests/"+url.PathEscape(id)+"/approve", []byte("{}"), &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Keys lists the service's keys with certificates and public keys.
func (c *Client) Keys(ctx context.Context) ([]api.Key, error) {
	var ks []api.Key
	if err := c.do(ctx, "GET", "/v1/keys", nil, &ks); err != nil {
		return nil, err
	}
	return ks, nil
}

// Checkpoint returns the audit log's current signed checkpoint.
func (c *Client) Checkpoint(ctx context.Context) ([]byte, error) {
	var b []byte
	err := c.do(ctx, "GET", "/v1/audit/checkpoint", nil, &b)
	return b, err
}

// AuditKey returns the service's note verifier key (pin it; do not trust
// it from the same connection you verify).
func (c *Client) AuditKey(ctx context.Context) (string, error) {
	var b []byte
	err := c.do(ctx, "GET", "/v1/audit/key", nil, &b)
	return strings.TrimSpace(string(b)), err
}

// AuditLog writes the first n audit entries, one per line, to w.
func (c *Client) AuditLog(ctx context.Context, w io.Writer, n int64) error {
	for start := int64(0); start < n; {
		var b []byte
		if err := c.do(ctx, "GET", fmt.Sprintf("/v1/audit/entries?start=%d&end=%d", start, n), nil, &b); err != nil {
			return err
		}
		lines := int64(bytes.Count(b, []byte{'\n'}))
		if lines == 0 {
			return fmt.Errorf("audit log: server has no entry %d", start)
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		start += lines
	}
	return nil
}

// VerifyResult checks a result against the request it answers: every
// signature verifies over its item's TBS with the certificate returned
// (request.Verify), and, with a note verifier key, the checkpoint is signed
// by it and each item's "sign" entry is proven in its tree and records that
// item and that signature.
func VerifyResult(req *request.Request, res *api.Result, vkey string) error {
	if _, err := request.Verify(req, res.Response, nil); err != nil {
		return err
	}
	if vkey == "" {
		return nil
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return fmt.Errorf("audit key: %w", err)
	}
	cp, err := audit.OpenCheckpoint([]byte(res.Audit.Checkpoint), v)
	if err != nil {
		return err
	}
	id := strings.TrimPrefix(res.Response.Request, "sha256:")
	for _, s := range res.Response.Items {
		p := res.Audit.Items[s.ID]
		if p == nil {
			return fmt.Errorf("item %q: no audit proof", s.ID)
		}
		if err := p.Check(cp); err != nil {
			return fmt.Errorf("item %q: %w", s.ID, err)
		}
		e, _ := audit.ParseEntry([]byte(p.Entry))
		if e.Type != audit.TypeSign || e.Request != id || e.Item != s.ID || e.Sig != sha256hex(s.Signature) {
			return fmt.Errorf("item %q: audit entry %d records another signature", s.ID, p.Index)
		}
	}
	return nil
}

// Document returns a request as it was submitted, after checking that its
// digest is id: what an approver reviews is what the id names (and an
// approval binds to the id).
func (c *Client) Document(ctx context.Context, id string) (*request.Request, error) {
	var data []byte
	if err := c.do(ctx, "GET", "/v1/requests/"+url.PathEscape(id)+"/document", nil, &data); err != nil {
		return nil, err
	}
	req, err := request.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("the service's copy of request %s: %w", id, err)
	}
	if got := strings.TrimPrefix(req.DigestString(), "sha256:"); got != id {
		return nil, fmt.Errorf("the service answered a request with digest %s for %s", got, id)
	}
	return req, nil
}

// Reject ends a request the caller (an approver of one of its keys) will
// not let be signed.
func (c *Client) Reject(ctx context.Context, id, reason string) (*api.Status, error) {
	return c.end(ctx, id, "reject", reason)
}

// Cancel ends a request the caller submitted.
func (c *Client) Cancel(ctx context.Context, id, reason string) (*api.Status, error) {
	return c.end(ctx, id, "cancel", reason)
}

func (c *Client) end(ctx context.Context, id, verb, reason string) (*api.Status, error) {
	body, err := json.Marshal(struct {
		Reason string `json:"reason,omitempty"`
	}{reason})
	if err != nil {
		return nil, err
	}
	var st api.Status
	if err := c.do(ctx, "POST", "/v1/requests/"+url.PathEscape(id)+"/"+verb, body, &st); err != nil {
		return nil, err
	}
	return &st, nil
}
