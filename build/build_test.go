package build

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/keys"
	"signet.dev/openpgp"
	"signet.dev/request"
	"signet.dev/request/check"
)

// exampleCount makes SoftHSM labels unique within the process-wide token.
var exampleCount atomic.Int64

// example copies examples/image into a temporary directory, makes its
// inputs with make-inputs and its keys with testkeys, imports the private
// keys into SoftHSM, and returns the config path and each key's pkcs11 URI.
func example(t *testing.T) (string, map[string]string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "image")
	out, err := exec.Command("cp", "-r", "../examples/image", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	os.RemoveAll(filepath.Join(dir, "gen"))
	os.RemoveAll(filepath.Join(dir, "build"))
	os.MkdirAll(filepath.Join(dir, "gen", "keys"), 0o755)
	hsm := testkeys.NewSoftHSM(t)
	uris := map[string]string{}
	// RSA throughout: its signatures are deterministic, so online and
	// offline builds can be compared byte for byte (ECDSA ones cannot).
	kinds := map[string]testkeys.Kind{"db": testkeys.RSA2048, "pcr": testkeys.RSA3072, "verity": testkeys.RSA4096, "release": testkeys.RSA2048}
	for name, kind := range kinds {
		k := testkeys.Generate(t, kind)
		data, _ := os.ReadFile(k.CertPath)
		os.WriteFile(filepath.Join(dir, "gen", "keys", name+".crt"), data, 0o644)
		uris[name] = hsm.Import(t, k, fmt.Sprintf("build-%s-%d", name, exampleCount.Add(1)))
		if name == "release" {
			okey, err := openpgp.NewKey(k.Cert.PublicKey, k.Cert.NotBefore)
			if err != nil {
				t.Fatal(err)
			}
			ring, err := openpgp.ExportPublicKey(k.Signer, okey, "signet test release")
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dir, "gen", "keys", "release.pgp"), ring, 0o644)
		}
	}
	testenv.Tool(t, "mkfs.erofs")
	if out, err := exec.Command(filepath.Join(dir, "make-inputs")).CombinedOutput(); err != nil {
		t.Fatalf("make-inputs: %v\n%s", err, out)
	}
	return filepath.Join(dir, "image.toml"), uris
}

// signRound signs a build's request with the SoftHSM keys, as
// `signet request sign` does.
func signRound(t *testing.T, path string, uris map[string]string, c *Config) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	req, err := request.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]request.Key{}
	for name, uri := range uris {
		s, err := keys.Open("", uri)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		cert, _, err := c.Certificate(name)
		if err != nil {
			t.Fatal(err)
		}
		named[name] = request.Key{Signer: s, Certificate: cert, Kinds: c.KeyKinds(name)}
	}
	resp, err := request.Sign(req, named, check.Item)
	if err != nil {
		t.Fatal(err)
	}
	out, err := resp.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// verifyWith verifies dir against the build definition at cfgPath and its
// configured certificates.
func verifyWith(t *testing.T, dir, cfgPath string) ([]Check, error) {
	t.Helper()
	c, err := LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	return Verify(dir, c, mustTrust(t, c))
}

func mustTrust(t *testing.T, c *Config) *Trust {
	t.Helper()
	tr, err := LoadTrust(c, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func snapshot(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Type().IsRegular() {
			m[e.Name()], _ = os.ReadFile(filepath.Join(dir, e.Name()))
		}
	}
	return m
}

func sameSnapshot(t *testing.T, what string, a, b map[string][]byte) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%s: files changed: %d before, %d after", what, len(a), len(b))
	}
	for name, data := range a {
		if !bytes.Equal(data, b[name]) {
			t.Fatalf("%s: %s changed", what, name)
		}
	}
}

var outputs = []string{"example.efi", "example.pcrlock", "example.raw", "example.p7b", "usr.erofs", "usr.erofs.verity", "usr.erofs.roothash", "usr.erofs.roothash.p7s", "SHA256SUMS", "SHA256SUMS.gpg", "SHA256SUMS.p7s"}

// TestOfflineRoundsAndOnline is the whole story: the example image built
// offline in exactly three rounds with SoftHSM keys (moving the build
// directory to another path between rounds), every refusal leaving the
// directory untouched, every output accepted by the real peers, and an
// online build with the same keys giving the same bytes.
func TestOfflineRoundsAndOnline(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	cfgPath, uris := example(t)
	c, err := LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "first")

	res, err := Run(c, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var responses [][]byte
	var unsignedLock []byte
	wantKinds := []map[request.Kind]int{
		{request.KindPCRPolicy: 4, request.KindVerityRootHash: 2, request.KindIPEPolicy: 1},
		{request.KindAuthenticode: 1},
		{request.KindManifestOpenPGP: 1, request.KindManifestPKCS7: 1},
	}
	for round := 1; ; round++ {
		if res.Done {
			if round != 4 {
				t.Fatalf("build finished after %d rounds, want 3", round-1)
			}
			break
		}
		if res.Round != round || round > 3 {
			t.Fatalf("round %d: got request for round %d", round, res.Round)
		}
		data, _ := os.ReadFile(res.Request)
		req, err := request.Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		kinds := map[request.Kind]int{}
		for _, it := range req.Items {
			kinds[it.Kind]++
		}
		for k, n := range wantKinds[round-1] {
			if kinds[k] != n || len(kinds) != len(wantKinds[round-1]) {
				t.Fatalf("round %d: items %v, want %v", round, kinds, wantKinds[round-1])
			}
		}
		resp := signRound(t, res.Request, uris, c)
		responses = append(responses, resp)

		// The machine goes away: the build continues from a copy of the
		// directory at another path.
		moved := filepath.Join(t.TempDir(), "moved")
		if out, err := exec.Command("cp", "-a", dir, moved).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
		os.RemoveAll(dir)
		dir = moved

		before := snapshot(t, dir)
		// A plain run while waiting is refused.
		if _, err := Run(c, Options{Dir: dir}); !errors.Is(err, ErrWaiting) {
			t.Fatalf("plain run while waiting: %v", err)
		}
		// A corrupted signature is refused before anything is written.
		bad, _ := request.ParseResponse(resp)
		bad.Items[0].Signature[10] ^= 0x40
		badData, _ := bad.Marshal()
		if _, err := Run(c, Options{Dir: dir, Responses: [][]byte{badData}}); !errors.Is(err, request.ErrBadSignature) {
			t.Fatalf("corrupted signature: %v", err)
		}
		sameSnapshot(t, "after a corrupted response", before, snapshot(t, dir))
		// A response for another request (the previous round's) is refused.
		if round > 1 {
			if _, err := Run(c, Options{Dir: dir, Responses: [][]byte{responses[round-2]}}); !errors.Is(err, ErrAlreadyJoined) {
				t.Fatalf("previous round's response: %v", err)
			}
			sameSnapshot(t, "after an old response", before, snapshot(t, dir))
		}

		if res, err = Run(c, Options{Dir: dir, Responses: [][]byte{resp}}); err != nil {
			t.Fatalf("resume round %d: %v", round, err)
		}
		if round == 1 {
			// The UKI is fixed, not yet signed: its .pcrlock is there.
			if _, err := os.Stat(filepath.Join(dir, "example.efi")); err == nil {
				t.Fatal("example.efi before its Secure Boot signature")
			}
			if unsignedLock, err = os.ReadFile(filepath.Join(dir, "example.pcrlock")); err != nil {
				t.Fatalf("no .pcrlock in the round the UKI is fixed: %v", err)
			}
		}
		// Resuming twice is refused and changes nothing.
		after := snapshot(t, dir)
		if _, err := Run(c, Options{Dir: dir, Responses: [][]byte{resp}}); !errors.Is(err, ErrAlreadyJoined) {
			t.Fatalf("resuming twice: %v", err)
		}
		sameSnapshot(t, "after resuming twice", after, snapshot(t, dir))
	}

	verifyAll(t, dir, cfgPath)
	// The .pcrlock made from the unsigned UKI is the signed UKI's.
	signedLock := lockOf(t, filepath.Join(dir, "example.efi"))
	if final, _ := os.ReadFile(filepath.Join(dir, "example.pcrlock")); !bytes.Equal(final, unsignedLock) || !bytes.Equal(signedLock, unsignedLock) {
		t.Fatalf(".pcrlock of the unsigned UKI (%d bytes), in the release (%d), of the signed UKI (%d) differ", len(unsignedLock), len(final), len(signedLock))
	}

	// Online, in one go, with the same keys: the same bytes.
	online := filepath.Join(t.TempDir(), "online")
	c2, _ := LoadConfig(cfgPath)
	if err := c2.SetKeys(uris); err != nil {
		t.Fatal(err)
	}
	res, err = Run(c2, Options{Dir: online})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Done {
		t.Fatalf("online build stopped at round %d", res.Round)
	}
	for _, name := range outputs {
		a, _ := os.ReadFile(filepath.Join(dir, name))
		b, _ := os.ReadFile(filepath.Join(online, name))
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("%s: offline and online outputs differ", name)
		}
	}

	// A tampered output fails verification.
	efi := filepath.Join(online, "example.efi")
	data, _ := os.ReadFile(efi)
	data[len(data)/2] ^= 1
	os.WriteFile(efi, data, 0o644)
	checks, err := verifyWith(t, online, cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	failed := map[string]bool{}
	for _, ch := range checks {
		if ch.Err != nil {
			failed[ch.File+" "+ch.By] = true
		}
	}
	for _, want := range []string{"example.efi signet", "example.pcrlock signet", "example.efi sbverify", "example.efi osslsigncode", "SHA256SUMS sha256sum"} {
		if !failed[want] {
			t.Errorf("tampered UKI: no failure from %s (failures: %v)", want, failed)
		}
	}
}

// configErrorWant is what each TestConfigErrors case's error must say.
var configErrorWant = map[string]string{
	"unknown key":   "unknown key(s) bogus",
	"missing key":   "[[uki]] 1: no [keys.db]",
	"bad output":    `output "../x.raw" is not a plain file name`,
	"dup output":    `output "x.raw" is used twice`,
	"state output":  `output "state.json" is not a plain file name`,
	"no cert":       "[keys.db]: certificate and key are required",
	"verity image":  `verity-image "none.raw" is no [[image]] or [[verity]] output`,
	"not toml":      "toml: line 2",
	"ipe no policy": "[ipe]: policy and key are required",
	"two families":  "span the families content, secure-boot",
	"undeclared":    "its roles sign manifest-openpgp, which its kinds [manifest-pkcs7] do not declare",
	"bad kind":      `kind "bogus": not one of`,
	"sb and pcr":    "span the families secure-boot, tpm-policy",
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown key":   "name = \"x\"\nbogus = 1\n",
		"missing key":   "[[uki]]\noutput = \"a.efi\"\nstub = \"s\"\nlinux = \"l\"\nsecure-boot-key = \"db\"\n",
		"bad output":    "[[image]]\noutput = \"../x.raw\"\ndefinitions = \"d\"\n",
		"dup output":    "[[image]]\noutput = \"x.raw\"\ndefinitions = \"d\"\n[[image]]\noutput = \"x.raw\"\ndefinitions = \"d\"\n",
		"state output":  "[[image]]\noutput = \"state.json\"\ndefinitions = \"d\"\n",
		"no cert":       "[keys.db]\nkey = \"db.key\"\n",
		"verity image":  "[[uki]]\noutput = \"a.efi\"\nstub = \"s\"\nlinux = \"l\"\nverity-image = \"none.raw\"\n",
		"not toml":      "[[uki]\n",
		"ipe no policy": "[ipe]\nkey = \"k\"\n",
		// One key for two kind families needs its kinds declared, and
		// declared kinds must cover its roles.
		"two families": "[keys.r]\nkey = \"offline\"\n[manifest]\nopenpgp-key = \"r\"\n[ipe]\nkey = \"r\"\npolicy = \"p\"\n[[uki]]\noutput = \"a.efi\"\nstub = \"s\"\nlinux = \"l\"\nsecure-boot-key = \"r\"\n",
		"undeclared":   "[keys.r]\nkey = \"offline\"\nkinds = [\"manifest-pkcs7\"]\n[manifest]\nopenpgp-key = \"r\"\npkcs7-key = \"r\"\n",
		"bad kind":     "[keys.r]\nkey = \"offline\"\nkinds = [\"bogus\"]\n",
		"sb and pcr":   "[keys.k]\nkey = \"offline\"\n[[uki]]\noutput = \"a.efi\"\nstub = \"s\"\nlinux = \"l\"\nsecure-boot-key = \"k\"\npcr-key = \"k\"\n",
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".toml")
		os.WriteFile(p, []byte(body), 0o644)
		_, err := LoadConfig(p)
		switch {
		case configErrorWant[name] == "":
			t.Errorf("%s: configErrorWant has no entry", name)
		case err == nil:
			t.Errorf("%s: accepted", name)
		case !strings.Contains(err.Error(), p):
			t.Errorf("%s: error does not name the file: %v", name, err)
		case !strings.Contains(err.Error(), configErrorWant[name]):
			// Refused, but for another reason than the case is about.
			t.Errorf("%s: error %q does not say %q", name, err, configErrorWant[name])
		}
	}
}

func TestResumeWithoutState(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(p, []byte("name = \"empty\"\n"), 0o644)
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "b")
	if _, err := Run(c, Options{Dir: dir, Responses: [][]byte{[]byte("{}")}}); !errors.Is(err, ErrNoState) {
		t.Fatalf("resume without state: %v", err)
	}
	// An empty build finishes at once; a changed configuration is refused.
	if res, err := Run(c, Options{Dir: dir}); err != nil || !res.Done {
		t.Fatalf("empty build: %v %v", res, err)
	}
	os.WriteFile(p, []byte("name = \"changed\"\n"), 0o644)
	c2, _ := LoadConfig(p)
	if _, err := Run(c2, Options{Dir: dir}); !errors.Is(err, ErrConfigChanged) {
		t.Fatalf("changed config: %v", err)
	}
	_ = time.Now
}

func FuzzLoadState(f *testing.F) {
	f.Add([]byte(`{"format":"signet.build-state/v1","config":"00","time":1,"answered":[],"signatures":{},"done":true,"outputs":[{"file":"a","kind":"uki"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, stateFile), data, 0o644)
		LoadState(dir)
	})
}

func FuzzLoadConfig(f *testing.F) {
	data, _ := os.ReadFile("../examples/image/image.toml")
	f.Add(data)
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "c.toml")
		os.WriteFile(p, data, 0o644)
		LoadConfig(p)
	})
}

// TestCrashAfterJoin stops a resume right after the response's signatures
// are stored (as a crash before the pass would): running the build again,
// without --resume, goes on to the same next round.
func TestCrashAfterJoin(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	cfgPath, uris := example(t)
	c, err := LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	res, err := Run(c, Options{Dir: a})
	if err != nil {
		t.Fatal(err)
	}
	resp := signRound(t, res.Request, uris, c)
	if out, err := exec.Command("cp", "-a", a, b).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	resA, err := Run(c, Options{Dir: a, Responses: [][]byte{resp}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := LoadState(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := resume(c, b, st, [][]byte{resp}); err != nil {
		t.Fatal(err)
	}
	// The crash: nothing after the state was saved happened. The same
	// command again (with --resume) continues the build.
	resB, err := Run(c, Options{Dir: b, Responses: [][]byte{resp}})
	if err != nil {
		t.Fatalf("the same command after a crash: %v", err)
	}
	// Now the next request is written: the response is joined for good.
	if _, err := Run(c, Options{Dir: b, Responses: [][]byte{resp}}); !errors.Is(err, ErrAlreadyJoined) {
		t.Fatalf("after the rerun: %v", err)
	}
	if resA.Round != 2 || resB.Round != 2 {
		t.Fatalf("rounds %d and %d, want 2", resA.Round, resB.Round)
	}
	ra, _ := os.ReadFile(resA.Request)
	rb, _ := os.ReadFile(resB.Request)
	if !bytes.Equal(ra, rb) {
		t.Fatal("the round-2 request after a crash differs")
	}
}

// TestECDSA builds the example online with P-256 keys (files) and has the
// real peers verify every output: ECDSA signatures are random, so this is
// checked by verification, not by comparing bytes.
func TestECDSA(t *testing.T) {
	cfgPath, _ := example(t)
	k := testkeys.Generate(t, testkeys.P256)
	c, err := LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	keysDir := filepath.Join(filepath.Dir(cfgPath), "gen", "keys")
	refs := map[string]string{}
	for _, name := range []string{"db", "pcr", "verity", "release"} {
		data, _ := os.ReadFile(k.CertPath)
		os.WriteFile(filepath.Join(keysDir, name+".crt"), data, 0o644)
		refs[name] = k.KeyPath
	}
	// The OpenPGP key was published a year before this certificate was
	// issued (a reissued, extended certificate): the build signs with the
	// published key's creation time, and gpg, given the published key,
	// verifies SHA256SUMS.gpg.
	okey, _ := openpgp.NewKey(k.Cert.PublicKey, k.Cert.NotBefore.AddDate(-1, 0, 0))
	ring, err := openpgp.ExportPublicKey(k.Signer, okey, "signet test ecdsa")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(keysDir, "release.pgp"), ring, 0o644)
	if err := c.SetKeys(refs); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "ec")
	res, err := Run(c, Options{Dir: dir})
	if err != nil || !res.Done {
		t.Fatalf("online ECDSA build: %v %+v", err, res)
	}
	checks, err := Verify(dir, c, mustTrust(t, c))
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range checks {
		if ch.Err != nil {
			t.Errorf("%s: %s [%s]: %v", ch.File, ch.What, ch.By, ch.Err)
		}
	}
}
