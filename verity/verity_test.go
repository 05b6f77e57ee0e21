package verity

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"signet.dev/internal/testenv"
)

// pseudoRandom returns n reproducible bytes (AES-CTR keystream).
func pseudoRandom(n int, seed byte) []byte {
	blk, _ := aes.NewCipher(bytes.Repeat([]byte{seed}, 16))
	b := make([]byte, n)
	cipher.NewCTR(blk, make([]byte, 16)).XORKeyStream(b, b)
	return b
}

var rootRE = regexp.MustCompile(`Root hash:\s+([0-9a-f]+)`)

type formatCase struct {
	name     string
	size     int
	p        Params
	saltFlag string
}

func (c formatCase) args() []string {
	a := []string{"--hash=" + c.p.HashAlgorithm, fmt.Sprintf("--data-block-size=%d", c.p.DataBlockSize),
		fmt.Sprintf("--hash-block-size=%d", c.p.HashBlockSize), "--salt=" + c.saltFlag}
	if c.p.NoSuperblock {
		a = append(a, "--no-superblock")
	} else {
		u := c.p.UUID
		a = append(a, fmt.Sprintf("--uuid=%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:]))
	}
	return a
}

var uuid1 = [16]byte{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef, 0x81, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef}

func cases() []formatCase {
	salt := pseudoRandom(32, 9)
	return []formatCase{
		{"one-block", 4096, Params{HashAlgorithm: "sha256", DataBlockSize: 4096, HashBlockSize: 4096, NoSuperblock: true}, "-"},
		{"one-block-sb", 4096, Params{HashAlgorithm: "sha256", DataBlockSize: 4096, HashBlockSize: 4096, Salt: salt, UUID: uuid1}, hex.EncodeToString(salt)},
		{"4MiB-sb", 4 << 20, Params{HashAlgorithm: "sha256", DataBlockSize: 4096, HashBlockSize: 4096, Salt: salt, UUID: uuid1}, hex.EncodeToString(salt)},
		{"4MiB-nosb", 4 << 20, Params{HashAlgorithm: "sha256", DataBlockSize: 4096, HashBlockSize: 4096, Salt: salt, NoSuperblock: true}, hex.EncodeToString(salt)},
		{"partial-top-nosalt", 4096 * 300, Params{HashAlgorithm: "sha256", DataBlockSize: 4096, HashBlockSize: 4096, NoSuperblock: true}, "-"},
		// 512-byte blocks: 16 digests per hash block, so 5000 blocks make a
		// four-level tree with partial blocks at every level.
		{"512-4levels-sb", 512 * 5000, Params{HashAlgorithm: "sha256", DataBlockSize: 512, HashBlockSize: 512, Salt: []byte{0xab, 0xcd}, UUID: uuid1}, "abcd"},
		{"512-4levels-nosb", 512 * 5000, Params{HashAlgorithm: "sha256", DataBlockSize: 512, HashBlockSize: 512, Salt: []byte{0xab, 0xcd}, NoSuperblock: true}, "abcd"},
		{"mixed-1k-hash", 4096 * 777, Params{HashAlgorithm: "sha256", DataBlockSize: 4096, HashBlockSize: 1024, Salt: salt[:7], UUID: uuid1}, hex.EncodeToString(salt[:7])},
		{"sha1-stride", 4096 * 200, Params{HashAlgorithm: "sha1", DataBlockSize: 4096, HashBlockSize: 4096, Salt: salt, NoSuperblock: true}, hex.EncodeToString(salt)},
		{"sha512", 4096 * 200, Params{HashAlgorithm: "sha512", DataBlockSize: 1024, HashBlockSize: 4096, Salt: salt, UUID: uuid1}, hex.EncodeToString(salt)},
		{"max-salt", 4096 * 3, Params{HashAlgorithm: "sha256", DataBlockSize: 4096, HashBlockSize: 4096, Salt: pseudoRandom(256, 3), UUID: uuid1}, hex.EncodeToString(pseudoRandom(256, 3))},
	}
}

// TestFormatMatchesVeritysetup: the hash device and root hash equal what
// veritysetup format writes with the same options, and veritysetup verify
// accepts signet's hash device.
func TestFormatMatchesVeritysetup(t *testing.T) {
	vs := testenv.Tool(t, "veritysetup")
	for i, c := range cases() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			data := filepath.Join(dir, "data")
			if err := os.WriteFile(data, pseudoRandom(c.size, byte(i)), 0o644); err != nil {
				t.Fatal(err)
			}
			ref := filepath.Join(dir, "ref.hash")
			out := testenv.Run(t, vs, append(append([]string{"format"}, c.args()...), data, ref)...)
			m := rootRE.FindSubmatch(out)
			if m == nil {
				t.Fatalf("no root hash in %s", out)
			}
			mine := filepath.Join(dir, "signet.hash")
			root := formatFile(t, data, mine, c.p)
			if got := hex.EncodeToString(root); got != string(m[1]) {
				t.Fatalf("root hash %s, veritysetup %s", got, m[1])
			}
			a, _ := os.ReadFile(mine)
			b, _ := os.ReadFile(ref)
			if !bytes.Equal(a, b) {
				t.Fatalf("hash device differs from veritysetup's (%d vs %d bytes)", len(a), len(b))
			}
			l, err := ComputeLayout(int64(c.size), c.p)
			if err != nil || l.HashDeviceSize != int64(len(b)) {
				t.Fatalf("layout size %v, err %v; veritysetup wrote %d", l, err, len(b))
			}
			vargs := []string{"verify", data, mine, hex.EncodeToString(root)}
			if c.p.NoSuperblock {
				vargs = append([]string{"verify"}, append(c.args(), data, mine, hex.EncodeToString(root))...)
			}
			testenv.Run(t, vs, vargs...)
			// signet's Verify accepts veritysetup's tree.
			f, _ := os.Open(ref)
			defer f.Close()
			d, _ := os.Open(data)
			defer d.Close()
			if err := Verify(d, int64(c.size), f, root, c.p); err != nil {
				t.Fatalf("Verify: %v", err)
			}
		})
	}
}

func formatFile(t *testing.T, data, hash string, p Params) []byte {
	t.Helper()
	d, err := os.Open(data)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	st, _ := d.Stat()
	h, err := os.Create(hash)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	root, err := Format(d, st.Size(), h, p)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// TestFlippedByte: one changed data byte fails veritysetup verify (exit 2)
// and signet's Verify, at every level of a multi-level tree.
func TestFlippedByte(t *testing.T) {
	vs := testenv.Tool(t, "veritysetup")
	dir := t.TempDir()
	p := Params{HashAlgorithm: "sha256", DataBlockSize: 512, HashBlockSize: 512, Salt: []byte{1, 2, 3}, UUID: uuid1}
	size := 512 * 3000
	data := filepath.Join(dir, "data")
	orig := pseudoRandom(size, 5)
	os.WriteFile(data, orig, 0o644)
	hash := filepath.Join(dir, "hash")
	root := formatFile(t, data, hash, p)
	for _, at := range []int{0, 512*1500 + 7, size - 1} {
		mod := bytes.Clone(orig)
		mod[at] ^= 0x40
		os.WriteFile(data, mod, 0o644)
		out, err := testenv.RunErr(t, vs, "verify", data, hash, hex.EncodeToString(root))
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Fatalf("byte %d flipped: veritysetup verify err %v, want exit 2: %s", at, err, out)
		}
		d, _ := os.Open(data)
		h, _ := os.Open(hash)
		err = Verify(d, int64(size), h, root, p)
		d.Close()
		h.Close()
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("byte %d flipped: Verify = %v, want ErrCorrupt", at, err)
		}
	}
	// A wrong root hash is ErrRootHash, a short hash file ErrHashTooSmall.
	os.WriteFile(data, orig, 0o644)
	d, _ := os.Open(data)
	defer d.Close()
	bad := bytes.Clone(root)
	bad[0] ^= 1
	h, _ := os.Open(hash)
	if err := Verify(d, int64(size), h, bad, p); !errors.Is(err, ErrRootHash) {
		t.Fatalf("wrong root: %v", err)
	}
	h.Close()
	hb, _ := os.ReadFile(hash)
	os.WriteFile(hash, hb[:len(hb)-512], 0o644)
	h, _ = os.Open(hash)
	defer h.Close()
	if err := Verify(d, int64(size), h, root, p); !errors.Is(err, ErrHashTooSmall) {
		t.Fatalf("short hash: %v", err)
	}
}

func TestBadParams(t *testing.T) {
	for _, c := range []struct {
		size int64
		p    Params
		want error
	}{
		{4097, Params{}, ErrDataSize},
		{0, Params{}, ErrDataSize},
		{4096, Params{DataBlockSize: 1000}, ErrBadParams},
		{4096, Params{HashBlockSize: 256}, ErrBadParams},
		{4096, Params{HashAlgorithm: "md5"}, ErrBadParams},
		{4096, Params{Salt: make([]byte, 257)}, ErrBadParams},
	} {
		if _, err := ComputeLayout(c.size, c.p); !errors.Is(err, c.want) {
			t.Errorf("size %d %+v: %v, want %v", c.size, c.p, err, c.want)
		}
	}
}

// TestProgress: the callback reaches the total.
func TestProgress(t *testing.T) {
	data := pseudoRandom(8<<20, 1)
	var last, total int64
	h := &memDev{}
	_, err := Format(bytes.NewReader(data), int64(len(data)), h, Params{NoSuperblock: true, Progress: func(d, t int64) { last, total = d, t }})
	if err != nil || last != total || total != int64(len(data)) {
		t.Fatalf("progress %d/%d, err %v", last, total, err)
	}
}

type memDev struct{ b []byte }

func (m *memDev) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(m.b) {
		m.b = append(m.b, make([]byte, end-len(m.b))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *memDev) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(m.b).ReadAt(p, off)
}

func FuzzSuperblock(f *testing.F) {
	sb := Superblock{HashType: 1, Algorithm: "sha256", DataBlockSize: 4096, HashBlockSize: 4096, DataBlocks: 10, Salt: []byte{1, 2}}
	b, _ := sb.MarshalBinary()
	f.Add(b)
	f.Add(make([]byte, 512))
	f.Fuzz(func(t *testing.T, b []byte) {
		var sb Superblock
		if err := sb.UnmarshalBinary(b); err != nil {
			return
		}
		out, err := sb.MarshalBinary()
		if err != nil {
			t.Fatalf("parsed superblock does not marshal: %v", err)
		}
		var again Superblock
		if err := again.UnmarshalBinary(out); err != nil {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// TestReadPathMatchesMmap: the read(2) path gives the same tree as the
// mapped path the other tests use.
func TestReadPathMatchesMmap(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	os.WriteFile(data, pseudoRandom(4096*1000, 7), 0o644)
	p := Params{Salt: []byte{1}, UUID: uuid1}
	a := formatFile(t, data, filepath.Join(dir, "a"), p)
	useMmap = false
	defer func() { useMmap = true }()
	b := formatFile(t, data, filepath.Join(dir, "b"), p)
	x, _ := os.ReadFile(filepath.Join(dir, "a"))
	y, _ := os.ReadFile(filepath.Join(dir, "b"))
	if !bytes.Equal(a, b) || !bytes.Equal(x, y) {
		t.Fatal("read and mmap paths differ")
	}
}
