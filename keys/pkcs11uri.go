package keys

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// PKCS11URI is the subset of an RFC 7512 PKCS#11 URI that names a key:
// the token, the object (by label and/or id), and how to reach it.
type PKCS11URI struct {
	Token  string // token label
	Serial string // token serial
	Object string // object label
	ID     []byte // object id (CKA_ID)
	Type   string // "private", "cert", ... (informational)

	ModulePath string // module-path query attribute
	PIN        string // pin-value, or SIGNET_PKCS11_PIN
	PINSource  string // pin-source: a file to read the PIN from (ReadPIN)
}

// Environment variables that supply what a URI leaves out, so that PINs
// need not appear on command lines.
const (
	EnvPKCS11Module = "SIGNET_PKCS11_MODULE"
	EnvPKCS11PIN    = "SIGNET_PKCS11_PIN"
)

// ParsePKCS11URI parses a pkcs11: URI. Percent-encoding is decoded in every
// attribute. SIGNET_PKCS11_MODULE and SIGNET_PKCS11_PIN fill in a missing
// module-path and PIN. pin-source=file:PATH (or a plain path) is recorded,
// not read: parsing does no I/O that could block (the source may be a FIFO);
// ReadPIN reads it when the token is opened.
func ParsePKCS11URI(s string) (*PKCS11URI, error) {
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return nil, errors.New("not a pkcs11: URI")
	}
	path, query, _ := strings.Cut(rest, "?")
	u := &PKCS11URI{}
	seen := map[string]bool{}
	for _, attr := range strings.Split(path, ";") {
		if attr == "" {
			continue
		}
		k, v, ok := strings.Cut(attr, "=")
		if !ok {
			return nil, fmt.Errorf("pkcs11 URI: attribute %q has no value", attr)
		}
		if seen[k] {
			return nil, fmt.Errorf("pkcs11 URI: attribute %q given twice", k)
		}
		seen[k] = true
		val, err := url.PathUnescape(v)
		if err != nil {
			return nil, fmt.Errorf("pkcs11 URI: attribute %q: bad percent-encoding", k)
		}
		switch k {
		case "token":
			u.Token = val
		case "serial":
			u.Serial = val
		case "object":
			u.Object = val
		case "id":
			u.ID = []byte(val)
		case "type":
			u.Type = val
		case "manufacturer", "model", "library-manufacturer", "library-description", "library-version", "slot-description", "slot-manufacturer", "slot-id":
			// Accepted for compatibility; token and object select the key.
		default:
			return nil, fmt.Errorf("pkcs11 URI: unknown attribute %q", k)
		}
	}
	if query != "" {
		for _, attr := range strings.Split(query, "&") {
			if attr == "" {
				continue
			}
			k, v, _ := strings.Cut(attr, "=")
			val, err := url.PathUnescape(v)
			if err != nil {
				return nil, fmt.Errorf("pkcs11 URI: query attribute %q: bad percent-encoding", k)
			}
			switch k {
			case "module-path":
				u.ModulePath = val
			case "pin-value":
				u.PIN = val
			case "pin-source":
				u.PINSource = strings.TrimPrefix(val, "file:")
			case "module-name":
				// Resolved through p11-kit by name; we need a path.
				return nil, errors.New("pkcs11 URI: module-name is not supported, give module-path")
			default:
				return nil, fmt.Errorf("pkcs11 URI: unknown query attribute %q", k)
			}
		}
	}
	if u.ModulePath == "" {
		u.ModulePath = os.Getenv(EnvPKCS11Module)
	}
	if u.PIN == "" && u.PINSource == "" {
		u.PIN = os.Getenv(EnvPKCS11PIN)
	}
	if u.Token == "" && u.Serial == "" {
		return nil, errors.New("pkcs11 URI: no token= or serial= given")
	}
	if u.Object == "" && len(u.ID) == 0 {
		return nil, errors.New("pkcs11 URI: no object= or id= given")
	}
	if u.ModulePath == "" {
		for _, p := range []string{"/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so", "/usr/lib64/p11-kit-proxy.so", "/usr/lib/p11-kit-proxy.so"} {
			if _, err := os.Stat(p); err == nil {
				u.ModulePath = p
				break
			}
		}
		if u.ModulePath == "" {
			return nil, fmt.Errorf("pkcs11 URI: no module-path given (nor %s)", EnvPKCS11Module)
		}
	}
	return u, nil
}

// ReadPIN fills in PIN from PINSource when the URI gave no pin-value.
func (u *PKCS11URI) ReadPIN() error {
	if u.PIN != "" || u.PINSource == "" {
		return nil
	}
	data, err := os.ReadFile(u.PINSource)
	if err != nil {
		return fmt.Errorf("pkcs11 URI: pin-source: %w", err)
	}
	u.PIN = strings.TrimRight(string(data), "\r\n")
	return nil
}
