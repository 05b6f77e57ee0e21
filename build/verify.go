package build

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"signet.dev/authenticode"
	"signet.dev/cms"
	"signet.dev/image"
	"signet.dev/ipe"
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
}

// ErrPeerMissing marks a check skipped because its peer tool is not
// installed.
var ErrPeerMissing = errors.New("not installed")

// Verify checks every output of a finished build directory with signet's
// own verifiers and, where installed, the real peers (sbverify,
// osslsigncode, openssl, veritysetup, gpg, sha256sum), against the
// certificates recorded in the build state. It needs nothing but the
// directory.
func Verify(dir string) ([]Check, error) {
	st, err := LoadState(dir)
	if err != nil {
		return nil, err
	}
	if !st.Done {
		return nil, fmt.Errorf("%s: the build is not complete (%s)", dir, waitingFor(st))
	}
	certs := map[string]*x509.Certificate{}
	for name, der := range st.Certificates {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("state: certificate of key %s: %w", name, err)
		}
		certs[name] = c
	}
	tmp, err := os.MkdirTemp("", "signet-verify-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	v := &verifier{dir: dir, tmp: tmp, st: st, certs: certs}
	for _, o := range st.Outputs {
		if err := manifest.ValidName(o.File); err != nil {
			return nil, fmt.Errorf("state: output %q: %w", o.File, err)
		}
		cert := func(role string) *x509.Certificate { return certs[o.Keys[role]] }
		switch o.Kind {
		case "uki":
			v.uki(o, cert("secure-boot"), cert("pcr"))
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
		case "manifest":
			v.manifest(o)
		case "manifest-pkcs7":
			v.manifestPKCS7(o, cert("signer"))
		case "manifest-openpgp":
			v.manifestOpenPGP(o)
		default:
			return nil, fmt.Errorf("state: output %s has unknown kind %q", o.File, o.Kind)
		}
	}
	return v.checks, nil
}

type verifier struct {
	dir, tmp string
	st       *State
	certs    map[string]*x509.Certificate
	checks   []Check
	n        int
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
				if err := measure.VerifyEntry(pcr.PublicKey, e.Pol, e.Sig); err != nil {
					return fmt.Errorf("bank %s policy %x: %w", b.Bank, e.Pol, err)
				}
				v.peer(o.File, fmt.Sprintf(".pcrsig %s policy %x", b.Bank, e.Pol[:4]), "Verified OK", "openssl", "dgst", "-sha256", "-verify", pub,
					"-signature", v.tmpFile("pol.sig", e.Sig), v.tmpFile("pol.bin", e.Pol))
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
			v.add(o.File, "signet", what, errors.New("no verity certificate recorded"))
			continue
		}
		v.add(o.File, "signet", what+" root hash signature", pl.Verify([]*x509.Certificate{cert}))
		rhHex := hex.EncodeToString(pl.RootHash)
		v.peer(o.File, what+" root hash signature", "", "openssl", "smime", "-verify", "-binary", "-inform", "DER",
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
	der, err := os.ReadFile(v.path(o.File))
	if err == nil {
		_, _, err = ipe.Verify(der, cert)
	}
	v.add(o.File, "signet", "IPE policy PKCS#7", err)
	v.peer(o.File, "IPE policy PKCS#7", "", "openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", v.path(o.File), "-CAfile", v.certFile(cert), "-out", os.DevNull)
}

func (v *verifier) manifest(o Output) {
	data, err := os.ReadFile(v.path(o.File))
	if err == nil {
		var entries []manifest.Entry
		if entries, err = manifest.Parse(data); err == nil {
			err = manifest.Check(v.dir, entries, nil)
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

func (v *verifier) manifestPKCS7(o Output, cert *x509.Certificate) {
	sums := strings.TrimSuffix(o.File, ".p7s")
	m, err1 := os.ReadFile(v.path(sums))
	sig, err2 := os.ReadFile(v.path(o.File))
	err := errors.Join(err1, err2)
	if err == nil {
		_, err = manifest.VerifyPKCS7(m, sig, cert)
	}
	v.add(o.File, "signet", "PKCS#7 signature of "+sums, err)
	v.peer(o.File, "PKCS#7 signature of "+sums, "", "openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", v.path(o.File),
		"-content", v.path(sums), "-CAfile", v.certFile(cert), "-out", os.DevNull)
}

func (v *verifier) manifestOpenPGP(o Output) {
	sums := strings.TrimSuffix(o.File, ".gpg")
	ring := v.st.OpenPGPKeys[o.Keys["signer"]]
	if ring == nil {
		v.add(o.File, "signet", "OpenPGP signature of "+sums, fmt.Errorf("no OpenPGP public key for key %s (openpgp-public-key in the configuration)", o.Keys["signer"]))
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
	if err == nil && cert == nil {
		err = errors.New("no certificate recorded")
	}
	if err == nil {
		var sd *cms.SignedData
		if sd, err = cms.Parse(der); err == nil {
			_, err = sd.Verify(rh, []*x509.Certificate{cert})
		}
	}
	v.add(o.File, "signet", "root hash signature", err)
	if cert != nil {
		v.peer(o.File, "root hash signature", "", "openssl", "smime", "-verify", "-binary", "-inform", "DER", "-in", v.path(o.File),
			"-content", v.path(rhFile), "-CAfile", v.certFile(cert), "-out", os.DevNull)
	}
}
