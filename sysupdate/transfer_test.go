package sysupdate

import (
	"bytes"
	"errors"
	"testing"
)

func TestMarshal(t *testing.T) {
	tr := &Transfer{Comment: []string{"x"}, Transfer: []Setting{{"Verify", "yes"}},
		Source: []Setting{{"Type", "url-file"}, {"Path", Escape("https://h/a%20b/")}, {"MatchPattern", "a_@v.efi"}},
		Target: []Setting{{"Type", "regular-file"}, {"Path", "/EFI/Linux"}}}
	got, err := tr.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := "# x\n\n[Transfer]\nVerify=yes\n\n[Source]\nType=url-file\nPath=https://h/a%%20b/\nMatchPattern=a_@v.efi\n\n[Target]\nType=regular-file\nPath=/EFI/Linux\n"
	if string(got) != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	for _, bad := range []Setting{{"Path", "a\nb"}, {"Path", ""}, {"Path", "a\\"}, {"Pa th", "x"}, {"Path", " x"}} {
		if _, err := (&Transfer{Source: []Setting{bad}}).Marshal(); !errors.Is(err, ErrValue) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestPattern(t *testing.T) {
	for name, want := range map[string]string{"exos_2.efi": "exos_@v.efi", "usr_2.erofs.verity": "usr_@v.erofs.verity"} {
		if got, err := Pattern(name, "2"); err != nil || got != want {
			t.Errorf("%s: %q %v", name, got, err)
		}
	}
	for _, name := range []string{"exos.efi", "exos_2_2.efi", "ex@s_2.efi", "e%s_2.efi"} {
		if _, err := Pattern(name, "2"); !errors.Is(err, ErrValue) {
			t.Errorf("%s: accepted", name)
		}
	}
	for _, v := range []string{"1", "2.3+b1", "256,1-rc_2"} {
		if err := ValidVersion(v); err != nil {
			t.Errorf("%s: %v", v, err)
		}
	}
	for _, v := range []string{"", "1/2", "1 2", "a~b", "..", "x@y"} {
		if err := ValidVersion(v); err == nil {
			t.Errorf("%q: accepted", v)
		}
	}
}

// FuzzTransfer: no panic on any name, version or value, and what Marshal
// accepts is one line per setting.
func FuzzTransfer(f *testing.F) {
	f.Add("exos_2.efi", "2", "https://h/")
	f.Fuzz(func(t *testing.T, name, version, value string) {
		ValidVersion(version)
		p, err := Pattern(name, version)
		if err == nil && (len(p) == 0 || version == "") {
			return
		}
		tr := &Transfer{Source: []Setting{{"MatchPattern", p}, {"Path", Escape(value)}}}
		if out, err := tr.Marshal(); err == nil {
			if n := bytes.Count(out, []byte("\n")); n != 3 {
				t.Fatalf("%d lines for one section of two settings:\n%s", n, out)
			}
		}
	})
}
