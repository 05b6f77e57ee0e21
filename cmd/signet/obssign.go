package main

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"signet.dev/internal/atomicfile"
	"signet.dev/internal/buildtime"
	"signet.dev/keys"
	"signet.dev/manifest"
	"signet.dev/mkosiobs"
	"signet.dev/openpgp"
	"signet.dev/request"
	"signet.dev/request/check"
	"signet.dev/server/client"
)

// OBS's backend (bs_signer, bs_publish) execs a program named "sign" with
// obs-sign's command line. Invoked under that name (or as "signet
// obs-sign"), signet answers the part of that command line OBS uses:
//
//	sign -t                                  test: the configuration loads
//	sign [-u U] -k | --full-keyid            key id of the selected key
//	sign [-u U] -p                           armored OpenPGP public key
//	sign --hashfile [-h H] [FILE]            hex digest (OBS's probes)
//	sign [sel] -O -h sha256 --bulk-cpio FILE FILE.sig: every member
//	                                         checked against FILE's
//	                                         directory (mkosi's outputs)
//	sign [sel] -d FILE | -D FILE             FILE.asc (armored) / FILE.sig
//	                                         (binary) detached OpenPGP over
//	                                         a SHA256SUMS-format file
//
// where sel is -u USER, --project P, --package K, --signflavor F (the
// site-wrapper options OBS passes with $BSConfig::sign_project) and -P
// (OBS's encrypted project key, ignored: the key is signet's). The key
// comes from the first [[keys]] entry of the configuration
// ($SIGNET_SIGN_CONFIG, default /etc/signet/sign.toml) whose projects,
// packages, flavors and users lists match (an empty list matches all).
// Errors retrying cannot mend (bad input, a refused item, an unsupported
// mode) start with "fatal:", which makes OBS fail the job instead of
// retrying it; exit status 1 for every error, as obs-sign.

// obsSignConfig is the configuration of the sign stand-in.
type obsSignConfig struct {
	// Server, when set, is the signing service every signature goes
	// through (one request per invocation); keys are then named as the
	// service names them and need no private_key.
	Server    string `toml:"server"`
	TokenFile string `toml:"token_file"`
	CA        string `toml:"ca"`
	AuditKey  string `toml:"audit_key"`
	Keys      []obsSignKey
}

type obsSignKey struct {
	Name        string `toml:"name"`
	PrivateKey  string `toml:"private_key"` // PEM file or pkcs11: URI (local signing)
	Certificate string `toml:"certificate"` // the project certificate (_projectcert.crt)
	// OpenPGPKeyTime is the OpenPGP key's creation time (RFC 3339 or
	// Unix seconds), part of its fingerprint; default the certificate's
	// notBefore.
	OpenPGPKeyTime string `toml:"openpgp_key_time"`
	// OpenPGPPublicKey is an armored or binary public key file that -p
	// prints as is (needed with a server, which -p cannot ask to
	// self-sign a user ID).
	OpenPGPPublicKey string   `toml:"openpgp_public_key"`
	UserID           string   `toml:"user_id"`
	Projects         []string `toml:"projects"`
	Packages         []string `toml:"packages"`
	Flavors          []string `toml:"flavors"`
	Users            []string `toml:"users"`
}

// fatalError is an error OBS must not retry.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }

func fatalf(format string, a ...any) error {
	return &fatalError{fmt.Errorf(format, a...)}
}

// obsSignMain runs the sign stand-in and returns its exit status.
func obsSignMain(args []string, stdout, stderr io.Writer) int {
	err := obsSign(args, stdout)
	if err == nil {
		return 0
	}
	msg := keys.RedactText(err.Error())
	var fe *fatalError
	if errors.As(err, &fe) {
		fmt.Fprintf(stderr, "fatal: %s\n", msg)
	} else {
		fmt.Fprintf(stderr, "sign: %s\n", msg)
	}
	return 1
}

type obsSignArgs struct {
	user, project, pkg, flavor, hash, timeArg, config string
	chksumFile                                        string
	mode                                              string // "", "-k", "-p", "-O", "-d", "-D", "--hashfile"
	fullKeyID, bulkCPIO                               bool
	files                                             []string
}

// unsupported are obs-sign modes signet does not provide; OBS gets a
// fatal error naming them rather than a wrong signature.
var unsupported = []string{"-c", "-r", "-a", "--appimage", "-g", "-x", "-C", "--appx", "--appxdetached", "--cmssign", "--pesign", "--kosign", "--totp", "--delsign", "--pkcs1pss", "-A", "--cert", "--othercerts", "--fingerprint"}

func parseObsSignArgs(args []string) (*obsSignArgs, error) {
	a := &obsSignArgs{hash: "sha1"}
	setMode := func(m string) error {
		if a.mode != "" && a.mode != m {
			return fatalf("%s and %s: one mode at a time", a.mode, m)
		}
		a.mode = m
		return nil
	}
	hashGiven := false
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		opt := args[0]
		args = args[1:]
		val := func() (string, error) {
			if len(args) == 0 {
				return "", fatalf("option %s needs a value", opt)
			}
			v := args[0]
			args = args[1:]
			return v, nil
		}
		var err error
		switch opt {
		case "--":
			a.files = args
			return a, a.finish(hashGiven)
		case "-u":
			a.user, err = val()
		case "--project":
			a.project, err = val()
		case "--package":
			a.pkg, err = val()
		case "--signflavor":
			a.flavor, err = val()
		case "--config":
			a.config, err = val()
		case "-P":
			_, err = val() // OBS's signd-encrypted key: signet holds its own
		case "-T":
			a.timeArg, err = val()
		case "-S":
			a.chksumFile, err = val()
		case "-h":
			a.hash, err = val()
			a.hash = strings.ToLower(a.hash)
			hashGiven = true
		case "-k", "-p", "-O", "-d", "-D", "--hashfile":
			err = setMode(opt)
		case "--full-keyid":
			a.fullKeyID = true
			err = setMode("-k")
		case "--bulk-cpio":
			a.bulkCPIO = true
		case "-t":
			err = setMode("-t")
		case "-v", "-3", "-4", "--noheaderonly", "--cms-nocerts", "--cms-keyid":
			// verbosity and signature-version switches: signet writes v4
			// OpenPGP signatures, which gpg and sysupdate verify.
		default:
			if slices.Contains(unsupported, opt) {
				return nil, fatalf("%s: not provided by signet's sign (use obs-sign for it)", opt)
			}
			return nil, fatalf("unknown option %s", opt)
		}
		if err != nil {
			return nil, err
		}
	}
	a.files = args
	return a, a.finish(hashGiven)
}

func (a *obsSignArgs) finish(hashGiven bool) error {
	if a.chksumFile != "" && a.mode != "-k" && a.mode != "-t" && a.mode != "--hashfile" {
		return fatalf("-S: checksum files are not written by signet's sign")
	}
	switch a.hash {
	case "sha1", "sha256", "sha512":
	default:
		return fatalf("unknown hash algorithm '%s'", a.hash)
	}
	switch a.mode {
	case "-O", "-d", "-D":
		// Only SHA-256 is signed: obs-sign's SHA-1 default is not used
		// for anything signet signs.
		if hashGiven && a.hash != "sha256" {
			return fatalf("-h %s: signet signs with SHA-256 only", a.hash)
		}
		a.hash = "sha256"
	}
	return nil
}

func loadObsSignConfig(path string) (*obsSignConfig, error) {
	if path == "" {
		path = os.Getenv("SIGNET_SIGN_CONFIG")
	}
	if path == "" {
		path = "/etc/signet/sign.toml"
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	var c obsSignConfig
	md, err := toml.Decode(string(data), &c)
	if err != nil {
		return nil, fatalf("configuration %s: %v", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fatalf("configuration %s: unknown setting %s", path, und[0])
	}
	if len(c.Keys) == 0 {
		return nil, fatalf("configuration %s: no [[keys]]", path)
	}
	for i, k := range c.Keys {
		if k.Name == "" || k.Certificate == "" {
			return nil, fatalf("configuration %s: key %d needs a name and a certificate", path, i+1)
		}
		if c.Server == "" && k.PrivateKey == "" {
			return nil, fatalf("configuration %s: key %q: no private_key and no server", path, k.Name)
		}
	}
	return &c, nil
}

func matches(list []string, v string) bool { return len(list) == 0 || slices.Contains(list, v) }

func (c *obsSignConfig) selectKey(a *obsSignArgs) (*obsSignKey, error) {
	for i := range c.Keys {
		k := &c.Keys[i]
		if matches(k.Projects, a.project) && matches(k.Packages, a.pkg) && matches(k.Flavors, a.flavor) && matches(k.Users, a.user) {
			return k, nil
		}
	}
	return nil, fatalf("no key configured for project %q, package %q, flavor %q, user %q", a.project, a.pkg, a.flavor, a.user)
}

func (k *obsSignKey) cert() (*x509.Certificate, error) {
	c, _, err := loadCert(k.Certificate)
	if err != nil {
		return nil, fatalf("key %q: %v", k.Name, err)
	}
	return c, nil
}

func (k *obsSignKey) pgpKey(cert *x509.Certificate) (*openpgp.Key, error) {
	created := cert.NotBefore
	if k.OpenPGPKeyTime != "" {
		t, err := parseTime(k.OpenPGPKeyTime)
		if err != nil {
			return nil, fatalf("key %q: openpgp_key_time: %v", k.Name, err)
		}
		created = t
	}
	pk, err := openpgp.NewKey(cert.PublicKey, created)
	if err != nil {
		return nil, fatalf("key %q: %v", k.Name, err)
	}
	return pk, nil
}

func obsSign(args []string, stdout io.Writer) error {
	a, err := parseObsSignArgs(args)
	if err != nil {
		return err
	}
	if a.mode == "--hashfile" {
		return hashFile(a, stdout)
	}
	c, err := loadObsSignConfig(a.config)
	if err != nil {
		return err
	}
	k, err := c.selectKey(a)
	if err != nil {
		return err
	}
	cert, err := k.cert()
	if err != nil {
		return err
	}
	switch a.mode {
	case "-t":
		return nil
	case "-k":
		pk, err := k.pgpKey(cert)
		if err != nil {
			return err
		}
		id := fmt.Sprintf("%016X", pk.KeyID())
		if !a.fullKeyID {
			id = id[8:]
		}
		fmt.Fprintln(stdout, id)
		return nil
	case "-p":
		return printPublicKey(k, cert, stdout)
	case "-O":
		if !a.bulkCPIO {
			return fatalf("-O without --bulk-cpio: signet signs raw signatures only over mkosi-obs archives, whose members it can check")
		}
		if len(a.files) != 1 {
			return fatalf("usage: sign -O -h sha256 --bulk-cpio FILE")
		}
		return obsBulkCPIO(c, k, cert, a.files[0])
	case "-d", "-D":
		if len(a.files) == 0 {
			return fatalf("%s: signet signs files, not standard input", a.mode)
		}
		for _, f := range a.files {
			if err := obsDetached(c, k, cert, a, f); err != nil {
				return err
			}
		}
		return nil
	}
	return fatalf("no mode given (signet's sign does -t, -k, -p, --hashfile, -O --bulk-cpio, -d, -D)")
}

func hashFile(a *obsSignArgs, stdout io.Writer) error {
	var h hash.Hash
	switch a.hash {
	case "sha1":
		h = sha1.New()
	case "sha256":
		h = sha256.New()
	case "sha512":
		h = sha512.New()
	}
	var in io.Reader = os.Stdin
	if len(a.files) > 1 {
		return fatalf("usage: sign --hashfile [-h algo] [file]")
	}
	if len(a.files) == 1 {
		f, err := os.Open(a.files[0])
		if err != nil {
			return fatalf("%v", err)
		}
		defer f.Close()
		in = f
	}
	if _, err := io.Copy(h, in); err != nil {
		return err
	}
	fmt.Fprintln(stdout, hex.EncodeToString(h.Sum(nil)))
	return nil
}

func printPublicKey(k *obsSignKey, cert *x509.Certificate, stdout io.Writer) error {
	if k.OpenPGPPublicKey != "" {
		b, err := os.ReadFile(k.OpenPGPPublicKey)
		if err != nil {
			return fatalf("key %q: %v", k.Name, err)
		}
		if !strings.HasPrefix(string(b), "-----BEGIN PGP") {
			b = openpgp.Armor(b, openpgp.ArmorPublicKey)
		}
		_, err = stdout.Write(b)
		return err
	}
	if k.PrivateKey == "" {
		return fatalf("key %q: -p needs openpgp_public_key (or a private_key to self-sign one)", k.Name)
	}
	pk, err := k.pgpKey(cert)
	if err != nil {
		return err
	}
	s, err := keys.Open("file", k.PrivateKey)
	if err != nil {
		return err
	}
	defer s.Close()
	uid := k.UserID
	if uid == "" {
		uid = cert.Subject.CommonName
	}
	b, err := openpgp.ExportPublicKey(s, pk, uid)
	if err != nil {
		return err
	}
	_, err = stdout.Write(openpgp.Armor(b, openpgp.ArmorPublicKey))
	return err
}

// signObs signs r with k, locally or through the service.
func signObs(c *obsSignConfig, k *obsSignKey, cert *x509.Certificate, r *request.Request, checkFn request.CheckFunc) (*request.Response, error) {
	if c.Server == "" {
		s, err := keys.Open("file", k.PrivateKey)
		if err != nil {
			return nil, err
		}
		defer s.Close()
		if err := keys.CheckPair(s, cert); err != nil {
			return nil, fatalf("key %q: %v", k.Name, err)
		}
		resp, err := request.Sign(r, map[string]request.Key{k.Name: {Signer: s, Certificate: cert, Kinds: request.Kinds}}, checkFn)
		if err != nil {
			return nil, &fatalError{err}
		}
		return resp, nil
	}
	sf := serverFlags{url: c.Server, tokenFile: c.TokenFile, ca: c.CA, timeout: time.Hour}
	cl, err := sf.client()
	if err != nil {
		return nil, err
	}
	data, err := r.Marshal()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), sf.timeout)
	defer cancel()
	st, err := cl.Submit(ctx, data)
	if err != nil {
		// The service refusing a request (4xx) is final; not reaching it,
		// or its own trouble (5xx), is worth a retry.
		var ce *client.Error
		if errors.As(err, &ce) && ce.Status/100 == 4 {
			return nil, &fatalError{err}
		}
		return nil, err
	}
	res, err := cl.Wait(ctx, st.ID)
	if err != nil {
		return nil, err
	}
	vk := ""
	if c.AuditKey != "" {
		if vk, err = auditKeyArg(c.AuditKey); err != nil {
			return nil, err
		}
	}
	if err := client.VerifyResult(r, res, vk); err != nil {
		return nil, fatalf("response from the service: %v", err)
	}
	if _, err := request.Verify(r, res.Response, map[string]*x509.Certificate{k.Name: cert}); err != nil {
		return nil, fatalf("response from the service: %v", err)
	}
	return res.Response, nil
}

// obsBulkCPIO signs a mkosi-obs archive. OBS runs sign in the job's
// directory of build results, where mkosi's outputs lie next to the
// archive: that directory is the output directory each member is checked
// against.
func obsBulkCPIO(c *obsSignConfig, k *obsSignKey, cert *x509.Certificate, file string) error {
	if err := requireRSA(cert); err != nil {
		return &fatalError{err}
	}
	a, err := readMkosiArchive(file)
	if err != nil {
		return &fatalError{err}
	}
	// The build's SOURCE_DATE_EPOCH is not known here: authvars/ keep
	// the time they were staged with.
	r, err := mkosiobs.Request(a, mkosiobs.Options{OutputDir: filepath.Dir(file), Key: k.Name, Certificate: cert})
	if err != nil {
		return fatalf("%s: %v", file, err)
	}
	resp, err := signObs(c, k, cert, r, check.Item)
	if err != nil {
		return err
	}
	w, err := atomicfile.Create(file+".sig", 0o644)
	if err != nil {
		return err
	}
	if err := mkosiobs.WriteSignatures(w, a, mkosiobs.SignatureMap(resp)); err != nil {
		w.Close()
		return err
	}
	return w.Commit()
}

// obsDetached makes FILE.asc (-d) or FILE.sig (-D): a detached OpenPGP
// signature over a SHA256SUMS-format file (the *.sha256 files and the
// SHA256SUMS OBS publishes), checked as a manifest-openpgp item.
func obsDetached(c *obsSignConfig, k *obsSignKey, cert *x509.Certificate, a *obsSignArgs, file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fatalf("%v", err)
	}
	pk, err := k.pgpKey(cert)
	if err != nil {
		return err
	}
	when, err := buildtime.Now()
	if a.timeArg != "" {
		n, perr := strconv.ParseInt(a.timeArg, 0, 64)
		if perr != nil {
			return fatalf("-T %s: signet takes Unix seconds", a.timeArg)
		}
		when, err = time.Unix(n, 0).UTC(), nil
	}
	if err != nil {
		return err
	}
	p, err := manifest.PrepareOpenPGP(data, pk, when)
	if err != nil {
		return fatalf("%s: not a SHA256SUMS-format file signet signs: %v", file, err)
	}
	hashName, err := request.HashName(p.Hash)
	if err != nil {
		return fatalf("%v", err)
	}
	ctx := &request.ManifestContext{File: filepath.Base(file), Entries: []request.ManifestEntry{}}
	for _, e := range p.Entries {
		ctx.Entries = append(ctx.Entries, request.ManifestEntry{Name: e.Name, SHA256: hex.EncodeToString(e.Digest[:])})
	}
	r := &request.Request{Format: request.FormatRequest, Items: []request.Item{{
		ID: filepath.Base(file), Kind: request.KindManifestOpenPGP, Key: k.Name, Hash: hashName, TBS: p.TBS, Manifest: ctx}}}
	if err := request.ValidID(r.Items[0].ID); err != nil {
		r.Items[0].ID = "manifest"
	}
	resp, err := signObs(c, k, cert, r, check.Item)
	if err != nil {
		return err
	}
	sig, err := p.Join(resp.Items[0].Signature)
	if err != nil {
		return fatalf("%v", err)
	}
	out := file + ".sig"
	if a.mode == "-d" {
		out = file + ".asc"
		sig = openpgp.Armor(sig, openpgp.ArmorSignature)
	}
	return atomicfile.WriteFile(out, sig, 0o644)
}
