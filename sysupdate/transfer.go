// Package sysupdate writes systemd-sysupdate transfer definitions
// (sysupdate.d(5) *.transfer files): the [Transfer], [Source] and [Target]
// sections of one resource a release updates.
package sysupdate

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// Setting is one Key=Value line.
type Setting struct{ Key, Value string }

// Transfer is one transfer definition. Values are written as given: a
// literal '%' must already be escaped as "%%" where sysupdate expands
// specifiers (Path=, MatchPattern=, …); Escape does that.
type Transfer struct {
	// Comment lines start the file (without "# ").
	Comment  []string
	Transfer []Setting
	Source   []Setting
	Target   []Setting
}

// ErrValue is wrapped by errors about a setting that cannot be written.
var ErrValue = errors.New("invalid transfer setting")

// Marshal returns the file as systemd-sysupdate reads it.
func (t *Transfer) Marshal() ([]byte, error) {
	var b bytes.Buffer
	for _, c := range t.Comment {
		if strings.ContainsAny(c, "\n\r") {
			return nil, fmt.Errorf("%w: comment %q spans lines", ErrValue, c)
		}
		b.WriteString(strings.TrimRight("# "+c, " ") + "\n")
	}
	for _, s := range []struct {
		name string
		l    []Setting
	}{{"Transfer", t.Transfer}, {"Source", t.Source}, {"Target", t.Target}} {
		if len(s.l) == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "[%s]\n", s.name)
		for _, kv := range s.l {
			if kv.Key == "" || strings.ContainsAny(kv.Key, "=[]# \t\n\r") {
				return nil, fmt.Errorf("%w: key %q", ErrValue, kv.Key)
			}
			// sysupdate's parser takes a value to the end of the line and
			// continues one ending in a backslash.
			if kv.Value == "" || strings.ContainsAny(kv.Value, "\n\r\x00") || strings.HasSuffix(kv.Value, "\\") || kv.Value != strings.TrimSpace(kv.Value) {
				return nil, fmt.Errorf("%w: [%s] %s=%q", ErrValue, s.name, kv.Key, kv.Value)
			}
			fmt.Fprintf(&b, "%s=%s\n", kv.Key, kv.Value)
		}
	}
	return b.Bytes(), nil
}

// Escape makes s literal where sysupdate expands specifiers.
func Escape(s string) string { return strings.ReplaceAll(s, "%", "%%") }

// ValidVersion reports whether v can be a release's @v, as sysupdate's
// version_is_valid() decides: not empty, only letters, digits and
// ".,_-+", and a valid file name (so not "." or "..").
func ValidVersion(v string) error {
	if v == "" {
		return fmt.Errorf("%w: empty version", ErrValue)
	}
	for _, r := range v {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".,_-+", r)) {
			return fmt.Errorf("%w: version %q has %q, which sysupdate does not accept in a version", ErrValue, v, r)
		}
	}
	if v == "." || v == ".." || len(v) > 255 {
		return fmt.Errorf("%w: version %q is not a file name", ErrValue, v)
	}
	return nil
}

// Pattern turns a release file name into a MatchPattern by replacing the
// release version with @v. The name must hold the version exactly once
// and none of sysupdate's pattern or specifier characters ('@', '%').
func Pattern(name, version string) (string, error) {
	if strings.ContainsAny(name, "@%") {
		return "", fmt.Errorf("%w: %q has '@' or '%%', which sysupdate reads as wildcards or specifiers", ErrValue, name)
	}
	if n := strings.Count(name, version); n != 1 {
		return "", fmt.Errorf("%w: %q holds the release version %q %d times, not once (sysupdate tells releases apart by it)", ErrValue, name, version, n)
	}
	return strings.Replace(name, version, "@v", 1), nil
}
