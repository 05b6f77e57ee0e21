package mkosiobs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"signet.dev/internal/atomicfile"
	"signet.dev/manifest"
	"signet.dev/request"
)

// OBS's fixed paths inside the build root, which mkosi-obs's scripts use.
const (
	RootSources = "/usr/src/packages/SOURCES"
	RootOther   = "/usr/src/packages/OTHER"
)

// ArchiveName is the archive mkosi-obs writes into OTHER/ when something
// is left to sign.
const ArchiveName = "hashes.cpio.rsasign"

// MaxFollowups is how many follow-up builds OBS runs after the first
// (bs_signer: followupsteps < 3).
const MaxFollowups = 3

// Rounds runs mkosi's offline rounds as OBS stages them: the recipe and
// _projectcert.crt in SOURCES/, mkosi run with OBS's command line, the
// archive it leaves in OTHER/ signed, then OTHER/'s files, the answer and
// the certificate made the next round's SOURCES/ (whose mkosi.conf is the
// recipe mkosi-obs wrote), until a round writes no archive.
type Rounds struct {
	// Packages is the build root's /usr/src/packages as this process
	// sees it; SOURCES/ and OTHER/ are made in it and must not hold
	// anything yet.
	Packages string
	// Recipe is the mkosi project (mkosi.conf with Include=mkosi-obs,
	// mkosi.repart/, ...) copied into SOURCES/ for the first round.
	Recipe string
	// CertificatePEM is the project certificate, SOURCES/_projectcert.crt.
	CertificatePEM []byte
	// Mkosi runs mkosi in the build root with args.
	Mkosi func(round int, args []string) error
	// LocalMirror is --local-mirror= (OBS's is file:///.build.binaries/).
	LocalMirror string
	// ImageVersion is --image-version= (OBS's is the release, or 0).
	ImageVersion string
	// Args are more mkosi options, put before the verb.
	Args []string
	// Sign answers one round's request.
	Sign func(round int, r *request.Request) (*request.Response, error)
	// Options are those of Request for every round (OutputDir and
	// SourcesDir are set per round).
	Options Options
	// Log receives a line per step.
	Log io.Writer
}

// Command returns the mkosi command line OBS's build-recipe-mkosi runs.
func (o *Rounds) Command() []string {
	args := []string{"--output-dir=" + RootOther, "--checksum=yes", "--repository-key-check=no"}
	if o.LocalMirror != "" {
		args = append(args, "--local-mirror="+o.LocalMirror)
	}
	v := o.ImageVersion
	if v == "" {
		v = "0"
	}
	args = append(args, "--with-network=never")
	args = append(args, o.Args...)
	return append(args, "--directory="+RootSources, "--image-version="+v, "build")
}

// Run runs the rounds and returns how many mkosi ran; OTHER/ then holds
// the final artifacts.
func (o *Rounds) Run() (int, error) {
	src, other := filepath.Join(o.Packages, "SOURCES"), filepath.Join(o.Packages, "OTHER")
	for _, d := range []string{src, other} {
		if es, err := os.ReadDir(d); err == nil && len(es) > 0 {
			return 0, fmt.Errorf("%s is not empty: the rounds start from nothing", d)
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return 0, err
		}
	}
	if err := copyTree(o.Recipe, src); err != nil {
		return 0, fmt.Errorf("copying the recipe: %w", err)
	}
	if _, err := os.Stat(filepath.Join(src, "mkosi.conf")); err != nil {
		return 0, fmt.Errorf("recipe %s: no mkosi.conf", o.Recipe)
	}
	if err := os.WriteFile(filepath.Join(src, "_projectcert.crt"), o.CertificatePEM, 0o644); err != nil {
		return 0, err
	}
	for round := 1; ; round++ {
		o.logf("round %d: mkosi %s", round, strings.Join(o.Command(), " "))
		if err := o.Mkosi(round, o.Command()); err != nil {
			return round, fmt.Errorf("round %d: mkosi: %w", round, err)
		}
		archive := filepath.Join(other, ArchiveName)
		data, err := os.ReadFile(archive)
		if errors.Is(err, fs.ErrNotExist) {
			o.logf("round %d: nothing left to sign", round)
			return round, nil
		}
		if err != nil {
			return round, err
		}
		if round > MaxFollowups {
			return round, fmt.Errorf("round %d: mkosi still staged %s after %d follow-up builds, OBS's limit", round, ArchiveName, MaxFollowups)
		}
		a, err := ReadArchive(data)
		if err != nil {
			return round, fmt.Errorf("round %d: %s: %w", round, ArchiveName, err)
		}
		opts := o.Options
		opts.OutputDir, opts.SourcesDir = other, src
		r, err := Request(a, opts)
		if err != nil {
			return round, fmt.Errorf("round %d: %s: %w", round, ArchiveName, err)
		}
		r.Build = fmt.Sprintf("mkosi round %d", round)
		resp, err := o.Sign(round, r)
		if err != nil {
			return round, fmt.Errorf("round %d: %w", round, err)
		}
		var buf bytes.Buffer
		if err := WriteSignatures(&buf, a, SignatureMap(resp)); err != nil {
			return round, err
		}
		if err := atomicfile.WriteFile(archive+".sig", buf.Bytes(), 0o644); err != nil {
			return round, err
		}
		o.logf("round %d: signed %d members", round, len(resp.Items))
		if err := o.stage(src, other); err != nil {
			return round, fmt.Errorf("round %d: staging the next sources: %w", round, err)
		}
	}
}

// stage makes OTHER/'s files (OBS keeps files only), the answer among
// them, and the certificate the next SOURCES/, and empties OTHER/.
func (o *Rounds) stage(src, other string) error {
	next := src + ".next"
	if err := os.RemoveAll(next); err != nil {
		return err
	}
	if err := os.Mkdir(next, 0o755); err != nil {
		return err
	}
	es, err := os.ReadDir(other)
	if err != nil {
		return err
	}
	for _, e := range es {
		if e.Type().IsRegular() {
			if err := os.Rename(filepath.Join(other, e.Name()), filepath.Join(next, e.Name())); err != nil {
				return err
			}
		}
	}
	if err := os.WriteFile(filepath.Join(next, "_projectcert.crt"), o.CertificatePEM, 0o644); err != nil {
		return err
	}
	if err := os.RemoveAll(src); err != nil {
		return err
	}
	if err := os.RemoveAll(other); err != nil {
		return err
	}
	if err := os.Mkdir(other, 0o755); err != nil {
		return err
	}
	return os.Rename(next, src)
}

func (o *Rounds) logf(format string, a ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", a...)
	}
}

// Artifacts lists what a finished build publishes from OTHER/: its
// regular files but the recipe mkosi-obs leaves, the archives, and
// mkosi's own checksum files (made before the signatures were joined;
// SHA256SUMS is made again over the final files), sorted.
func Artifacts(other string) ([]string, error) {
	es, err := os.ReadDir(other)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range es {
		n := e.Name()
		if !e.Type().IsRegular() || n == "mkosi.conf" || strings.HasPrefix(n, ArchiveName) ||
			strings.HasSuffix(n, ".SHA256SUMS") || strings.HasSuffix(n, ".SHA256SUMS.gpg") || strings.HasSuffix(n, ".sha256") {
			continue
		}
		out = append(out, n)
	}
	slices.Sort(out)
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no artifacts", other)
	}
	return out, nil
}

// Publish copies the artifacts of OTHER/ into out and returns the
// SHA256SUMS over them (sha256sum's format, sorted by name), which it
// writes to out/SHA256SUMS.
func Publish(other, out string) ([]byte, error) {
	names, err := Artifacts(other)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	var paths []string
	for _, n := range names {
		dst := filepath.Join(out, n)
		if err := copyFile(filepath.Join(other, n), dst, 0o644); err != nil {
			return nil, err
		}
		paths = append(paths, dst)
	}
	entries, err := manifest.HashEntries(paths, nil)
	if err != nil {
		return nil, err
	}
	sums, err := manifest.Marshal(entries)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(filepath.Join(out, "SHA256SUMS"), sums, 0o644); err != nil {
		return nil, err
	}
	return sums, nil
}

// copyTree copies the regular files, directories and symbolic links under
// from into to.
func copyTree(from, to string) error {
	return filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, p)
		if err != nil {
			return err
		}
		dst := filepath.Join(to, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(dst, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, dst)
		case d.Type().IsRegular():
			return copyFile(p, dst, fi.Mode().Perm())
		}
		return fmt.Errorf("%s: not a file, directory or symbolic link", p)
	})
}

func copyFile(from, to string, mode fs.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	w, err := atomicfile.Create(to, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, in); err != nil {
		w.Close()
		return err
	}
	return w.Commit()
}
