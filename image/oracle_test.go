package image

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"signet.dev/internal/testenv"
	"signet.dev/verity"
)

// TestRepartV252Oracle builds the vector's definitions with Debian 12's
// systemd-repart 252 and with signet, and compares what the two versions
// share (252 uses 512-byte verity blocks and a random salt, so not bytes):
// the disk UUID, partition types and labels, the seed-derived signature
// partition UUID, data/hash UUIDs from each image's own root hash, and the
// signature payload (the same JSON layout and, for RSA, the same PKCS#7
// signet makes for 252's root hash). veritysetup verifies 252's carved
// partitions with that root hash, and signet's verity.Verify agrees.
func TestRepartV252Oracle(t *testing.T) {
	repart := testenv.Tool(t, "systemd-repart")
	vs := testenv.Tool(t, "veritysetup")
	dir, v := vectorDefs(t)
	// repart 252 wants an absolute CopyBlocks= path and a private key file
	// that is not world-readable.
	conf := filepath.Join(dir, "10-usr.conf")
	b, _ := os.ReadFile(conf)
	os.WriteFile(conf, []byte(strings.ReplaceAll(string(b), "CopyBlocks=data.bin", "CopyBlocks="+filepath.Join(dir, "data.bin"))), 0o644)
	key := filepath.Join(t.TempDir(), "key.pem")
	kb, _ := os.ReadFile(filepath.Join(v, "test-key.pem"))
	os.WriteFile(key, kb, 0o600)
	out := t.TempDir()
	theirs := filepath.Join(out, "r252.raw")
	testenv.Run(t, repart, "--empty=create", "--size=auto", "--dry-run=no", "--seed="+vectorSeed,
		"--private-key="+key, "--certificate="+filepath.Join(v, "test-cert.pem"), "--definitions="+dir, theirs)

	defs, err := ReadDefinitions(dir)
	if err != nil {
		t.Fatal(err)
	}
	signer, o := vectorKey(t, v)
	ours := filepath.Join(out, "signet.raw")
	if _, err := Build(ours, defs, o); err != nil {
		t.Fatal(err)
	}
	a, at := readImage(t, ours)
	bImg, bt := readImage(t, theirs)
	if at.DiskGUID != bt.DiskGUID {
		t.Errorf("disk UUID %s, repart 252 %s", at.DiskGUID, bt.DiskGUID)
	}
	for i := 0; i < 3; i++ {
		ae, be := at.Entries[i], bt.Entries[i]
		if ae.Type != be.Type || ae.Name != be.Name {
			t.Errorf("partition %d: %s %q, repart 252 %s %q", i+1, ae.Type, ae.Name, be.Type, be.Name)
		}
	}
	if at.Entries[2].UUID != bt.Entries[2].UUID {
		t.Errorf("signature partition UUID %s, repart 252 %s", at.Entries[2].UUID, bt.Entries[2].UUID)
	}
	for _, img := range []struct {
		name string
		f    *os.File
		t    *Table
	}{{"signet", a, at}, {"repart 252", bImg, bt}} {
		data, hash, sigp := img.t.Entries[0], img.t.Entries[1], img.t.Entries[2]
		hr := io.NewSectionReader(img.f, hash.Offset(), hash.Size())
		sb, err := verity.ReadSuperblock(hr)
		if err != nil {
			t.Fatalf("%s: %v", img.name, err)
		}
		root, err := verity.RootFromTree(hr, sb)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(data.UUID[:], root[:16]) || !bytes.Equal(hash.UUID[:], root[16:]) {
			t.Errorf("%s: partition UUIDs %s %s are not the halves of root hash %x", img.name, data.UUID, hash.UUID, root)
		}
		dr := io.NewSectionReader(img.f, data.Offset(), data.Size())
		if err := verity.Verify(dr, sb.DataSize(), hr, root, sb.Params()); err != nil {
			t.Errorf("%s: %v", img.name, err)
		}
		dp, hp := filepath.Join(out, "data.part"), filepath.Join(out, "hash.part")
		carve(t, dr, dp)
		carve(t, hr, hp)
		testenv.Run(t, vs, "verify", dp, hp, hex.EncodeToString(root))

		raw := make([]byte, sigp.Size())
		img.f.ReadAt(raw, sigp.Offset())
		p, err := verity.ParseSignaturePayload(raw)
		if err != nil {
			t.Fatalf("%s: %v", img.name, err)
		}
		if !bytes.Equal(p.RootHash, root) {
			t.Errorf("%s: payload root hash %x, tree %x", img.name, p.RootHash, root)
		}
		fp := sha256.Sum256(o.Certificate.Raw)
		if !bytes.Equal(p.CertificateFingerprint, fp[:]) {
			t.Errorf("%s: certificate fingerprint %x", img.name, p.CertificateFingerprint)
		}
		// Same JSON layout: signet's marshalling of the parsed payload is
		// the partition's content up to its NUL padding.
		if j := bytes.TrimRight(raw, "\x00"); !bytes.Equal(p.Marshal(), j) || len(j) != len(raw)-bytes.Count(raw[len(j):], []byte{0}) {
			t.Errorf("%s: payload layout differs:\n%s", img.name, j)
		}
		mine, err := verity.Sign(signer, o.Certificate, root)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(mine.Signature, p.Signature) {
			t.Errorf("%s: PKCS#7 differs from signet's for the same root hash", img.name)
		}
	}
}

func readImage(t *testing.T, path string) (*os.File, *Table) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, _ := f.Stat()
	tab, err := Read(f, st.Size())
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return f, tab
}

func carve(t *testing.T, r io.Reader, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, r); err != nil {
		t.Fatal(err)
	}
}

// TestRepartV252Plain: without verity (where 252 and 258 agree), signet's
// image equals systemd-repart 252's byte for byte: labels made unique,
// seed-derived UUIDs with the per-type instance counter, sizes, layout.
func TestRepartV252Plain(t *testing.T) {
	repart := testenv.Tool(t, "systemd-repart")
	dir := t.TempDir()
	for name, body := range map[string]string{
		"10-a.conf":     "[Partition]\nType=linux-generic\nSizeMinBytes=1M\n",
		"11-b.conf":     "[Partition]\nType=linux-generic\nSizeMinBytes=1M\n",
		"20-esp.conf":   "[Partition]\nType=esp\nSizeMinBytes=3M\nSizeMaxBytes=3M\n",
		"30-var.conf":   "[Partition]\nType=var\nLabel=state\nSizeMinBytes=100K\n",
		"40-root.conf":  "[Partition]\nType=root\nSizeMinBytes=100K\n",
		"41-home.conf":  "[Partition]\nType=home\nSizeMinBytes=64K\nReadOnly=yes\n",
		"42-xboot.conf": "[Partition]\nType=xbootldr\nSizeMinBytes=64K\n",
		"43-uh.conf":    "[Partition]\nType=user-home\nSizeMinBytes=64K\nUUID=a35b29a5-7b77-cdfb-5c08-07fb99724e43\n",
		"44-swap.conf":  "[Partition]\nType=swap\nSizeMinBytes=64K\n",
	} {
		os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644)
	}
	out := t.TempDir()
	theirs := filepath.Join(out, "r252.raw")
	testenv.Run(t, repart, "--empty=create", "--size=auto", "--dry-run=no", "--seed="+vectorSeed, "--definitions="+dir, theirs)
	defs, err := ReadDefinitions(dir)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := ParseGUID(vectorSeed)
	ours := filepath.Join(out, "signet.raw")
	if _, err := Build(ours, defs, Options{Seed: seed, LegacySize: true}); err != nil { // 252 sizes as 258-261
		t.Fatal(err)
	}
	a, _ := os.ReadFile(ours)
	b, _ := os.ReadFile(theirs)
	if !bytes.Equal(a, b) {
		_, at := readImage(t, ours)
		_, bt := readImage(t, theirs)
		for i := 0; i < 9; i++ {
			t.Logf("signet %+v\nrepart %+v", at.Entries[i], bt.Entries[i])
		}
		t.Fatalf("image differs from repart 252's (%d vs %d bytes)", len(a), len(b))
	}
}
