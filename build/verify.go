package build

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"signet.dev/authenticode"
	"signet.dev/cms"
	"signet.dev/image"
	"signet.dev/ipe"
	"signet.dev/keys"
	"signet.dev/manifest"
	"signet.dev/measure"
	"signet.dev/uki"
	"signet.dev/verity"
)

// Check is one verification of one output.
type Check struct {
	File string
	// By names the verifier: "signet" or a peer tool.
	By string
	// What was checked.
	What string
	// Err is nil when the check passed; ErrPeerMissing when the peer is
	// not installed.
	Err error
	// Info, when set, is a finding reported apart from the checks, such
	// as a certificate's extended key usage: it fails nothing.
	Info string
}

// ErrPeerMissing marks a check skipped because its peer tool is not
// installed.
var ErrPeerMissing = errors.New("not installed")

// ErrNotFound marks an output the build definition expects and the build
// directory does not hold.
var ErrNotFound = errors.New("expected output not found")

// Trust is what a verification trusts, by key name: the certificates the
// signatures must chain to (each certificate itself is the trust anchor)
// and the OpenPGP public keys for gpg. It comes from the user, never from
// the directory verified.
type Trust struct {
	Certificates map[string]*x509.Certificate
	OpenPGPKeys  map[string][]byte
}

// LoadTrust gathers the trust anchors of every key c names: the
// certificate given in certs (key name to file) or else the configured
// one, and the OpenPGP public key given in openpgpKeys or else the
// configured openpgp-public-key. A key with neither is left out: the
// outputs it signs then fail verification, naming it.
func LoadTrust(c *Config, certs, openpgpKeys map[string]string) (*Trust, error) {
	t := &Trust{Certificates: map[string]*x509.Certificate{}, OpenPGPKeys: map[string][]byte{}}
	for name := range certs {
		if c.Keys[name] == nil {
			return nil, fmt.Errorf("--certificate %s: no [keys.%s] in the configuration", name, name)
		}
	}
	for name := range openpgpKeys {
		if c.Keys[name] == nil {
			return nil, fmt.Errorf("--openpgp-key %s: no [keys.%s] in the configuration", name, name)
		}
	}
	for _, name := range c.KeyNames() {
		k := c.Keys[name]
		if ref := certs[name]; ref != "" {
			cs, err := keys.LoadCertificates(ref)
			if err != nil {
				return nil, fmt.Errorf("--certificate %s: %s: %w", name, keys.Redact(ref), err)
			}
			t.Certificates[name] = cs[0]
		} else if k.Certificate != "" {
			cert, _, err := c.Certificate(name)
			if err != nil {
				return nil, err
			}
			t.Certificates[name] = cert
		}
		ref := openpgpKeys[name]
		if ref == "" && k.OpenPGPPublicKey != "" {
			ref = c.Path(k.OpenPGPPublicKey)
		}
		if ref != "" {
			ring, err := os.ReadFile(ref)
			if err != nil {
				return nil, fmt.Errorf("key %s: OpenPGP public key: %w", name, err)
			}
			t.OpenPGPKeys[name] = ring
		}
	}
	return t, nil
}

// ExpectedOutputs lists the outputs a finished build of c holds, with the
// keys each carries, in the order the build makes them.
func ExpectedOutputs(c *Config) []Output {
	var outs []Output
	for _, v := range c.Verity {
		outs = append(outs, Output{File: v.Output, Kind: "verity-data"}, Output{File: v.Output + ".verity", Kind: "verity-hash"},
			Output{File: v.Output + ".roothash", Kind: "verity-roothash"})
		if v.Key != "" {
			outs = append(outs, Output{File: v.Output + ".roothash.p7s", Kind: "verity-signature", Keys: map[string]string{"signer": v.Key}})
		}
		if s := c.Sysupdate; s != nil && s.Partitions {
			// Named by the root hash: Verify resolves @u from the
			// directory's .roothash, then checks it.
			u := strings.Replace(v.Output, s.Version, s.Version+"_@u", 1)
			outs = append(outs, Output{File: u, Kind: "partition-data", Of: v.Output}, Output{File: u + ".verity", Kind: "partition-hash", Of: v.Output + ".verity"})
		}
	}
	for _, im := range c.Images {
		o := Output{File: im.Output, Kind: "image", Keys: map[string]string{}}
		if im.VerityKey != "" {
			o.Keys["verity"] = im.VerityKey
		}
		outs = append(outs, o)
	}
	for _, b := range c.BootLoaders {
		if b.lockPE() {
			outs = append(outs, Output{File: PCRLockName(b.Output), Kind: "pcrlock-pe", Of: b.Output})
		}
		outs = append(outs, Output{File: b.Output, Kind: "bootloader", Keys: map[string]string{"secure-boot": b.SecureBootKey}})
	}
	for _, u := range c.UKIs {
		if u.lockUKI() {
			outs = append(outs, Output{File: PCRLockName(u.Output), Kind: "pcrlock-uki", Of: u.Output})
		}
		o := Output{File: u.Output, Kind: "uki", Keys: map[string]string{}}
		if u.PCRKey != "" {
			o.Keys["pcr"] = u.PCRKey
			o.Banks = orDefault(u.PCRBanks, []string{"sha256"})
			o.Phases, _ = measure.ParsePhases(u.Phases)
		}
		if u.SecureBootKey != "" {
			o.Keys["secure-boot"] = u.SecureBootKey
		}
		outs = append(outs, o)
	}
	if c.IPE != nil {
		outs = append(outs, Output{File: c.IPE.Output, Kind: "ipe", Keys: map[string]string{"signer": c.IPE.Key}})
	}
	if m := c.Manifest; m != nil {
		outs = append(outs, Output{File: m.Output, Kind: "manifest"})
		if m.OpenPGPKey != "" {
			outs = append(outs, Output{File: m.Output + ".gpg", Kind: "manifest-openpgp", Keys: map[string]string{"signer": m.OpenPGPKey}})
		}
		if m.PKCS7Key != "" {
			outs = append(outs, Output{File: m.Output + ".p7s", Kind: "manifest-pkcs7", Keys: map[string]string{"signer": m.PKCS7Key}})
		}
	}
	outs = append(outs, c.enrollOutputs()...)
	// Transfers is checked by LoadConfig.
	ts, _ := Transfers(c)
	for _, t := range ts {
		outs = append(outs, Output{File: TransferDir + "/" + t.Name, Kind: "transfer"})
	}
	return outs
}

// Verify checks every output the build definition c expects in the build
// directory dir, with signet's own verifiers and, where installed, the
// real peers (sbverify, osslsigncode, openssl, veritysetup, gpg,
// sha256sum), against the trust anchors t. Nothing in dir is trusted: not
// its state, not its certificates, not its list of outputs. An expected
// output that is missing fails with ErrNotFound; a file the manifest lists
// that the build does not make fails the manifest's check.
func Verify(dir string, c *Config, t *Trust) ([]Check, error) {
	if fi, err := os.Stat(dir); err != nil {
		return nil, err
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("%s: not a directory", dir)
	}
	tmp, err := os.MkdirTemp("", "signet-verify-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	v := &verifier{dir: dir, tmp: tmp, trust: t, eku: map[string]bool{}}
	outs := ExpectedOutputs(c)
	for i, o := range outs {
		if o.Kind == "partition-data" || o.Kind == "partition-hash" {
			outs[i].File = v.partitionName(o)
		}
		v.expected = append(v.expected, outs[i].File)
	}
	for _, o := range outs {
		if _, err := os.Lstat(v.path(o.File)); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				err = ErrNotFound
			}
			v.add(o.File, "signet", "present", err)
			continue
		}
		cert := func(role string) *x509.Certificate { return v.cert(o.File, o.Keys[role]) }
		switch o.Kind {
		case "uki":
			v.uki(o, cert("secure-boot"), cert("pcr"))
		case "bootloader":
			v.bootLoader(o, cert("secure-boot"))
		case "pcrlock-uki", "pcrlock-pe":
			v.pcrlock(o)
		case "transfer":
			v.transfer(o, c)
		case "partition-data", "partition-hash":
			v.partitionFile(o)
		case "image":
			v.image(o, cert("verity"))
		case "ipe":
			v.ipe(o, cert("signer"))
		case "verity-data", "verity-roothash":
			// Checked with their hash tree and signature.
		case "verity-hash":
			v.verityTree(o)
		case "verity-signature":
			v.veritySignature(o, cert("signer"))
		case "authvar":
			v.authVar(o, c, cert("signer"))
		case "authvar-esp":
			v.authVarESP(o)
		case "manifest":
			v.manifest(o)
		case "manifest-pkcs7":
			v.manifestPKCS7(o, cert("signer"))
		case "manifest-openpgp":
			v.manifestOpenPGP(o)
		}
	}
	return v.checks, nil
}

type verifier struct {
	dir, tmp string
	trust    *Trust
	expected []string
	checks   []Check
	n        int
	eku      map[string]bool // keys whose EKU was reported
}

// cert returns the trusted certificate of key name for file, nil when no
// key is named; a key without a trusted certificate fails a check naming
// it (and returns nil). Each key's extended key usage is reported once,
// apart from the signature checks: firmware, the kernel and systemd do not
// judge it, so the peers are run to ignore it (openssl -purpose any).
func (v *verifier) cert(file, name string) *x509.Certificate {
	if name == "" {
		return nil
	}
	c := v.trust.Certificates[name]
	if c == nil {
		v.add(file, "signet", "trusted certificate of key "+name, fmt.Errorf("none given (--certificate %s=FILE, or certificate in [keys.%s])", name, name))
		return nil
	}
	if !v.eku[name] {
		v.eku[name] = true
		v.checks = append(v.checks, Check{File: file, By: "signet", What: "certificate of key " + name, Info: ekuString(c)})
	}
	return c
}

func ekuString(c *x509.Certificate) string {
	names := map[x509.ExtKeyUsage]string{x509.ExtKeyUsageAny: "any", x509.ExtKeyUsageServerAuth: "serverAuth", x509.ExtKeyUsageClientAuth: "clientAuth",
		x509.ExtKeyUsageCodeSigning: "codeSigning", x509.ExtKeyUsageEmailProtection: "emailProtection", x509.ExtKeyUsageTimeStamping: "timeStamping"}
	var l []string
	for _, u := range c.ExtKeyUsage {
		if n, ok := names[u]; ok {
			l = append(l, n)
		} else {
			l = append(l, fmt.Sprintf("usage %d", u))
		}
	}
	for _, o := range c.UnknownExtKeyUsage {
		l = append(l, o.String())
	}
	if len(l) == 0 {
		return fmt.Sprintf("%s: no extended key usage", c.Subject)
	}
	return fmt.Sprintf("%s: extended key usage %s (not judged: firmware, kernel and systemd ignore it)", c.Subject, strings.Join(l, ", "))
}

func (v *verifier) add(file, by, what string, err error) {
	v.checks = append(v.checks, Check{File: file, By: by, What: what, Err: err})
}

func (v *verifier) path(name string) string { return filepath.Join(v.dir, name) }

// tmpFile writes data to a new temporary file for a peer to read.
func (v *verifier) tmpFile(name string, data []byte) string {
	v.n++
	p := filepath.Join(v.tmp, fmt.Sprintf("%d-%s", v.n, name))
	os.WriteFile(p, data, 0o600)
	return p
}

func (v *verifier) certFile(c *x509.Certificate) string {
	return v.tmpFile("cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

// peer runs a tool and reports an error unless it exits 0 and, when want is
// set, its output contains want. Peers with misleading exit codes are
// given a want (spec/peers.md).
func (v *verifier) peer(file, what, want string, name string, args ...string) {
	path, err := exec.LookPath(name)
	if err != nil {
		for _, d := range []string{"/usr/sbin", "/sbin"} {
			if _, e := os.Stat(filepath.Join(d, name)); e == nil {
				path, err = filepath.Join(d, name), nil
			}
		}
	}
	if err != nil {
		v.add(file, name, what, ErrPeerMissing)
		return
	}
	out, err := exec.Command(path, args...).CombinedOutput()
	if err == nil && want != "" && !bytes.Contains(out, []byte(want)) {
		err = fmt.Errorf("output lacks %q", want)
	}
	if err != nil {
		err = fmt.Errorf("%v: %s", err, strings.TrimSpace(lastLine(out)))
	}
	v.add(file, name, what, err)
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// open opens an output for reading with its size, recording why not.
func (v *verifier) open(name string) (*os.File, int64, bool) {
	f, err := os.Open(v.path(name))
	if err == nil {
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil {
			return f, fi.Size(), true
		}
		f.Close()
	}
	v.add(name, "signet", "read", err)
	return nil, 0, false
}

func (v *verifier) uki(o Output, sb, pcr *x509.Certificate) {
	f, size, ok := v.open(o.File)
	if !ok {
		return
	}
	defer f.Close()
	if sb != nil {
		pe, err := authenticode.Parse(f, size)
		if err == nil {
			_, err = authenticode.Verify(pe, []*x509.Certificate{sb})
		}
		v.add(o.File, "signet", "Secure Boot signature", err)
		cf := v.certFile(sb)
		v.peer(o.File, "Secure Boot signature", "Signature verification OK", "sbverify", "--cert", cf, v.path(o.File))
		v.peer(o.File, "Secure Boot signature", "Succeeded", "osslsigncode", "verify", "-in", v.path(o.File), "-CAfile", cf)
	}
	if pcr == nil {
		return
	}
	err := func() error {
		u, err := uki.Parse(f, size)
		if err != nil {
			return err
		}
		sec := u.Section(".pcrsig")
		if sec == nil {
			return errors.New("no .pcrsig section")
		}
		data, err := sec.Data()
		if err != nil {
			return err
		}
		doc, err := measure.ParsePCRSig(bytes.TrimRight(data, "\x00"))
		if err != nil {
			return err
		}
		// Every policy must be one the stub will meet: recompute PCR 11
		// from this very file.
		rel, err := u.StubRelease()
		if err != nil {
			return err
		}
		var named []*uki.Named
		for _, s := range u.Sections {
			named = append(named, &uki.Named{Name: s.Name, R: s.Open(), Size: s.Size()})
		}
		profiles := uki.Profiles(named)
		if len(profiles) != 1 {
			return fmt.Errorf("%d profiles", len(profiles))
		}
		ins, _, err := uki.MeasuredInputs(profiles[0].Sections, rel.Major)
		if err != nil {
			return err
		}
		banks, err := measure.ParseBanks(o.Banks)
		if err != nil {
			return err
		}
		phases, err := measure.ParsePhases(o.Phases)
		if err != nil {
			return err
		}
		res, err := measure.Calculate(ins, phases, banks)
		if err != nil {
			return err
		}
		v.measurePeer(o.File, ins, o.Banks, phases, rel.Major, measure.MarshalResult(res, measure.Short))
		entries, err := measure.Prepare(res, pcr.PublicKey)
		if err != nil {
			return err
		}
		want := map[string]bool{}
		for _, e := range entries {
			want[e.Bank.Name+":"+hex.EncodeToString(e.Pol)] = true
		}
		n := 0
		pub := v.tmpFile("pcr.pub", pemPublicKey(pcr))
		for _, b := range doc.Banks {
			for _, e := range b.Entries {
				if !want[b.Bank+":"+hex.EncodeToString(e.Pol)] {
					return fmt.Errorf("bank %s: policy %x matches no predicted PCR 11 of this UKI", b.Bank, e.Pol)
				}
				if err := measure.VerifyEntry(pcr.PublicKey, e.Signed(), e.Sig); err != nil {
					return fmt.Errorf("bank %s policy %x: %w", b.Bank, e.Pol, err)
				}
				v.peer(o.File, fmt.Sprintf(".pcrsig %s policy %x", b.Bank, e.Pol[:4]), "Verified OK", "openssl", "dgst", "-sha256", "-verify", pub,
					"-signature", v.tmpFile("pol.sig", e.Sig), v.tmpFile("pol.bin", e.Signed()))
				n++
			}
		}
		if n != len(entries) {
			return fmt.Errorf(".pcrsig has %d policies, the UKI predicts %d", n, len(entries))
		}
		return nil
	}()
	v.add(o.File, "signet", "PCR 11 policies (.pcrsig) match the UKI and verify", err)
}

// bootLoader checks a boot loader's Secure Boot signature.
func (v *verifier) bootLoader(o Output, sb *x509.Certificate) {
	if sb == nil {
		return
	}
	f, size, ok := v.open(o.File)
	if !ok {
		return
	}
	defer f.Close()
	pe, err := authenticode.Parse(f, size)
	if err == nil {
		_, err = authenticode.Verify(pe, []*x509.Certificate{sb})
	}
	v.add(o.File, "signet", "Secure Boot signature", err)
	cf := v.certFile(sb)
	v.peer(o.File, "Secure Boot signature", "Signature verification OK", "sbverify", "--cert", cf, v.path(o.File))
	v.peer(o.File, "Secure Boot signature", "Succeeded", "osslsigncode", "verify", "-in", v.path(o.File), "-CAfile", cf)
}

// pcrlock rebuilds a .pcrlock from the signed PE it locks and compares
// the bytes; systemd-pcrlock (255 and later), where installed, does the
// same (lock-uki or lock-pe).
func (v *verifier) pcrlock(o Output) {
	what := "records of " + o.Of
	got, err := os.ReadFile(v.path(o.File))
	if err != nil {
		v.add(o.File, "signet", what, err)
		return
	}
	f, size, ok := v.open(o.Of)
	if !ok {
		return
	}
	defer f.Close()
	want, err := lockFile(f, size, o.Kind == "pcrlock-uki")
	if err == nil && !bytes.Equal(got, want) {
		err = fmt.Errorf("differs from the .pcrlock of %s (%d bytes, %d expected)", o.Of, len(got), len(want))
	}
	v.add(o.File, "signet", what, err)
	tool := ""
	for _, p := range []string{"/usr/lib/systemd/systemd-pcrlock", "/lib/systemd/systemd-pcrlock"} {
		if _, err := os.Stat(p); err == nil {
			tool = p
			break
		}
	}
	verb := "lock-pe"
	if o.Kind == "pcrlock-uki" {
		verb = "lock-uki"
	}
	if tool == "" {
		// An optional peer: systemd-pcrlock is 255 and later, and older
		// systems (Debian 12) lack it, so its absence is reported, not
		// failed, even with --require-peers.
		v.checks = append(v.checks, Check{File: o.File, By: "systemd-pcrlock", What: what, Info: "systemd-pcrlock (255 or later) not installed: checked by signet only"})
		return
	}
	peer, err := exec.Command(tool, verb, v.path(o.Of)).Output()
	if err == nil && !bytes.Equal(peer, got) {
		err = fmt.Errorf("systemd-pcrlock %s writes other records", verb)
	}
	v.add(o.File, "systemd-pcrlock", what, err)
}

// partitionName resolves the @u of a partition file's name from the root
// hash in the directory (checked with its data, tree and signature); an
// unreadable root hash leaves @u, which then fails as not found.
func (v *verifier) partitionName(o Output) string {
	data := strings.TrimSuffix(o.Of, ".verity")
	rh, err := os.ReadFile(v.path(data + ".roothash"))
	root, err2 := hex.DecodeString(string(rh))
	if err != nil || err2 != nil || len(root) < 16 {
		return o.File
	}
	d, h := PartitionUUIDs(root)
	if o.Kind == "partition-hash" {
		return strings.Replace(o.File, "@u", h, 1)
	}
	return strings.Replace(o.File, "@u", d, 1)
}

// partitionFile checks that a partition file is the output it copies.
func (v *verifier) partitionFile(o Output) {
	a, err1 := os.ReadFile(v.path(o.File))
	b, err2 := os.ReadFile(v.path(o.Of))
	err := errors.Join(err1, err2)
	if err == nil && !bytes.Equal(a, b) {
		err = fmt.Errorf("differs from %s", o.Of)
	}
	v.add(o.File, "signet", "partition file of "+o.Of, err)
}

// transfer compares a sysupdate transfer definition with the one the
// configuration makes.
func (v *verifier) transfer(o Output, c *Config) {
	got, err := os.ReadFile(v.path(o.File))
	if err == nil {
		err = fmt.Errorf("not a transfer of this configuration")
		ts, _ := Transfers(c)
		for _, t := range ts {
			if TransferDir+"/"+t.Name == o.File {
				err = nil
				if !bytes.Equal(got, t.Data) {
					err = errors.New("differs from the transfer the configuration makes")
				}
			}
		}
	}
	v.add(o.File, "signet", "sysupdate transfer definition", err)
}

func pemPublicKey(c *x509.Certificate) []byte {
	der, _ := x509.MarshalPKIXPublicKey(c.PublicKey)
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func (v *verifier) image(o Output, cert *x509.Certificate) {
	f, size, ok := v.open(o.File)
	if !ok {
		return
	}
	defer f.Close()
	t, err := image.Read(f, size)
	if err != nil {
		v.add(o.File, "signet", "GPT", err)
		return
	}
	extract := func(e image.Entry, name string) (string, error) {
		p := filepath.Join(v.tmp, fmt.Sprintf("%d-%s", v.n, name))
		v.n++
		out, err := os.Create(p)
		if err != nil {
			return "", err
		}
		defer out.Close()
		_, err = io.Copy(out, io.NewSectionReader(f, e.Offset(), e.Size()))
		return p, err
	}
	found := 0
	for _, e := range t.Entries {
		if !e.Used() || !strings.HasSuffix(image.TypeByUUID(e.Type).Class, "-verity-sig") {
			continue
		}
		found++
		what := "verity " + image.TypeByUUID(e.Type).Name
		raw := make([]byte, e.Size())
		if _, err := f.ReadAt(raw, e.Offset()); err != nil {
			v.add(o.File, "signet", what, err)
			continue
		}
		pl, err := verity.ParseSignaturePayload(bytes.TrimRight(raw, "\x00"))
		if err != nil {
			v.add(o.File, "signet", what+" signature partition", err)
			continue
		}
		if cert == nil {
			if o.Keys["verity"] == "" {
				v.add(o.File, "signet", what, errors.New("a verity signature, but the build definition names no verity-key"))
			}
			continue
		}
		v.add(o.File, "signet", what+" root hash signature", pl.Verify([]*x509.Certificate{cert}))
		rhHex := hex.EncodeToString(pl.RootHash)
		v.peer(o.File, what+" root hash signature", "", "openssl", "smime", "-verify", "-purpose", "any", "-partial_chain", "-binary", "-inform", "DER",
			"-in", v.tmpFile("roothash.p7s", pl.Signature), "-content", v.tmpFile("roothash", []byte(rhHex)), "-CAfile", v.certFile(cert), "-out", os.DevNull)
		// The data and hash partitions carry the two halves of the root
		// hash as their UUIDs (systemd-repart).
		var data, hash *image.Entry
		for i := range t.Entries {
			u := t.Entries[i].UUID
			if len(pl.RootHash) >= 32 && bytes.Equal(u[:], pl.RootHash[:16]) {
				data = &t.Entries[i]
			}
			if len(pl.RootHash) >= 32 && bytes.Equal(u[:], pl.RootHash[len(pl.RootHash)-16:]) {
				hash = &t.Entries[i]
			}
		}
		if data == nil || hash == nil {
			v.add(o.File, "signet", what, fmt.Errorf("no data/hash partitions for root hash %s", rhHex))
			continue
		}
		err = func() error {
			hr := io.NewSectionReader(f, hash.Offset(), hash.Size())
			sb, err := verity.ReadSuperblock(hr)
			if err != nil {
				return err
			}
			return verity.Verify(io.NewSectionReader(f, data.Offset(), data.Size()), sb.DataSize(), hr, pl.RootHash, sb.Params())
		}()
		v.add(o.File, "signet", what+" tree", err)
		dp, err1 := extract(*data, "data")
		hp, err2 := extract(*hash, "hash")
		if err := errors.Join(err1, err2); err != nil {
			v.add(o.File, "veritysetup", what+" tree", err)
			continue
		}
		v.peer(o.File, what+" tree", "", "veritysetup", "verify", dp, hp, rhHex)
	}
	if found == 0 && o.Keys["verity"] != "" {
		v.add(o.File, "signet", "verity", errors.New("no verity signature partition"))
	}
}

func (v *verifier) ipe(o Output, cert *x509.Certificate) {
	if cert == nil {
		return
	}
	der, err := os.ReadFile(v.path(o.File))
	if err == nil {
		_, _, err = ipe.Verify(der, cert)
	}
	v.add(o.File, "signet", "IPE policy PKCS#7", err)
	v.peer(o.File, "IPE policy PKCS#7", "", "openssl", "cms", "-verify", "-purpose", "any", "-partial_chain", "-binary", "-inform", "DER", "-in", v.path(o.File), "-CAfile", v.certFile(cert), "-out", os.DevNull)
}

func (v *verifier) manifest(o Output) {
	data, err := os.ReadFile(v.path(o.File))
	if err == nil {
		var entries []manifest.Entry
		if entries, err = manifest.Parse(data); err == nil {
			err = manifest.Check(v.dir, entries, nil)
		}
		if err == nil {
			err = v.listsExpected(o.File, entries)
		}
	}
	v.add(o.File, "signet", "files match", err)
	cmd := exec.Command("sha256sum", "-c", "--strict", "--quiet", o.File)
	cmd.Dir = v.dir
	if _, lerr := exec.LookPath("sha256sum"); lerr != nil {
		v.add(o.File, "sha256sum", "files match", ErrPeerMissing)
	} else if out, err := cmd.CombinedOutput(); err != nil {
		v.add(o.File, "sha256sum", "files match", fmt.Errorf("%v: %s", err, lastLine(out)))
	} else {
		v.add(o.File, "sha256sum", "files match", nil)
	}
}

// listsExpected checks that a manifest lists exactly the outputs the build
// definition expects (all but the manifest and its signatures).
func (v *verifier) listsExpected(file string, entries []manifest.Entry) error {
	listed := map[string]bool{}
	for _, e := range entries {
		listed[e.Name] = true
	}
	want := map[string]bool{}
	for _, name := range v.expected {
		// The transfer definitions go into the image, not the download.
		if name == file || name == file+".gpg" || name == file+".p7s" || strings.HasPrefix(name, TransferDir+"/") || strings.HasPrefix(name, EnrollDir+"/") {
			continue
		}
		want[name] = true
		if !listed[name] {
			return fmt.Errorf("does not list %s, an output of the build definition", name)
		}
	}
	for _, e := range entries {
		if !want[e.Name] {
			return fmt.Errorf("lists %s, which the build definition does not make", e.Name)
		}
	}
	return nil
}

func (v *verifier) manifestPKCS7(o Output, cert *x509.Certificate) {
	if cert == nil {
		return
	}
	sums := strings.TrimSuffix(o.File, ".p7s")
	m, err1 := os.ReadFile(v.path(sums))
	sig, err2 := os.ReadFile(v.path(o.File))
	err := errors.Join(err1, err2)
	if err == nil {
		_, err = manifest.VerifyPKCS7(m, sig, cert)
	}
	v.add(o.File, "signet", "PKCS#7 signature of "+sums, err)
	v.peer(o.File, "PKCS#7 signature of "+sums, "", "openssl", "cms", "-verify", "-purpose", "any", "-partial_chain", "-binary", "-inform", "DER", "-in", v.path(o.File),
		"-content", v.path(sums), "-CAfile", v.certFile(cert), "-out", os.DevNull)
}

func (v *verifier) manifestOpenPGP(o Output) {
	sums := strings.TrimSuffix(o.File, ".gpg")
	ring := v.trust.OpenPGPKeys[o.Keys["signer"]]
	if ring == nil {
		v.add(o.File, "signet", "OpenPGP signature of "+sums, fmt.Errorf("no OpenPGP public key for key %s (--openpgp-key %s=FILE, or openpgp-public-key in the configuration)", o.Keys["signer"], o.Keys["signer"]))
		return
	}
	m, err1 := os.ReadFile(v.path(sums))
	sig, err2 := os.ReadFile(v.path(o.File))
	err := errors.Join(err1, err2)
	if err == nil {
		_, _, err = manifest.VerifyOpenPGP(m, sig, ring)
	}
	v.add(o.File, "signet", "OpenPGP signature of "+sums, err)
	home := filepath.Join(v.tmp, "gnupg")
	// gpg puts its agent's sockets into the home directory when there is no
	// /run/user/UID; a socket path must fit sun_path (108 bytes), which a
	// long TMPDIR exceeds.
	if len(home)+len("/S.gpg-agent.browser") >= 108 {
		h, err := os.MkdirTemp("/tmp", "signet-gpg-")
		if err != nil {
			v.add(o.File, "gpg", "OpenPGP signature of "+sums, err)
			return
		}
		defer os.RemoveAll(h)
		home = h
	}
	os.MkdirAll(home, 0o700)
	keyring := v.tmpFile("pubring.pgp", ring)
	v.peer(o.File, "OpenPGP key import", "", "gpg", "--homedir", home, "--batch", "--quiet", "--import", keyring)
	v.peer(o.File, "OpenPGP signature of "+sums, "[GNUPG:] GOODSIG", "gpg", "--homedir", home, "--batch", "--status-fd", "1", "--verify", v.path(o.File), v.path(sums))
}

// measurePeer has systemd-measure calculate PCR 11 from the UKI's measured
// sections and compares its JSON with signet's prediction. The tool's
// release must be the stub's: each release measures the sections it knows.
func (v *verifier) measurePeer(file string, ins []measure.Input, banks, phases []string, stubMajor int, want []byte) {
	const what = "PCR 11 prediction"
	tool := ""
	for _, p := range []string{"/usr/lib/systemd/systemd-measure", "/lib/systemd/systemd-measure"} {
		if _, err := os.Stat(p); err == nil {
			tool = p
			break
		}
	}
	if tool == "" {
		v.add(file, "systemd-measure", what, ErrPeerMissing)
		return
	}
	out, err := exec.Command(tool, "--version").Output()
	var major int
	if _, e := fmt.Sscanf(string(out), "systemd %d", &major); err != nil || e != nil {
		v.add(file, "systemd-measure", what, fmt.Errorf("cannot tell its release: %v", err))
		return
	}
	if major != stubMajor {
		v.add(file, "systemd-measure", what, fmt.Errorf("%w: systemd-measure %d for a systemd-stub %d UKI", ErrPeerMissing, major, stubMajor))
		return
	}
	args := []string{"calculate", "--json=short"}
	for _, b := range banks {
		args = append(args, "--bank="+b)
	}
	for _, p := range phases {
		if p == "" {
			p = ":"
		}
		args = append(args, "--phase="+p)
	}
	for _, in := range ins {
		data := make([]byte, in.Size)
		if _, err := in.R.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
			v.add(file, "systemd-measure", what, err)
			return
		}
		args = append(args, "--"+strings.TrimPrefix(in.Section.String(), ".")+"="+v.tmpFile(in.Section.String()[1:], data))
	}
	got, err := exec.Command(tool, args...).Output()
	if err == nil && !bytes.Equal(bytes.TrimSpace(got), bytes.TrimSpace(want)) {
		err = fmt.Errorf("systemd-measure predicts %s, signet %s", bytes.TrimSpace(got), bytes.TrimSpace(want))
	}
	v.add(file, "systemd-measure", what, err)
}

// verityTree checks DATA.verity against DATA and DATA.roothash.
func (v *verifier) verityTree(o Output) {
	data := strings.TrimSuffix(o.File, ".verity")
	rh, err := os.ReadFile(v.path(data + ".roothash"))
	var root []byte
	if err == nil {
		root, err = hex.DecodeString(string(rh))
	}
	if err == nil {
		err = func() error {
			d, err := os.Open(v.path(data))
			if err != nil {
				return err
			}
			defer d.Close()
			h, err := os.Open(v.path(o.File))
			if err != nil {
				return err
			}
			defer h.Close()
			sb, err := verity.ReadSuperblock(h)
			if err != nil {
				return err
			}
			fi, err := d.Stat()
			if err != nil {
				return err
			}
			if fi.Size() < sb.DataSize() {
				return fmt.Errorf("%s is shorter than its superblock says", data)
			}
			return verity.Verify(d, sb.DataSize(), h, root, sb.Params())
		}()
	}
	v.add(o.File, "signet", "verity tree of "+data, err)
	v.peer(o.File, "verity tree of "+data, "", "veritysetup", "verify", v.path(data), v.path(o.File), string(rh))
}

// veritySignature checks DATA.roothash.p7s over DATA.roothash.
func (v *verifier) veritySignature(o Output, cert *x509.Certificate) {
	rhFile := strings.TrimSuffix(o.File, ".p7s")
	rh, err1 := os.ReadFile(v.path(rhFile))
	der, err2 := os.ReadFile(v.path(o.File))
	err := errors.Join(err1, err2)
	if cert == nil {
		return
	}
	if err == nil {
		var sd *cms.SignedData
		if sd, err = cms.Parse(der); err == nil {
			_, err = sd.Verify(rh, []*x509.Certificate{cert})
		}
	}
	v.add(o.File, "signet", "root hash signature", err)
	if cert != nil {
		v.peer(o.File, "root hash signature", "", "openssl", "smime", "-verify", "-purpose", "any", "-partial_chain", "-binary", "-inform", "DER", "-in", v.path(o.File),
			"-content", v.path(rhFile), "-CAfile", v.certFile(cert), "-out", os.DevNull)
	}
}
