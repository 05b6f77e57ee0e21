package build

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"signet.dev/authvar"
	"signet.dev/internal/atomicfile"
	"signet.dev/keys"
	"signet.dev/manifest"
	"signet.dev/request"
)

// EnrollConfig describes a Secure Boot auto-enroll set: PK.auth (PK's
// certificate, signed by PK), KEK.auth (KEK's, signed by PK) and db.auth
// (the db certificates, signed by KEK), the time-based authenticated
// variable updates systemd-boot enrolls from /loader/keys/NAME/ when the
// firmware is in setup mode.
type EnrollConfig struct {
	// Name is the directory under /loader/keys/ (default "auto", the one
	// systemd-boot's secure-boot-enroll takes without a menu).
	Name string `toml:"name"`
	// PKKey is the key whose certificate PK holds; it signs PK and KEK.
	PKKey string `toml:"pk-key"`
	// KEKKey is the key whose certificate KEK holds; it signs db.
	KEKKey string `toml:"kek-key"`
	// DBKeys are keys whose certificates db holds (typically the
	// secure-boot-key of the UKIs and boot loaders); DBCertificates are
	// further certificate files (PEM may hold several). db holds both, in
	// that order.
	DBKeys         []string `toml:"db-keys"`
	DBCertificates []string `toml:"db-certificates"`
	// DBXCertificates, when set, are certificate files dbx holds (the
	// forbidden signatures database): dbx.auth, signed by KEK, which
	// systemd-boot enrolls with the others.
	DBXCertificates []string `toml:"dbx-certificates"`
	// Owner is the SignatureOwner GUID of every list (default all zeros,
	// as signet authvar create).
	Owner string `toml:"owner"`
}

// EnrollDir is the build directory's subdirectory holding the ESP layout
// of the auto-enroll set: loader/keys/NAME/{PK,KEK,db}.auth.
const EnrollDir = "loader"

// vars are the variables of the set: PK, KEK, db, and dbx when it holds
// certificates.
func (e *EnrollConfig) vars() []string {
	if len(e.DBXCertificates) > 0 {
		return []string{"PK", "KEK", "db", "dbx"}
	}
	return []string{"PK", "KEK", "db"}
}

// AuthFile is the build output name of variable v's update (the name
// mkosi-obs stages it under, authvars/<v>.auth).
func AuthFile(v string) string { return v + ".auth" }

// ESPPath is the path, relative to the build directory and to the ESP's
// root, of variable v's update in the set e.
func (e *EnrollConfig) ESPPath(v string) string {
	return path.Join(EnrollDir, "keys", e.Name, AuthFile(v))
}

// signer names the key that signs variable v.
func (e *EnrollConfig) signer(v string) string {
	if v == "db" || v == "dbx" {
		return e.KEKKey
	}
	return e.PKKey
}

// checkEnroll checks the [secure-boot-enroll] table; output and key are
// config.check's.
func (c *Config) checkEnroll(output func(what, name string) error, key func(what, name string, kinds ...request.Kind) error) error {
	e := c.Enroll
	if e == nil {
		return nil
	}
	const what = "[secure-boot-enroll]"
	if e.Name == "" {
		e.Name = "auto"
	}
	if manifest.ValidName(e.Name) != nil || strings.TrimSpace(e.Name) != e.Name {
		return fmt.Errorf("%s: name %q is not a directory name under /loader/keys/", what, e.Name)
	}
	if e.PKKey == "" || e.KEKKey == "" {
		return fmt.Errorf("%s: pk-key and kek-key are required", what)
	}
	if len(e.DBKeys) == 0 && len(e.DBCertificates) == 0 {
		return fmt.Errorf("%s: db-keys or db-certificates must name what db holds", what)
	}
	if _, err := authvar.ParseGUID(e.ownerText()); err != nil {
		return fmt.Errorf("%s: owner: %w", what, err)
	}
	if err := key(what+" pk-key", e.PKKey, request.KindUEFIAuthVar); err != nil {
		return err
	}
	if err := key(what+" kek-key", e.KEKKey, request.KindUEFIAuthVar); err != nil {
		return err
	}
	for _, n := range e.DBKeys {
		// db holds the certificate; the key signs nothing here.
		if err := key(what+" db-keys", n); err != nil {
			return err
		}
		if n == "" {
			return fmt.Errorf("%s: db-keys: empty key name", what)
		}
	}
	for _, v := range e.vars() {
		if err := output(what, AuthFile(v)); err != nil {
			return err
		}
	}
	return nil
}

func (e *EnrollConfig) ownerText() string {
	if e.Owner == "" {
		return "00000000-0000-0000-0000-000000000000"
	}
	return e.Owner
}

// enrollCertificates returns the certificates variable v holds: PK's, KEK's,
// db's (its keys' then its files') or dbx's. cert gives a key's
// certificate.
func (c *Config) enrollCertificates(v string, cert func(name string) (*x509.Certificate, error)) ([]*x509.Certificate, error) {
	e := c.Enroll
	var names []string
	switch v {
	case "PK":
		names = []string{e.PKKey}
	case "KEK":
		names = []string{e.KEKKey}
	case "db":
		names = e.DBKeys
	}
	var out []*x509.Certificate
	for _, n := range names {
		cr, err := cert(n)
		if err != nil {
			return nil, err
		}
		out = append(out, cr)
	}
	files, what := e.DBCertificates, "db-certificates"
	if v == "dbx" {
		files, what = e.DBXCertificates, "dbx-certificates"
	}
	if v == "db" || v == "dbx" {
		for _, f := range files {
			cs, err := keys.LoadCertificates(c.Path(f))
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", what, f, err)
			}
			out = append(out, cs...)
		}
	}
	return out, nil
}

// enroll makes the auto-enroll set: each variable's update is prepared with
// the build time as its EFI_TIME, signed as a uefi-authvar item (round 1:
// nothing it covers is signed in the build), and joined. The files go to
// BUILD/PK.auth etc. (listed in the manifest) and to the ESP layout
// BUILD/loader/keys/NAME/ (not listed: it goes onto the ESP).
func (p *pass) enroll(e *EnrollConfig) error {
	owner, err := authvar.ParseGUID(e.ownerText())
	if err != nil {
		return err
	}
	when := authvar.TimeOf(p.buildTime())
	cert := func(name string) (*x509.Certificate, error) { return p.keys[name].cert, nil }
	missing := false
	for _, v := range e.vars() {
		certs, err := p.c.enrollCertificates(v, cert)
		if err != nil {
			return err
		}
		variable, err := authvar.NewSecureBootVariable(v, owner, certs, when)
		if err != nil {
			return err
		}
		signer := e.signer(v)
		prep, err := authvar.Prepare(variable, p.keys[signer].cert)
		if err != nil {
			return fmt.Errorf("%s: key %s: %w", AuthFile(v), signer, err)
		}
		var ders [][]byte
		for _, c := range certs {
			ders = append(ders, c.Raw)
		}
		it := request.Item{ID: "authvars/" + AuthFile(v), Kind: request.KindUEFIAuthVar, Key: signer, Hash: "sha256", TBS: prep.TBS,
			AuthVar: &request.AuthVarContext{File: AuthFile(v), Variable: v, VendorGUID: variable.Vendor.String(),
				Attributes: variable.Attributes, Time: when.String(), Owner: owner.String(), Certificates: ders}}
		sig, _, ok, err := p.sign(it)
		if err != nil {
			return err
		}
		if !ok {
			missing = true
			continue
		}
		data, err := prep.Join(sig)
		if err != nil {
			return fmt.Errorf("%s: %w", AuthFile(v), err)
		}
		if err := atomicfile.WriteFile(p.out(AuthFile(v)), data, 0o644); err != nil {
			return err
		}
		esp := p.out(e.ESPPath(v))
		if err := os.MkdirAll(filepath.Dir(esp), 0o755); err != nil {
			return err
		}
		if err := atomicfile.WriteFile(esp, data, 0o644); err != nil {
			return err
		}
		p.outputs = append(p.outputs, Output{File: AuthFile(v), Kind: "authvar", Of: v, Keys: map[string]string{"signer": signer}})
		p.transfers = append(p.transfers, Output{File: e.ESPPath(v), Kind: "authvar-esp", Of: AuthFile(v)})
	}
	if missing {
		p.blocked = true
		p.logf("secure-boot-enroll %s: signatures requested", e.Name)
		return nil
	}
	p.logf("secure-boot-enroll %s: done (%s)", e.Name, path.Dir(e.ESPPath("PK")))
	return nil
}

// enrollOutputs are the outputs ExpectedOutputs lists for the set.
func (c *Config) enrollOutputs() []Output {
	e := c.Enroll
	if e == nil {
		return nil
	}
	var outs []Output
	for _, v := range e.vars() {
		outs = append(outs, Output{File: AuthFile(v), Kind: "authvar", Of: v, Keys: map[string]string{"signer": e.signer(v)}})
	}
	for _, v := range e.vars() {
		outs = append(outs, Output{File: e.ESPPath(v), Kind: "authvar-esp", Of: AuthFile(v)})
	}
	return outs
}

// authVar verifies an update of the set as firmware does (the signature
// over the TBS rebuilt from the file's time and lists, by the trusted
// certificate of its signer), then its content: exactly the lists of the
// certificates the configuration puts there, with its owner, and a real
// time. openssl judges the same PKCS#7 over the same TBS.
func (v *verifier) authVar(o Output, c *Config, signer *x509.Certificate) {
	if signer == nil {
		return
	}
	data, err := os.ReadFile(v.path(o.File))
	if err != nil {
		v.add(o.File, "signet", "authenticated variable "+o.Of, err)
		return
	}
	vendor, _ := authvar.VendorGUID(o.Of)
	a, err := authvar.Verify(data, o.Of, vendor, authvar.DefaultAttributes, []*x509.Certificate{signer})
	v.add(o.File, "signet", "signature of "+o.Of+" by "+signer.Subject.String(), err)
	if err == nil {
		v.add(o.File, "signet", "content of "+o.Of, v.authVarContent(o.Of, c, a))
	}
	// openssl judges the PKCS#7 over the TBS rebuilt from the file's own
	// time and lists, whatever signet found.
	if a, err = authvar.Parse(data); err != nil {
		return
	}
	tbs, err := (&authvar.Variable{Name: o.Of, Vendor: vendor, Attributes: authvar.DefaultAttributes, Time: a.Time, Data: a.Data}).TBS()
	if err != nil {
		v.add(o.File, "openssl", "signature of "+o.Of, err)
		return
	}
	v.peer(o.File, "signature of "+o.Of, "", "openssl", "cms", "-verify", "-binary", "-inform", "DER",
		"-in", v.tmpFile(o.Of+".p7", authvar.ContentInfo(a.CertData)), "-content", v.tmpFile(o.Of+".tbs", tbs),
		"-CAfile", v.certFile(signer), "-partial_chain", "-purpose", "any", "-out", os.DevNull)
}

// authVarContent checks that an update holds what the configuration puts
// in the variable, and a time that is a real date (not an append's zero).
func (v *verifier) authVarContent(name string, c *Config, a *authvar.Auth) error {
	if a.Time == (authvar.Time{}) {
		return errors.New("the EFI_TIME is zero (an append's), not the build's time")
	}
	// One build makes the set with one time: a file from another build
	// stands out.
	if name != "PK" {
		if pk, err := os.ReadFile(v.path(AuthFile("PK"))); err == nil {
			if p, err := authvar.Parse(pk); err == nil && p.Time != a.Time {
				return fmt.Errorf("its EFI_TIME %s is not PK.auth's %s: not made by the same build", a.Time, p.Time)
			}
		}
	}
	owner, err := authvar.ParseGUID(c.Enroll.ownerText())
	if err != nil {
		return err
	}
	certs, err := c.enrollCertificates(name, func(n string) (*x509.Certificate, error) {
		if cr := v.trust.Certificates[n]; cr != nil {
			return cr, nil
		}
		return nil, fmt.Errorf("no trusted certificate of key %s (--certificate %s=FILE)", n, n)
	})
	if err != nil {
		return err
	}
	want, err := authvar.MarshalLists(authvar.CertificateLists(owner, certs))
	if err != nil {
		return err
	}
	if !bytes.Equal(a.Data, want) {
		got := "lists signet cannot parse"
		if lists, err := authvar.ParseLists(a.Data); err == nil {
			cs, _ := authvar.Certificates(lists)
			got = fmt.Sprintf("%d list(s) of %s", len(lists), subjects(cs))
		}
		return fmt.Errorf("holds %s; the configuration puts %s, owned by %s, one list each", got, subjects(certs), owner)
	}
	return nil
}

func subjects(certs []*x509.Certificate) string {
	var l []string
	for _, c := range certs {
		l = append(l, fmt.Sprintf("%q", c.Subject.String()))
	}
	return strings.Join(l, ", ")
}

// authVarESP checks that the ESP copy is the update the manifest lists.
func (v *verifier) authVarESP(o Output) {
	got, err := os.ReadFile(v.path(o.File))
	if err == nil {
		var want []byte
		if want, err = os.ReadFile(v.path(o.Of)); err == nil && !bytes.Equal(got, want) {
			err = fmt.Errorf("differs from %s", o.Of)
		}
	}
	v.add(o.File, "signet", "the ESP copy of "+o.Of, err)
}
