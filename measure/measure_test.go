package measure_test

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/keys"
	"signet.dev/measure"
	"signet.dev/tpm2policy/swtpmtest"
)

// v252Sections are the section options systemd-measure 252 knows.
var v252Sections = []measure.Section{measure.Linux, measure.OSRel, measure.Cmdline, measure.Initrd, measure.Splash, measure.DTB, measure.PCRPKey}

type fixture struct {
	args   []string
	inputs []measure.Input
}

// randomFixture writes random contents (some sections absent, one maybe
// empty) and returns both systemd-measure's options and signet's inputs.
func randomFixture(t *testing.T, r *mrand.Rand) fixture {
	dir := t.TempDir()
	var f fixture
	for i, s := range v252Sections {
		if s != measure.Linux && r.IntN(3) == 0 {
			continue
		}
		size := r.IntN(5000) + 1
		if s == measure.Initrd {
			size = r.IntN(3<<20) + 300<<10 // spans several read chunks
		}
		if s != measure.Linux && r.IntN(8) == 0 {
			size = 0 // systemd skips empty sections
		}
		b := make([]byte, size)
		rand.Read(b)
		p := filepath.Join(dir, fmt.Sprint(i))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		f.args = append(f.args, "--"+strings.TrimPrefix(s.String(), ".")+"="+p)
		if size == 0 {
			f.inputs = append(f.inputs, measure.BytesInput(s, b))
			continue
		}
		// Files, as the CLI opens them (large ones are memory-mapped).
		in, fh, err := measure.OpenFile(s, p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fh.Close() })
		f.inputs = append(f.inputs, in)
	}
	return f
}

var phaseSets = [][]string{
	nil,
	{":"},
	{"enter-initrd:leave-initrd:sysinit:ready:shutdown:final", ":", "sysinit"},
	{"enter-initrd::leave-initrd:", "enter-initrd", "ready", "enter-initrd"},
}

var bankSets = [][]string{nil, {"sha256"}, {"SHA512", "sha1"}, {"sha384", "sha256", "sha384"}}

func measureTool(t *testing.T, args ...string) (stdout, stderr []byte) {
	t.Helper()
	cmd := exec.Command(testenv.Tool(t, "systemd-measure"), args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("systemd-measure %q: %v\n%s", args, err, e.Bytes())
	}
	return o.Bytes(), e.Bytes()
}

func calc(t *testing.T, f fixture, phases, banks []string) *measure.Result {
	t.Helper()
	ph, err := measure.ParsePhases(phases)
	if err != nil {
		t.Fatal(err)
	}
	bk, err := measure.ParseBanks(banks)
	if err != nil {
		t.Fatal(err)
	}
	res, err := measure.Calculate(f.inputs, ph, bk)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func optArgs(phases, banks []string) []string {
	var a []string
	for _, p := range phases {
		a = append(a, "--phase="+p)
	}
	for _, b := range banks {
		a = append(a, "--bank="+b)
	}
	return a
}

// systemd-measure 252 is the oracle for calculate, text and JSON.
func TestCalculateMatchesSystemdMeasure(t *testing.T) {
	r := mrand.New(mrand.NewPCG(1, 2))
	for i := 0; i < 4; i++ {
		f := randomFixture(t, r)
		for j, phases := range phaseSets {
			banks := bankSets[(i+j)%len(bankSets)]
			args := append(append([]string{"calculate"}, f.args...), optArgs(phases, banks)...)
			res := calc(t, f, phases, banks)

			wantJSON, _ := measureTool(t, append(args, "--json=short")...)
			if got := append(measure.MarshalResult(res, measure.Short), '\n'); !bytes.Equal(got, wantJSON) {
				t.Fatalf("%q --json=short:\nsystemd-measure %s\nsignet          %s", args, wantJSON, got)
			}
			wantPretty, _ := measureTool(t, append(args, "--json=pretty")...)
			if got := append(measure.MarshalResult(res, measure.Pretty), '\n'); !bytes.Equal(got, wantPretty) {
				t.Fatalf("%q --json=pretty:\nsystemd-measure %s\nsignet          %s", args, wantPretty, got)
			}
			wantOut, wantErr := measureTool(t, args...)
			var out, lab bytes.Buffer
			if err := measure.WriteText(&out, &lab, res); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), wantOut) || !bytes.Equal(lab.Bytes(), wantErr) {
				t.Fatalf("%q text:\nsystemd-measure %s%s\nsignet          %s%s", args, wantErr, wantOut, lab.Bytes(), out.Bytes())
			}
		}
	}
}

// systemd-measure 252 sign (which needs a TPM: swtpm on loopback) gives the
// same pol and pkfp for every bank, and the same sha256-bank signature for
// RSA keys (252 signs other banks with their own hash; signet, like 258.10,
// signs every bank with SHA-256).
func TestSignMatchesSystemdMeasure(t *testing.T) {
	tpm := swtpmtest.TCP(t)
	r := mrand.New(mrand.NewPCG(3, 4))
	for _, kind := range []testkeys.Kind{testkeys.RSA2048, testkeys.RSA4096, testkeys.P256} {
		k := testkeys.Generate(t, kind)
		f := randomFixture(t, r)
		phases := phaseSets[r.IntN(len(phaseSets))]
		args := append(append([]string{"sign", "--private-key=" + k.KeyPath, "--public-key=" + k.PubPath,
			"--tpm2-device=" + tpm.Device(), "--json=short"}, f.args...), optArgs(phases, nil)...)
		want, _ := measureTool(t, args...)
		ref, err := measure.ParsePCRSig(want)
		if err != nil {
			t.Fatalf("parsing systemd-measure's output: %v\n%s", err, want)
		}
		entries, err := measure.Prepare(calc(t, f, phases, nil), k.Signer.Public())
		if err != nil {
			t.Fatal(err)
		}
		got, err := measure.Sign(entries, k.Signer)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Banks) != len(ref.Banks) {
			t.Fatalf("%s: %d banks, systemd-measure %d", kind, len(got.Banks), len(ref.Banks))
		}
		for bi, b := range ref.Banks {
			g := got.Banks[bi]
			if g.Bank != b.Bank || len(g.Entries) != len(b.Entries) {
				t.Fatalf("%s: bank %s/%d entries, systemd-measure %s/%d", kind, g.Bank, len(g.Entries), b.Bank, len(b.Entries))
			}
			for ei, e := range b.Entries {
				ge := g.Entries[ei]
				if !bytes.Equal(ge.Pol, e.Pol) || !bytes.Equal(ge.Pkfp, e.Pkfp) || fmt.Sprint(ge.PCRs) != fmt.Sprint(e.PCRs) {
					t.Fatalf("%s %s entry %d: pol %x pkfp %x, systemd-measure pol %x pkfp %x", kind, b.Bank, ei, ge.Pol, ge.Pkfp, e.Pol, e.Pkfp)
				}
				if b.Bank == "sha256" && kind != testkeys.P256 && !bytes.Equal(ge.Sig, e.Sig) {
					t.Fatalf("%s sha256 entry %d: signature differs from systemd-measure's", kind, ei)
				}
				// systemd-measure's own signatures verify with the key
				// and the bank's hash (252's convention).
				h := map[string]crypto.Hash{"sha1": crypto.SHA1, "sha256": crypto.SHA256, "sha384": crypto.SHA384, "sha512": crypto.SHA512}[b.Bank]
				if err := keys.Verify(k.Signer.Public(), h, e.Pol, e.Sig); err != nil {
					t.Fatalf("%s %s: systemd-measure's signature: %v", kind, b.Bank, err)
				}
			}
		}
		// With the sha256 bank alone, 252's whole document is signet's,
		// byte for byte, short and pretty (RSA signatures are
		// deterministic).
		if kind != testkeys.P256 {
			entries256, err := measure.Prepare(calc(t, f, phases, []string{"sha256"}), k.Signer.Public())
			if err != nil {
				t.Fatal(err)
			}
			doc256, err := measure.Sign(entries256, k.Signer)
			if err != nil {
				t.Fatal(err)
			}
			for _, st := range []struct {
				flag  string
				style measure.Style
			}{{"short", measure.Short}, {"pretty", measure.Pretty}} {
				a := append(append([]string{"sign", "--private-key=" + k.KeyPath, "--tpm2-device=" + tpm.Device(), "--bank=sha256", "--json=" + st.flag}, f.args...), optArgs(phases, nil)...)
				want, _ := measureTool(t, a...)
				if got := append(doc256.Marshal(st.style), '\n'); !bytes.Equal(got, want) {
					t.Fatalf("%s sign --json=%s:\nsystemd-measure %s\nsignet          %s", kind, st.flag, want, got)
				}
			}
		}
		// Offline: policy-digest, signatures made elsewhere, join: the
		// same bytes as the online path.
		doc := measure.PolicyDigest(entries)
		sigs := map[string][]byte{}
		for _, e := range entries {
			tbs, h := e.TBS()
			s, err := keys.Sign(k.Signer, h, tbs)
			if err != nil {
				t.Fatal(err)
			}
			sigs[string(tbs)] = s
		}
		joined, err := measure.FillSignatures(doc, k.Signer.Public(), sigs)
		if err != nil {
			t.Fatal(err)
		}
		if kind != testkeys.P256 && !bytes.Equal(joined.Marshal(measure.Short), got.Marshal(measure.Short)) {
			t.Fatalf("%s: offline join differs from online sign", kind)
		}
	}
}

func TestJoinRefuses(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	other := testkeys.Generate(t, testkeys.P256)
	f := fixture{inputs: []measure.Input{measure.BytesInput(measure.Linux, []byte("k"))}}
	entries, err := measure.Prepare(calc(t, f, nil, []string{"sha256"}), k.Signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	sigs := make([][]byte, len(entries))
	for i, e := range entries {
		sigs[i], _ = keys.Sign(k.Signer, crypto.SHA256, e.Pol)
	}
	sigs[1][5] ^= 1
	if _, err := measure.Join(entries, k.Signer.Public(), sigs); err == nil {
		t.Fatal("corrupted signature accepted")
	}
	sigs[1][5] ^= 1
	if _, err := measure.Join(entries, other.Signer.Public(), sigs); err == nil {
		t.Fatal("join with another public key accepted")
	}
	if _, err := measure.Join(entries, k.Signer.Public(), sigs); err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{string(entries[0].Pol): sigs[0]}
	if _, err := measure.FillSignatures(measure.PolicyDigest(entries), k.Signer.Public(), m); err == nil {
		t.Fatal("missing signatures accepted")
	}
}

func TestBadOptions(t *testing.T) {
	if _, err := measure.ParsePhases([]string{"enter-initrd:bogus"}); err == nil {
		t.Error("unknown phase word accepted")
	}
	if _, err := measure.ParseBanks([]string{"md5"}); err == nil {
		t.Error("md5 bank accepted")
	}
	in := measure.BytesInput(measure.Linux, []byte("x"))
	if _, err := measure.Calculate([]measure.Input{in, in}, nil, measure.DefaultBanks); err == nil {
		t.Error("duplicate section accepted")
	}
	p := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(p, nil, 0o644)
	if _, _, err := measure.OpenFile(measure.Initrd, p); err == nil {
		t.Error("empty file accepted")
	}
}

func TestPCRSigRoundTrip(t *testing.T) {
	ukify := `{"sha256": [{"pcrs": [11], "pkfp": "` + strings.Repeat("ab", 32) + `", "pol": "` + strings.Repeat("01", 32) + `", "sig": "AAEC"}]}`
	p, err := measure.ParsePCRSig([]byte(ukify))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(p.Marshal(measure.Python)); got != ukify {
		t.Fatalf("python style:\n%s\n%s", got, ukify)
	}
	for _, bad := range []string{
		`[]`, `{"sha256":{}}`, `{"md5":1,"md5":2}`, `{"x":[1e999]}`, `{"sha256":[{"pcrs":[11],"pol":"00"}]}`, `{"sha256":[{"pcrs":[11],"pol":"` + strings.Repeat("01", 32) + `","tbs":"x"}]}`,
		`{"sha256":[]}{}`, `{"sha256":[{"pcrs":[99],"pol":"` + strings.Repeat("01", 32) + `"}]}`, `{"sha256":[],"sha256":[]}`,
	} {
		if _, err := measure.ParsePCRSig([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

// systemd 262's documents: ref and tbs are read, members signet does not
// know are kept (systemd's readers ignore them, --append keeps them), and
// malformed known members
// (tbs that is not pol ‖ SHA256(ref), a ref that is not a string) are
// refused.
func TestPCRSigRefAndTBS(t *testing.T) {
	pol := strings.Repeat("01", 32)
	h := sha256.Sum256([]byte("initrd"))
	tbs := pol + hex.EncodeToString(h[:])
	doc := `{"sha256":[{"pcrs":[11],"pkfp":"` + strings.Repeat("ab", 32) + `","ref":"initrd","pol":"` + pol + `","tbs":"` + tbs + `"}]}`
	p, err := measure.ParsePCRSig([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	e := p.Banks[0].Entries[0]
	if e.Ref != "initrd" || hex.EncodeToString(e.Signed()) != tbs {
		t.Fatalf("ref %q signed %x", e.Ref, e.Signed())
	}
	if got := string(p.Marshal(measure.Short)); got != doc {
		t.Fatalf("re-encoded:\n%s\n%s", got, doc)
	}
	// Unknown members, of any JSON type, stay where they were; a member
	// the document lacked (sig, after a join) goes after the others.
	future := `{"x":1.5,"sha256":[{"pcrs":[11],"x-new":{"a":[1,-0]},"pol":"` + pol + `","later":null}],"SHA1":"\u00e9"}`
	p, err = measure.ParsePCRSig([]byte(future))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"x":1.500000000000000000000e+00,"sha256":[{"pcrs":[11],"x-new":{"a":[1,0]},"pol":"` + pol + `","later":null}],"SHA1":"\u00e9"}`
	if got := string(p.Marshal(measure.Python)); got != strings.NewReplacer(":", ": ", ",", ", ").Replace(want) {
		t.Fatalf("unknown members: %s", got)
	}
	p.Banks[0].Entries[0].Sig = []byte{0, 1, 2}
	want = `{"x":1.500000000000000000000e+00,"sha256":[{"pcrs":[11],"x-new":{"a":[1,0]},"pol":"` + pol + `","later":null,"sig":"AAEC"}],"SHA1":"é"}`
	if got := string(p.Marshal(measure.Short)); got != want {
		t.Fatalf("unknown members:\n%s\n%s", got, want)
	}
	for _, bad := range []string{
		`{"sha256":[{"pcrs":[11],"ref":"initrd","pol":"` + pol + `","tbs":"` + pol + `"}]}`,
		`{"sha256":[{"pcrs":[11],"pol":"` + pol + `","tbs":"` + tbs + `"}]}`,
		`{"sha256":[{"pcrs":[11],"ref":7,"pol":"` + pol + `"}]}`,
		`{"sha256":[{"pcrs":[11],"pol":"` + pol + `","tbs":17}]}`,
	} {
		if _, err := measure.ParsePCRSig([]byte(bad)); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

// --policyref: the signature covers pol ‖ SHA256(ref) and verifies only
// over those bytes; policy-digest's tbs is them; the offline join keyed by
// tbs gives the online document.
func TestPolicyRef(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	f := fixture{inputs: []measure.Input{measure.BytesInput(measure.Linux, []byte("kernel"))}}
	entries, err := measure.Prepare(calc(t, f, []string{"enter-initrd"}, []string{"sha256"}), k.Signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	entries = measure.WithRef(entries, "initrd")
	online, err := measure.Sign(entries, k.Signer)
	if err != nil {
		t.Fatal(err)
	}
	e := online.Banks[0].Entries[0]
	h := sha256.Sum256([]byte("initrd"))
	want := append(append([]byte{}, e.Pol...), h[:]...)
	if err := measure.VerifyEntry(k.Signer.Public(), want, e.Sig); err != nil {
		t.Fatalf("signature is not over pol ‖ SHA256(ref): %v", err)
	}
	if measure.VerifyEntry(k.Signer.Public(), e.Pol, e.Sig) == nil {
		t.Fatal("a ref-bound signature verifies over pol alone")
	}
	pd := measure.PolicyDigest(entries)
	if got := pd.Banks[0].Entries[0].TBS; !bytes.Equal(got, want) {
		t.Fatalf("tbs %x, want %x", got, want)
	}
	joined, err := measure.FillSignatures(pd, k.Signer.Public(), map[string][]byte{string(want): e.Sig})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(joined.Marshal(measure.Short), online.Marshal(measure.Short)) {
		t.Fatalf("offline %s\nonline %s", joined.Marshal(measure.Short), online.Marshal(measure.Short))
	}
	// A signature keyed by pol only is not the one for this entry.
	if _, err := measure.FillSignatures(pd, k.Signer.Public(), map[string][]byte{string(e.Pol): e.Sig}); err == nil {
		t.Fatal("joined a ref-bound entry from a signature keyed by pol")
	}
}

// --append as systemd 262: banks the new run touches move behind the
// others, keeping their old entries first.
func TestMergeBankOrder(t *testing.T) {
	pol := func(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }
	base := &measure.PCRSig{}
	base.Add("sha1", measure.SigEntry{PCRs: []int{11}, Pol: pol(1)})
	base.Add("sha256", measure.SigEntry{PCRs: []int{11}, Pol: pol(2)})
	base.Add("sha384", measure.SigEntry{PCRs: []int{11}, Pol: pol(3)})
	add := &measure.PCRSig{}
	add.Add("sha1", measure.SigEntry{PCRs: []int{11}, Pol: pol(4)})
	add.Add("sha512", measure.SigEntry{PCRs: []int{11}, Pol: pol(5)})
	base.Merge(add)
	var got []string
	for _, b := range base.Banks {
		for _, e := range b.Entries {
			got = append(got, fmt.Sprintf("%s:%d", b.Bank, e.Pol[0]))
		}
	}
	if s := strings.Join(got, " "); s != "sha256:2 sha384:3 sha1:1 sha1:4 sha512:5" {
		t.Fatalf("order %s", s)
	}
}

// Members that are not banks keep their places when --append moves the
// touched banks to the end.
func TestMergeKeepsOtherMembers(t *testing.T) {
	e := func(b string) string { return `[{"pcrs":[11],"pol":"` + strings.Repeat(b, 32) + `"}]` }
	base, err := measure.ParsePCRSig([]byte(`{"a":1,"sha1":` + e("01") + `,"b":2,"sha256":` + e("02") + `,"c":3}`))
	if err != nil {
		t.Fatal(err)
	}
	add, _ := measure.ParsePCRSig([]byte(`{"sha1":` + e("03") + `,"sha512":` + e("04") + `}`))
	base.Merge(add)
	want := `{"a":1,"b":2,"sha256":` + e("02") + `,"c":3,"sha1":[{"pcrs":[11],"pol":"` + strings.Repeat("01", 32) + `"},{"pcrs":[11],"pol":"` + strings.Repeat("03", 32) + `"}],"sha512":` + e("04") + `}`
	if got := string(base.Marshal(measure.Short)); got != want {
		t.Fatalf("merged:\n%s\nwant\n%s", got, want)
	}
}

func FuzzParsePCRSig(f *testing.F) {
	f.Add([]byte(`{"sha256":[{"pcrs":[11],"ref":"initrd","pol":"` + strings.Repeat("01", 32) + `","tbs":"` + strings.Repeat("01", 32) + `d4c3e8b9a4b3c1e2"},{"pcrs":[11],"x":[{}],"pol":"` + strings.Repeat("02", 32) + `"}]}`))
	f.Add([]byte(`{"sha256": [{"pcrs": [11], "pol": "` + strings.Repeat("01", 32) + `", "sig": "AAEC"}]}`))
	f.Add([]byte(`{"n":[1e2,-0,"\u2028\u0001",{"a":null}],"sha1":[{"q":true,"pcrs":[11],"pol":"` + strings.Repeat("01", 32) + `"}],"SHA1":[]}`))
	f.Add([]byte(`{"sha1":[{"pcrs":[11],"pkfp":"` + hex.EncodeToString(make([]byte, 32)) + `","pol":"` + strings.Repeat("ff", 32) + `"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := measure.ParsePCRSig(data)
		if err != nil {
			return
		}
		for _, st := range []measure.Style{measure.Short, measure.Pretty, measure.Python} {
			q, err := measure.ParsePCRSig(p.Marshal(st))
			if err != nil {
				t.Fatalf("re-parse: %v", err)
			}
			if !bytes.Equal(q.Marshal(measure.Short), p.Marshal(measure.Short)) {
				t.Fatal("round trip changed the document")
			}
		}
	})
}

// A key on a PKCS#11 token (SoftHSM2) signs the policies; RSA output is
// identical to the file key's.
func TestPKCS11(t *testing.T) {
	hsm := testkeys.NewSoftHSM(t)
	f := fixture{inputs: []measure.Input{measure.BytesInput(measure.Linux, []byte("kernel")), measure.BytesInput(measure.Cmdline, []byte("quiet"))}}
	for _, kind := range []testkeys.Kind{testkeys.RSA2048, testkeys.P256} {
		k := testkeys.Generate(t, kind)
		s, err := keys.Open("provider:pkcs11", hsm.Import(t, k, "measure-"+string(kind)))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		entries, err := measure.Prepare(calc(t, f, nil, nil), s.Public())
		if err != nil {
			t.Fatal(err)
		}
		got, err := measure.Sign(entries, s)
		if err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		if kind == testkeys.RSA2048 {
			want, err := measure.Sign(entries, k.Signer)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Marshal(measure.Short), want.Marshal(measure.Short)) {
				t.Fatal("token and file key sign differently")
			}
		}
	}
}
