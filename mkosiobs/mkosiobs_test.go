package mkosiobs_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/mkosiobs"
	"signet.dev/request"
	"signet.dev/request/check"
)

// round1 makes what mkosi-obs's first round leaves in OBS's OTHER/: a UKI
// made by ukify with --policy-digest and its .pcrs (the exact command
// mkosi runs), a split root hash, and the hashes/ tree packed by GNU cpio
// as mkosi.postoutput packs it. It returns the output directory, the
// archive and the key.
func round1(t *testing.T, ukifyArgs ...string) (string, []byte, *testkeys.Key) {
	t.Helper()
	testenv.Tool(t, "cpio")
	dir := testenv.SidDir(t)
	k := testkeys.Write(t, testkeys.RSA2048, testkeys.Generate(t, testkeys.RSA2048).Signer, dir)
	out := filepath.Join(dir, "OTHER")
	hashes := filepath.Join(dir, "hashes")
	for _, d := range []string{out, hashes + "/pcrs/img.efi", hashes + "/roothashes"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p string, b []byte) {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(dir+"/vmlinuz", bytes.Repeat([]byte("kernel"), 1000))
	write(dir+"/initrd", []byte("070701 initrd"))
	write(dir+"/osrel", []byte("ID=test\n"))
	pcrs := testenv.Sid(t, "ukify", append([]string{"build", "--linux", dir + "/vmlinuz", "--initrd", dir + "/initrd",
		"--cmdline", "console=ttyS0", "--os-release", "@" + dir + "/osrel", "--uname", "6.1.0",
		"--policy-digest", "--pcr-banks", "sha256", "--pcr-certificate", k.CertPath, "--json=short",
		"--output", out + "/img.efi"}, ukifyArgs...)...)
	write(out+"/img.pcrs", pcrs)
	var doc map[string][]struct{ Pol, TBS string }
	if err := json.Unmarshal(pcrs, &doc); err != nil || len(doc["sha256"]) == 0 {
		t.Fatalf("ukify --policy-digest output %q: %v", pcrs, err)
	}
	// Staged by tbs, falling back to pol, as mkosi-obs does since
	// systemd/mkosi#4447 (before, by pol: the same bytes without a
	// policy reference).
	for _, e := range doc["sha256"] {
		name := e.TBS
		if name == "" {
			name = e.Pol
		}
		b, _ := hex.DecodeString(name)
		write(hashes+"/pcrs/img.efi/"+name, b)
	}
	rh := strings.Repeat("5a", 32)
	write(out+"/img.roothash", []byte(rh))
	write(hashes+"/roothashes/img.roothash", []byte(rh))
	return out, cpioPack(t, hashes), k
}

// cpioPack packs a tree as mkosi.postoutput does:
// find . -type f | cpio -H newc -o.
func cpioPack(t *testing.T, dir string) []byte {
	t.Helper()
	cmd := exec.Command("sh", "-c", "find . -type f | LC_ALL=C sort | cpio --quiet -H newc -o")
	cmd.Dir = dir
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio: %v", err)
	}
	return b
}

func keyOf(k *testkeys.Key) map[string]request.Key {
	return map[string]request.Key{"obs": {Signer: k.Signer, Certificate: k.Cert, Kinds: request.Kinds}}
}

// signArchive is what signet mkosi sign does.
func signArchive(t *testing.T, out string, data []byte, k *testkeys.Key) ([]byte, *request.Request) {
	t.Helper()
	a, err := mkosiobs.ReadArchive(data)
	if err != nil {
		t.Fatal(err)
	}
	r, err := mkosiobs.Request(a, mkosiobs.Options{OutputDir: out, Key: "obs"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := request.Sign(r, keyOf(k), check.Item)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := mkosiobs.WriteSignatures(&buf, a, mkosiobs.SignatureMap(resp)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), r
}

// verifyWithOpenSSL unpacks both archives with GNU cpio and checks each
// member's .sig with openssl dgst -sha256 -verify, as obs-sign's answers
// verify.
func verifyWithOpenSSL(t *testing.T, in, sig []byte, k *testkeys.Key, want int) {
	t.Helper()
	d := t.TempDir()
	for _, b := range [][]byte{in, sig} {
		cmd := exec.Command("cpio", "--quiet", "-idm")
		cmd.Dir = d
		cmd.Stdin = bytes.NewReader(b)
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cpio -idm: %v\n%s", err, o)
		}
	}
	n := 0
	err := filepath.Walk(d, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || strings.HasSuffix(p, ".sig") {
			return err
		}
		n++
		testenv.Contains(t, testenv.Run(t, "openssl", "dgst", "-sha256", "-verify", k.PubPath, "-signature", p+".sig", p), "Verified OK")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != want {
		t.Fatalf("%d members verified, want %d", n, want)
	}
}

func TestRound1(t *testing.T) {
	out, data, k := round1(t)
	sig, r := signArchive(t, out, data, k)
	if len(r.Items) != 5 {
		t.Fatalf("%d items, want 4 PCR policies and a root hash", len(r.Items))
	}
	for _, it := range r.Items {
		if strings.HasPrefix(it.ID, "pcrs/") && (it.PCR == nil || it.PCR.UKI != "img.efi") {
			t.Errorf("item %s: no PCR context from the UKI", it.ID)
		}
	}
	verifyWithOpenSSL(t, data, sig, k, 5)
	// obs-sign's layout: headers copied, no block padding after the
	// trailer.
	if len(sig)%512 == 0 || !bytes.Contains(sig, []byte("TRAILER!!!")) {
		t.Errorf("answer of %d bytes: want obs-sign's unpadded layout", len(sig))
	}
}

// TestRound1PolicyRef: mkosi's SignInitrdPCRs= makes ukify 262 add a
// policy bound to the reference "initrd" (64-byte tbs).
func TestRound1PolicyRef(t *testing.T) {
	out, data, k := round1(t, "--sign-initrd-pcrs")
	sig, r := signArchive(t, out, data, k)
	refs := 0
	for _, it := range r.Items {
		if it.PCR != nil && it.PCR.Ref == "initrd" {
			refs++
			if len(it.TBS) != 64 || it.PCR.Phase != "enter-initrd" {
				t.Errorf("item %s: %d-byte tbs, phase %q", it.ID, len(it.TBS), it.PCR.Phase)
			}
		}
	}
	if refs != 1 || len(r.Items) != 6 {
		t.Fatalf("%d items, %d with a policy reference; want 6 and 1", len(r.Items), refs)
	}
	verifyWithOpenSSL(t, data, sig, k, 6)
}

// TestRound2 signs the UKI's Authenticode attributes as pesign -E stages
// them, then joins the signature with pesign -I -R and checks the result
// with sbverify: with Debian 12's pesign 0.112 and with sid's pesign 117,
// which encode SpcIndirectDataContent differently.
func TestRound2(t *testing.T) {
	t.Run("pesign-0.112", func(t *testing.T) {
		testenv.Tool(t, "pesign")
		testenv.Tool(t, "certutil")
		round2(t, func(name string, args ...string) { testenv.Run(t, name, args...) })
	})
	t.Run("pesign-sid", func(t *testing.T) {
		round2(t, func(name string, args ...string) { testenv.Sid(t, name, args...) })
	})
}

func round2(t *testing.T, run func(name string, args ...string)) {
	out, _, k := round1(t)
	testenv.Tool(t, "sbverify")
	work := testenv.SidDir(t)
	nss := work + "/nss"
	hashes := work + "/hashes"
	for _, d := range []string{nss, hashes + "/ukis"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run("certutil", "-N", "-d", "sql:"+nss, "--empty-password")
	run("certutil", "-A", "-d", "sql:"+nss, "-n", "cert", "-t", "CT,CT,CT", "-i", k.CertPath)
	// mkosi.postoutput: pesign --force -n sql:nss-db -i UKI -E hashes/ukis/UKI
	run("pesign", "--force", "-n", "sql:"+nss, "-i", out+"/img.efi", "-E", hashes+"/ukis/img.efi")
	data := cpioPack(t, hashes)
	sig, _ := signArchive(t, out, data, k)
	verifyWithOpenSSL(t, data, sig, k, 1)

	a, err := mkosiobs.ReadArchive(sig)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Members) != 1 || a.Members[0].Name != "ukis/img.efi.sig" {
		t.Fatalf("answer members %+v", a.Members)
	}
	sigFile := filepath.Join(hashes, "ukis/img.efi.sig")
	if err := os.WriteFile(sigFile, a.Members[0].Data, 0o644); err != nil {
		t.Fatal(err)
	}
	// mkosi.build: pesign … -c cert -i UKI -o OUT -d sha256 -I attrs -R sig
	signed := filepath.Join(work, "img.efi")
	run("pesign", "-n", "sql:"+nss, "--force", "-c", "cert", "-i", out+"/img.efi", "-o", signed, "-d", "sha256", "-I", hashes+"/ukis/img.efi", "-R", sigFile)
	testenv.Contains(t, testenv.Run(t, "sbverify", "--cert", k.CertPath, signed), "Signature verification OK")
}

func refusal(t *testing.T, err error, member, reason string) {
	t.Helper()
	var ref *mkosiobs.Refusal
	if !errors.As(err, &ref) {
		t.Fatalf("got %v, want a refusal of %s", err, member)
	}
	if ref.Member != member || !strings.Contains(ref.Reason, reason) {
		t.Fatalf("refusal %q, want member %s because %q", err, member, reason)
	}
}

func TestRefusals(t *testing.T) {
	out, data, _ := round1(t)
	a, err := mkosiobs.ReadArchive(data)
	if err != nil {
		t.Fatal(err)
	}
	req := func(edit func(a *mkosiobs.Archive)) error {
		b := &mkosiobs.Archive{Trailer: a.Trailer}
		for _, m := range a.Members {
			m.Data = bytes.Clone(m.Data)
			b.Members = append(b.Members, m)
		}
		edit(b)
		_, err := mkosiobs.Request(b, mkosiobs.Options{OutputDir: out, Key: "obs"})
		return err
	}
	pcr := func(b *mkosiobs.Archive) *mkosiobs.Member {
		for i := range b.Members {
			if strings.HasPrefix(b.Members[i].Path, "pcrs/") {
				return &b.Members[i]
			}
		}
		t.Fatal("no pcrs member")
		return nil
	}
	if _, err := mkosiobs.Request(a, mkosiobs.Options{OutputDir: out, Key: "obs"}); err != nil {
		t.Fatalf("unedited archive: %v", err)
	}
	refusal(t, req(func(b *mkosiobs.Archive) {
		b.Members = append(b.Members, mkosiobs.Member{Name: "extra/x", Path: "extra/x", Data: []byte("x")})
	}), "extra/x", "none of mkosi-obs's")
	refusal(t, req(func(b *mkosiobs.Archive) {
		m := pcr(b)
		m.Data[0] ^= 1
	}), pcr(a).Name, "not the policy")
	refusal(t, req(func(b *mkosiobs.Archive) {
		// A well-formed policy the UKI does not produce.
		m := pcr(b)
		m.Data = bytes.Repeat([]byte{7}, 32)
		m.Path = "pcrs/img.efi/" + hex.EncodeToString(m.Data)
		m.Name = m.Path
	}), "pcrs/img.efi/"+strings.Repeat("07", 32), "does not list")
	refusal(t, req(func(b *mkosiobs.Archive) {
		for i := range b.Members {
			if strings.HasPrefix(b.Members[i].Path, "roothashes/") {
				b.Members[i].Data = []byte(strings.Repeat("6b", 32))
			}
		}
	}), "roothashes/img.roothash", "differs from the output directory")
	refusal(t, req(func(b *mkosiobs.Archive) {
		b.Members = append(b.Members, mkosiobs.Member{Name: "ukis/img.efi", Path: "ukis/img.efi", Data: []byte("not attributes")})
	}), "ukis/img.efi", "tbs")
	refusal(t, req(func(b *mkosiobs.Archive) {
		b.Members = append(b.Members, mkosiobs.Member{Name: "ukis/../x", Path: "ukis/../x", Data: []byte("x")})
	}), "ukis/../x", "clean relative path")
	refusal(t, req(func(b *mkosiobs.Archive) {
		b.Members = append(b.Members, mkosiobs.Member{Name: "authvars/db.auth", Path: "authvars/db.auth", Data: []byte("x")})
	}), "authvars/db.auth", "project certificate")

	// The UKI changed after the archive was made: every policy disagrees.
	f, err := os.OpenFile(out+"/img.pcrs", os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"sha256":[]}`)
	f.Close()
	if _, err := mkosiobs.Request(a, mkosiobs.Options{OutputDir: out, Key: "obs"}); err == nil || !strings.Contains(err.Error(), "does not list") {
		t.Fatalf("got %v, want a refusal", err)
	}
}

func TestReadArchiveNames(t *testing.T) {
	// Directories and block padding, as GNU cpio writes them from
	// "find . | cpio" (GNU cpio strips "./").
	testenv.Tool(t, "cpio")
	d := t.TempDir()
	os.MkdirAll(d+"/roothashes", 0o755)
	os.WriteFile(d+"/roothashes/a.roothash", []byte("x"), 0o755)
	cmd := exec.Command("sh", "-c", "find . | cpio --quiet -H newc -o")
	cmd.Dir = d
	data, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if len(data)%512 != 0 {
		t.Fatalf("GNU cpio wrote %d bytes, want block padding", len(data))
	}
	a, err := mkosiobs.ReadArchive(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Members) != 1 || a.Members[0].Path != "roothashes/a.roothash" || a.Members[0].Header.Mode != 0o100755 {
		t.Fatalf("members %+v", a.Members)
	}

	// "./" names (another cpio writer keeps them) are answered as named.
	var in bytes.Buffer
	cw := cpio.NewWriter(&in)
	cw.WriteHeader(&cpio.Header{Name: "./roothashes/a.roothash", Mode: cpio.TypeReg | 0o755, Size: 1, Links: 1})
	cw.Write([]byte("x"))
	cw.Close()
	a, err = mkosiobs.ReadArchive(in.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Members) != 1 || a.Members[0].Name != "./roothashes/a.roothash" || a.Members[0].Path != "roothashes/a.roothash" {
		t.Fatalf("members %+v", a.Members)
	}
	var buf bytes.Buffer
	if err := mkosiobs.WriteSignatures(&buf, a, map[string][]byte{"roothashes/a.roothash": []byte("SIG")}); err != nil {
		t.Fatal(err)
	}
	// GNU cpio reads the answer, with the input's mode kept.
	cmd = exec.Command("cpio", "--quiet", "-itv")
	cmd.Stdin = &buf
	o, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, o)
	}
	testenv.Contains(t, o, "-rwxr-xr-x")
	testenv.Contains(t, o, "./roothashes/a.roothash.sig")

	// Bad archives are errors, not panics.
	for _, bad := range [][]byte{nil, []byte("070702"), data[:200], bytes.Replace(data, []byte("TRAILER!!!"), []byte("TRAILER!!?"), 1)} {
		if _, err := mkosiobs.ReadArchive(bad); err == nil {
			t.Errorf("archive %q read without error", bad[:min(len(bad), 16)])
		}
	}
}

func FuzzReadArchive(f *testing.F) {
	var buf bytes.Buffer
	a := &mkosiobs.Archive{Members: []mkosiobs.Member{{Name: "./pcrs/u.efi/00", Path: "pcrs/u.efi/00", Header: mkosiobs.Header{Mode: 0o100644}}}}
	mkosiobs.WriteSignatures(&buf, a, map[string][]byte{"pcrs/u.efi/00": {1, 2, 3}})
	f.Add(buf.Bytes())
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := mkosiobs.ReadArchive(data)
		if err != nil {
			return
		}
		sigs := map[string][]byte{}
		n := 0
		for _, m := range a.Members {
			mkosiobs.Classify(&m)
			sigs[m.Path] = []byte{1}
			if !mkosiobs.Companion(&m) {
				n++
			}
		}
		var out bytes.Buffer
		if err := mkosiobs.WriteSignatures(&out, a, sigs); err != nil {
			t.Fatal(err)
		}
		b, err := mkosiobs.ReadArchive(out.Bytes())
		if err != nil || len(b.Members) != n {
			t.Fatalf("answer does not read back: %v", err)
		}
	})
}

// TestMkosiFixture signs an archive real mkosi 27.1 made (mkosi-obs round
// 1 of a verity disk image) against the split root hash of the same
// build; openssl verifies the answer.
func TestMkosiFixture(t *testing.T) {
	dir := "testdata/mkosi-27.1-round1"
	data, err := os.ReadFile(dir + "/hashes.cpio.rsasign")
	if err != nil {
		t.Fatal(err)
	}
	k := testkeys.Generate(t, testkeys.RSA2048)
	sig, r := signArchive(t, dir, data, k)
	if len(r.Items) != 1 || r.Items[0].Kind != request.KindVerityRootHash || r.Items[0].Verity.Image != "test" {
		t.Fatalf("items %+v", r.Items)
	}
	verifyWithOpenSSL(t, data, sig, k, 1)
	// mkosi's header (mode, mtime, inode) is carried into the answer.
	in, _ := mkosiobs.ReadArchive(data)
	out, err := mkosiobs.ReadArchive(sig)
	if err != nil {
		t.Fatal(err)
	}
	h, g := in.Members[0].Header, out.Members[0].Header
	g.Size, h.Size = 0, 0
	if h != g || out.Trailer != in.Trailer {
		t.Fatalf("header %+v, want %+v", g, h)
	}
	// Byte for byte: the input's header text with the file size and name
	// size fields (offsets 54 and 94) replaced.
	want := append([]byte(nil), data[:110]...)
	copy(want[54:], fmt.Sprintf("%08X", len(out.Members[0].Data)))
	copy(want[94:], fmt.Sprintf("%08X", len(out.Members[0].Name)+1))
	if !bytes.Equal(sig[:110], want) {
		t.Fatalf("answer header %q, want %q", sig[:110], want)
	}
}
