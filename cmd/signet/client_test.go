package main

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

// An audit verifier key is accepted inline whatever base64 characters it
// holds, and from a file; anything else is a clear error.
func TestAuditKeyArg(t *testing.T) {
	var vkey string
	for vkey == "" || !strings.ContainsAny(vkey[strings.LastIndex(vkey, "+")+1:], "+/") {
		_, v, err := note.GenerateKey(rand.Reader, "signer.example/audit")
		if err != nil {
			t.Fatal(err)
		}
		vkey = v
	}
	if got, err := auditKeyArg(vkey); err != nil || got != vkey {
		t.Fatalf("inline key %q: got %q, %v", vkey, got, err)
	}
	file := filepath.Join(t.TempDir(), "audit.pub")
	os.WriteFile(file, []byte(vkey+"\n"), 0o644)
	if got, err := auditKeyArg(file); err != nil || got != vkey {
		t.Fatalf("key file: got %q, %v", got, err)
	}
	os.WriteFile(file, []byte("garbage\n"), 0o644)
	if _, err := auditKeyArg(file); err == nil || !strings.Contains(err.Error(), file) {
		t.Fatalf("garbage key file: %v", err)
	}
}
