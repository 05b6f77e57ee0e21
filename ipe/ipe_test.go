package ipe

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
)

const goodPolicy = `# Allow only what dm-verity and fs-verity vouch for.
policy_name=Allow_Verified policy_version=1.2.65535
DEFAULT action=DENY

op=EXECUTE dmverity_signature=TRUE action=ALLOW   # signed root hash
op=EXECUTE	fsverity_digest=sha256:` + "aa3dcd4d5fcf8b5a0b2f1dd5d0b3a53f1b1f1e6f7a2b4a6a1c2d3e4f5a6b7c8d" + ` action=ALLOW
op=KMODULE boot_verified=TRUE action=ALLOW
op=KEXEC_IMAGE dmverity_roothash=sha256:` + "AA3DCD4D5FCF8B5A0B2F1DD5D0B3A53F1B1F1E6F7A2B4A6A1C2D3E4F5A6B7C8D" + ` action=ALLOW
DEFAULT op=POLICY action=ALLOW
`

func TestParse(t *testing.T) {
	p, err := Parse([]byte(goodPolicy))
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "Allow_Verified" || p.Version != (Version{1, 2, 65535}) || p.Version.Uint64() != 1<<32|2<<16|65535 {
		t.Errorf("header: %q %v", p.Name, p.Version)
	}
	if p.DefaultAction != Deny || p.OpDefaults["POLICY"] != Allow || len(p.Rules) != 4 || p.Rules[1].Line != 6 {
		t.Errorf("parsed %+v", p)
	}
	perOp := "policy_name=p policy_version=0.0.0\n"
	for _, op := range Operations {
		perOp += "DEFAULT op=" + op + " action=ALLOW\n"
	}
	if _, err := Parse([]byte(perOp)); err != nil {
		t.Errorf("a default for every operation: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	const h = "policy_name=p policy_version=0.0.1\n"
	for _, c := range []struct {
		in        string
		line, col int
		msg       string
	}{
		{"", 0, 0, "empty policy"},
		{"# only a comment\n", 0, 0, "empty policy"},
		{"policy_version=0.0.1 policy_name=p\n", 1, 1, "want policy_name="},
		{"policy_name=p\n", 1, 14, "policy_version= missing"},
		{"policy_name=p policy_version=1.2\n", 1, 15, "MAJOR.MINOR.REVISION"},
		{"policy_name=p policy_version=1.65536.0\n", 1, 32, `"65536"`},
		{"policy_name=p policy_version=1.-1.0\n", 1, 32, `"-1"`},
		{"policy_name=a/b policy_version=1.0.0\n", 1, 1, "directory name"},
		{"policy_name= policy_version=1.0.0\n", 1, 1, "no value"},
		{"policy_name=p policy_version=1.0.0 extra\n", 1, 36, "after the header"},
		{h + "DEFAULT action=DENY\nop=EXECUTE action=MAYBE\n", 3, 12, "action=ALLOW|DENY"},
		{h + "DEFAULT action=DENY\nop=EXECUTE\n", 3, 1, "action=ALLOW|DENY"},
		{h + "DEFAULT action=DENY\nop=RUN action=ALLOW\n", 3, 1, "want op="},
		{h + "DEFAULT action=DENY\naction=ALLOW\n", 3, 1, "without op="},
		{h + "DEFAULT action=DENY\nop=EXECUTE  bogus=1 action=ALLOW\n", 3, 13, "unknown property"},
		{h + "DEFAULT action=DENY\nop=EXECUTE boot_verified=true action=ALLOW\n", 3, 12, "TRUE or FALSE"},
		{h + "DEFAULT action=DENY\nop=EXECUTE fsverity_digest=sha256:abcd action=ALLOW\n", 3, 12, "64 hex"},
		{h + "DEFAULT action=DENY\nop=EXECUTE dmverity_roothash=md5:00 action=ALLOW\n", 3, 12, "sha256:HEX"},
		{h + "DEFAULT action=DENY\nop=EXECUTE action=ALLOW boot_verified=TRUE\n", 3, 12, "unknown property \"action\""},
		{h + "DEFAULT action=DENY\nDEFAULT action=ALLOW\n", 3, 1, "second global DEFAULT"},
		{h + "DEFAULT action=DENY\nDEFAULT op=EXECUTE action=ALLOW\nDEFAULT op=EXECUTE action=DENY\n", 4, 1, "second DEFAULT for op=EXECUTE"},
		{h + "DEFAULT action=DENY\nDEFAULT op=EXECUTE boot_verified=TRUE action=ALLOW\n", 3, 20, "no properties"},
		{h + "DEFAULT\n", 2, 8, "DEFAULT needs action"},
		{h + "DEFAULT op=EXECUTE action=ALLOW\n", 3, 1, "no default action for FIRMWARE, KMODULE"},
		{h + "DEFAULT action=DENY\r\n", 2, 20, "carriage return"},
		{h + "DEFAULT action=DENY\nop=EXECUTE\x01 action=ALLOW\n", 3, 11, "control character"},
	} {
		_, err := Parse([]byte(c.in))
		var se *SyntaxError
		if !errors.As(err, &se) || se.Line != c.line || se.Column != c.col || !strings.Contains(se.Msg, c.msg) {
			t.Errorf("Parse(%q) = %v; want line %d, column %d, %q", c.in, err, c.line, c.col, c.msg)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(goodPolicy))
	f.Add([]byte("policy_name=p policy_version=0.0.1\nDEFAULT action=DENY\n"))
	f.Add([]byte("policy_name=p policy_version=0.0.1\nDEFAULT op=KMODULE action=DENY\n"))
	f.Fuzz(func(t *testing.T, text []byte) {
		p, err := Parse(text)
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("error is not a SyntaxError: %v", err)
			}
			return
		}
		// The canonical form says the same thing.
		q, err := Parse([]byte(p.String()))
		if err != nil {
			t.Fatalf("canonical form does not parse: %v\n%s", err, p.String())
		}
		if q.String() != p.String() {
			t.Fatalf("canonical form changed:\n%s\n%s", p.String(), q.String())
		}
	})
}

// A signed policy is what openssl makes and accepts, and openssl gives back
// the policy's canonical text (comments and blank lines are not signed).
func TestSignedPolicyJudgedByOpenSSL(t *testing.T) {
	dir := t.TempDir()
	pp := filepath.Join(dir, "policy.txt")
	os.WriteFile(pp, []byte(goodPolicy), 0o644)
	for _, kind := range []testkeys.Kind{testkeys.RSA2048, testkeys.P256} {
		k := testkeys.Generate(t, kind)
		p, err := Prepare([]byte(goodPolicy), k.Cert)
		if err != nil {
			t.Fatal(err)
		}
		p7b, err := p.Sign(k.Signer)
		if err != nil {
			t.Fatal(err)
		}
		sp := filepath.Join(dir, string(kind)+".p7b")
		os.WriteFile(sp, p7b, 0o644)
		out := testenv.Run(t, "openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", sp, "-CAfile", k.CertPath, "-out", filepath.Join(dir, "out.txt"))
		got, _ := os.ReadFile(filepath.Join(dir, "out.txt"))
		canon := []byte(p.Policy.String())
		if bytes.Equal(canon, []byte(goodPolicy)) || bytes.Contains(canon, []byte("#")) {
			t.Fatalf("canonical text keeps the comments:\n%s", canon)
		}
		if !bytes.Equal(got, canon) {
			t.Fatalf("openssl's embedded content differs from the policy (%s)", out)
		}
		text, pol, err := Verify(p7b, k.Cert)
		if err != nil || !bytes.Equal(text, canon) || pol.Name != "Allow_Verified" {
			t.Fatalf("Verify: %v", err)
		}
		other := testkeys.Generate(t, testkeys.RSA3072)
		if _, _, err := Verify(p7b, other.Cert); err == nil {
			t.Fatal("Verify accepts a policy signed by another certificate")
		}
		if kind != testkeys.RSA2048 {
			continue
		}
		cp := filepath.Join(dir, "canonical.txt")
		os.WriteFile(cp, canon, 0o644)
		want := testenv.Run(t, "openssl", "smime", "-sign", "-nodetach", "-noattr", "-binary", "-outform", "DER",
			"-signer", k.CertPath, "-inkey", k.KeyPath, "-in", cp)
		if !bytes.Equal(p7b, want) {
			t.Fatal("RSA .p7b differs from openssl smime -sign -nodetach -noattr -binary")
		}
		raw := testenv.Run(t, "openssl", "dgst", "-sha256", "-sign", k.KeyPath, cp)
		if joined, err := p.Join(raw); err != nil || !bytes.Equal(joined, p7b) {
			t.Fatalf("offline join differs from online signing (%v)", err)
		}
		if _, err := p.Join(raw[1:]); err == nil {
			t.Fatal("a truncated signature was joined")
		}
		if _, err := p.Sign(other.Signer); err == nil {
			t.Fatal("signed with a key that is not the certificate's")
		}
	}
	bad := testkeys.Generate(t, testkeys.RSA2048)
	if _, err := Prepare([]byte("policy_name=x policy_version=1.0.0\n"), bad.Cert); err == nil {
		t.Fatal("a policy without defaults was prepared for signing")
	}
}
