// Package request defines signet's offline signing documents: a request that
// batches every signature a build needs at one point, and the response that
// carries the raw signatures back.
//
// A request is JSON:
//
//	{
//	  "format": "signet.request/v1",
//	  "items": [
//	    {
//	      "id": "roothashes/root.roothash",
//	      "kind": "verity-roothash",
//	      "key": "verity",
//	      "hash": "sha256",
//	      "tbs": "<base64 of the exact bytes to sign>",
//	      "verity": {"image": "root.raw", "rootHash": "<hex>"}
//	    }
//	  ]
//	}
//
// Each item names its kind, the key that must sign it (a name both sides
// agree on, never a key reference), the hash, the to-be-signed bytes (TBS),
// and one context object, named after the kind, that lets a signer check
// what it signs (see package signet.dev/request/check). A signer computes
// keys.Sign(key, hash, tbs): PKCS#1 v1.5 for RSA, DER ECDSA-Sig-Value for
// ECDSA, exactly what `openssl dgst -<hash> -sign KEY` writes.
//
// A response carries, per item id, that raw signature and the signer's
// certificate, and binds to its request by the request's SHA-256 digest
// (Request.Digest). Verify checks a response against its request before
// anyone uses a signature.
//
// Item ids are relative slash-separated paths ("pcrs/uki.efi/<pol>"), so a
// request maps one to one onto an OBS *.cpio.rsasign bulk archive (see
// ExportOBS).
//
// Decoding is strict: unknown fields, a wrong format string, duplicate ids,
// bad base64 or hex, or a context that does not belong to the item's kind
// are errors. This package knows nothing of PE files or verity trees; the
// per-kind content checks live in signet.dev/request/check.
package request

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"unicode/utf8"

	"signet.dev/internal/strictjson"
)

// Format strings of the two documents.
const (
	FormatRequest  = "signet.request/v1"
	FormatResponse = "signet.response/v1"
)

// Kind is what an item signs.
type Kind string

// The item kinds.
const (
	KindAuthenticode    Kind = "authenticode"     // Secure Boot: DER SET OF Authenticode signed attributes
	KindPCRPolicy       Kind = "pcr-policy"       // the 32-byte TPM2 PolicyPCR digest of a PCR 11 prediction, followed by SHA256(ref) with a policy reference
	KindVerityRootHash  Kind = "verity-roothash"  // the lowercase hex dm-verity root hash
	KindManifestOpenPGP Kind = "manifest-openpgp" // SHA256SUMS followed by an OpenPGP v4 signature trailer
	KindManifestPKCS7   Kind = "manifest-pkcs7"   // SHA256SUMS itself
	KindIPEPolicy       Kind = "ipe-policy"       // the IPE policy text
)

// Kinds lists every kind, in the order documents present them.
var Kinds = []Kind{KindAuthenticode, KindPCRPolicy, KindVerityRootHash, KindManifestOpenPGP, KindManifestPKCS7, KindIPEPolicy, KindUEFIAuthVar}

// Errors a caller may test for with errors.Is.
var (
	ErrFormat       = errors.New("not a signet document of this version")
	ErrInvalid      = errors.New("invalid document")
	ErrWrongRequest = errors.New("response is for another request")
	ErrMissing      = errors.New("response lacks a signature")
	ErrBadSignature = errors.New("signature does not verify")
)

// Request is a batch of signatures wanted.
type Request struct {
	Format string `json:"format"`
	// Build and Round say where a request comes from (a build directory's
	// name and its round number); informational, for people.
	Build string `json:"build,omitempty"`
	Round int    `json:"round,omitempty"`
	Items []Item `json:"items"`
}

// Item is one signature wanted.
type Item struct {
	ID   string `json:"id"`
	Kind Kind   `json:"kind"`
	// Key is the name of the key that must sign, as the build names it.
	Key string `json:"key"`
	// Hash is the digest the signer applies to TBS: "sha256", "sha384"
	// or "sha512".
	Hash string `json:"hash"`
	// TBS is the exact byte string to sign.
	TBS []byte `json:"tbs"`

	// Exactly one context, the one named after Kind, is set.
	Authenticode *AuthenticodeContext `json:"authenticode,omitempty"`
	PCR          *PCRContext          `json:"pcr,omitempty"`
	Verity       *VerityContext       `json:"verity,omitempty"`
	Manifest     *ManifestContext     `json:"manifest,omitempty"`
	IPE          *IPEContext          `json:"ipe,omitempty"`
	AuthVar      *AuthVarContext      `json:"authvar,omitempty"`
}

// AuthenticodeContext describes a PE file whose Authenticode signed
// attributes are the TBS.
type AuthenticodeContext struct {
	File string `json:"file"`
	// Digest is the hex Authenticode image digest (with the item's hash)
	// that the attributes' messageDigest must commit to via
	// SpcIndirectDataContent.
	Digest string `json:"digest"`
	// SpcIndirectData is the DER SpcIndirectDataContent whose digest the
	// attributes' messageDigest is, carrying Digest.
	SpcIndirectData []byte `json:"spcIndirectData"`
}

// PCRContext describes one PCR 11 prediction whose PolicyPCR digest is the
// TBS.
type PCRContext struct {
	UKI  string `json:"uki"`
	Bank string `json:"bank"` // sha1, sha256, sha384, sha512
	// Phase is the boot phase path, words joined with ':' ("" = before
	// the initrd).
	Phase string `json:"phase"`
	// Sections are the measured UKI sections in measurement order, each
	// with the bank digest of its contents.
	Sections []SectionDigest `json:"sections"`
	// PCR is the hex predicted PCR 11 value in the bank.
	PCR string `json:"pcr"`
	// Ref is the TPM2 policy reference the signature is bound to
	// (systemd-measure --policyref=): the TBS is then pol ‖ SHA256(ref)
	// instead of pol.
	Ref string `json:"ref,omitempty"`
}

// SectionDigest is a measured UKI section.
type SectionDigest struct {
	Name   string `json:"name"`
	Digest string `json:"digest"`
}

// VerityContext describes a dm-verity root hash to sign.
type VerityContext struct {
	Image    string `json:"image"`
	RootHash string `json:"rootHash"`
}

// ManifestContext describes a SHA256SUMS manifest.
type ManifestContext struct {
	File    string          `json:"file"`
	Entries []ManifestEntry `json:"entries"`
}

// ManifestEntry is one line of a SHA256SUMS manifest.
type ManifestEntry struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
}

// IPEContext describes an IPE policy.
type IPEContext struct {
	File    string `json:"file"`
	Name    string `json:"name"`
	Version string `json:"version"`
}

// Response carries the signatures for a request.
type Response struct {
	Format string `json:"format"`
	// Request is "sha256:" and the hex Request.Digest of the request
	// answered.
	Request string      `json:"request"`
	Items   []Signature `json:"items"`
}

// Signature answers one item.
type Signature struct {
	ID string `json:"id"`
	// Signature is the raw signature over the item's TBS.
	Signature []byte `json:"signature"`
	// Certificate is the DER X.509 certificate of the signing key.
	Certificate []byte `json:"certificate"`
	// Chain holds DER intermediate certificates, if any.
	Chain [][]byte `json:"chain,omitempty"`
}

// HashByName maps a document hash name to crypto.Hash.
func HashByName(name string) (crypto.Hash, error) {
	switch name {
	case "sha256":
		return crypto.SHA256, nil
	case "sha384":
		return crypto.SHA384, nil
	case "sha512":
		return crypto.SHA512, nil
	}
	return 0, fmt.Errorf("hash %q: not one of sha256, sha384, sha512", name)
}

// HashName is the document name of a hash.
func HashName(h crypto.Hash) (string, error) {
	switch h {
	case crypto.SHA256:
		return "sha256", nil
	case crypto.SHA384:
		return "sha384", nil
	case crypto.SHA512:
		return "sha512", nil
	}
	return "", fmt.Errorf("hash %v: not usable in a signing request", h)
}

// CryptoHash returns the item's hash.
func (it *Item) CryptoHash() crypto.Hash {
	h, _ := HashByName(it.Hash)
	return h
}

// Parse decodes and validates a request.
func Parse(data []byte) (*Request, error) {
	var r Request
	if err := decodeStrict(data, &r); err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	if r.Format != FormatRequest {
		return nil, fmt.Errorf("request: format %q: %w (want %q)", r.Format, ErrFormat, FormatRequest)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// ParseResponse decodes and validates a response (its shape; Verify checks
// it against a request).
func ParseResponse(data []byte) (*Response, error) {
	var r Response
	if err := decodeStrict(data, &r); err != nil {
		return nil, fmt.Errorf("response: %w", err)
	}
	if r.Format != FormatResponse {
		return nil, fmt.Errorf("response: format %q: %w (want %q)", r.Format, ErrFormat, FormatResponse)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

func decodeStrict(data []byte, v any) error {
	// Duplicate keys and keys matching a field only by case are refused:
	// jq or Python must read the same document signet signs.
	if err := strictjson.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

// ValidID reports whether id is usable as an item id: a clean relative
// slash-separated path of printable ASCII, at most 255 bytes, not ending in
// ".sig" (OBS names a signature <id>.sig).
func ValidID(id string) error {
	if id == "" || len(id) > 255 {
		return errors.New("must be 1 to 255 bytes")
	}
	for _, c := range []byte(id) {
		if c <= ' ' || c >= 0x7f || c == '\\' {
			return fmt.Errorf("byte %#x not allowed (printable ASCII without space or backslash)", c)
		}
	}
	if path.Clean(id) != id || strings.HasPrefix(id, "/") || id == "." || id == ".." || strings.HasPrefix(id, "../") {
		return errors.New("must be a clean relative path")
	}
	if strings.HasSuffix(id, ".sig") {
		return errors.New(`must not end in ".sig"`)
	}
	return nil
}

// Validate checks the request's structure: ids, kinds, hashes, and that each
// item has exactly the context its kind needs, well formed.
func (r *Request) Validate() error {
	if r.Format != FormatRequest {
		return fmt.Errorf("request: format %q: %w", r.Format, ErrFormat)
	}
	if r.Round < 0 {
		return fmt.Errorf("request: %w", invalid("round %d is negative", r.Round))
	}
	if err := ValidText(r.Build); err != nil {
		return fmt.Errorf("request: %w", invalid("build %q: %v", r.Build, err))
	}
	seen := map[string]bool{}
	for i := range r.Items {
		it := &r.Items[i]
		if err := it.Validate(); err != nil {
			return fmt.Errorf("request: item %d: %w", i, err)
		}
		if seen[it.ID] {
			return fmt.Errorf("request: item %q: %w", it.ID, invalid("duplicate id"))
		}
		seen[it.ID] = true
	}
	return nil
}

// Validate checks one item's structure (not its content; see package check).
func (it *Item) Validate() error {
	if err := ValidID(it.ID); err != nil {
		return invalid("id %q: %v", it.ID, err)
	}
	wrap := func(err error) error { return fmt.Errorf("item %q: %w", it.ID, err) }
	if it.Key == "" || len(it.Key) > 128 || strings.ContainsAny(it.Key, "=, \t\n/") {
		return wrap(invalid("key name %q: want 1 to 128 characters without '=', ',', '/' or space", it.Key))
	}
	if _, err := HashByName(it.Hash); err != nil {
		return wrap(invalid("%v", err))
	}
	if len(it.TBS) == 0 {
		return wrap(invalid("tbs is empty"))
	}
	n := 0
	for _, set := range []bool{it.Authenticode != nil, it.PCR != nil, it.Verity != nil, it.Manifest != nil, it.IPE != nil, it.AuthVar != nil} {
		if set {
			n++
		}
	}
	var ok bool
	var err error
	switch it.Kind {
	case KindAuthenticode:
		ok = it.Authenticode != nil
		if ok {
			err = checkHex("authenticode.digest", it.Authenticode.Digest, it.CryptoHash().Size())
			if err == nil && len(it.Authenticode.SpcIndirectData) == 0 {
				err = invalid("authenticode.spcIndirectData is empty")
			}
			if err == nil {
				err = checkName("authenticode.file", it.Authenticode.File)
			}
		}
	case KindPCRPolicy:
		ok = it.PCR != nil
		if ok {
			err = it.PCR.validate()
		}
	case KindVerityRootHash:
		ok = it.Verity != nil
		if ok {
			err = checkName("verity.image", it.Verity.Image)
			if err == nil {
				err = checkHex("verity.rootHash", it.Verity.RootHash, len(it.Verity.RootHash)/2)
			}
			if n := len(it.Verity.RootHash); err == nil && n != 64 && n != 96 && n != 128 {
				err = invalid("verity.rootHash: %d hex digits is not a SHA-256/384/512 root hash", n)
			}
		}
	case KindManifestOpenPGP, KindManifestPKCS7:
		ok = it.Manifest != nil
		if ok {
			err = checkName("manifest.file", it.Manifest.File)
			for _, e := range it.Manifest.Entries {
				if err == nil {
					err = checkName("manifest entry name", e.Name)
				}
				if err == nil {
					err = checkHex("manifest entry "+e.Name, e.SHA256, 32)
				}
			}
		}
	case KindIPEPolicy:
		ok = it.IPE != nil
		if ok {
			err = checkName("ipe.file", it.IPE.File)
			if err == nil && (it.IPE.Name == "" || it.IPE.Version == "") {
				err = invalid("ipe: name and version are required")
			}
			if err == nil {
				err = checkName("ipe.name", it.IPE.Name)
			}
			if err == nil {
				err = checkName("ipe.version", it.IPE.Version)
			}
		}
	case KindUEFIAuthVar:
		ok = it.AuthVar != nil
		if ok {
			err = it.AuthVar.validate(it)
		}
	default:
		return wrap(invalid("kind %q: not one of %v", it.Kind, Kinds))
	}
	if !ok || n != 1 {
		return wrap(invalid("kind %s needs exactly one context, %q", it.Kind, contextField(it.Kind)))
	}
	if err != nil {
		return wrap(err)
	}
	return nil
}

func contextField(k Kind) string {
	switch k {
	case KindAuthenticode:
		return "authenticode"
	case KindPCRPolicy:
		return "pcr"
	case KindVerityRootHash:
		return "verity"
	case KindManifestOpenPGP, KindManifestPKCS7:
		return "manifest"
	case KindIPEPolicy:
		return "ipe"
	case KindUEFIAuthVar:
		return "authvar"
	}
	return ""
}

func (c *PCRContext) validate() error {
	if err := checkName("pcr.uki", c.UKI); err != nil {
		return err
	}
	size := map[string]int{"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}[c.Bank]
	if size == 0 {
		return invalid("pcr.bank %q: not one of sha1, sha256, sha384, sha512", c.Bank)
	}
	if len(c.Sections) == 0 {
		return invalid("pcr.sections is empty")
	}
	for _, s := range c.Sections {
		if !strings.HasPrefix(s.Name, ".") || len(s.Name) > 8 {
			return invalid("pcr section %q: not a PE section name", s.Name)
		}
		if err := checkHex("pcr section "+s.Name, s.Digest, size); err != nil {
			return err
		}
	}
	if err := checkHex("pcr.pcr", c.PCR, size); err != nil {
		return err
	}
	if c.Ref != "" {
		return checkName("pcr.ref", c.Ref)
	}
	return nil
}

// checkName accepts a file name a context refers to (informational, but
// shown to people, so printable).
func checkName(field, s string) error {
	if s == "" {
		return invalid("%s is empty", field)
	}
	if err := ValidText(s); err != nil {
		return invalid("%s %q: %v", field, s, err)
	}
	return nil
}

// ValidText accepts a string that is shown to the people who review and
// approve a request: valid UTF-8 without control characters (C0, DEL, C1)
// and without the invisible formatting characters that make text read
// differently from what it is (bidirectional overrides, embeddings and
// isolates, zero-width characters, the byte order mark).
func ValidText(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	for i, r := range s {
		switch {
		case r < ' ', r == 0x7f, r >= 0x80 && r <= 0x9f:
			return fmt.Errorf("control character %U at byte %d", r, i)
		case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e, r == 0x200f, r == 0x061c:
			return fmt.Errorf("bidirectional formatting character %U at byte %d", r, i)
		case r >= 0x200b && r <= 0x200d, r == 0x2060, r == 0xfeff, r == 0x00ad:
			return fmt.Errorf("invisible character %U at byte %d", r, i)
		}
	}
	return nil
}

// checkHex accepts exactly size bytes of lowercase hex.
func checkHex(field, s string, size int) error {
	if len(s) != 2*size || strings.ToLower(s) != s {
		return invalid("%s %q: want %d lowercase hex digits", field, s, 2*size)
	}
	if _, err := hex.DecodeString(s); err != nil {
		return invalid("%s %q: want %d lowercase hex digits", field, s, 2*size)
	}
	return nil
}

// Item returns the item with the given id, or nil.
func (r *Request) Item(id string) *Item {
	for i := range r.Items {
		if r.Items[i].ID == id {
			return &r.Items[i]
		}
	}
	return nil
}

// Marshal encodes the request canonically: indented JSON with fields in
// declaration order and a final newline.
func (r *Request) Marshal() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return marshal(r)
}

// Digest is the SHA-256 of the canonical encoding, which a response names
// to bind to this request. Re-indenting a request file does not change it.
func (r *Request) Digest() [32]byte {
	b, _ := marshal(r)
	return sha256.Sum256(b)
}

// DigestString is Digest as "sha256:<hex>", as a response carries it.
func (r *Request) DigestString() string {
	d := r.Digest()
	return "sha256:" + hex.EncodeToString(d[:])
}

// Marshal encodes the response as indented JSON with a final newline.
func (r *Response) Marshal() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return marshal(r)
}

func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Validate checks the response's structure.
func (r *Response) Validate() error {
	if r.Format != FormatResponse {
		return fmt.Errorf("response: format %q: %w", r.Format, ErrFormat)
	}
	if !strings.HasPrefix(r.Request, "sha256:") || checkHex("request", strings.TrimPrefix(r.Request, "sha256:"), 32) != nil {
		return fmt.Errorf("response: %w", invalid("request %q: want sha256:<64 hex digits>", r.Request))
	}
	seen := map[string]bool{}
	for i, s := range r.Items {
		if err := ValidID(s.ID); err != nil {
			return fmt.Errorf("response: item %d: %w", i, invalid("id %q: %v", s.ID, err))
		}
		if seen[s.ID] {
			return fmt.Errorf("response: item %q: %w", s.ID, invalid("duplicate id"))
		}
		seen[s.ID] = true
		if len(s.Signature) == 0 {
			return fmt.Errorf("response: item %q: %w", s.ID, invalid("signature is empty"))
		}
		if len(s.Certificate) == 0 {
			return fmt.Errorf("response: item %q: %w", s.ID, invalid("certificate is empty"))
		}
	}
	return nil
}

// Signature returns the signature for item id, or nil.
func (r *Response) Signature(id string) *Signature {
	for i := range r.Items {
		if r.Items[i].ID == id {
			return &r.Items[i]
		}
	}
	return nil
}
