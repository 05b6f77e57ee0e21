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

// sidRunner returns scripts/sid-chroot of the repository the test runs in
// and fails the test unless its chroot is made (scripts/install-deps makes
// it).
func sidRunner(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		p := filepath.Join(dir, "scripts", "sid-chroot")
		if _, err := os.Stat(p); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("scripts/sid-chroot not found above the test's directory")
		}
		dir = parent
	}
	cache := os.Getenv("SIGNET_TEST_CACHE")
	if cache == "" {
		cache = "/var/cache/signet-test"
	}
	if _, err := os.Stat(filepath.Join(cache, "sid", ".signet-stamp")); err != nil {
		t.Fatalf("the Debian sid chroot with systemd 262 is missing (%v): run scripts/sid-chroot (scripts/install-deps does)", err)
	}
	return filepath.Join(dir, "scripts", "sid-chroot")
}

// SidCmd returns a command running the program name of the Debian sid
// chroot (systemd 262: systemd-measure, ukify, systemd-repart, ...; the
// systemd libexec directory is on its PATH) with args. Only files under
// /tmp, the repository and the test cache are visible inside at the same
// paths: use SidDir for the test's files.
func SidCmd(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	return exec.Command(sidRunner(t), append([]string{"run", name}, args...)...)
}

// Sid runs name in the sid chroot and returns its standard output, failing
// the test (with its standard error) on a non-zero exit.
func Sid(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	cmd := SidCmd(t, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sid %s %q: %v\n%s", name, args, err, stderr.Bytes())
	}
	return out
}

// SidDir returns a fresh directory under /tmp, removed after the test,
// whose files the sid chroot sees at the same path (t.TempDir follows
// $TMPDIR, which may point elsewhere).
func SidDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "signet-sid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
