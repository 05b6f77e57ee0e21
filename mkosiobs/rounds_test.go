package mkosiobs_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"

	"signet.dev/internal/testkeys"
	"signet.dev/mkosiobs"
	"signet.dev/request"
	"signet.dev/request/check"
)

// rootHashArchive is a one-member archive as mkosi.postoutput packs it.
func rootHashArchive(t *testing.T, rh string) []byte {
	t.Helper()
	var b bytes.Buffer
	w := cpio.NewWriter(&b)
	if err := w.WriteHeader(&cpio.Header{Name: "roothashes/img.roothash", Mode: cpio.TypeReg | 0o644, Size: int64(len(rh)), Links: 1}); err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(rh))
	w.Close()
	return b.Bytes()
}

// TestRoundsStaging: the driver stages each round as OBS does (a stand-in
// for mkosi checks what it finds and writes what mkosi-obs writes), stops
// when no archive is left, and publishes the final files.
func TestRoundsStaging(t *testing.T) {
	dir := t.TempDir()
	k := testkeys.Generate(t, testkeys.RSA2048)
	recipe := filepath.Join(dir, "recipe")
	os.MkdirAll(recipe+"/mkosi.repart", 0o755)
	os.WriteFile(recipe+"/mkosi.conf", []byte("[Include]\nInclude=mkosi-obs\n"), 0o644)
	os.WriteFile(recipe+"/mkosi.repart/10-root.conf", []byte("[Partition]\n"), 0o644)
	pk := filepath.Join(dir, "packages")
	src, other := pk+"/SOURCES", pk+"/OTHER"
	rh := strings.Repeat("ab", 32)
	listing := func(d string) []string {
		es, _ := os.ReadDir(d)
		var n []string
		for _, e := range es {
			n = append(n, e.Name())
		}
		return n
	}
	var seen [][]string
	r := &mkosiobs.Rounds{
		Packages: pk, Recipe: recipe, CertificatePEM: []byte("PEM"), LocalMirror: "http://mirror/debian",
		Options: mkosiobs.Options{Key: "obs"},
		Sign: func(round int, req *request.Request) (*request.Response, error) {
			return request.Sign(req, keyOf(k), check.Item)
		},
		Mkosi: func(round int, args []string) error {
			seen = append(seen, listing(src))
			if !slices.Contains(args, "--local-mirror=http://mirror/debian") || args[len(args)-1] != "build" {
				t.Errorf("round %d: mkosi %q", round, args)
			}
			if len(listing(other)) != 0 {
				t.Errorf("round %d: OTHER/ holds %v", round, listing(other))
			}
			switch round {
			case 1:
				os.WriteFile(other+"/img.roothash", []byte(rh), 0o644)
				os.WriteFile(other+"/img.raw", []byte("unsigned"), 0o644)
				os.WriteFile(other+"/img.SHA256SUMS", []byte("stale"), 0o644)
				os.Mkdir(other+"/img.repart.d", 0o755)
				os.WriteFile(other+"/mkosi.conf", []byte("[Output]\nFormat=none\n"), 0o644)
				os.WriteFile(other+"/"+mkosiobs.ArchiveName, rootHashArchive(t, rh), 0o644)
			case 2:
				os.WriteFile(other+"/img.raw", []byte("signed"), 0o644)
			}
			return nil
		},
	}
	n, err := r.Run()
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("%d rounds, want 2", n)
	}
	if want := []string{"_projectcert.crt", "mkosi.conf", "mkosi.repart"}; !slices.Equal(seen[0], want) {
		t.Fatalf("round 1 sources %v, want %v", seen[0], want)
	}
	// OTHER/'s files (not its directories), the answer, the certificate.
	if want := []string{"_projectcert.crt", "hashes.cpio.rsasign", "hashes.cpio.rsasign.sig", "img.SHA256SUMS", "img.raw", "img.roothash", "mkosi.conf"}; !slices.Equal(seen[1], want) {
		t.Fatalf("round 2 sources %v, want %v", seen[1], want)
	}
	sig, err := mkosiobs.ReadArchive(mustRead(t, src+"/hashes.cpio.rsasign.sig"))
	if err != nil || len(sig.Members) != 1 || sig.Members[0].Name != "roothashes/img.roothash.sig" {
		t.Fatalf("answer %+v (%v)", sig, err)
	}
	out := filepath.Join(dir, "out")
	sums, err := mkosiobs.Publish(other, out)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%x *img.raw\n", sha256.Sum256([]byte("signed"))); string(sums) != want {
		t.Fatalf("SHA256SUMS %q, want %q (the final img.raw only)", sums, want)
	}
	if string(mustRead(t, out+"/img.raw")) != "signed" {
		t.Fatal("the published img.raw is not the final round's")
	}

	// Packages not empty: refused before mkosi runs.
	if _, err := r.Run(); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("rerun into used directories: %v", err)
	}
}

// TestRoundsLimit: a build that still stages an archive after OBS's three
// follow-ups fails.
func TestRoundsLimit(t *testing.T) {
	dir := t.TempDir()
	k := testkeys.Generate(t, testkeys.RSA2048)
	os.MkdirAll(dir+"/recipe", 0o755)
	os.WriteFile(dir+"/recipe/mkosi.conf", nil, 0o644)
	rh := strings.Repeat("cd", 32)
	runs := 0
	r := &mkosiobs.Rounds{
		Packages: dir + "/pk", Recipe: dir + "/recipe", CertificatePEM: []byte("PEM"), Options: mkosiobs.Options{Key: "obs"},
		Sign: func(round int, req *request.Request) (*request.Response, error) {
			return request.Sign(req, keyOf(k), check.Item)
		},
		Mkosi: func(round int, args []string) error {
			runs++
			os.WriteFile(dir+"/pk/OTHER/img.roothash", []byte(rh), 0o644)
			return os.WriteFile(dir+"/pk/OTHER/"+mkosiobs.ArchiveName, rootHashArchive(t, rh), 0o644)
		},
	}
	_, err := r.Run()
	if err == nil || !strings.Contains(err.Error(), "OBS's limit") || runs != 1+mkosiobs.MaxFollowups {
		t.Fatalf("after %d runs: %v", runs, err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
