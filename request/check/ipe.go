package check

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"signet.dev/request"
)

// ipeProperties are the keys an IPE rule may use (Linux
// Documentation/admin-guide/LSM/ipe.rst).
var ipeProperties = map[string]bool{
	"op": true, "action": true, "boot_verified": true,
	"dmverity_roothash": true, "dmverity_signature": true,
	"fsverity_digest": true, "fsverity_signature": true,
}

// ParseIPEHeader checks the shape of an IPE policy and returns the name and
// version of its header line "policy_name=NAME policy_version=X.Y.Z". Every
// other line must be blank, a comment, or whitespace-separated key=value
// tokens (a DEFAULT line starts with the bare word DEFAULT) with an action.
func ParseIPEHeader(text []byte) (name, version string, err error) {
	if !utf8.Valid(text) || strings.IndexByte(string(text), 0) >= 0 {
		return "", "", refuse("IPE policy is not NUL-free UTF-8")
	}
	header := false
	for n, line := range strings.Split(string(text), "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		toks := strings.Fields(line)
		if len(toks) == 0 {
			continue
		}
		if !header {
			if len(toks) != 2 || !strings.HasPrefix(toks[0], "policy_name=") || !strings.HasPrefix(toks[1], "policy_version=") {
				return "", "", refuse("IPE policy line %d: the first rule must be \"policy_name=NAME policy_version=X.Y.Z\"", n+1)
			}
			name = strings.TrimPrefix(toks[0], "policy_name=")
			version = strings.TrimPrefix(toks[1], "policy_version=")
			parts := strings.Split(version, ".")
			if name == "" || len(parts) != 3 {
				return "", "", refuse("IPE policy line %d: bad name or version %q", n+1, version)
			}
			for _, p := range parts {
				if v, err := strconv.ParseUint(p, 10, 16); err != nil || strconv.FormatUint(v, 10) != p {
					return "", "", refuse("IPE policy version %q: each part must be a number below 65536", version)
				}
			}
			header = true
			continue
		}
		if toks[0] == "DEFAULT" {
			toks = toks[1:]
		}
		hasAction := false
		for _, t := range toks {
			k, v, ok := strings.Cut(t, "=")
			if !ok || v == "" || !ipeProperties[k] {
				return "", "", refuse("IPE policy line %d: %q is not a known key=value", n+1, t)
			}
			if k == "action" {
				if v != "ALLOW" && v != "DENY" {
					return "", "", refuse("IPE policy line %d: action %q is not ALLOW or DENY", n+1, v)
				}
				hasAction = true
			}
		}
		if !hasAction {
			return "", "", refuse("IPE policy line %d: no action=", n+1)
		}
	}
	if !header {
		return "", "", refuse("IPE policy has no policy_name= header")
	}
	return name, version, nil
}

// IPEPolicy checks that the TBS is an IPE policy with the context's name and
// version.
func IPEPolicy(it *request.Item) error {
	name, version, err := ParseIPEHeader(it.TBS)
	if err != nil {
		return err
	}
	if name != it.IPE.Name || version != it.IPE.Version {
		return refuse("IPE policy is %s %s, the context says %s %s", name, version, it.IPE.Name, it.IPE.Version)
	}
	return nil
}
