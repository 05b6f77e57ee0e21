// Package ipe parses and signs Integrity Policy Enforcement (IPE) policies
// for the Linux kernel (Documentation/admin-guide/LSM/ipe.rst).
//
// Parse checks a policy against the grammar of the kernel's parser
// (security/ipe/policy_parser.c), so a policy the kernel would refuse at
// load time is refused here, before it is signed, with its line and column:
//
//	policy_name=Allow_Verified policy_version=0.1.0   # header, first line
//	DEFAULT action=DENY                                # or one per operation
//	op=EXECUTE dmverity_signature=TRUE action=ALLOW
//	op=KMODULE boot_verified=TRUE action=ALLOW
//
// Lines are split on '\n'; '#' starts a comment; tokens are separated by
// spaces or tabs. The first line holds policy_name= and policy_version=
// (X.Y.Z, each at most 65535), in that order. A rule is op=OP, properties,
// and action=ALLOW|DENY last. Every operation needs a default action: a
// global "DEFAULT action=..." or "DEFAULT op=OP action=..." for each of
// the seven operations (the kernel refuses a policy that leaves one out).
//
// A signed policy is attached PKCS#7 SignedData over the policy text,
// without signed attributes, SHA-256, DER: byte for byte what
// `openssl smime -sign -nodetach -noattr -binary -outform DER` writes for
// RSA keys. Sign it the signet way:
//
//	p, _ := ipe.Prepare(text, cert)       // p.TBS is the policy text
//	raw, _ := keys.Sign(signer, p.Hash, p.TBS)
//	p7b, _ := p.Join(raw)
package ipe

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Operations (op=) the kernel knows.
var Operations = []string{"EXECUTE", "FIRMWARE", "KMODULE", "KEXEC_IMAGE", "KEXEC_INITRAMFS", "POLICY", "X509_CERT"}

// Actions.
const (
	Allow = "ALLOW"
	Deny  = "DENY"
)

// Version is a policy version, major.minor.revision.
type Version struct{ Major, Minor, Rev uint16 }

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Rev) }

// Uint64 is the version as the kernel compares it: major<<32|minor<<16|rev.
func (v Version) Uint64() uint64 {
	return uint64(v.Major)<<32 | uint64(v.Minor)<<16 | uint64(v.Rev)
}

// Property is one rule condition, key=value.
type Property struct{ Key, Value string }

// Rule is one non-default rule.
type Rule struct {
	Line       int
	Op         string
	Properties []Property
	Action     string
}

// Policy is a parsed IPE policy.
type Policy struct {
	Name    string
	Version Version
	// DefaultAction is the global DEFAULT action, or "".
	DefaultAction string
	// OpDefaults maps an operation to its DEFAULT action.
	OpDefaults map[string]string
	Rules      []Rule
}

// SyntaxError is a policy the kernel would refuse. Line and Column are
// 1-based; Line 0 means the policy as a whole.
type SyntaxError struct {
	Line, Column int
	Msg          string
}

func (e *SyntaxError) Error() string {
	if e.Line == 0 {
		return e.Msg
	}
	return fmt.Sprintf("line %d, column %d: %s", e.Line, e.Column, e.Msg)
}

type token struct {
	s   string
	col int
}

// Parse parses policy text.
func Parse(text []byte) (*Policy, error) {
	p := &Policy{OpDefaults: map[string]string{}}
	header := false
	lines := bytes.Split(text, []byte{'\n'})
	for i, raw := range lines {
		ln := i + 1
		line := string(raw)
		if c := strings.IndexByte(line, '#'); c >= 0 {
			line = line[:c]
		}
		for j := 0; j < len(line); j++ {
			switch c := line[j]; {
			case c == '\r':
				return nil, &SyntaxError{ln, j + 1, "carriage return: the kernel splits lines on LF only"}
			case c == 0:
				return nil, &SyntaxError{ln, j + 1, "NUL byte"}
			case (c < 0x20 && c != '\t') || c == 0x7f:
				return nil, &SyntaxError{ln, j + 1, fmt.Sprintf("control character 0x%02x", c)}
			}
		}
		line = strings.TrimRight(line, " \t")
		var toks []token
		for j := 0; j < len(line); {
			if line[j] == ' ' || line[j] == '\t' {
				j++
				continue
			}
			k := j
			for k < len(line) && line[k] != ' ' && line[k] != '\t' {
				k++
			}
			toks = append(toks, token{line[j:k], j + 1})
			j = k
		}
		if len(toks) == 0 {
			continue
		}
		var err error
		if !header {
			err = p.parseHeader(ln, toks)
			header = true
		} else {
			err = p.parseRule(ln, toks)
		}
		if err != nil {
			return nil, err
		}
	}
	if !header {
		return nil, &SyntaxError{Msg: "empty policy: no policy_name=/policy_version= header"}
	}
	if p.DefaultAction == "" {
		var missing []string
		for _, op := range Operations {
			if p.OpDefaults[op] == "" {
				missing = append(missing, op)
			}
		}
		if len(missing) > 0 {
			return nil, &SyntaxError{Line: len(lines), Column: 1, Msg: fmt.Sprintf(
				"no default action for %s: add a global \"DEFAULT action=ALLOW|DENY\" or \"DEFAULT op=... action=...\" for each", strings.Join(missing, ", "))}
		}
	}
	return p, nil
}

func (p *Policy) parseHeader(ln int, toks []token) error {
	want := []string{"policy_name=", "policy_version="}
	for i, t := range toks {
		if i >= len(want) {
			return &SyntaxError{ln, t.col, fmt.Sprintf("unexpected %q after the header", t.s)}
		}
		v, ok := strings.CutPrefix(t.s, want[i])
		if !ok {
			return &SyntaxError{ln, t.col, fmt.Sprintf("header: want %s... here, found %q", want[i], t.s)}
		}
		if v == "" {
			return &SyntaxError{ln, t.col, want[i] + " has no value"}
		}
		if i == 0 {
			// The name becomes a securityfs directory.
			if v == "." || v == ".." || strings.ContainsRune(v, '/') {
				return &SyntaxError{ln, t.col, fmt.Sprintf("policy name %q cannot be a directory name", v)}
			}
			p.Name = v
			continue
		}
		parts := strings.Split(v, ".")
		if len(parts) != 3 {
			return &SyntaxError{ln, t.col, fmt.Sprintf("policy_version %q: want MAJOR.MINOR.REVISION", v)}
		}
		var n [3]uint16
		col := t.col + len(want[i])
		for k, s := range parts {
			x, err := strconv.ParseUint(s, 10, 16)
			if err != nil || s[0] == '+' {
				return &SyntaxError{ln, col, fmt.Sprintf("policy_version component %q: not a number from 0 to 65535", s)}
			}
			n[k] = uint16(x)
			col += len(s) + 1
		}
		p.Version = Version{n[0], n[1], n[2]}
	}
	if len(toks) < 2 {
		return &SyntaxError{ln, toks[0].col + len(toks[0].s), "header: policy_version= missing"}
	}
	return nil
}

func (p *Policy) parseRule(ln int, toks []token) error {
	last := toks[len(toks)-1]
	body := toks[:len(toks)-1]
	isDefault := false
	op := ""
	var props []Property
	for i, t := range body {
		switch {
		case i == 0 && t.s == "DEFAULT":
			isDefault = true
		case op == "":
			v, ok := strings.CutPrefix(t.s, "op=")
			if !ok || !validOp(v) {
				return &SyntaxError{ln, t.col, fmt.Sprintf("want op=%s, found %q", strings.Join(Operations, "|"), t.s)}
			}
			op = v
		default:
			if isDefault {
				return &SyntaxError{ln, t.col, fmt.Sprintf("a DEFAULT rule takes no properties, found %q", t.s)}
			}
			prop, err := parseProperty(t.s)
			if err != nil {
				return &SyntaxError{ln, t.col, err.Error()}
			}
			props = append(props, prop)
		}
	}
	action, ok := strings.CutPrefix(last.s, "action=")
	if !ok || (action != Allow && action != Deny) {
		if len(toks) == 1 && last.s == "DEFAULT" {
			return &SyntaxError{ln, last.col + len(last.s), "DEFAULT needs action=ALLOW|DENY"}
		}
		return &SyntaxError{ln, last.col, fmt.Sprintf("a rule must end in action=ALLOW|DENY, found %q", last.s)}
	}
	switch {
	case isDefault && op == "":
		if p.DefaultAction != "" {
			return &SyntaxError{ln, toks[0].col, "second global DEFAULT"}
		}
		p.DefaultAction = action
	case isDefault:
		if p.OpDefaults[op] != "" {
			return &SyntaxError{ln, toks[0].col, fmt.Sprintf("second DEFAULT for op=%s", op)}
		}
		p.OpDefaults[op] = action
	case op == "":
		return &SyntaxError{ln, toks[0].col, "rule without op="}
	default:
		p.Rules = append(p.Rules, Rule{Line: ln, Op: op, Properties: props, Action: action})
	}
	return nil
}

func validOp(op string) bool {
	for _, o := range Operations {
		if o == op {
			return true
		}
	}
	return false
}

var digestLen = map[string]int{"sha256": 32, "sha384": 48, "sha512": 64}

func parseProperty(s string) (Property, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return Property{}, fmt.Errorf("%q is not a property (key=value)", s)
	}
	switch k {
	case "boot_verified", "dmverity_signature", "fsverity_signature":
		if v != "TRUE" && v != "FALSE" {
			return Property{}, fmt.Errorf("%s=%q: want TRUE or FALSE", k, v)
		}
	case "dmverity_roothash", "fsverity_digest":
		alg, h, ok := strings.Cut(v, ":")
		n, known := digestLen[alg]
		if !ok || !known {
			return Property{}, fmt.Errorf("%s=%q: want sha256:HEX (or sha384:, sha512:)", k, v)
		}
		if b, err := hex.DecodeString(h); err != nil || len(b) != n {
			return Property{}, fmt.Errorf("%s: %q is not %d hex digits", k, h, 2*n)
		}
	default:
		return Property{}, fmt.Errorf("unknown property %q", k)
	}
	return Property{k, v}, nil
}

// String renders p in canonical form: header, defaults, rules.
func (p *Policy) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "policy_name=%s policy_version=%s\n", p.Name, p.Version)
	if p.DefaultAction != "" {
		fmt.Fprintf(&b, "DEFAULT action=%s\n", p.DefaultAction)
	}
	for _, op := range Operations {
		if a := p.OpDefaults[op]; a != "" {
			fmt.Fprintf(&b, "DEFAULT op=%s action=%s\n", op, a)
		}
	}
	for _, r := range p.Rules {
		b.WriteString("op=" + r.Op)
		for _, pr := range r.Properties {
			b.WriteString(" " + pr.Key + "=" + pr.Value)
		}
		b.WriteString(" action=" + r.Action + "\n")
	}
	return b.String()
}
