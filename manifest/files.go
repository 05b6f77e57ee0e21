package manifest

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
)

// Collect expands files and directories into the files a manifest lists.
// A file is taken as given; a directory contributes the regular files
// directly in it, except hidden ones (names starting with '.', which
// include signet's own temporary files) and SHA256SUMS and its signatures.
// Subdirectories are not descended into: sysupdate file names are single
// path components. Paths in exclude (the manifest being written) are left
// out. Two files with the same name are an error.
func Collect(args []string, exclude ...string) ([]string, error) {
	skip := func(p string) bool {
		for _, x := range exclude {
			if sameFile(p, x) {
				return true
			}
		}
		return false
	}
	var files []string
	seen := map[string]string{}
	add := func(p string) error {
		if skip(p) {
			return nil
		}
		name := filepath.Base(p)
		if err := ValidName(name); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if prev, ok := seen[name]; ok {
			return fmt.Errorf("%s and %s: both would be listed as %q", prev, p, name)
		}
		seen[name] = p
		files = append(files, p)
		return nil
	}
	for _, a := range args {
		fi, err := os.Stat(a)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			if !fi.Mode().IsRegular() {
				return nil, fmt.Errorf("%s: not a regular file", a)
			}
			if err := add(a); err != nil {
				return nil, err
			}
			continue
		}
		ents, err := os.ReadDir(a)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			n := e.Name()
			if strings.HasPrefix(n, ".") || isManifestName(n) {
				continue
			}
			p := filepath.Join(a, n)
			fi, err := os.Stat(p) // follows symlinks
			if err != nil {
				return nil, err
			}
			if !fi.Mode().IsRegular() {
				continue
			}
			if err := add(p); err != nil {
				return nil, err
			}
		}
	}
	if len(files) == 0 {
		return nil, errors.New("no files to list")
	}
	return files, nil
}

func isManifestName(n string) bool {
	switch n {
	case "SHA256SUMS", "SHA256SUMS.gpg", "SHA256SUMS.asc", "SHA256SUMS.sig", "SHA256SUMS.p7s":
		return true
	}
	return false
}

func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// Progress is told how many more bytes were hashed. It may be called from
// several goroutines at once.
type Progress func(delta int64)

// HashFiles computes the SHA-256 of each file, streaming, on all cores
// (one file per core at a time). digests[i] belongs to paths[i].
func HashFiles(paths []string, progress Progress) ([][sha256.Size]byte, error) {
	digests := make([][sha256.Size]byte, len(paths))
	errs := make([]error, len(paths))
	next := make(chan int)
	var wg sync.WaitGroup
	workers := min(runtime.GOMAXPROCS(0), len(paths))
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for i := range next {
				digests[i], errs[i] = hashFile(paths[i], buf, progress)
			}
		}()
	}
	// Largest first, so one big file does not start last and run alone.
	order := make([]int, len(paths))
	sizes := make([]int64, len(paths))
	for i, p := range paths {
		order[i] = i
		if fi, err := os.Stat(p); err == nil {
			sizes[i] = fi.Size()
		}
	}
	sort.SliceStable(order, func(a, b int) bool { return sizes[order[a]] > sizes[order[b]] })
	for _, i := range order {
		next <- i
	}
	close(next)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return digests, nil
}

func hashFile(path string, buf []byte, progress Progress) (d [sha256.Size]byte, err error) {
	f, err := os.Open(path)
	if err != nil {
		return d, err
	}
	defer f.Close()
	h := sha256.New()
	for {
		n, rerr := f.Read(buf)
		h.Write(buf[:n])
		if progress != nil && n > 0 {
			progress(int64(n))
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return d, fmt.Errorf("%s: %w", path, rerr)
		}
	}
	h.Sum(d[:0])
	return d, nil
}

// Create hashes the files Collect finds in args and returns the manifest
// entries, named by their base names.
func Create(args []string, progress Progress, exclude ...string) ([]Entry, error) {
	files, err := Collect(args, exclude...)
	if err != nil {
		return nil, err
	}
	return HashEntries(files, progress)
}

// HashEntries hashes files (as Collect returns them) into entries named by
// their base names.
func HashEntries(files []string, progress Progress) ([]Entry, error) {
	digests, err := HashFiles(files, progress)
	if err != nil {
		return nil, err
	}
	entries := make([]Entry, len(files))
	for i, f := range files {
		entries[i] = Entry{Name: filepath.Base(f), Digest: digests[i]}
	}
	return entries, nil
}

// CheckError lists the files that are missing or do not match.
type CheckError struct {
	Problems []string // "<name>: <what>"
}

func (e *CheckError) Error() string {
	if len(e.Problems) == 1 {
		return e.Problems[0]
	}
	return fmt.Sprintf("%d files do not match: %s", len(e.Problems), strings.Join(e.Problems, "; "))
}

// Check hashes every listed file in dir and compares it with its entry.
func Check(dir string, entries []Entry, progress Progress) error {
	var paths []string
	var listed []Entry
	ce := &CheckError{}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name)
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
			ce.Problems = append(ce.Problems, e.Name+": missing")
			continue
		}
		paths = append(paths, p)
		listed = append(listed, e)
	}
	digests, err := HashFiles(paths, progress)
	if err != nil {
		return err
	}
	for i, e := range listed {
		if digests[i] != e.Digest {
			ce.Problems = append(ce.Problems, e.Name+": SHA-256 does not match")
		}
	}
	if len(ce.Problems) > 0 {
		return ce
	}
	return nil
}
