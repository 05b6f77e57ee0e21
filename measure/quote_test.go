package measure

import (
	"bytes"
	"os/exec"
	"testing"
)

// Strings in the Python style are escaped as ukify's json.dumps escapes
// them (python3 is the judge).
func TestQuotePython(t *testing.T) {
	s := "a\u0001\u001f\x7f/\\\"\b\f\n\r\t\u00e9\u2028\U0001F600x"
	var b bytes.Buffer
	quote(&b, s, Python)
	out, err := exec.Command("python3", "-c", "import json, sys; sys.stdout.write(json.dumps(sys.argv[1]))", s).Output()
	if err != nil {
		t.Fatalf("python3: %v", err)
	}
	if b.String() != string(out) {
		t.Fatalf("signet %s\npython %s", b.String(), out)
	}
}
