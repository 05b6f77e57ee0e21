package server

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"signet.dev/request"
)

// Config is the service configuration, read from TOML (see
// docs/server.example.toml for every field with its meaning).
type Config struct {
	// Listen is the TCP address to serve on. Without [tls] it must be a
	// loopback address (plain HTTP never leaves the machine).
	Listen string `toml:"listen"`
	// AuditKey is a file holding the sumdb/note signer key that signs
	// audit checkpoints (signet audit keygen makes one).
	AuditKey string `toml:"audit_key"`
	// Lease is how long a replica may hold a claimed item before another
	// replica may claim it again ("30s" by default).
	Lease Duration `toml:"lease"`
	// Batch is the most items a replica claims and commits at once (256).
	Batch int `toml:"batch"`
	// Poll is how often an idle replica looks for work queued by other
	// replicas or left by dead ones ("250ms").
	Poll Duration `toml:"poll"`
	// Retry is how long an item whose signing failed (the token answered
	// with an error, or with a signature the certificate does not verify)
	// waits before it is tried again ("5s"); its status shows the error
	// meanwhile.
	Retry Duration `toml:"retry"`
	// ShutdownTimeout bounds the wait for in-flight work on SIGTERM ("60s").
	ShutdownTimeout Duration `toml:"shutdown_timeout"`

	Store   StoreConfig    `toml:"store"`
	TLS     *TLSConfig     `toml:"tls"`
	Limits  LimitsConfig   `toml:"limits"`
	Keys    []KeyConfig    `toml:"keys"`
	Clients []ClientConfig `toml:"clients"`
}

// StoreConfig selects the database.
type StoreConfig struct {
	Driver string `toml:"driver"` // "sqlite" (default) or "postgres"
	DSN    string `toml:"dsn"`    // sqlite: file path; postgres: connection string
}

// TLSConfig enables HTTPS and, with ClientCA, client certificates.
type TLSConfig struct {
	Certificate string `toml:"certificate"` // server certificate (PEM, chain after it)
	Key         string `toml:"key"`         // server key (PEM)
	ClientCA    string `toml:"client_ca"`   // CA certificates that issue client certificates (PEM)
}

// LimitsConfig bounds what one client may send.
type LimitsConfig struct {
	MaxRequestBytes int64   `toml:"max_request_bytes"` // default 16 MiB
	MaxItems        int     `toml:"max_items"`         // default 4096
	Rate            float64 `toml:"rate"`              // API calls per second per client (default 50)
	Burst           int     `toml:"burst"`             // default 2×rate
	// MaxConcurrent bounds one client's concurrent submissions, fetches
	// and audit log reads (default 16); more are answered 429.
	MaxConcurrent int `toml:"max_concurrent"`
	// ReadTimeout bounds reading a call's headers and body ("60s"): a
	// client trickling its body is cut off then.
	ReadTimeout Duration `toml:"read_timeout"`
	// WriteTimeout bounds writing an answer ("60s"; a long-polling fetch
	// gets its wait on top): a client that does not read is cut off then.
	WriteTimeout Duration `toml:"write_timeout"`
	// IdleTimeout closes kept-alive connections idle this long ("120s").
	IdleTimeout Duration `toml:"idle_timeout"`
	// SigningTimeWindow, when set, bounds the time an item's signature
	// claims (an Authenticode signingTime, an OpenPGP creation time) to
	// this far from the service's clock, either way, when submitted and
	// when signed. Unset: any time, as reproducible builds dated by
	// SOURCE_DATE_EPOCH need.
	SigningTimeWindow Duration `toml:"signing_time_window"`
}

// KeyConfig is a signing key the service holds.
type KeyConfig struct {
	Name             string   `toml:"name"`
	PrivateKey       string   `toml:"private_key"`        // PEM file or pkcs11: URI
	PrivateKeySource string   `toml:"private_key_source"` // "file" or "provider:pkcs11"
	Certificate      string   `toml:"certificate"`        // PEM/DER file (chain after it) or pkcs11: URI
	Kinds            []string `toml:"kinds"`              // item kinds this key may sign (one family: see request.CheckKeyKinds)
	// SharedKinds, to let one key sign kinds of different families,
	// must list exactly the kinds that cross families: cross-protocol
	// signatures are then accepted knowingly (docs/server.md).
	SharedKinds []string `toml:"shared_kinds"`
	Approvals   int      `toml:"approvals"` // distinct approvers needed before signing (0: none)
	Workers     int      `toml:"workers"`   // concurrent signatures (token sessions); default 2×CPUs
}

// ClientConfig is an identity and what it may do. A client authenticates
// with a bearer token (only its SHA-256 is configured) or a TLS client
// certificate (by SHA-256 fingerprint of its DER, or by subject common name
// when issued by [tls] client_ca).
type ClientConfig struct {
	Name              string   `toml:"name"`
	TokenSHA256       []string `toml:"token_sha256"`
	CertificateSHA256 []string `toml:"certificate_sha256"`
	CertificateCN     []string `toml:"certificate_cn"`
	// CertificateSAN matches a subject alternative name of a certificate
	// issued by [tls] client_ca: "dns:NAME", "uri:URI" or "email:ADDRESS".
	CertificateSAN []string `toml:"certificate_san"`
	Keys           []string `toml:"keys"`    // keys it may have sign
	Kinds          []string `toml:"kinds"`   // kinds it may submit (empty: any kind its keys allow)
	Approve        []string `toml:"approve"` // keys whose requests it may approve
}

// Duration is a time.Duration written as "30s" in TOML.
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	if v <= 0 {
		return fmt.Errorf("duration %s: must be positive", b)
	}
	d.Duration = v
	return nil
}

// LoadConfig reads and checks a configuration file. Relative paths in it
// are relative to the file's directory.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := ParseConfig(data, filepath.Dir(abs))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig decodes and checks a TOML configuration whose relative paths
// are relative to dir. An unknown setting is an error.
func ParseConfig(data []byte, dir string) (*Config, error) {
	var c Config
	md, err := toml.Decode(string(data), &c)
	if err != nil {
		return nil, err
	}
	if un := md.Undecoded(); len(un) > 0 {
		return nil, fmt.Errorf("unknown setting %q", un[0].String())
	}
	if err := exactKeys(md); err != nil {
		return nil, err
	}
	c.resolve(dir)
	if err := c.Check(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) resolve(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) && !strings.HasPrefix(*p, "pkcs11:") {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.AuditKey)
	if c.Store.Driver == "" || c.Store.Driver == "sqlite" {
		abs(&c.Store.DSN)
	}
	if c.TLS != nil {
		abs(&c.TLS.Certificate)
		abs(&c.TLS.Key)
		abs(&c.TLS.ClientCA)
	}
	for i := range c.Keys {
		abs(&c.Keys[i].PrivateKey)
		abs(&c.Keys[i].Certificate)
	}
}

// Check validates the configuration and fills in defaults.
func (c *Config) Check() error {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8443"
	}
	if c.TLS == nil {
		host, _, err := net.SplitHostPort(c.Listen)
		if err != nil {
			return fmt.Errorf("listen %q: %w", c.Listen, err)
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("listen %q: plain HTTP only on a loopback address; configure [tls]", c.Listen)
		}
	} else if c.TLS.Certificate == "" || c.TLS.Key == "" {
		return errors.New("[tls] needs certificate and key")
	}
	if c.AuditKey == "" {
		return errors.New("audit_key: no audit checkpoint key file given (make one with signet audit keygen)")
	}
	if c.Lease.Duration == 0 {
		c.Lease.Duration = 30 * time.Second
	}
	if c.Poll.Duration == 0 {
		c.Poll.Duration = 250 * time.Millisecond
	}
	if c.Retry.Duration == 0 {
		c.Retry.Duration = 5 * time.Second
	}
	if c.ShutdownTimeout.Duration == 0 {
		c.ShutdownTimeout.Duration = 60 * time.Second
	}
	if c.Batch <= 0 {
		c.Batch = 256
	}
	switch c.Store.Driver {
	case "":
		c.Store.Driver = "sqlite"
	case "sqlite", "postgres":
	default:
		return fmt.Errorf("store driver %q: use sqlite or postgres", c.Store.Driver)
	}
	if c.Store.DSN == "" {
		return errors.New("store: no dsn given (sqlite: a database file path)")
	}
	l := &c.Limits
	if l.MaxRequestBytes <= 0 {
		l.MaxRequestBytes = 16 << 20
	}
	if l.MaxItems <= 0 {
		l.MaxItems = 4096
	}
	if l.Rate <= 0 {
		l.Rate = 50
	}
	if l.Burst <= 0 {
		l.Burst = int(2*l.Rate) + 1
	}
	if l.MaxConcurrent <= 0 {
		l.MaxConcurrent = 16
	}
	for p, def := range map[*Duration]time.Duration{&l.ReadTimeout: 60 * time.Second, &l.WriteTimeout: 60 * time.Second, &l.IdleTimeout: 120 * time.Second} {
		if p.Duration == 0 {
			p.Duration = def
		}
	}
	keyset := map[string]*KeyConfig{}
	for i := range c.Keys {
		k := &c.Keys[i]
		if err := validName(k.Name); err != nil {
			return fmt.Errorf("key %q: %w", k.Name, err)
		}
		if keyset[k.Name] != nil {
			return fmt.Errorf("key %q: defined twice", k.Name)
		}
		keyset[k.Name] = k
		if k.PrivateKey == "" || k.Certificate == "" {
			return fmt.Errorf("key %q: needs private_key and certificate", k.Name)
		}
		if len(k.Kinds) == 0 {
			return fmt.Errorf("key %q: no kinds: name the item kinds it may sign", k.Name)
		}
		var kinds, shared []request.Kind
		for _, kind := range k.Kinds {
			if !knownKind(kind) {
				return fmt.Errorf("key %q: unknown kind %q", k.Name, kind)
			}
			kinds = append(kinds, request.Kind(kind))
		}
		for _, kind := range k.SharedKinds {
			if !slices.Contains(k.Kinds, kind) {
				return fmt.Errorf("key %q: shared kind %q is not one of its kinds", k.Name, kind)
			}
			shared = append(shared, request.Kind(kind))
		}
		if err := request.CheckKeyKinds(kinds, shared); err != nil {
			return fmt.Errorf("key %q: %w", k.Name, err)
		}
		if k.Approvals < 0 {
			return fmt.Errorf("key %q: approvals %d is negative", k.Name, k.Approvals)
		}
	}
	names := map[string]bool{}
	tokens := map[string]bool{}
	certNames := map[string]string{} // normalised CN/SAN → client
	for i := range c.Clients {
		cl := &c.Clients[i]
		if err := validName(cl.Name); err != nil {
			return fmt.Errorf("client %q: %w", cl.Name, err)
		}
		if names[cl.Name] {
			return fmt.Errorf("client %q: defined twice", cl.Name)
		}
		names[cl.Name] = true
		if len(cl.TokenSHA256)+len(cl.CertificateSHA256)+len(cl.CertificateCN)+len(cl.CertificateSAN) == 0 {
			return fmt.Errorf("client %q: no credential (token_sha256, certificate_sha256, certificate_cn or certificate_san)", cl.Name)
		}
		if err := checkCertNames(cl, certNames); err != nil {
			return err
		}
		for _, h := range append(slices.Clone(cl.TokenSHA256), cl.CertificateSHA256...) {
			if b, err := hex.DecodeString(h); err != nil || len(b) != 32 {
				return fmt.Errorf("client %q: %q is not a hex SHA-256", cl.Name, h)
			}
		}
		for _, h := range cl.TokenSHA256 {
			if tokens[strings.ToLower(h)] {
				return fmt.Errorf("client %q: token hash %s is used twice", cl.Name, h)
			}
			tokens[strings.ToLower(h)] = true
		}
		if len(cl.CertificateCN)+len(cl.CertificateSAN) > 0 && (c.TLS == nil || c.TLS.ClientCA == "") {
			return fmt.Errorf("client %q: certificate_cn and certificate_san need [tls] client_ca", cl.Name)
		}
		for _, k := range append(slices.Clone(cl.Keys), cl.Approve...) {
			if keyset[k] == nil {
				return fmt.Errorf("client %q: no key named %q", cl.Name, k)
			}
		}
		for _, kind := range cl.Kinds {
			if !knownKind(kind) {
				return fmt.Errorf("client %q: unknown kind %q", cl.Name, kind)
			}
		}
	}
	return nil
}

// checkCertNames checks a client's certificate names and that no other
// client has claimed one: a certificate must name one identity.
func checkCertNames(cl *ClientConfig, seen map[string]string) error {
	var all []string
	for _, cn := range cl.CertificateCN {
		if cn == "" {
			return fmt.Errorf("client %q: empty certificate_cn", cl.Name)
		}
		all = append(all, "cn:"+cn)
	}
	for _, san := range cl.CertificateSAN {
		n, err := NormalizeSAN(san)
		if err != nil {
			return fmt.Errorf("client %q: certificate_san %q: %w", cl.Name, san, err)
		}
		all = append(all, n)
	}
	for _, n := range all {
		if other, dup := seen[n]; dup {
			return fmt.Errorf("client %q: certificate name %s is also client %q's", cl.Name, n, other)
		}
		seen[n] = cl.Name
	}
	return nil
}

// NormalizeSAN checks a certificate_san value ("dns:NAME", "uri:URI",
// "email:ADDRESS") and returns it as matched: the prefix and a DNS name
// in lowercase (DNS names are case-insensitive; URIs and addresses are
// compared exactly).
func NormalizeSAN(v string) (string, error) {
	typ, val, ok := strings.Cut(v, ":")
	typ = strings.ToLower(typ)
	if !ok || val == "" || strings.TrimSpace(val) != val {
		return "", errors.New(`want "dns:NAME", "uri:URI" or "email:ADDRESS"`)
	}
	switch typ {
	case "dns":
		if strings.Contains(val, "*") {
			return "", errors.New("wildcard DNS names are not client identities")
		}
		return "dns:" + strings.ToLower(val), nil
	case "uri", "email":
		return typ + ":" + val, nil
	}
	return "", fmt.Errorf("type %q: want dns, uri or email", typ)
}

func validName(n string) error {
	if n == "" || len(n) > 128 || strings.ContainsAny(n, "=, \t\n/") {
		return errors.New("name must be 1 to 128 characters without '=', ',', '/' or space")
	}
	return nil
}

func knownKind(k string) bool {
	return slices.Contains(request.Kinds, request.Kind(k))
}
