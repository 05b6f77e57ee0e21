package server

import (
	"strings"
	"testing"
)

// Setting names are matched exactly, as every other TOML reader does.
func TestConfigKeysExact(t *testing.T) {
	base := "audit_key = \"k\"\n[store]\ndsn = \"x\"\n"
	for in, want := range map[string]string{
		"LISTEN = \"127.0.0.1:1\"\n" + base:                                                        `setting "LISTEN": write it "listen"`,
		base + "[Limits]\nrate = 1\n":                                                              `setting "Limits": write it "limits"`,
		base + "[limits]\nMax_Items = 1\n":                                                         `setting "limits.Max_Items": write it "max_items"`,
		base + "[[keys]]\nname = \"a\"\nKinds = [\"pcr-policy\"]\n":                                `setting "keys.Kinds": write it "kinds"`,
		base + "[[clients]]\nname = \"a\"\ntoken_SHA256 = [\"" + strings.Repeat("0", 64) + "\"]\n": `write it "token_sha256"`,
	} {
		if _, err := ParseConfig([]byte(in), t.TempDir()); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
	if _, err := ParseConfig([]byte("listen = \"127.0.0.1:1\"\n"+base+"[limits]\nmax_items = 3\n"), t.TempDir()); err != nil {
		t.Fatal(err)
	}
}

// FuzzNormalizeSAN: a normalised name is a fixed point and keeps its type.
func FuzzNormalizeSAN(f *testing.F) {
	for _, s := range []string{"dns:Builder.Example", "uri:spiffe://x/y", "email:a@b", "ip:1.2.3.4", "dns:*.x", ":", "DNS: x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := NormalizeSAN(s)
		if err != nil {
			return
		}
		again, err := NormalizeSAN(n)
		if err != nil || again != n {
			t.Fatalf("%q → %q → %q, %v", s, n, again, err)
		}
		if !strings.HasPrefix(n, "dns:") && !strings.HasPrefix(n, "uri:") && !strings.HasPrefix(n, "email:") {
			t.Fatalf("%q → %q", s, n)
		}
	})
}
