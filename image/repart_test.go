package image

import (
	"bytes"
	"compress/gzip"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"signet.dev/internal/testenv"
	"signet.dev/keys"
	"signet.dev/verity"
)

const (
	vectorSeed     = "6b8f7e2a-1c3d-4e5f-9a0b-7c6d5e4f3a2b"
	goldenImage    = "677ba745e1478b202e6182ac6d8b1b1de919a8f350b93407fa6dc90e6a54068d"
	goldenDeferred = "a5d3961f49fcdfc50fe93a1adca33a30a6262a4ec6b698526b0c70d9fda2f885"
)

// vectorDefs copies the v258-repart definitions into a temporary directory
// with data.bin regenerated as its README says (AES-128-CTR of zeros).
func vectorDefs(t *testing.T) (dir string, v string) {
	t.Helper()
	v = testenv.Vectors(t, "v258-repart")
	dir = t.TempDir()
	ents, _ := os.ReadDir(filepath.Join(v, "defs"))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(v, "defs", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644)
	}
	key, _ := hex.DecodeString("000102030405060708090a0b0c0d0e0f")
	blk, _ := aes.NewCipher(key)
	data := make([]byte, 4<<20)
	cipher.NewCTR(blk, make([]byte, 16)).XORKeyStream(data, data)
	os.WriteFile(filepath.Join(dir, "data.bin"), data, 0o644)
	return dir, v
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func vectorKey(t *testing.T, v string) (keys.Signer, Options) {
	s, err := keys.Open("file", filepath.Join(v, "test-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	cert, err := keys.LoadCertificate(filepath.Join(v, "test-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := ParseGUID(vectorSeed)
	// The vectors are systemd-repart 258.10's: the 252-261 size formula.
	return s, Options{Seed: seed, Signer: s, Certificate: cert, LegacySize: true}
}

// TestGoldenRepart258: online signing and defer + join both give
// systemd-repart 258.10's image byte for byte, and the report matches its
// --json output.
func TestGoldenRepart258(t *testing.T) {
	dir, v := vectorDefs(t)
	defs, err := ReadDefinitions(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, o := vectorKey(t, v)
	out := t.TempDir()

	online := filepath.Join(out, "online.raw")
	rep, err := Build(online, defs, o)
	if err != nil {
		t.Fatal(err)
	}
	gz, _ := os.Open(filepath.Join(v, "image.raw.gz"))
	defer gz.Close()
	zr, err := gzip.NewReader(gz)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := io.ReadAll(zr)
	got, _ := os.ReadFile(online)
	if !bytes.Equal(got, want) {
		t.Fatalf("online image differs from repart 258's (%d vs %d bytes)", len(got), len(want))
	}
	if s := fileSHA(t, online); s != goldenImage {
		t.Fatalf("sha256 %s", s)
	}
	checkReport(t, v, rep, online)

	deferred := filepath.Join(out, "img.raw")
	od := o
	od.Signer, od.Certificate = nil, nil
	od.Defer = func(pt PartType) bool { return pt.Verity() == "signature" }
	rep, err = Build(deferred, defs, od)
	if err != nil {
		t.Fatal(err)
	}
	if s := fileSHA(t, deferred); s != goldenDeferred {
		t.Fatalf("deferred image sha256 %s, want %s", s, goldenDeferred)
	}
	if len(rep.Pending) != 1 || hex.EncodeToString(rep.Pending[0]) != "a35b29a57b77cdfb5c0807fb99724e4361a808c86b2a1b1615d56b1cf2ae51d8" {
		t.Fatalf("pending %x", rep.Pending)
	}
	p7, _ := os.ReadFile(filepath.Join(v, "usr-verity-sig.p7s"))
	payload, err := verity.JoinPKCS7(o.Certificate, rep.Pending[0], p7)
	if err != nil {
		t.Fatal(err)
	}
	// A signature for another root hash is refused, image untouched.
	other := *payload
	other.RootHash = bytes.Clone(payload.RootHash)
	other.RootHash[0] ^= 1
	if _, err := Join(deferred, defs, o.Certificate, []*verity.SignaturePayload{payload, &other}, od); err == nil {
		t.Fatal("Join accepted a signature for a root hash the image does not have")
	}
	if s := fileSHA(t, deferred); s != goldenDeferred {
		t.Fatal("failed join changed the image")
	}
	if _, err := Join(deferred, defs, o.Certificate, []*verity.SignaturePayload{payload}, od); err != nil {
		t.Fatal(err)
	}
	if s := fileSHA(t, deferred); s != goldenImage {
		t.Fatalf("joined image sha256 %s", s)
	}
	// Joining again: the partition is there now.
	if _, err := Join(deferred, defs, o.Certificate, []*verity.SignaturePayload{payload}, od); !errors.Is(err, ErrJoin) {
		t.Fatalf("second join: %v", err)
	}
}

func checkReport(t *testing.T, v string, rep *Report, node string) {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(v, "repart.json"))
	var want []PartitionReport
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	var got []PartitionReport
	json.Unmarshal(rep.JSON(""), &got)
	if len(got) != len(want) {
		t.Fatalf("%d partitions reported", len(got))
	}
	for i := range want {
		want[i].Node, got[i].Node = "", ""
		// 258 reported the definition's base name, 262 (and signet) the
		// absolute path.
		if !filepath.IsAbs(got[i].File) || filepath.Base(got[i].File) != want[i].File {
			t.Errorf("partition %d: file %q, want the absolute path of %s", i, got[i].File, want[i].File)
		}
		got[i].File = want[i].File
		if got[i] != want[i] {
			t.Errorf("partition %d: got %+v\nwant %+v", i, got[i], want[i])
		}
	}
}

// TestRepartErrors: bad definitions and inputs fail with a clear error and
// write nothing.
func TestRepartErrors(t *testing.T) {
	dir, v := vectorDefs(t)
	_, o := vectorKey(t, v)
	out := filepath.Join(t.TempDir(), "x.raw")
	defs, _ := ReadDefinitions(dir)
	noKey := o
	noKey.Signer = nil
	if _, err := Build(out, defs, noKey); !errors.Is(err, ErrNoSigner) {
		t.Fatalf("no signer: %v", err)
	}
	big := filepath.Join(dir, "data.bin")
	os.WriteFile(big, make([]byte, 5<<20), 0o644)
	if _, err := Build(out, defs, o); err == nil {
		t.Fatal("CopyBlocks larger than SizeMaxBytes accepted")
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatal("failed build left an image")
	}
}

// TestVerityBlockSizes: block sizes set on either definition of the pair
// reach the tree, and veritysetup agrees on the root hash.
func TestVerityBlockSizes(t *testing.T) {
	vs := testenv.Tool(t, "veritysetup")
	dir := t.TempDir()
	data := pseudoData(3 << 20)
	os.WriteFile(filepath.Join(dir, "d.bin"), data, 0o644)
	os.WriteFile(filepath.Join(dir, "1.conf"), []byte("[Partition]\nType=root\nVerity=data\nVerityMatchKey=r\nCopyBlocks=d.bin\nVerityDataBlockSizeBytes=512\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "2.conf"), []byte("[Partition]\nType=root-verity\nVerity=hash\nVerityMatchKey=r\nVerityHashBlockSizeBytes=1K\n"), 0o644)
	defs, err := ReadDefinitions(dir)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "i.raw")
	rep, err := Build(img, defs, Options{Seed: GUID{7}})
	if err != nil {
		t.Fatal(err)
	}
	f, tab := readImage(t, img)
	hr := io.NewSectionReader(f, tab.Entries[1].Offset(), tab.Entries[1].Size())
	sb, err := verity.ReadSuperblock(hr)
	if err != nil || sb.DataBlockSize != 512 || sb.HashBlockSize != 1024 {
		t.Fatalf("superblock %+v, %v", sb, err)
	}
	dp, hp := filepath.Join(t.TempDir(), "d"), filepath.Join(t.TempDir(), "h")
	carve(t, io.NewSectionReader(f, tab.Entries[0].Offset(), tab.Entries[0].Size()), dp)
	carve(t, hr, hp)
	testenv.Run(t, vs, "verify", dp, hp, hex.EncodeToString(rep.RootHashes[0]))
}

func pseudoData(n int) []byte {
	blk, _ := aes.NewCipher(make([]byte, 16))
	b := make([]byte, n)
	cipher.NewCTR(blk, make([]byte, 16)).XORKeyStream(b, b)
	return b
}

// Minimize= as mkosi writes it on the hash partition is accepted (the hash
// partition is always minimal); elsewhere, or with a bad value, it is an
// error naming the file.
func TestMinimize(t *testing.T) {
	for _, c := range []struct {
		body string
		ok   bool
	}{
		{"[Partition]\nType=usr-verity\nVerity=hash\nVerityMatchKey=usr\nMinimize=best\n", true},
		{"[Partition]\nMinimize=guess\nType=usr-verity\nVerity=hash\nVerityMatchKey=usr\n", true},
		{"[Partition]\nType=usr-verity\nVerity=hash\nVerityMatchKey=usr\nMinimize=no\n", true},
		{"[Partition]\nType=usr\nVerity=data\nVerityMatchKey=usr\nCopyBlocks=x\nMinimize=best\n", false},
		{"[Partition]\nType=usr-verity\nVerity=hash\nVerityMatchKey=usr\nMinimize=smallest\n", false},
	} {
		_, err := ParseDefinition(strings.NewReader(c.body), "20-x.conf")
		if (err == nil) != c.ok || (err != nil && (!errors.Is(err, ErrDefinition) || !strings.Contains(err.Error(), "20-x.conf"))) {
			t.Errorf("%q: %v", c.body, err)
		}
	}
}
