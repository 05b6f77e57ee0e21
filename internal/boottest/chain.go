package boottest

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"signet.dev/image"
	"signet.dev/keys"
)

var (
	signetOnce sync.Once
	signetPath string
	signetErr  error
)

// Signet returns a signet binary built from this repository, once per test
// binary, into a temporary directory that RemoveSignet deletes (the chain
// test drives the CLI as a build does).
func Signet(t testing.TB) string {
	t.Helper()
	signetOnce.Do(func() {
		dir, err := os.MkdirTemp("", "signet-boottest-bin")
		if err != nil {
			signetErr = err
			return
		}
		signetPath = filepath.Join(dir, "signet")
		out, err := exec.Command("go", "build", "-o", signetPath, "signet.dev/cmd/signet").CombinedOutput()
		if err != nil {
			signetErr = fmt.Errorf("go build signet: %v\n%s", err, out)
		}
	})
	if signetErr != nil {
		t.Fatal(signetErr)
	}
	return signetPath
}

// RemoveSignet deletes the binary Signet built, if any; call it from
// TestMain after the tests.
func RemoveSignet() {
	if signetPath != "" {
		os.RemoveAll(filepath.Dir(signetPath))
	}
}

// RunSignet runs the signet CLI and returns its standard output, failing
// the test on a non-zero exit.
func RunSignet(t testing.TB, args ...string) []byte {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(Signet(t), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("signet %s: %v\n%s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes()
}

// PublicPEM writes k's public key as PEM to dir/NAME.pub.pem and returns
// the path.
func PublicPEM(t testing.TB, dir string, k *Key) string {
	t.Helper()
	pub, err := keys.MarshalPublicKeyPEM(&k.Signer.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, k.Name+".pub.pem")
	if err := os.WriteFile(p, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// guestUKIArgs are the `signet uki build` arguments for g with cmdline.
func guestUKIArgs(t testing.TB, dir, name string, g *Guest, cmdline string) []string {
	t.Helper()
	osrel := filepath.Join(dir, name+".os-release")
	if err := os.WriteFile(osrel, []byte("ID=signet-boottest\nNAME=\"signet boot test\"\nPRETTY_NAME=\"signet boot test "+name+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{"uki", "build", "--stub=" + File(t, Stub), "--linux=" + g.Kernel, "--initrd=" + g.Initrd,
		"--cmdline=" + cmdline, "--os-release=@" + osrel}
}

// GuestUKI builds dir/name.efi with `signet uki build` from g and cmdline,
// its PCR 11 policies (four default phases, four banks) signed online by
// pcrKey, and returns its path (not Secure Boot signed).
func GuestUKI(t testing.TB, dir, name string, g *Guest, cmdline string, pcrKey *Key) string {
	t.Helper()
	out := filepath.Join(dir, name+".efi")
	RunSignet(t, append(guestUKIArgs(t, dir, name, g, cmdline),
		"--pcr-private-key="+pcrKey.KeyPath, "--pcr-public-key="+PublicPEM(t, dir, pcrKey), "--output="+out)...)
	return out
}

var tbsRE = regexp.MustCompile(`"tbs":"([0-9a-f]+)"`)

// OfflineGuestUKI is GuestUKI with the policies signed offline, as a build
// whose PCR key lives elsewhere does it: `signet uki build --policy-digest`
// prints the policies, openssl signs each tbs with the key, `signet measure
// join` fills in the signatures (verifying them), `signet uki join-pcrsig`
// puts the document into the UKI.
func OfflineGuestUKI(t testing.TB, dir, name string, g *Guest, cmdline string, pcrKey *Key) string {
	t.Helper()
	pub := PublicPEM(t, dir, pcrKey)
	unsigned := filepath.Join(dir, name+"-nosig.efi")
	digest := RunSignet(t, append(guestUKIArgs(t, dir, name, g, cmdline),
		"--pcr-public-key="+pub, "--policy-digest", "--output="+unsigned)...)
	pcrs := filepath.Join(dir, name+".policy.json")
	if err := os.WriteFile(pcrs, digest, 0o644); err != nil {
		t.Fatal(err)
	}
	sigDir := filepath.Join(dir, name+".sigs")
	if err := os.MkdirAll(sigDir, 0o755); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, m := range tbsRE.FindAllStringSubmatch(string(digest), -1) {
		if seen[m[1]] {
			continue
		}
		seen[m[1]] = true
		tbs, err := hex.DecodeString(m[1])
		if err != nil {
			t.Fatal(err)
		}
		in := filepath.Join(sigDir, m[1]+".tbs")
		if err := os.WriteFile(in, tbs, 0o644); err != nil {
			t.Fatal(err)
		}
		Run(t, "openssl", "dgst", "-sha256", "-sign", pcrKey.KeyPath, "-out", filepath.Join(sigDir, m[1]+".sig"), in)
		os.Remove(in)
	}
	if len(seen) == 0 {
		t.Fatalf("signet uki build --policy-digest printed no tbs:\n%s", digest)
	}
	joined := filepath.Join(dir, name+".pcrsig.json")
	RunSignet(t, "measure", "join", "--pcrsig=@"+pcrs, "--signature-dir="+sigDir, "--public-key="+pub, "--output="+joined)
	out := filepath.Join(dir, name+".efi")
	RunSignet(t, "uki", "join-pcrsig", unsigned, "--pcrsig=@"+joined, "--output="+out)
	return out
}

// entryRE matches a .pcrsig entry's pol and sig, compact or with the
// spaces of Python's json.dumps (the layout ukify embeds).
var entryRE = regexp.MustCompile(`"pol":\s*"([0-9a-f]{64})",\s*"sig":\s*"([A-Za-z0-9+/=]+)"`)

// ForgePCRSig copies the UKI at in to out with every signature of its
// .pcrsig replaced, in place, by one that other made over the same pol: the
// pkfp still names the key in .pcrpkey, so only the TPM's
// TPM2_VerifySignature can tell. It fails the test when no entry is found.
func ForgePCRSig(t testing.TB, in, out string, other *Key) string {
	t.Helper()
	b := ReadFile(t, in)
	ms := entryRE.FindAllSubmatchIndex(b, -1)
	if len(ms) == 0 {
		t.Fatalf("%s: no pol/sig entries found to forge", in)
	}
	for _, m := range ms {
		pol, _ := hex.DecodeString(string(b[m[2]:m[3]]))
		sum := sha256.Sum256(pol)
		sig, err := rsa.SignPKCS1v15(nil, other.Signer, crypto.SHA256, sum[:])
		if err != nil {
			t.Fatal(err)
		}
		forged := base64.StdEncoding.EncodeToString(sig)
		if len(forged) != m[5]-m[4] {
			t.Fatalf("forged signature has %d base64 bytes, the original %d", len(forged), m[5]-m[4])
		}
		copy(b[m[4]:m[5]], forged)
	}
	if err := os.WriteFile(out, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// DPSImage writes dir/name.raw with signet's image package (what `signet
// repart` runs): an ESP filled from esp (nil: none), the erofs root
// (Verity=data), its hash tree and its verity-sig partition signed by
// verityKey, all UUIDs and the salt derived from a fixed seed. It returns
// the path and the root hash.
func DPSImage(t testing.TB, dir, name, esp, root string, verityKey *Key) (string, string) {
	t.Helper()
	defs := filepath.Join(dir, name+".repart.d")
	if err := os.MkdirAll(defs, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"10-root.conf":            "[Partition]\nType=root\nVerity=data\nVerityMatchKey=root\nCopyBlocks=" + root + "\n",
		"20-root-verity.conf":     "[Partition]\nType=root-verity\nVerity=hash\nVerityMatchKey=root\n",
		"30-root-verity-sig.conf": "[Partition]\nType=root-verity-sig\nVerity=signature\nVerityMatchKey=root\n",
	}
	if esp != "" {
		files["00-esp.conf"] = "[Partition]\nType=esp\nCopyBlocks=" + esp + "\n"
	}
	for n, s := range files {
		if err := os.WriteFile(filepath.Join(defs, n), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d, err := image.ReadDefinitions(defs)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := image.ParseGUID("5e7b00c1-0000-4000-8000-000000000017")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name+".raw")
	os.Remove(out)
	rep, err := image.Build(out, d, image.Options{Seed: seed, Signer: verityKey.Signer, Certificate: verityKey.Cert})
	if err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	if len(rep.RootHashes) != 1 {
		t.Fatalf("%s: %d root hashes, want 1", out, len(rep.RootHashes))
	}
	return out, hex.EncodeToString(rep.RootHashes[0])
}
