// Package manifest writes, reads, checks and signs SHA256SUMS download
// manifests as systemd-sysupdate and mkosi's Checksum=/Sign= use them.
//
// # Format
//
// A manifest is a list of lines, each
//
//	<64 hex digits of SHA-256> SP '*' <file name> LF
//
// sorted by name. Parse accepts what systemd-sysupdate v258 accepts (the
// text marker ' ' as well as the binary marker '*', upper-case hex); Marshal
// writes lower-case hex and '*', as mkosi and `sha256sum -b` do. A name is a
// single path component of valid UTF-8 without control characters, '/' or
// '\' (sysupdate refuses GNU-escaped names), at most 255 bytes, not "." or
// "..".
//
// # Signatures
//
// A manifest is signed detached, the signet way (prepare → sign → join):
//
//	p, _ := manifest.PrepareOpenPGP(sums, key, when) // or PreparePKCS7(sums, cert)
//	raw, _ := keys.Sign(signer, p.Hash, p.TBS)
//	sig, _ := p.Join(raw) // SHA256SUMS.gpg (openpgp.Armor for .asc), or SHA256SUMS.p7s
//
// OpenPGP signatures are what systemd-sysupdate checks (gpg --verify with
// its import-pubring.pgp). A PKCS#7 signature is detached SignedData over
// the manifest, DER, without signed attributes, SHA-256, as
// `openssl smime -sign -binary -noattr -outform DER` makes it.
package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// Entry is one manifest line.
type Entry struct {
	Name   string
	Digest [sha256.Size]byte
}

// Errors a caller can test for (wrapped with the offending name or line).
var (
	ErrBadName   = errors.New("not a valid manifest file name")
	ErrDuplicate = errors.New("listed twice")
)

// SyntaxError is a manifest line that systemd-sysupdate would refuse.
type SyntaxError struct {
	Line int // 1-based
	Msg  string
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// ValidName reports why name cannot be listed in a manifest, or nil.
func ValidName(name string) error {
	bad := func(why string) error { return fmt.Errorf("%q: %w: %s", name, ErrBadName, why) }
	switch {
	case name == "":
		return bad("empty")
	case name == "." || name == "..":
		return bad("not a file name")
	case len(name) > 255:
		return bad("longer than 255 bytes")
	case !utf8.ValidString(name):
		return bad("not valid UTF-8")
	case strings.ContainsRune(name, '/'):
		return bad("contains '/'")
	case strings.ContainsRune(name, '\\'):
		return bad("contains '\\' (sysupdate does not accept escaped names)")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return bad("contains a control character")
		}
	}
	return nil
}

// Marshal encodes entries as a manifest, sorted by name. Invalid and
// duplicate names are errors.
func Marshal(entries []Entry) ([]byte, error) {
	s := slices.Clone(entries)
	slices.SortFunc(s, func(a, b Entry) int { return strings.Compare(a.Name, b.Name) })
	var b bytes.Buffer
	for i, e := range s {
		if err := ValidName(e.Name); err != nil {
			return nil, err
		}
		if i > 0 && s[i-1].Name == e.Name {
			return nil, fmt.Errorf("%q: %w", e.Name, ErrDuplicate)
		}
		b.WriteString(hex.EncodeToString(e.Digest[:]))
		b.WriteString(" *")
		b.WriteString(e.Name)
		b.WriteByte('\n')
	}
	return b.Bytes(), nil
}

// Parse decodes a manifest, refusing exactly what systemd-sysupdate v258
// refuses (plus duplicate names, which make a manifest ambiguous).
func Parse(data []byte) ([]Entry, error) {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		return nil, &SyntaxError{Line: 1 + bytes.Count(data[:i], []byte{'\n'}), Msg: "NUL byte"}
	}
	var entries []Entry
	seen := map[string]bool{}
	for line := 1; len(data) > 0; line++ {
		fail := func(msg string) error { return &SyntaxError{Line: line, Msg: msg} }
		nl := bytes.IndexByte(data, '\n')
		if nl < 0 {
			return nil, fail("does not end in a newline")
		}
		l := data[:nl]
		data = data[nl+1:]
		if len(l) < 67 {
			return nil, fail("too short for '<sha256 hex> *<name>'")
		}
		if l[0] == '\\' {
			return nil, fail("escaped file names are not supported")
		}
		var e Entry
		if _, err := hex.Decode(e.Digest[:], l[:64]); err != nil {
			return nil, fail("digest is not 64 hex digits")
		}
		if l[64] != ' ' {
			return nil, fail("missing space after the digest")
		}
		if l[65] != '*' && l[65] != ' ' {
			return nil, fail("missing binary/text marker ('*' or ' ')")
		}
		e.Name = string(l[66:])
		if err := ValidName(e.Name); err != nil {
			return nil, fail(err.Error())
		}
		if seen[e.Name] {
			return nil, fail(fmt.Sprintf("%q: %v", e.Name, ErrDuplicate))
		}
		seen[e.Name] = true
		entries = append(entries, e)
	}
	return entries, nil
}
