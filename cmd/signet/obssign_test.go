package main

import (
	"errors"
	"strings"
	"testing"
)

func TestObsSignArgs(t *testing.T) {
	a, err := parseObsSignArgs(strings.Fields("--project P --package K -P upload/signer.1 -h sha256 -O --bulk-cpio f.cpio.rsasign"))
	if err != nil || a.mode != "-O" || !a.bulkCPIO || a.project != "P" || a.pkg != "K" || a.hash != "sha256" || len(a.files) != 1 {
		t.Fatalf("%+v, %v", a, err)
	}
	for _, bad := range []string{"-h sha384 -k", "-O -h sha1 --bulk-cpio f", "-d -D f", "-r f.rpm", "--bogus", "-u", "-S chk -d f"} {
		_, err := parseObsSignArgs(strings.Fields(bad))
		var fe *fatalError
		if !errors.As(err, &fe) {
			t.Errorf("%q: %v, want a fatal error", bad, err)
		}
	}
}

func FuzzObsSignArgs(f *testing.F) {
	f.Add("--project\x00P\x00-O\x00-h\x00sha256\x00--bulk-cpio\x00f")
	f.Add("-k\x00--full-keyid")
	f.Fuzz(func(t *testing.T, s string) {
		a, err := parseObsSignArgs(strings.Split(s, "\x00"))
		if err == nil && a == nil {
			t.Fatal("no result and no error")
		}
	})
}
