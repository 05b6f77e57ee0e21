package measure

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"signet.dev/keys"
	"signet.dev/tpm2policy"
)

// PCR is the PCR systemd-stub measures UKI sections into.
const PCR = 11

// PCRSig is a .pcrsig document: per bank, a list of signed PCR 11 policies.
// Banks keep the order they were added or parsed in. Members of a parsed
// document that are not banks are kept in place and written back.
type PCRSig struct {
	Banks []SigBank
	other []otherMember
}

// otherMember is a top-level member that is not a bank; it stands after
// the first `after` banks.
type otherMember struct {
	name  string
	v     jvalue
	after int
}

// SigBank is one bank's entries.
type SigBank struct {
	Bank    string
	Entries []SigEntry
}

// SigEntry is one signed (or, from policy-digest, to-be-signed) policy.
type SigEntry struct {
	PCRs []int
	Pkfp []byte // SHA-256 fingerprint of the public key; nil if unknown
	// Ref is the TPM2 policy reference the signature is bound to ("ref",
	// systemd 262 --policyref=); "" for none.
	Ref string
	Pol []byte // the 32-byte PolicyPCR digest
	// TBS is the "tbs" member systemd 262's policy-digest writes: the
	// signed bytes, always PolicyTBS(Pol, Ref). nil when absent; signed
	// documents carry none.
	TBS []byte
	Sig []byte // raw signature over PolicyTBS(Pol, Ref) with SHA-256; nil before signing
	// layout is a parsed entry's members in document order, with the
	// values of those signet does not know (nil for known ones), so that
	// Marshal writes the entry back as it was.
	layout jobject
}

// Signed returns the bytes the entry's signature covers: pol, or
// pol ‖ SHA256(ref) with a policy reference.
func (e SigEntry) Signed() []byte { return PolicyTBS(e.Pol, e.Ref) }

// PolicyTBS returns what TPM2_PolicyAuthorize checks a signature over
// (TPM 2.0 Part 3 §23.16, aHash = H(approvedPolicy ‖ policyRef)) as
// systemd-measure signs it: pol alone without a reference, else pol
// followed by the SHA-256 of the reference string (systemd's
// tpm2_make_policy_authorize_tbs_data()).
func PolicyTBS(pol []byte, ref string) []byte {
	if ref == "" {
		return pol
	}
	h := sha256.Sum256([]byte(ref))
	return append(append(make([]byte, 0, len(pol)+len(h)), pol...), h[:]...)
}

// Add appends e to bank's list, adding the bank at the end if new.
func (p *PCRSig) Add(bank string, e SigEntry) {
	for i := range p.Banks {
		if p.Banks[i].Bank == bank {
			p.Banks[i].Entries = append(p.Banks[i].Entries, e)
			return
		}
	}
	p.Banks = append(p.Banks, SigBank{Bank: bank, Entries: []SigEntry{e}})
}

// Merge appends every entry of q as systemd-measure --append= does: each
// bank q has gets its entries appended and moves behind every other member
// (systemd replaces the bank's member, and sd_json_variant_set_field()
// puts a replaced member at the end); members p has that are not banks
// stay where they are.
func (p *PCRSig) Merge(q *PCRSig) {
	for _, b := range q.Banks {
		var entries []SigEntry
		for i := range p.Banks {
			if p.Banks[i].Bank == b.Bank {
				entries = p.Banks[i].Entries
				p.Banks = append(p.Banks[:i:i], p.Banks[i+1:]...)
				for j := range p.other {
					if p.other[j].after > i {
						p.other[j].after--
					}
				}
				break
			}
		}
		entries = append(slices.Clip(entries), b.Entries...)
		p.Banks = append(p.Banks, SigBank{Bank: b.Bank, Entries: entries})
	}
}

// Marshal encodes the document in the given style, without a trailing
// newline (systemd-measure prints one after it; ukify embeds none).
func (p *PCRSig) Marshal(st Style) []byte {
	obj := jobject{}
	others := p.other
	for bi, b := range p.Banks {
		for len(others) > 0 && others[0].after <= bi {
			obj = append(obj, jkv{others[0].name, others[0].v})
			others = others[1:]
		}
		arr := jarray{}
		for _, e := range b.Entries {
			o := jobject{} // the known members, in systemd's order
			pcrs := jarray{}
			for _, n := range e.PCRs {
				pcrs = append(pcrs, n)
			}
			o = append(o, jkv{"pcrs", pcrs})
			if e.Pkfp != nil {
				o = append(o, jkv{"pkfp", hex.EncodeToString(e.Pkfp)})
			}
			if e.Ref != "" {
				o = append(o, jkv{"ref", e.Ref})
			}
			o = append(o, jkv{"pol", hex.EncodeToString(e.Pol)})
			if e.TBS != nil {
				o = append(o, jkv{"tbs", hex.EncodeToString(e.TBS)})
			}
			if e.Sig != nil {
				o = append(o, jkv{"sig", base64.StdEncoding.EncodeToString(e.Sig)})
			}
			arr = append(arr, e.arrange(o))
		}
		obj = append(obj, jkv{b.Bank, arr})
	}
	for _, m := range others {
		obj = append(obj, jkv{m.name, m.v})
	}
	return encode(obj, st)
}

// arrange lays out an entry's known members (in systemd's order) as the
// parsed entry had them, its other members among them; known members the
// parsed entry lacked follow.
func (e SigEntry) arrange(known jobject) jobject {
	if e.layout == nil {
		return known
	}
	out := make(jobject, 0, len(e.layout)+len(known))
	used := make([]bool, len(known))
	for _, m := range e.layout {
		if m.v != nil {
			out = append(out, m)
			continue
		}
		for i, k := range known {
			if k.k == m.k && !used[i] {
				out = append(out, k)
				used[i] = true
			}
		}
	}
	for i, k := range known {
		if !used[i] {
			out = append(out, k)
		}
	}
	return out
}

// ErrMalformed is returned by ParsePCRSig for a document that is not a
// .pcrsig JSON object.
var ErrMalformed = errors.New("malformed .pcrsig JSON")

// ParsePCRSig parses a .pcrsig document as systemd reads one: an object of
// known bank names, each an array of objects with pcrs (integers 0-23),
// optional pkfp (hex), optional ref (a string), pol (32 bytes hex),
// optional tbs (hex, which must be pol ‖ SHA256(ref)) and optional sig
// (base64). Members it does not know (top-level or in an entry) do not
// matter to signet, as to systemd's find_signature() and ukify, and are
// kept for Marshal, as systemd-measure --append= keeps them; a known member
// that is malformed is an error. A trailing NUL and whitespace (ukify's
// padding) are accepted.
func ParsePCRSig(data []byte) (*PCRSig, error) {
	data = bytes.TrimRight(data, "\x00 \t\r\n")
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, a...))
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, bad("not a JSON object")
	}
	p := &PCRSig{}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, bad("%v", err)
		}
		name := t.(string)
		if seen[name] {
			return nil, bad("member %q appears twice", name)
		}
		seen[name] = true
		if _, err := ParseBank(name); err != nil || name != strings.ToLower(name) {
			// Not a bank (systemd looks banks up by their exact name).
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return nil, bad("member %q: %v", name, err)
			}
			v, err := rawValue(raw)
			if err != nil {
				return nil, bad("member %q: %v", name, err)
			}
			p.other = append(p.other, otherMember{name, v, len(p.Banks)})
			continue
		}
		var raw []json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, bad("bank %q: %v", name, err)
		}
		sb := SigBank{Bank: name}
		for i, r := range raw {
			e, err := parseEntry(r)
			if err != nil {
				return nil, bad("bank %q entry %d: %v", name, i, err)
			}
			sb.Entries = append(sb.Entries, e)
		}
		p.Banks = append(p.Banks, sb)
	}
	if _, err := dec.Token(); err != nil {
		return nil, bad("%v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, bad("data after the JSON object")
	}
	return p, nil
}

// entryMembers are the members of an entry signet reads.
var entryMembers = []string{"pcrs", "pkfp", "ref", "pol", "tbs", "sig"}

func parseEntry(r json.RawMessage) (SigEntry, error) {
	var e SigEntry
	members, err := objectMembers(r)
	if err != nil {
		return e, err
	}
	m := map[string]json.RawMessage{}
	for _, mb := range members {
		if slices.Contains(entryMembers, mb.name) {
			m[mb.name] = mb.raw
			e.layout = append(e.layout, jkv{mb.name, nil})
			continue
		}
		v, err := rawValue(mb.raw)
		if err != nil {
			return e, fmt.Errorf("member %q: %v", mb.name, err)
		}
		e.layout = append(e.layout, jkv{mb.name, v})
	}
	raw, ok := m["pcrs"]
	if !ok {
		return e, errors.New("no pcrs")
	}
	if err := json.Unmarshal(raw, &e.PCRs); err != nil || len(e.PCRs) == 0 {
		return e, errors.New("pcrs is not a list of PCR numbers")
	}
	for _, n := range e.PCRs {
		if n < 0 || n > 23 {
			return e, fmt.Errorf("PCR %d out of range", n)
		}
	}
	hexField := func(k string, size int) ([]byte, error) {
		var s string
		if err := json.Unmarshal(m[k], &s); err != nil {
			return nil, fmt.Errorf("%s is not a string", k)
		}
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != size {
			return nil, fmt.Errorf("%s is not %d bytes of hex", k, size)
		}
		return b, nil
	}
	if _, ok := m["pkfp"]; ok {
		if e.Pkfp, err = hexField("pkfp", sha256.Size); err != nil {
			return e, err
		}
	}
	if _, ok := m["pol"]; !ok {
		return e, errors.New("no pol")
	}
	if e.Pol, err = hexField("pol", sha256.Size); err != nil {
		return e, err
	}
	if raw, ok := m["ref"]; ok {
		if err := json.Unmarshal(raw, &e.Ref); err != nil {
			return e, errors.New("ref is not a string")
		}
	}
	if raw, ok := m["tbs"]; ok {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return e, errors.New("tbs is not a string")
		}
		if e.TBS, err = hex.DecodeString(s); err != nil {
			return e, errors.New("tbs is not hex")
		}
		if !bytes.Equal(e.TBS, e.Signed()) {
			return e, errors.New("tbs is not pol followed by SHA256(ref)")
		}
	}
	if raw, ok := m["sig"]; ok {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return e, errors.New("sig is not a string")
		}
		if e.Sig, err = base64.StdEncoding.DecodeString(s); err != nil || len(e.Sig) == 0 {
			return e, errors.New("sig is not base64")
		}
	}
	return e, nil
}

// Fingerprint returns the pkfp of a public key: SHA-256 of OpenSSL's
// i2d_PublicKey encoding, the PKCS#1 RSAPublicKey DER for RSA and the
// uncompressed point for EC (not the SubjectPublicKeyInfo).
func Fingerprint(pub crypto.PublicKey) ([]byte, error) {
	var der []byte
	switch k := pub.(type) {
	case *rsa.PublicKey:
		der = x509.MarshalPKCS1PublicKey(k)
	case *ecdsa.PublicKey:
		ek, err := k.ECDH()
		if err != nil {
			return nil, fmt.Errorf("measure: EC key: %w", err)
		}
		der = ek.Bytes()
	case *ecdh.PublicKey:
		der = k.Bytes()
	default:
		return nil, fmt.Errorf("measure: %s keys cannot sign TPM policies (use RSA or ECDSA)", keys.Describe(pub))
	}
	s := sha256.Sum256(der)
	return s[:], nil
}

// Entry is one PCR policy to sign: the prepare step's output. Its
// to-be-signed bytes are Pol, or Pol ‖ SHA256(Ref) with a policy reference,
// and its hash is always SHA-256 (the only hash TPM2_PolicyAuthorize
// accepts systemd's signatures with, and what systemd signs every bank
// with since 258).
type Entry struct {
	Bank  Bank
	Phase string
	PCR   []byte // predicted PCR 11 value in Bank
	Pol   []byte // PolicyPCR digest
	Pkfp  []byte // nil when no public key was given
	Ref   string // policy reference ("" for none)
}

// Hash is the hash a signer applies to the TBS.
const Hash = crypto.SHA256

// TBS returns the bytes to sign and the hash to sign them with.
func (e Entry) TBS() ([]byte, crypto.Hash) { return PolicyTBS(e.Pol, e.Ref), Hash }

// WithRef returns entries bound to the policy reference ref
// (systemd-measure --policyref=; "" for none).
func WithRef(entries []Entry, ref string) []Entry {
	out := slices.Clone(entries)
	for i := range out {
		out[i].Ref = ref
	}
	return out
}

// Pol returns the PolicyPCR digest for a PCR 11 value of bank.
func Pol(bank Bank, pcr []byte) ([]byte, error) {
	return tpm2policy.PolicyPCR(crypto.SHA256, nil, bank.Hash, []int{PCR}, [][]byte{pcr})
}

// Prepare turns predictions into entries, one per bank and phase in the
// order systemd-measure signs them. pub may be nil (no pkfp).
func Prepare(r *Result, pub crypto.PublicKey) ([]Entry, error) {
	var fp []byte
	if pub != nil {
		var err error
		if fp, err = Fingerprint(pub); err != nil {
			return nil, err
		}
	}
	var out []Entry
	for _, b := range r.Banks {
		for _, p := range b.Phases {
			pol, err := Pol(b.Bank, p.PCR)
			if err != nil {
				return nil, err
			}
			out = append(out, Entry{Bank: b.Bank, Phase: p.Phase, PCR: p.PCR, Pol: pol, Pkfp: fp})
		}
	}
	return out, nil
}

// PolicyDigest returns the document systemd-measure policy-digest prints:
// the entries without signatures, each with its "tbs" (systemd 262).
func PolicyDigest(entries []Entry) *PCRSig {
	p := &PCRSig{}
	for _, e := range entries {
		tbs, _ := e.TBS()
		p.Add(e.Bank.Name, SigEntry{PCRs: []int{PCR}, Pkfp: e.Pkfp, Ref: e.Ref, Pol: e.Pol, TBS: tbs})
	}
	return p
}

// AddTBS sets every entry's tbs member, as systemd 262's policy-digest
// writes it (also when it signs, given a private key).
func (p *PCRSig) AddTBS() {
	for i := range p.Banks {
		for j := range p.Banks[i].Entries {
			e := &p.Banks[i].Entries[j]
			e.TBS = e.Signed()
		}
	}
}

// ErrSignature is returned when a signature does not verify against the
// public key and the policy digest.
var ErrSignature = errors.New("PCR policy signature does not verify")

// VerifyEntry checks sig over tbs (an entry's Signed() bytes: pol without
// a policy reference) with pub (SHA-256, as signed).
func VerifyEntry(pub crypto.PublicKey, tbs, sig []byte) error {
	if err := keys.Verify(pub, Hash, tbs, sig); err != nil {
		return ErrSignature
	}
	return nil
}

// Join builds the signed document from entries and their raw signatures
// (sigs[i] signs entries[i].TBS()), verifying every signature against pub
// first. pub is also what pkfp names, so a key other than the one prepared
// for is refused.
func Join(entries []Entry, pub crypto.PublicKey, sigs [][]byte) (*PCRSig, error) {
	if len(sigs) != len(entries) {
		return nil, fmt.Errorf("measure: %d signatures for %d policies", len(sigs), len(entries))
	}
	fp, err := Fingerprint(pub)
	if err != nil {
		return nil, err
	}
	p := &PCRSig{}
	for i, e := range entries {
		if e.Pkfp != nil && !bytes.Equal(e.Pkfp, fp) {
			return nil, fmt.Errorf("measure: %s policy for phase %q was prepared for key %x, not %x", e.Bank.Name, PhaseLabel(e.Phase), e.Pkfp, fp)
		}
		tbs, _ := e.TBS()
		if err := VerifyEntry(pub, tbs, sigs[i]); err != nil {
			return nil, fmt.Errorf("%s policy %x (phase %q): %w", e.Bank.Name, e.Pol, PhaseLabel(e.Phase), err)
		}
		p.Add(e.Bank.Name, SigEntry{PCRs: []int{PCR}, Pkfp: fp, Ref: e.Ref, Pol: e.Pol, Sig: sigs[i]})
	}
	return p, nil
}

// Sign is the online path: prepare's entries signed by s, joined. It is
// exactly Join(entries, pub, [keys.Sign(s, SHA256, e.TBS()) ...]).
func Sign(entries []Entry, s crypto.Signer) (*PCRSig, error) {
	sigs := make([][]byte, len(entries))
	for i, e := range entries {
		tbs, h := e.TBS()
		sig, err := keys.Sign(s, h, tbs)
		if err != nil {
			return nil, fmt.Errorf("signing %s policy (phase %q): %w", e.Bank.Name, PhaseLabel(e.Phase), err)
		}
		sigs[i] = sig
	}
	return Join(entries, s.Public(), sigs)
}

// FillSignatures is the offline join of a policy-digest document: every
// entry's sig is looked up by its signed bytes in sigs (keyed by
// Signed() as a string: the 32 raw pol bytes, or pol ‖ SHA256(ref)),
// verified against pub, and pkfp is set to pub's fingerprint. The result is
// what systemd-measure sign writes: no tbs members. An entry without a
// signature, or a signature that does not verify, is an error; nothing is
// changed then.
func FillSignatures(doc *PCRSig, pub crypto.PublicKey, sigs map[string][]byte) (*PCRSig, error) {
	fp, err := Fingerprint(pub)
	if err != nil {
		return nil, err
	}
	out := &PCRSig{}
	for _, b := range doc.Banks {
		for _, e := range b.Entries {
			if e.Pkfp != nil && !bytes.Equal(e.Pkfp, fp) {
				return nil, fmt.Errorf("%s policy %x names key %x, the public key given is %x", b.Bank, e.Pol, e.Pkfp, fp)
			}
			tbs := e.Signed()
			sig, ok := sigs[string(tbs)]
			if !ok {
				sig = e.Sig
			}
			if sig == nil {
				return nil, fmt.Errorf("%s policy %x: no signature given for it", b.Bank, tbs)
			}
			if err := VerifyEntry(pub, tbs, sig); err != nil {
				return nil, fmt.Errorf("%s policy %x: %w", b.Bank, tbs, err)
			}
			out.Add(b.Bank, SigEntry{PCRs: e.PCRs, Pkfp: fp, Ref: e.Ref, Pol: e.Pol, Sig: sig})
		}
	}
	return out, nil
}

// MarshalResult encodes predictions as systemd-measure calculate --json
// does: per bank a list of {"phase","pcr","hash"}, phase omitted for the
// empty path.
func MarshalResult(r *Result, st Style) []byte {
	obj := jobject{}
	for _, b := range r.Banks {
		arr := jarray{}
		for _, p := range b.Phases {
			o := jobject{}
			if p.Phase != "" {
				o = append(o, jkv{"phase", p.Phase})
			}
			o = append(o, jkv{"pcr", PCR}, jkv{"hash", hex.EncodeToString(p.PCR)})
			arr = append(arr, o)
		}
		obj = append(obj, jkv{b.Bank.Name, arr})
	}
	return encode(obj, st)
}

// WriteText writes predictions as systemd-measure calculate's text output:
// per phase a "# PCR[11] Phase <path>" label to labels (stderr) and one
// "11:<bank>=<hex>" line per bank to w (stdout).
func WriteText(w, labels io.Writer, r *Result) error {
	if len(r.Banks) == 0 {
		return nil
	}
	for i := range r.Banks[0].Phases {
		fmt.Fprintf(labels, "# PCR[%d] Phase <%s>\n", PCR, PhaseLabel(r.Banks[0].Phases[i].Phase))
		for _, b := range r.Banks {
			if _, err := fmt.Fprintf(w, "%d:%s=%x\n", PCR, b.Bank.Name, b.Phases[i].PCR); err != nil {
				return err
			}
		}
	}
	return nil
}
