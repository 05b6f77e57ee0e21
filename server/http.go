package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"signet.dev/keys"
	"signet.dev/request"
	"signet.dev/request/check"
	"signet.dev/server/api"
	"signet.dev/server/audit"
	"signet.dev/server/store"
)

// maxEntriesPerCall bounds one /v1/audit/entries answer.
const maxEntriesPerCall = 10000

// Handler returns the HTTP API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, h func(w http.ResponseWriter, r *http.Request, id *identity)) {
		mux.Handle(pattern, s.authenticated(pattern, h))
	}
	route("POST /v1/requests", s.submit)
	route("GET /v1/requests/{id}", s.status)
	route("GET /v1/requests/{id}/response", s.response)
	route("POST /v1/requests/{id}/approve", s.approve)
	route("GET /v1/requests/{id}/document", s.requestDocument)
	route("POST /v1/requests/{id}/reject", s.reject)
	route("POST /v1/requests/{id}/cancel", s.cancel)
	route("GET /v1/keys", s.listKeys)
	route("GET /v1/audit/checkpoint", s.checkpoint)
	route("GET /v1/audit/key", s.auditKey)
	route("GET /v1/audit/entries", s.entries)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.store.Ping(ctx); err != nil {
			http.Error(w, "store: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such API endpoint: "+r.Method+" "+r.URL.Path, nil)
	})
	return mux
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// expensive routes hold memory or a store cursor while they run: each
// client may run limits.max_concurrent of them at once.
var expensive = map[string]bool{
	"POST /v1/requests":              true,
	"GET /v1/requests/{id}/response": true,
	"GET /v1/requests/{id}/document": true,
	"GET /v1/audit/entries":          true,
}

// authenticated resolves the caller's identity (client certificate, then
// bearer token), applies the rate limit and the concurrency bound, logs
// and counts the call.
func (s *Server) authenticated(route string, h func(http.ResponseWriter, *http.Request, *identity)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		if route == "GET /v1/requests/{id}/response" && r.URL.Query().Has("wait") {
			// A long poll may wait maxWait before it writes: extend this
			// call's deadlines by that (the server's apply to the rest).
			rc := http.NewResponseController(w)
			rc.SetWriteDeadline(start.Add(maxWait + s.cfg.Limits.WriteTimeout.Duration))
			rc.SetReadDeadline(start.Add(maxWait + s.cfg.Limits.ReadTimeout.Duration))
		}
		sw := &statusWriter{ResponseWriter: w, code: 200}
		id, why := s.identify(r)
		name := ""
		switch {
		case id == nil:
			msg := "unknown client: present a known client certificate or bearer token"
			if why != "" {
				msg = "client refused: " + why
				s.log.Warn("client refused", "remote", r.RemoteAddr, "why", why)
			}
			sw.Header().Set("WWW-Authenticate", `Bearer realm="signet"`)
			writeError(sw, http.StatusUnauthorized, msg, nil)
		case !s.limits.allow(id.name, start):
			name = id.name
			s.metrics.rateLimited.Inc()
			sw.Header().Set("Retry-After", "1")
			writeError(sw, http.StatusTooManyRequests, "rate limit exceeded for client "+id.name, nil)
		case expensive[route] && !s.gate.enter(id.name):
			name = id.name
			s.metrics.busy.WithLabelValues(route).Inc()
			s.log.Warn("concurrency limit", "client", id.name, "route", route, "limit", s.cfg.Limits.MaxConcurrent)
			sw.Header().Set("Retry-After", "1")
			writeError(sw, http.StatusTooManyRequests, fmt.Sprintf("client %s has %d calls in progress, the limit", id.name, s.cfg.Limits.MaxConcurrent), nil)
		default:
			name = id.name
			if expensive[route] {
				defer s.gate.leave(id.name)
			}
			h(sw, r, id)
		}
		s.metrics.http.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
		s.log.Info("api", "method", r.Method, "path", r.URL.Path, "client", name, "status", sw.code, "ms", time.Since(start).Milliseconds())
	})
}

// oidCN is the X.520 commonName attribute.
var oidCN = asn1.ObjectIdentifier{2, 5, 4, 3}

// identify returns the caller's identity, or nil and why not (for the
// answer and the log). A client certificate names at most one identity:
// a pinned fingerprint (within the certificate's validity), else the
// configured common names and subject alternative names it carries, which
// count only for a certificate chaining to client_ca, with exactly one CN
// if a CN is used, and all naming the same client.
func (s *Server) identify(r *http.Request) (*identity, string) {
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		c := r.TLS.PeerCertificates[0]
		fp := sha256.Sum256(c.Raw)
		if id := s.certFP[hex.EncodeToString(fp[:])]; id != nil {
			if now := time.Now(); now.Before(c.NotBefore) || now.After(c.NotAfter) {
				return nil, s.authRefused("pinned_outside_validity", fmt.Sprintf("pinned client certificate of %s is valid from %s to %s only", id.name, c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339)))
			}
			return id, ""
		}
		if s.caPool != nil && len(s.certCN)+len(s.certSAN) > 0 {
			var ids []*identity
			add := func(id *identity) {
				if id != nil && !slices.Contains(ids, id) {
					ids = append(ids, id)
				}
			}
			var cns []*identity
			n := 0
			for _, a := range c.Subject.Names {
				if a.Type.Equal(oidCN) {
					n++
					if v, ok := a.Value.(string); ok && s.certCN[v] != nil {
						cns = append(cns, s.certCN[v])
					}
				}
			}
			if n > 1 && len(cns) > 0 {
				// Readers disagree on which CN counts (Go takes the last).
				return nil, s.authRefused("multiple_cn", fmt.Sprintf("client certificate subject has %d common names: one identity, one CN", n))
			}
			for _, id := range cns {
				add(id)
			}
			for _, d := range c.DNSNames {
				add(s.certSAN["dns:"+strings.ToLower(d)])
			}
			for _, u := range c.URIs {
				add(s.certSAN["uri:"+u.String()])
			}
			for _, e := range c.EmailAddresses {
				add(s.certSAN["email:"+e])
			}
			switch {
			case len(ids) > 1:
				var names []string
				for _, id := range ids {
					names = append(names, id.name)
				}
				return nil, s.authRefused("ambiguous", "client certificate names several clients: "+strings.Join(names, ", "))
			case len(ids) == 1:
				inter := x509.NewCertPool()
				for _, ic := range r.TLS.PeerCertificates[1:] {
					inter.AddCert(ic)
				}
				if _, err := c.Verify(x509.VerifyOptions{Roots: s.caPool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
					return nil, s.authRefused("chain", "client certificate: "+err.Error())
				}
				return ids[0], ""
			}
		}
	}
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && tok != "" {
		if id := s.tokens[tokenHash(strings.TrimSpace(tok))]; id != nil {
			return id, ""
		}
	}
	return nil, s.authRefused("unknown", "")
}

// authRefused counts a refused identity by reason and returns the detail.
func (s *Server) authRefused(reason, detail string) string {
	s.metrics.authRefused.WithLabelValues(reason).Inc()
	return detail
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	writeEncoded(w, code, v, true)
}

// bufs are encoding buffers reused across responses: a response of
// thousands of items is hundreds of kilobytes.
var bufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// writeEncoded writes v as JSON with a final newline (indented as
// api.Marshal, or compact), with its Content-Length.
func writeEncoded(w http.ResponseWriter, code int, v any, indent bool) {
	buf := bufs.Get().(*bytes.Buffer)
	defer bufs.Put(buf)
	buf.Reset()
	enc := json.NewEncoder(buf)
	if indent {
		enc.SetIndent("", "  ")
	}
	if err := enc.Encode(v); err != nil {
		// Only a type the API does not have can fail to encode.
		http.Error(w, `{"error":"encoding the answer failed"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

func writeError(w http.ResponseWriter, code int, msg string, items []api.ItemError) {
	writeJSON(w, code, &api.Error{Error: msg, Items: items})
}

// refuse answers a policy or check refusal and records it in the audit log.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, id *identity, code int, reqID, msg string, items []api.ItemError) {
	// Linear in the items (the entry keeps a bounded prefix and digest).
	var reason strings.Builder
	reason.WriteString(msg)
	for _, it := range items {
		reason.WriteString("; " + it.ID + ": " + it.Reason)
	}
	e := &audit.Entry{Time: time.Now().UTC(), Type: audit.TypeRefuse, Client: id.name, Request: reqID, Status: code, Reason: reason.String()}
	// Record the refusal even if the client hangs up meanwhile.
	if err := s.store.Audit(context.WithoutCancel(r.Context()), e); err != nil {
		s.log.Error("auditing a refusal", "err", err)
		writeError(w, http.StatusInternalServerError, "audit log unavailable", nil)
		return
	}
	writeError(w, code, msg, items)
}

func (s *Server) submit(w http.ResponseWriter, r *http.Request, id *identity) {
	limit := s.cfg.Limits.MaxRequestBytes
	if r.ContentLength > limit {
		s.tooLarge(w, id, r.ContentLength)
		return
	}
	body, err := readBody(r.Body, limit)
	if err != nil {
		var ne net.Error
		switch {
		case errors.Is(err, errTooLarge):
			s.tooLarge(w, id, -1)
		case errors.As(err, &ne) && ne.Timeout():
			s.metrics.slowClients.WithLabelValues("read").Inc()
			s.log.Warn("slow client cut off", "client", id.name, "read", len(body), "declared", r.ContentLength, "timeout", s.cfg.Limits.ReadTimeout.String())
			writeError(w, http.StatusRequestTimeout, "reading request body: timed out", nil)
		default:
			writeError(w, http.StatusBadRequest, "reading request body: "+err.Error(), nil)
		}
		return
	}
	req, reqID, v := s.vet(id, body, time.Now())
	if v.code != 0 {
		s.metrics.submissions.WithLabelValues(v.result).Inc()
		if v.audited {
			s.refuse(w, r, id, v.code, reqID, v.msg, v.items)
		} else {
			writeError(w, v.code, v.msg, v.items)
		}
		return
	}

	now := time.Now().UTC()
	sr := &store.Request{ID: reqID, Client: id.name, Body: body, Created: now, Binding: s.bind.request(reqID, id.name)}
	for i, it := range req.Items {
		state := store.StatePending
		if s.keys[it.Key].cfg.Approvals > 0 {
			state = store.StateApproval
		}
		sr.Items = append(sr.Items, store.Item{Seq: i, ID: it.ID, Key: it.Key, Kind: string(it.Kind), Hash: it.Hash, TBS: it.TBS, State: state})
	}
	e := &audit.Entry{Time: now, Type: audit.TypeSubmit, Client: id.name, Request: reqID, Items: len(req.Items)}
	created, err := s.store.Submit(r.Context(), sr, e)
	if err != nil {
		s.log.Error("storing a request", "request", reqID, "err", err)
		writeError(w, http.StatusServiceUnavailable, "storing the request failed; submit it again", nil)
		return
	}
	code := http.StatusOK
	if created {
		code = http.StatusCreated
		s.metrics.submissions.WithLabelValues("accepted").Inc()
		s.wake()
	} else {
		s.metrics.submissions.WithLabelValues("duplicate").Inc()
	}
	// A new request is exactly what was just stored: answer from it. A
	// known one may have progressed: read it back.
	stored := sr
	if !created {
		if stored, err = s.store.Request(r.Context(), reqID); err != nil {
			writeError(w, http.StatusServiceUnavailable, "reading the request back failed", nil)
			return
		}
		// A reproducible build gives every client that builds it the
		// same request: another client that passed every check above
		// for it becomes a submitter of it too, and sees it as its own.
		if !isSubmitter(stored, id.name) {
			e := &audit.Entry{Time: time.Now().UTC(), Type: audit.TypeSubmit, Client: id.name, Request: reqID, Items: len(req.Items)}
			if _, err := s.store.AddSubmitter(r.Context(), reqID, id.name, s.bind.submitter(reqID, id.name), e); err != nil {
				s.log.Error("storing a submitter", "request", reqID, "err", err)
				writeError(w, http.StatusServiceUnavailable, "storing the request failed; submit it again", nil)
				return
			}
			stored.Submitters = append(stored.Submitters, id.name)
		}
	}
	w.Header().Set("Location", "/v1/requests/"+reqID)
	writeJSON(w, code, s.statusTo(stored, id))
}

// verdict is what vetting a submission decided.
type verdict struct {
	code    int // HTTP status of the refusal; 0: accepted
	msg     string
	items   []api.ItemError
	audited bool   // a policy or check refusal, recorded in the audit log
	result  string // the signet_submissions_total label
}

// vet decides whether client id may submit body, touching nothing: the
// document's shape, every item's key and kind against id's rights, every
// item's kind check (the canonical rebuild) and signing time. Unknown
// keys are bad input (400); keys or kinds the client may not use are a
// policy refusal (403, audited); content that fails its kind's check is
// refused (422, audited). It returns the parsed request and its id when
// the body parses.
func (s *Server) vet(id *identity, body []byte, now time.Time) (*request.Request, string, verdict) {
	invalid := func(code int, msg string, items []api.ItemError) verdict {
		return verdict{code: code, msg: msg, items: items, result: "invalid"}
	}
	req, err := request.Parse(body)
	if err != nil {
		return nil, "", invalid(http.StatusBadRequest, err.Error(), nil)
	}
	d := req.Digest()
	reqID := hex.EncodeToString(d[:])
	if len(req.Items) == 0 {
		return req, reqID, invalid(http.StatusBadRequest, "request has no items", nil)
	}
	if len(req.Items) > s.cfg.Limits.MaxItems {
		return req, reqID, invalid(http.StatusRequestEntityTooLarge, fmt.Sprintf("request has %d items, the limit is %d", len(req.Items), s.cfg.Limits.MaxItems), nil)
	}
	var unknown, forbidden, refused []api.ItemError
	for i := range req.Items {
		it := &req.Items[i]
		k := s.keys[it.Key]
		switch {
		case k == nil:
			unknown = append(unknown, api.ItemError{ID: it.ID, Reason: fmt.Sprintf("no key named %q", it.Key)})
		case !id.keys[it.Key]:
			forbidden = append(forbidden, api.ItemError{ID: it.ID, Reason: fmt.Sprintf("client %s may not use key %q", id.name, it.Key)})
		case !slices.Contains(k.cfg.Kinds, string(it.Kind)):
			forbidden = append(forbidden, api.ItemError{ID: it.ID, Reason: fmt.Sprintf("key %q does not sign %s items", it.Key, it.Kind)})
		case len(id.kinds) > 0 && !id.kinds[string(it.Kind)]:
			forbidden = append(forbidden, api.ItemError{ID: it.ID, Reason: fmt.Sprintf("client %s may not submit %s items", id.name, it.Kind)})
		default:
			err := check.Item(it)
			if err == nil {
				t, _ := check.SigningTime(it)
				err = s.timeAllowed(t, now)
			}
			if err != nil {
				refused = append(refused, api.ItemError{ID: it.ID, Reason: err.Error()})
			}
		}
	}
	switch {
	case len(unknown) > 0:
		return req, reqID, invalid(http.StatusBadRequest, "request names keys this service does not hold", unknown)
	case len(forbidden) > 0:
		return req, reqID, verdict{code: http.StatusForbidden, msg: "not allowed", items: forbidden, audited: true, result: "refused"}
	case len(refused) > 0:
		return req, reqID, verdict{code: http.StatusUnprocessableEntity, msg: "items refused by their kind's check", items: refused, audited: true, result: "refused"}
	}
	return req, reqID, verdict{}
}

// errTooLarge: a body past limits.max_request_bytes.
var errTooLarge = errors.New("request body too large")

// readBody reads r whole, growing its buffer only as bytes arrive (a
// declared Content-Length allocates nothing) and never past limit bytes.
// On an error it returns what was read.
func readBody(r io.Reader, limit int64) ([]byte, error) {
	buf := make([]byte, 0, min(limit+1, 32<<10))
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) > limit {
				return buf, errTooLarge
			}
			buf = slices.Grow(buf, int(min(int64(cap(buf)), limit+1-int64(cap(buf)))))
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			return buf, errTooLarge
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// tooLarge refuses a body over the limit (declared: its Content-Length,
// or -1 when it grew past the limit while read).
func (s *Server) tooLarge(w http.ResponseWriter, id *identity, declared int64) {
	s.metrics.submissions.WithLabelValues("invalid").Inc()
	s.metrics.bodyTooLarge.Inc()
	s.log.Warn("request body over the limit", "client", id.name, "declared", declared, "limit", s.cfg.Limits.MaxRequestBytes)
	// The rest of the body is not read: close the connection after the answer.
	w.Header().Set("Connection", "close")
	writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body exceeds the limit of %d bytes", s.cfg.Limits.MaxRequestBytes), nil)
}

func (s *Server) statusOf(r *store.Request) *api.Status {
	st := &api.Status{ID: r.ID, Client: r.Client, Created: r.Created.Format(time.RFC3339Nano), Approvers: r.Approvers, State: api.StateSigned}
	for _, it := range r.Items {
		st.Items = append(st.Items, api.ItemStatus{ID: it.ID, Key: it.Key, Kind: it.Kind, State: it.State, Error: it.Error})
		switch it.State {
		case store.StateRefused:
			st.State = api.StateRefused
		case store.StateApproval:
			if st.State != api.StateRefused {
				st.State = api.StateApproval
			}
		case store.StatePending:
			if st.State != api.StateApproval && st.State != api.StateRefused {
				st.State = api.StatePending
			}
		}
		if k := s.keys[it.Key]; k != nil && k.cfg.Approvals > 0 {
			if st.Approvals == nil {
				st.Approvals = map[string]int{}
			}
			st.Approvals[it.Key] = k.cfg.Approvals
		}
	}
	return st
}

// isSubmitter reports whether client submitted r (first, or the same
// request again later).
func isSubmitter(r *store.Request, client string) bool {
	return r.Client == client || slices.Contains(r.Submitters, client)
}

// statusTo is r's status as id may see it: a client that submitted the
// request too sees itself as its client, not who was first.
func (s *Server) statusTo(r *store.Request, id *identity) *api.Status {
	st := s.statusOf(r)
	if isSubmitter(r, id.name) {
		st.Client = id.name
	}
	return st
}

// load fetches the request named in the path, if id may see it: a
// submitter, or an approver of one of its keys. Others get 404, as for an
// unknown id.
func (s *Server) load(w http.ResponseWriter, r *http.Request, id *identity) *store.Request {
	reqID := r.PathValue("id")
	if b, err := hex.DecodeString(reqID); err != nil || len(b) != 32 || strings.ToLower(reqID) != reqID {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("request id %q: want 64 lowercase hex digits", reqID), nil)
		return nil
	}
	sr, err := s.store.Request(r.Context(), reqID)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "no request "+reqID, nil)
		return nil
	}
	if err != nil {
		s.log.Error("loading a request", "request", reqID, "err", err)
		writeError(w, http.StatusServiceUnavailable, "store unavailable", nil)
		return nil
	}
	if !isSubmitter(sr, id.name) && !slices.ContainsFunc(sr.Items, func(it store.Item) bool { return id.approve[it.Key] }) {
		writeError(w, http.StatusNotFound, "no request "+reqID, nil)
		return nil
	}
	return sr
}

func (s *Server) status(w http.ResponseWriter, r *http.Request, id *identity) {
	if sr := s.load(w, r, id); sr != nil {
		writeJSON(w, http.StatusOK, s.statusTo(sr, id))
	}
}

// maxWait bounds a long-polling fetch (?wait=).
const maxWait = 60 * time.Second

func (s *Server) response(w http.ResponseWriter, r *http.Request, id *identity) {
	var wait time.Duration
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("wait=%q: want a duration such as 30s", v), nil)
			return
		}
		wait = min(d, maxWait)
	}
	deadline := time.Now().Add(wait)
	sr := s.load(w, r, id)
	if sr == nil {
		return
	}
	// Wait without asking the store at each batch this replica stores:
	// count the request's signatures stored since the last look, and ask
	// only when they may be all (or every recheck interval: approvals and
	// other replicas wake nobody here). A count may include signatures the
	// last look saw already; that only makes the store asked early.
	next, release := s.watch(sr.ID)
	defer release()
	_, seen := next()
	if s.statusOf(sr).State != api.StateSigned {
		// Read again now that we watch: a batch stored between the first
		// read and the watch would otherwise go unnoticed.
		if sr = s.load(w, r, id); sr == nil {
			return
		}
	}
	unsigned := 0
	for _, it := range sr.Items {
		if it.State != store.StateSigned {
			unsigned++
		}
	}
	for {
		st := s.statusOf(sr)
		if st.State == api.StateSigned {
			break
		}
		if st.State == api.StateRefused {
			writeError(w, http.StatusGone, fmt.Sprintf("request %s will not be signed: %s", sr.ID, st.Summary()), nil)
			return
		}
		left := time.Until(deadline)
		if left <= 0 {
			writeError(w, http.StatusConflict, fmt.Sprintf("request %s is not signed yet (state %s)", sr.ID, st.State), nil)
			return
		}
		// Other replicas store signatures too: look again every poll
		// interval. A single SQLite node is the only writer, so its own
		// counts suffice; it re-reads rarely, as a safety net.
		recheck := s.cfg.Poll.Duration
		if s.cfg.Store.Driver == "sqlite" {
			recheck = 2 * time.Second
		}
		t := time.NewTimer(min(left, recheck))
	wait:
		for {
			ch, stored := next()
			if stored-seen >= unsigned {
				break
			}
			select {
			case <-ch:
			case <-t.C:
				break wait
			case <-s.draining:
				deadline = time.Now() // answer now: shutdown waits for handlers
				break wait
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		t.Stop()
		_, seen = next()
		n, err := s.store.Unsigned(r.Context(), sr.ID)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, "store unavailable", nil)
			return
		}
		unsigned = int(n)
		if n == 0 || time.Until(deadline) <= 0 {
			if sr = s.load(w, r, id); sr == nil {
				return
			}
		}
	}
	ctx := r.Context()
	size, root, err := s.store.Tree(ctx)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "audit log unavailable", nil)
		return
	}
	cp := audit.Checkpoint{Origin: s.note.Name(), Size: size, Hash: root}
	signed, err := cp.Sign(s.note)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "signing the checkpoint failed", nil)
		return
	}
	res := &api.Result{
		Response: &request.Response{Format: request.FormatResponse, Request: "sha256:" + sr.ID},
		Audit:    api.AuditProofs{Checkpoint: string(signed), Items: map[string]*audit.Proof{}},
	}
	for _, it := range sr.Items {
		k := s.keys[it.Key]
		if k == nil {
			writeError(w, http.StatusInternalServerError, fmt.Sprintf("key %q is no longer configured", it.Key), nil)
			return
		}
		sig := request.Signature{ID: it.ID, Signature: it.Signature, Certificate: k.cert.Raw}
		for _, c := range k.chain {
			sig.Chain = append(sig.Chain, c.Raw)
		}
		res.Response.Items = append(res.Response.Items, sig)
	}
	// The items' sign entries were mostly appended together: read them as
	// one range when it is dense, else one by one.
	idx := make([]int64, len(sr.Items))
	lo, hi := sr.Items[0].AuditIndex, sr.Items[0].AuditIndex
	for i, it := range sr.Items {
		idx[i] = it.AuditIndex
		lo, hi = min(lo, it.AuditIndex), max(hi, it.AuditIndex)
	}
	proofs, err := s.store.Prove(ctx, size, idx...)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "audit proof unavailable", nil)
		return
	}
	var span [][]byte
	if hi-lo < 4*int64(len(idx)) {
		if span, err = s.store.Entries(ctx, lo, hi+1); err != nil || int64(len(span)) != hi-lo+1 {
			writeError(w, http.StatusServiceUnavailable, "audit entries unavailable", nil)
			return
		}
	}
	for i, it := range sr.Items {
		var ent []byte
		if span != nil {
			ent = span[it.AuditIndex-lo]
		} else {
			ents, err := s.store.Entries(ctx, it.AuditIndex, it.AuditIndex+1)
			if err != nil || len(ents) != 1 {
				writeError(w, http.StatusServiceUnavailable, "audit entry unavailable", nil)
				return
			}
			ent = ents[0]
		}
		res.Audit.Items[it.ID] = &audit.Proof{Index: it.AuditIndex, Entry: string(ent), Proof: proofs[i]}
	}
	// Compact: a response of thousands of items is large enough already.
	writeEncoded(w, http.StatusOK, res, false)
}

func (s *Server) approve(w http.ResponseWriter, r *http.Request, id *identity) {
	sr := s.load(w, r, id)
	if sr == nil {
		return
	}
	gated := false
	mayApprove := false
	for _, it := range sr.Items {
		if k := s.keys[it.Key]; k != nil && k.cfg.Approvals > 0 && it.State == store.StateApproval {
			gated = true
			if id.approve[it.Key] {
				mayApprove = true
			}
		}
	}
	switch {
	case slices.Contains(sr.Approvers, id.name):
		// Approved already: the same answer again, so that a client
		// retrying an approval whose answer it lost is not told 409.
		writeJSON(w, http.StatusOK, s.statusTo(sr, id))
		return
	case !gated:
		writeError(w, http.StatusConflict, fmt.Sprintf("request %s has no items waiting for approval", sr.ID), nil)
		return
	case isSubmitter(sr, id.name):
		s.refuse(w, r, id, http.StatusForbidden, sr.ID, "a client may not approve its own request", nil)
		return
	case !mayApprove:
		s.refuse(w, r, id, http.StatusForbidden, sr.ID, fmt.Sprintf("client %s may not approve the keys this request waits for", id.name), nil)
		return
	}
	e := &audit.Entry{Time: time.Now().UTC(), Type: audit.TypeApprove, Client: id.name, Request: sr.ID}
	_, err := s.store.Approve(r.Context(), sr.ID, id.name, s.bind.approval(sr.ID, id.name), e, func(cur *store.Request) []int {
		var release []int
		for _, it := range cur.Items {
			k := s.keys[it.Key]
			if it.State != store.StateApproval || k == nil {
				continue
			}
			n := 0
			for _, a := range cur.Approvers {
				if a != cur.Client && s.mayApprove(a, it.Key) {
					n++
				}
			}
			if n >= k.cfg.Approvals {
				release = append(release, it.Seq)
			}
		}
		return release
	})
	if err != nil {
		s.log.Error("storing an approval", "request", sr.ID, "err", err)
		writeError(w, http.StatusServiceUnavailable, "storing the approval failed; approve again", nil)
		return
	}
	s.wake()
	if sr = s.load(w, r, id); sr != nil {
		writeJSON(w, http.StatusOK, s.statusTo(sr, id))
	}
}

// requestDocument answers the request as it was submitted, for an approver to
// review: the client checks that its digest is the request id, so what it
// shows is what the id (which approvals bind to) names.
func (s *Server) requestDocument(w http.ResponseWriter, r *http.Request, id *identity) {
	sr := s.load(w, r, id)
	if sr == nil {
		return
	}
	d, err := s.store.Document(r.Context(), sr.ID)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "store unavailable", nil)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(d.Body)))
	w.WriteHeader(http.StatusOK)
	w.Write(d.Body)
}

// maxReason bounds the reason of a rejection or cancellation.
const maxReason = 1024

// readReason reads {"reason": "..."} (optional) from a reject or cancel
// call.
func readReason(w http.ResponseWriter, r *http.Request) (string, bool) {
	var body struct {
		Reason string `json:"reason"`
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4*maxReason))
	if err == nil && len(bytes.TrimSpace(data)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		err = dec.Decode(&body)
	}
	switch {
	case err != nil:
		writeError(w, http.StatusBadRequest, "want {\"reason\": \"...\"}: "+err.Error(), nil)
		return "", false
	case len(body.Reason) > maxReason:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("reason is longer than %d bytes", maxReason), nil)
		return "", false
	case request.ValidText(body.Reason) != nil:
		writeError(w, http.StatusBadRequest, "reason: "+request.ValidText(body.Reason).Error(), nil)
		return "", false
	}
	return body.Reason, true
}

// reject ends a request an approver of one of its waiting keys will not
// let be signed; cancel ends a request its submitter withdraws. Both are
// audited; items already signed stay signed.
func (s *Server) reject(w http.ResponseWriter, r *http.Request, id *identity) {
	s.end(w, r, id, audit.TypeReject)
}

func (s *Server) cancel(w http.ResponseWriter, r *http.Request, id *identity) {
	s.end(w, r, id, audit.TypeCancel)
}

func (s *Server) end(w http.ResponseWriter, r *http.Request, id *identity, typ string) {
	sr := s.load(w, r, id)
	if sr == nil {
		return
	}
	reason, ok := readReason(w, r)
	if !ok {
		return
	}
	var may bool
	var what string
	switch typ {
	case audit.TypeCancel:
		may, what = sr.Client == id.name, "cancelled by its submitter "+id.name
	default:
		may = !isSubmitter(sr, id.name) && slices.ContainsFunc(sr.Items, func(it store.Item) bool {
			return (it.State == store.StateApproval || it.State == store.StatePending) && id.approve[it.Key]
		})
		what = "rejected by " + id.name
	}
	if !may {
		s.refuse(w, r, id, http.StatusForbidden, sr.ID, fmt.Sprintf("client %s may not %s request %s", id.name, typ, sr.ID), nil)
		return
	}
	if reason != "" {
		what += ": " + reason
	}
	e := &audit.Entry{Time: time.Now().UTC(), Type: typ, Client: id.name, Request: sr.ID, Reason: reason}
	n, err := s.store.End(r.Context(), sr.ID, what, e)
	if err != nil {
		s.log.Error("ending a request", "request", sr.ID, "err", err)
		writeError(w, http.StatusServiceUnavailable, "storing the decision failed; try again", nil)
		return
	}
	if n == 0 {
		writeError(w, http.StatusConflict, fmt.Sprintf("request %s has no items left to sign", sr.ID), nil)
		return
	}
	s.endedBroadcast(sr.ID) // waiting fetches answer now
	if sr = s.load(w, r, id); sr != nil {
		writeJSON(w, http.StatusOK, s.statusTo(sr, id))
	}
}

func (s *Server) mayApprove(client, key string) bool {
	for _, c := range s.clients {
		if c.name == client {
			return c.approve[key]
		}
	}
	return false
}

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request, id *identity) {
	out := []api.Key{}
	for _, kc := range s.cfg.Keys {
		k := s.keys[kc.Name]
		pub, err := keys.MarshalPublicKeyPEM(k.cert.PublicKey)
		if err != nil {
			writeError(w, http.StatusInternalServerError, "key "+kc.Name+": "+err.Error(), nil)
			return
		}
		ak := api.Key{Name: kc.Name, Kinds: kc.Kinds, Approvals: kc.Approvals, PublicKey: string(pub), Algorithm: keys.Describe(k.cert.PublicKey),
			Certificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k.cert.Raw}))}
		for _, c := range k.chain {
			ak.Chain += string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
		}
		out = append(out, ak)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) checkpoint(w http.ResponseWriter, r *http.Request, id *identity) {
	size, root, err := s.store.Tree(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "audit log unavailable", nil)
		return
	}
	signed, err := audit.Checkpoint{Origin: s.note.Name(), Size: size, Hash: root}.Sign(s.note)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "signing the checkpoint failed", nil)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write(signed)
}

func (s *Server) auditKey(w http.ResponseWriter, r *http.Request, id *identity) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, s.noteV+"\n")
}

func (s *Server) entries(w http.ResponseWriter, r *http.Request, id *identity) {
	q := r.URL.Query()
	start, err1 := strconv.ParseInt(q.Get("start"), 10, 64)
	end, err2 := strconv.ParseInt(q.Get("end"), 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start {
		writeError(w, http.StatusBadRequest, "want ?start=N&end=M with 0 <= N <= M", nil)
		return
	}
	end = min(end, start+maxEntriesPerCall)
	// Streamed from the store as read: memory stays one entry and the
	// socket buffers, whatever the range; a client that stops reading is
	// cut off by the write timeout, which ends the store cursor too.
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	wrote := false
	var werr error
	err := s.store.EachEntry(r.Context(), start, end, func(_ int64, e []byte) error {
		wrote = true
		if _, werr = w.Write(append(e, '\n')); werr != nil {
			return werr
		}
		return nil
	})
	switch {
	case werr != nil:
		var ne net.Error
		if errors.As(werr, &ne) && ne.Timeout() {
			s.metrics.slowClients.WithLabelValues("write").Inc()
			s.log.Warn("slow client cut off", "client", id.name, "route", "GET /v1/audit/entries", "timeout", s.cfg.Limits.WriteTimeout.String())
		}
	case err != nil && !wrote:
		writeError(w, http.StatusServiceUnavailable, "audit log unavailable", nil)
	case err != nil:
		// Too late for a status; every line written is whole, and a
		// client asks again from the first entry it did not get.
		s.log.Error("streaming audit entries", "err", err)
	}
}
