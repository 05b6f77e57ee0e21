// Package testenv finds what tests need outside the Go tree: the real peer
// tools and the shared test vectors. A missing peer fails the test (never
// skips it): scripts/test installs every peer the suite uses.
package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Tool returns the path of a peer program, failing the test if it is not
// installed. Directories outside PATH where Debian keeps tools are searched
// too (/usr/sbin, /lib/systemd).
func Tool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/lib/systemd", "/lib/systemd"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	t.Fatalf("peer %q is not installed: run scripts/test, which installs it", name)
	return ""
}

// Run runs a peer and returns its combined output, failing the test on a
// non-zero exit.
func Run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(Tool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return out
}

// RunErr runs a peer and returns its combined output and exit error.
func RunErr(t testing.TB, name string, args ...string) ([]byte, error) {
	t.Helper()
	return exec.Command(Tool(t, name), args...).CombinedOutput()
}

// Vectors returns the path of shared/vectors/<name>: the shared directory
// beside the repository (where CI puts it), found by walking up from the
// test's directory.
func Vectors(t testing.TB, name string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		p := filepath.Join(dir, "shared", "vectors", name)
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("shared/vectors/%s not found beside the repository", name)
		}
		dir = parent
	}
}

// Contains fails the test unless out contains want.
func Contains(t testing.TB, out []byte, want string) {
	t.Helper()
	if !bytes.Contains(out, []byte(want)) {
		t.Fatalf("output lacks %q:\n%s", want, out)
	}
}
