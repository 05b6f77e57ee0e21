package manifest

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/openpgp"
)

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestCreateAcceptedBySha256sum(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"image_1.raw": strings.Repeat("x", 3<<20), "image_1.efi": "uki", "b c": "", "ünï": "utf-8",
		".hidden": "no", "SHA256SUMS.gpg": "no",
	})
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	out := filepath.Join(dir, "SHA256SUMS")
	os.WriteFile(out, []byte("old"), 0o644)
	var hashed atomic.Int64
	entries, err := Create([]string{dir}, func(n int64) { hashed.Add(n) }, out)
	if err != nil {
		t.Fatal(err)
	}
	if hashed.Load() != 3<<20+3+5 {
		t.Errorf("progress reported %d bytes", hashed.Load())
	}
	data, err := Marshal(entries)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		names = append(names, l[66:])
		if l[64:66] != " *" {
			t.Errorf("line %q: want '<hex> *<name>'", l)
		}
	}
	if want := []string{"b c", "image_1.efi", "image_1.raw", "ünï"}; !slices.Equal(names, want) {
		t.Fatalf("names %q, want %q", names, want)
	}
	os.WriteFile(out, data, 0o644)
	cmd := exec.Command(testenv.Tool(t, "sha256sum"), "-c", "--strict", "SHA256SUMS")
	cmd.Dir = dir
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sha256sum -c --strict: %v\n%s", err, o)
	}
	if err := Check(dir, entries, nil); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "image_1.efi"), []byte("UKI"), 0o644)
	os.Remove(filepath.Join(dir, "b c"))
	var ce *CheckError
	if err := Check(dir, entries, nil); !errors.As(err, &ce) || len(ce.Problems) != 2 {
		t.Fatalf("Check of a changed and a missing file: %v", err)
	}
	cmd = exec.Command(testenv.Tool(t, "sha256sum"), "-c", "--strict", "SHA256SUMS")
	cmd.Dir = dir
	if err := cmd.Run(); err == nil {
		t.Fatal("sha256sum accepts a changed file: the test proves nothing")
	}
}

func TestRefusedNames(t *testing.T) {
	for _, name := range []string{"a\nb", "a\\b", "tab\tname", "del\x7f", "\xff\xfe", ".", "..", "", strings.Repeat("n", 256), "a/b"} {
		if err := ValidName(name); !errors.Is(err, ErrBadName) {
			t.Errorf("ValidName(%q) = %v", name, err)
		}
		if _, err := Marshal([]Entry{{Name: name}}); err == nil {
			t.Errorf("Marshal accepted %q", name)
		}
	}
	dir := writeFiles(t, map[string]string{"back\\slash": "x"})
	if _, err := Create([]string{dir}, nil); !errors.Is(err, ErrBadName) {
		t.Errorf("Create of a directory holding a backslash name: %v", err)
	}
	if _, err := Create([]string{filepath.Join(dir, "missing")}, nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Create of a missing file: %v", err)
	}
	a, b := writeFiles(t, map[string]string{"x": "1"}), writeFiles(t, map[string]string{"x": "2"})
	if _, err := Create([]string{a, b}, nil); err == nil {
		t.Error("two files named x were listed")
	}
}

func TestParse(t *testing.T) {
	h := strings.Repeat("ab", 32)
	good := h + " *a.raw\n" + strings.ToUpper(h) + "  b.raw\n"
	e, err := Parse([]byte(good))
	if err != nil || len(e) != 2 || e[1].Name != "b.raw" || e[0].Digest[0] != 0xab {
		t.Fatalf("Parse = %v, %v", e, err)
	}
	for _, c := range []struct{ in, msg string }{
		{h + " *a.raw", "line 1: does not end in a newline"},
		{h + " *a\n" + h + " *a\n", "line 2: \"a\": listed twice"},
		{h + " *a\n" + h + "-*b\n", "line 2: missing space"},
		{h + " +a\n", "missing binary/text marker"},
		{"\\" + h + " *a\n", "escaped"},
		{strings.Repeat("g", 64) + " *a\n", "not 64 hex"},
		{h + " *a\x01b\n", "control character"},
		{h + " *a/b\n", "'/'"},
		{h + " *\xc3\n", "UTF-8"},
		{h + " *a\x00\n", "line 1: NUL"},
		{h + " *\n", "too short"},
	} {
		_, err := Parse([]byte(c.in))
		var se *SyntaxError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("Parse(%q) = %v, want %q", c.in, err, c.msg)
		}
	}
}

func FuzzParse(f *testing.F) {
	h := strings.Repeat("0f", 32)
	f.Add([]byte(h + " *a.raw\n" + h + "  b\n"))
	f.Add([]byte(h + " *a\\b\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := Parse(data)
		if err != nil {
			return
		}
		out, err := Marshal(e)
		if err != nil {
			t.Fatalf("parsed entries do not marshal: %v", err)
		}
		e2, err := Parse(out)
		if err != nil {
			t.Fatalf("marshalled manifest does not parse: %v", err)
		}
		slices.SortFunc(e, func(a, b Entry) int { return strings.Compare(a.Name, b.Name) })
		if !slices.Equal(e, e2) {
			t.Fatal("round trip changed the entries")
		}
	})
}

func sampleManifest(t *testing.T) []byte {
	m, err := Marshal([]Entry{{Name: "image_1.raw", Digest: [32]byte{1}}, {Name: "image_1.efi", Digest: [32]byte{2}}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// A PKCS#7 manifest signature is what openssl makes and accepts, offline
// and online alike.
func TestPKCS7(t *testing.T) {
	m := sampleManifest(t)
	dir := t.TempDir()
	mp := filepath.Join(dir, "SHA256SUMS")
	os.WriteFile(mp, m, 0o644)
	for _, kind := range []testkeys.Kind{testkeys.RSA2048, testkeys.P256, testkeys.P384} {
		k := testkeys.Generate(t, kind)
		p, err := PreparePKCS7(m, k.Cert)
		if err != nil {
			t.Fatal(err)
		}
		p7s, err := p.Sign(k.Signer)
		if err != nil {
			t.Fatal(err)
		}
		sp := filepath.Join(dir, string(kind)+".p7s")
		os.WriteFile(sp, p7s, 0o644)
		testenv.Run(t, "openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", sp, "-content", mp, "-CAfile", k.CertPath, "-out", "/dev/null")
		if _, err := VerifyPKCS7(m, p7s, k.Cert); err != nil {
			t.Fatal(err)
		}
		bad := bytes.Replace(m, []byte("efi"), []byte("EFI"), 1)
		if _, err := VerifyPKCS7(bad, p7s, k.Cert); err == nil {
			t.Fatal("VerifyPKCS7 accepts a changed manifest")
		}
		if kind != testkeys.RSA2048 {
			continue
		}
		want := testenv.Run(t, "openssl", "smime", "-sign", "-binary", "-noattr", "-md", "sha256", "-outform", "DER",
			"-signer", k.CertPath, "-inkey", k.KeyPath, "-in", mp)
		if !bytes.Equal(p7s, want) {
			t.Fatal("RSA .p7s differs from openssl smime -sign -binary -noattr")
		}
		raw := testenv.Run(t, "openssl", "dgst", "-sha256", "-sign", k.KeyPath, mp)
		joined, err := p.Join(raw)
		if err != nil || !bytes.Equal(joined, p7s) {
			t.Fatalf("offline join differs from online signing (%v)", err)
		}
		raw[0] ^= 0xff
		if _, err := p.Join(raw); err == nil {
			t.Fatal("a corrupted signature was joined")
		}
	}
}

func TestOpenPGP(t *testing.T) {
	m := sampleManifest(t)
	k := testkeys.Generate(t, testkeys.P256)
	key, _ := openpgp.NewKey(k.Signer.Public(), k.Cert.NotBefore)
	pub, err := openpgp.ExportPublicKey(k.Signer, key, "signet <t@signet.dev>")
	if err != nil {
		t.Fatal(err)
	}
	p, err := PrepareOpenPGP(m, key, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Entries) != 2 || !bytes.HasPrefix(p.TBS, m) {
		t.Fatal("prepared context or TBS is wrong")
	}
	sig, err := p.Sign(k.Signer)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for n, c := range map[string][]byte{"SHA256SUMS": m, "SHA256SUMS.gpg": sig, "ring.pgp": pub} {
		os.WriteFile(filepath.Join(dir, n), c, 0o644)
	}
	testenv.Run(t, "gpgv", "--homedir", dir, "--keyring", filepath.Join(dir, "ring.pgp"), filepath.Join(dir, "SHA256SUMS.gpg"), filepath.Join(dir, "SHA256SUMS"))
	if _, _, err := VerifyOpenPGP(m, openpgp.Armor(sig, openpgp.ArmorSignature), pub); err != nil {
		t.Fatal(err)
	}
	if _, err := PrepareOpenPGP([]byte("not a manifest\n"), key, time.Now()); err == nil {
		t.Fatal("an unparsable manifest was prepared for signing")
	}
}
