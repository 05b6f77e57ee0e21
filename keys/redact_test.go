package keys

import (
	"strings"
	"testing"
)

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"key.pem": "key.pem",
		"pkcs11:token=a;object=b?module-path=/m.so&pin-value=1234":                    "pkcs11:token=a;object=b?module-path=/m.so&pin-value=***",
		"pkcs11:token=a;object=b?pin-value=12%2634&module-path=/m.so":                 "pkcs11:token=a;object=b?pin-value=***&module-path=/m.so",
		"pkcs11:token=a;object=b;pin-value=1234?module-path=/m.so":                    "pkcs11:token=a;object=b;pin-value=***",
		"pkcs11:token=a;object=b?pin-value=1?2;3'4":                                   "pkcs11:token=a;object=b?pin-value=***",
		"pkcs11:token=a;object=b?PIN-VALUE=1234":                                      "pkcs11:token=a;object=b?PIN-VALUE=***",
		"pkcs11:token=a;object=b?pin-source=file:/run/pin":                            "pkcs11:token=a;object=b?pin-source=file:/run/pin",
		`key db: "pkcs11:token=a;object=b?pin-value=99 x" and pin-value=77 and c.crt`: `key db: "pkcs11:token=a;object=b?pin-value=*** x" and pin-value=*** and c.crt`,
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
	if got := Redact("pin-value=***1234"); got != "pin-value=***" {
		t.Errorf("a PIN starting with *** kept: %q", got)
	}
	if got := RedactText("private key pkcs11:token=a;object=b?pin-value=***: bad PIN"); got != "private key pkcs11:token=a;object=b?pin-value=***: bad PIN" {
		t.Errorf("RedactText of a redacted message: %q", got)
	}
	if got := RedactText("bearer s3cr3t failed; pin-value=1", "s3cr3t", ""); got != "bearer *** failed; pin-value=***" {
		t.Errorf("RedactText: %q", got)
	}
}

func FuzzRedact(f *testing.F) {
	f.Add("pkcs11:token=a;object=b?module-path=/m.so&pin-value=1234")
	f.Fuzz(func(t *testing.T, s string) {
		out := Redact(s)
		// Every pin-value= of the output carries no PIN.
		for _, m := range secretAttr.FindAllStringSubmatch(out, -1) {
			val := m[0][len(m[1]):]
			if rest, ok := strings.CutPrefix(val, Redacted); !(ok && strings.Trim(rest, punct) == "") && val != "" {
				t.Fatalf("Redact(%q) = %q leaves %q", s, out, m[0])
			}
		}
	})
}
