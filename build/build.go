// Package build runs a declarative image build (a TOML Config) in rounds of
// signatures.
//
// A build is a small DAG: dm-verity root hashes and UKI PCR policies can be
// signed as soon as the inputs are known; a UKI's Secure Boot signature
// covers its .pcrsig (and the root hash on its command line); the manifest
// covers every final output. Run executes every step it can. A signature by
// an online key is made on the spot; one by an offline key ("offline" in
// the configuration) is collected into a request, and when a pass ends with
// collected items, Run writes round-N.request.json into the build directory
// and returns with Result.Done false. Resuming with the response verifies it
// against the request and the configured certificates, stores the
// signatures, and runs the pass again, which now gets further. A full image
// (UKI with PCR policy, verity, manifest) takes three rounds:
//
//  1. the PCR policies' pol digests and the verity root hashes (and the IPE
//     policy),
//  2. the Secure Boot signature of the UKI that now carries .pcrsig and the
//     root hash on its command line,
//  3. the manifest over the final outputs.
//
// Every pass recomputes everything from the inputs, deterministically (the
// build's time is fixed in its state), and signs through the same prepare →
// sign → join functions whether the key is online or not: an online build
// and an offline one with the same keys give the same bytes.
//
// The build directory alone is enough to resume (state.json, with paths
// relative to it), on another machine or at another path.
package build

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"signet.dev/internal/atomicfile"
	"signet.dev/internal/buildtime"
	"signet.dev/keys"
	"signet.dev/openpgp"
	"signet.dev/request"
	"signet.dev/request/check"
)

// Errors a caller may test for.
var (
	// ErrNotWaiting: --resume on a build that waits for no response.
	ErrNotWaiting = errors.New("build is not waiting for signatures")
	// ErrAlreadyJoined: the response answers a round already joined.
	ErrAlreadyJoined = errors.New("response was already joined")
	// ErrWaiting: a plain run of a build that waits for a response.
	ErrWaiting = errors.New("build is waiting for signatures")
	// ErrConfigChanged: the configuration differs from the one the build
	// started with.
	ErrConfigChanged = errors.New("configuration changed since the build started")
)

// Options control Run.
type Options struct {
	// Dir overrides the configuration's build directory.
	Dir string
	// Responses answer the pending request (--resume): one response, or
	// partial ones from several key holders, merged.
	Responses [][]byte
	// Log receives one line per step; nil discards.
	Log io.Writer
}

// Result says how far a run got.
type Result struct {
	Dir  string
	Done bool
	// Round, Request, Items and Keys describe the request written when
	// not Done.
	Round   int
	Request string
	Items   int
	Keys    []string
}

// Run runs (or resumes) the build.
func Run(c *Config, o Options) (*Result, error) {
	dir := o.Dir
	if dir == "" {
		dir = c.BuildDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	st, err := LoadState(dir)
	switch {
	case errors.Is(err, ErrNoState):
		if len(o.Responses) > 0 {
			return nil, fmt.Errorf("%s: %w: nothing to resume", dir, ErrNoState)
		}
		now, err := buildtime.Now()
		if err != nil {
			return nil, err
		}
		st = &State{Format: stateFormat, Config: hex.EncodeToString(c.digest[:]), Time: now.Unix(),
			Answered: []string{}, Signatures: map[string]*StoredSignature{}}
	case err != nil:
		return nil, err
	}
	if st.Config != hex.EncodeToString(c.digest[:]) {
		return nil, fmt.Errorf("%s: %w (state %s)", dir, ErrConfigChanged, st.Config[:min(16, len(st.Config))])
	}
	c.certificatesFromState(st)
	if len(o.Responses) > 0 {
		if err := resume(c, dir, st, o.Responses); err != nil {
			return nil, err
		}
	} else if st.Pending != nil {
		return nil, fmt.Errorf("%w: round %d (%s); resume with --resume=RESPONSE", ErrWaiting, st.Pending.Round, filepath.Join(dir, st.Pending.File))
	}

	// A finished build run again redoes every step (taking the stored
	// signatures); it is done again only if nothing new needs signing.
	st.Done = false
	p, err := newPass(c, dir, st, o.Log)
	if err != nil {
		return nil, err
	}
	defer p.close()
	if err := p.run(); err != nil {
		return nil, err
	}
	res := &Result{Dir: dir}
	if len(p.pending) > 0 {
		round := len(st.Answered) + 1
		req := &request.Request{Format: request.FormatRequest, Build: c.Name, Round: round, Items: p.pending}
		data, err := req.Marshal()
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("round-%d.request.json", round)
		if err := atomicfile.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return nil, err
		}
		st.Pending = &PendingRequest{Round: round, File: name, Digest: req.DigestString()}
		if err := st.save(dir); err != nil {
			return nil, err
		}
		keyset := map[string]bool{}
		for _, it := range p.pending {
			keyset[it.Key] = true
		}
		for k := range keyset {
			res.Keys = append(res.Keys, k)
		}
		sort.Strings(res.Keys)
		res.Round, res.Request, res.Items = round, filepath.Join(dir, name), len(p.pending)
		return res, nil
	}
	st.Done = true
	st.Outputs = append(p.outputs, p.transfers...)
	if err := st.save(dir); err != nil {
		return nil, err
	}
	os.RemoveAll(filepath.Join(dir, workDir))
	res.Done = true
	return res, nil
}

// resume verifies a response against the pending request and stores its
// signatures. Nothing is stored unless every signature verifies.
func resume(c *Config, dir string, st *State, data [][]byte) error {
	var parts []*request.Response
	rejoined := 0
	for i, d := range data {
		resp, err := request.ParseResponse(d)
		if err != nil {
			if len(data) > 1 {
				return fmt.Errorf("response %d: %w", i+1, err)
			}
			return err
		}
		for r, a := range st.Answered {
			if a != resp.Request {
				continue
			}
			// The last round's join was recorded and the run stopped
			// before writing the next request (a crash): the same
			// command again continues the build.
			if r == len(st.Answered)-1 && st.Pending == nil && !st.Done {
				rejoined++
				continue
			}
			return fmt.Errorf("%w: it answers round %d's request; %s", ErrAlreadyJoined, r+1, waitingFor(st))
		}
		parts = append(parts, resp)
	}
	if rejoined == len(data) {
		return nil
	}
	if rejoined > 0 {
		return fmt.Errorf("%w: some responses answer round %d's request, already joined; %s", ErrAlreadyJoined, len(st.Answered), waitingFor(st))
	}
	if st.Pending == nil {
		return fmt.Errorf("%w: %s", ErrNotWaiting, waitingFor(st))
	}
	reqPath := filepath.Join(dir, st.Pending.File)
	rdata, err := os.ReadFile(reqPath)
	if err != nil {
		return err
	}
	req, err := request.Parse(rdata)
	if err != nil {
		return fmt.Errorf("%s: %w", reqPath, err)
	}
	if req.DigestString() != st.Pending.Digest {
		return fmt.Errorf("%s was modified since the build wrote it", reqPath)
	}
	expect := map[string]*x509.Certificate{}
	for _, it := range req.Items {
		if _, ok := expect[it.Key]; ok {
			continue
		}
		cert, _, err := c.Certificate(it.Key)
		if err != nil {
			return err
		}
		expect[it.Key] = cert
	}
	resp, err := request.Merge(req, parts...)
	if err != nil {
		return fmt.Errorf("response for round %d refused: %w", st.Pending.Round, err)
	}
	verified, err := request.Verify(req, resp, expect)
	if err != nil {
		return fmt.Errorf("response for round %d refused: %w", st.Pending.Round, err)
	}
	for id, v := range verified {
		sum := sha256.Sum256(v.Item.TBS)
		st.Signatures[id] = &StoredSignature{Key: v.Item.Key, TBSSHA256: hex.EncodeToString(sum[:]), Signature: v.Signature, Certificate: v.Certificate.Raw}
	}
	st.Answered = append(st.Answered, st.Pending.Digest)
	st.Pending = nil
	return st.save(dir)
}

func waitingFor(st *State) string {
	switch {
	case st.Pending != nil:
		return fmt.Sprintf("the build waits for round %d (%s)", st.Pending.Round, st.Pending.File)
	case st.Done:
		return "the build is complete"
	}
	return "the build has no pending request (run it without --resume to continue)"
}

// key is a configured key as a pass uses it.
type key struct {
	name   string
	cert   *x509.Certificate
	signer keys.Signer // nil for an offline key
	// openpgpCreated is the creation time of the configured OpenPGP
	// public key, zero without one.
	openpgpCreated time.Time
}

// pass is one execution of the pipeline.
type pass struct {
	c       *Config
	dir     string
	st      *State
	log     io.Writer
	keys    map[string]*key
	pending []request.Item
	outputs []Output
	// transfers are the sysupdate transfer definitions and the ESP copies
	// of the auto-enroll set written, outputs the manifest does not list.
	transfers []Output
	// blocked is set when a step could not finish for lack of a
	// signature; steps that consume every output (the manifest) wait.
	blocked bool
	// rootHashes are the verity root hashes of each image by output,
	// as cmdline parameters ("roothash=…", "usrhash=…").
	rootHashes map[string][]string
}

func newPass(c *Config, dir string, st *State, log io.Writer) (*pass, error) {
	if log == nil {
		log = io.Discard
	}
	p := &pass{c: c, dir: dir, st: st, log: log, keys: map[string]*key{}, rootHashes: map[string][]string{}}
	if st.Certificates == nil {
		st.Certificates = map[string][]byte{}
	}
	for _, name := range c.KeyNames() {
		cert, _, err := c.Certificate(name)
		if err != nil {
			p.close()
			return nil, err
		}
		if w := keys.PCRPolicyWarning(cert.PublicKey); w != "" && c.pcrKey(name) {
			p.logf("key %s: %s", name, w)
		}
		k := &key{name: name, cert: cert}
		kc := c.Keys[name]
		if kc.Key != Offline {
			src := kc.Source
			if src == "" {
				src = "file"
			}
			s, err := keys.Open(src, c.Path(kc.Key))
			if err != nil {
				p.close()
				return nil, fmt.Errorf("key %s: %w", name, err)
			}
			k.signer = s
			if err := keys.CheckPair(s, cert); err != nil {
				p.close()
				return nil, fmt.Errorf("key %s: %w", name, err)
			}
		}
		p.keys[name] = k
		st.Certificates[name] = cert.Raw
		if kc.OpenPGPPublicKey != "" {
			ring, err := os.ReadFile(c.Path(kc.OpenPGPPublicKey))
			if err != nil {
				p.close()
				return nil, fmt.Errorf("key %s: %w", name, err)
			}
			if st.OpenPGPKeys == nil {
				st.OpenPGPKeys = map[string][]byte{}
			}
			st.OpenPGPKeys[name] = ring
			if k.openpgpCreated, err = openpgp.KeyCreationTime(ring, cert.PublicKey); err != nil {
				p.close()
				return nil, fmt.Errorf("key %s: openpgp-public-key %s: %w", name, kc.OpenPGPPublicKey, err)
			}
		}
		// Checked before round 1: a key younger than the build time makes
		// signatures that predate it, which OpenPGP verifiers refuse only
		// once the last round is joined. The OpenPGP key's own creation
		// time counts when it is configured (it is what the signature
		// names); the certificate's notBefore otherwise.
		bt := time.Unix(st.Time, 0).UTC()
		if !k.openpgpCreated.IsZero() {
			if k.openpgpCreated.After(bt) {
				p.close()
				return nil, fmt.Errorf("key %s: OpenPGP key %s was created %s, after the build time %s (SOURCE_DATE_EPOCH)", name, kc.OpenPGPPublicKey, k.openpgpCreated.Format(time.RFC3339), bt.Format(time.RFC3339))
			}
		} else if cert.NotBefore.After(bt) {
			p.close()
			return nil, fmt.Errorf("key %s: certificate %q is valid only from %s, after the build time %s (SOURCE_DATE_EPOCH)", name, cert.Subject, cert.NotBefore.UTC().Format(time.RFC3339), bt.Format(time.RFC3339))
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, workDir), 0o755); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *pass) close() {
	for _, k := range p.keys {
		if k.signer != nil {
			k.signer.Close()
		}
	}
}

func (p *pass) logf(format string, a ...any) { fmt.Fprintf(p.log, format+"\n", a...) }

// sign returns the signature for an item: a stored one, one made now with
// an online key, or, for an offline key, ok = false after queuing the item
// for the next request. Every item passes the same checks a remote signer
// runs (package request/check) first.
func (p *pass) sign(it request.Item) (sig []byte, cert *x509.Certificate, ok bool, err error) {
	if err := check.Item(&it); err != nil {
		return nil, nil, false, fmt.Errorf("item %s: %w", it.ID, err)
	}
	k := p.keys[it.Key]
	if k == nil {
		return nil, nil, false, fmt.Errorf("item %s: no key %q", it.ID, it.Key)
	}
	sum := sha256.Sum256(it.TBS)
	tbsHex := hex.EncodeToString(sum[:])
	if s := p.st.Signatures[it.ID]; s != nil {
		if s.TBSSHA256 == tbsHex && s.Key == it.Key {
			if err := keys.Verify(k.cert.PublicKey, it.CryptoHash(), it.TBS, s.Signature); err != nil {
				return nil, nil, false, fmt.Errorf("item %s: stored signature: %w", it.ID, err)
			}
			return s.Signature, k.cert, true, nil
		}
		if k.signer == nil {
			return nil, nil, false, fmt.Errorf("item %s: its to-be-signed bytes differ from those signed in an earlier round (inputs changed during the build?)", it.ID)
		}
	}
	if k.signer == nil {
		for _, q := range p.pending {
			if q.ID == it.ID {
				return nil, nil, false, fmt.Errorf("item %s: requested twice", it.ID)
			}
		}
		p.pending = append(p.pending, it)
		return nil, nil, false, nil
	}
	sig, err = keys.Sign(k.signer, it.CryptoHash(), it.TBS)
	if err != nil {
		return nil, nil, false, fmt.Errorf("item %s: key %s: %w", it.ID, it.Key, err)
	}
	if err := keys.Verify(k.cert.PublicKey, it.CryptoHash(), it.TBS, sig); err != nil {
		return nil, nil, false, fmt.Errorf("item %s: key %s made a signature its certificate does not verify: %w", it.ID, it.Key, err)
	}
	// Stored so that a later pass (ECDSA signatures differ each time)
	// reproduces the same bytes.
	p.st.Signatures[it.ID] = &StoredSignature{Key: it.Key, TBSSHA256: tbsHex, Signature: sig, Certificate: k.cert.Raw}
	return sig, k.cert, true, nil
}

func (p *pass) run() error {
	// The transfer definitions need nothing signed; they go into the
	// image, not into the download (SHA256SUMS).
	names, err := WriteTransfers(p.c, filepath.Join(p.dir, TransferDir))
	if err != nil {
		return err
	}
	for _, n := range names {
		p.transfers = append(p.transfers, Output{File: TransferDir + "/" + n, Kind: "transfer"})
	}
	for _, v := range p.c.Verity {
		if err := p.verity(v); err != nil {
			return fmt.Errorf("verity %s: %w", v.Output, err)
		}
	}
	for _, im := range p.c.Images {
		if err := p.image(im); err != nil {
			return fmt.Errorf("image %s: %w", im.Output, err)
		}
	}
	if p.c.IPE != nil {
		if err := p.ipe(p.c.IPE); err != nil {
			return fmt.Errorf("ipe %s: %w", p.c.IPE.Policy, err)
		}
	}
	if e := p.c.Enroll; e != nil {
		if err := p.enroll(e); err != nil {
			return fmt.Errorf("secure-boot-enroll %s: %w", e.Name, err)
		}
	}
	for _, b := range p.c.BootLoaders {
		if err := p.bootLoader(b); err != nil {
			return fmt.Errorf("bootloader %s: %w", b.Output, err)
		}
	}
	for _, u := range p.c.UKIs {
		if err := p.uki(u); err != nil {
			return fmt.Errorf("uki %s: %w", u.Output, err)
		}
	}
	if p.c.Manifest != nil {
		if p.blocked {
			p.logf("manifest %s: waits for the other outputs", p.c.Manifest.Output)
			return nil
		}
		if err := p.manifest(p.c.Manifest); err != nil {
			return fmt.Errorf("manifest %s: %w", p.c.Manifest.Output, err)
		}
	}
	return nil
}

// buildTime is the build's fixed time.
func (p *pass) buildTime() time.Time { return time.Unix(p.st.Time, 0).UTC() }

func (p *pass) out(name string) string { return filepath.Join(p.dir, name) }
func (p *pass) work(name string) string {
	return filepath.Join(p.dir, workDir, strings.ReplaceAll(name, "/", "_"))
}
