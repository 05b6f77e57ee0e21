package check

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"signet.dev/cms"
	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/request"
)

func refused(t *testing.T, name string, it *request.Item) {
	t.Helper()
	if err := Item(it); !errors.Is(err, ErrRefused) && !errors.Is(err, request.ErrInvalid) {
		t.Errorf("%s: accepted (%v)", name, err)
	}
}

// TestPCR11 compares the PCR 11 prediction with systemd-measure calculate.
func TestPCR11(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{".linux": "kernel image\x00bytes", ".osrel": "ID=signet\n", ".cmdline": "root=/dev/vda usrhash=00\x00"}
	var sections []request.SectionDigest
	for _, name := range []string{".linux", ".osrel", ".cmdline"} {
		p := filepath.Join(dir, name[1:])
		os.WriteFile(p, []byte(files[name]), 0o600)
		d := sha256.Sum256([]byte(files[name]))
		sections = append(sections, request.SectionDigest{Name: name, Digest: hex.EncodeToString(d[:])})
	}
	for _, phase := range []string{"enter-initrd", "enter-initrd:leave-initrd:sysinit:ready"} {
		out := testenv.Run(t, "systemd-measure", "calculate", "--linux="+filepath.Join(dir, "linux"), "--osrel="+filepath.Join(dir, "osrel"),
			"--cmdline="+filepath.Join(dir, "cmdline"), "--bank=sha256", "--phase="+phase)
		m := regexp.MustCompile(`11:sha256=([0-9a-f]{64})`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("systemd-measure output: %s", out)
		}
		c := &request.PCRContext{UKI: "uki.efi", Bank: "sha256", Phase: phase, Sections: sections, PCR: string(m[1])}
		pcr, err := PCR11(c)
		if err != nil {
			t.Fatal(err)
		}
		if hex.EncodeToString(pcr) != c.PCR {
			t.Fatalf("phase %s: PCR 11 %x, systemd-measure %s", phase, pcr, c.PCR)
		}
		pol, _ := PolicyPCR("sha256", pcr)
		it := &request.Item{ID: "pcrs/uki.efi/" + hex.EncodeToString(pol), Kind: request.KindPCRPolicy, Key: "pcr", Hash: "sha256", TBS: pol, PCR: c}
		if err := Item(it); err != nil {
			t.Fatal(err)
		}
		bad := *it
		bad.TBS = append([]byte{}, pol...)
		bad.TBS[0] ^= 1
		refused(t, "wrong pol", &bad)
		bad = *it
		cc := *c
		cc.Phase = "enter-initrd:leave-initrd"
		bad.PCR = &cc
		refused(t, "wrong phase", &bad)
		cc = *c
		cc.Sections = []request.SectionDigest{sections[1], sections[0], sections[2]}
		bad.PCR = &cc
		refused(t, "section order", &bad)
		bad = *it
		bad.Hash = "sha384"
		refused(t, "hash", &bad)
	}
}

// TestPolicyPCRBanks checks that the bank is part of what pol commits to.
func TestPolicyPCRBanks(t *testing.T) {
	a, _ := PolicyPCR("sha256", make([]byte, 32))
	b, _ := PolicyPCR("sha1", make([]byte, 32))
	if bytes.Equal(a, b) || len(a) != 32 {
		t.Fatal("bank does not enter pol")
	}
}

// TestAuthenticode takes real signed attributes from osslsigncode's
// signature on a kernel, with the PE digest pesign computes.
func TestAuthenticode(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	dir := t.TempDir()
	signed := filepath.Join(dir, "signed.efi")
	testenv.Run(t, "osslsigncode", "sign", "-certs", k.CertPath, "-key", k.KeyPath, "-h", "sha256", "-in", "/var/cache/signet-test/vmlinuz", "-out", signed)
	sigPath := filepath.Join(dir, "sig.der")
	testenv.Run(t, "osslsigncode", "extract-signature", "-in", signed, "-out", sigPath)
	der, _ := os.ReadFile(sigPath)
	sd, err := cms.Parse(der)
	if err != nil {
		t.Fatal(err)
	}
	out := testenv.Run(t, "pesign", "-h", "-i", signed)
	m := regexp.MustCompile(`([0-9a-f]{64})`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("pesign -h: %s", out)
	}
	it := &request.Item{ID: "ukis/vmlinuz", Kind: request.KindAuthenticode, Key: "db", Hash: "sha256",
		TBS:          sd.Signers[0].SignedAttributes,
		Authenticode: &request.AuthenticodeContext{File: "vmlinuz", Digest: string(m[1]), SpcIndirectData: sd.Content}}
	if err := Item(it); err != nil {
		t.Fatal(err)
	}
	bad := *it
	ac := *it.Authenticode
	ac.Digest = strings.Repeat("0", 64)
	bad.Authenticode = &ac
	refused(t, "other PE digest", &bad)
	bad = *it
	bad.TBS = append([]byte{}, it.TBS...)
	bad.TBS[len(bad.TBS)-1] ^= 1
	refused(t, "tampered messageDigest", &bad)
	bad = *it
	attrs, _ := cms.ParseAttributes(it.TBS)
	for i := range attrs {
		if attrs[i].Type.Equal(cms.OIDContentType) {
			attrs[i].Values = []byte{0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01} // id-data
		}
	}
	bad.TBS, _ = cms.MarshalAttributes(attrs)
	refused(t, "content type data", &bad)
	bad = *it
	bad.TBS = []byte("not DER")
	refused(t, "not DER", &bad)
}

func TestVerity(t *testing.T) {
	rh := strings.Repeat("ab", 32)
	it := &request.Item{ID: "roothashes/root.roothash", Kind: request.KindVerityRootHash, Key: "v", Hash: "sha256", TBS: []byte(rh),
		Verity: &request.VerityContext{Image: "root.raw", RootHash: rh}}
	if err := Item(it); err != nil {
		t.Fatal(err)
	}
	bad := *it
	bad.TBS = []byte(rh + "\n")
	refused(t, "newline", &bad)
	bad.TBS = []byte(strings.ToUpper(rh))
	refused(t, "upper case", &bad)
}

// pgpTrailer builds what gpg hashes after the document for a v4 binary
// signature with a creation-time subpacket.
func pgpTrailer(hashAlgo byte) []byte {
	sub := []byte{5, 2, 0x65, 0x5e, 0x3b, 0x00}
	t := []byte{4, 0x00, 1, hashAlgo, 0, byte(len(sub))}
	t = append(t, sub...)
	n := len(t)
	t = append(t, 4, 0xff)
	return binary.BigEndian.AppendUint32(t, uint32(n))
}

func TestManifest(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.efi"), []byte("a"), 0o600)
	os.WriteFile(filepath.Join(dir, "root.raw"), []byte("root"), 0o600)
	cmdOut := testenv.Run(t, "sh", "-c", "cd "+dir+" && sha256sum --binary a.efi root.raw")
	sums := cmdOut
	a := sha256.Sum256([]byte("a"))
	r := sha256.Sum256([]byte("root"))
	ctx := &request.ManifestContext{File: "SHA256SUMS", Entries: []request.ManifestEntry{{Name: "a.efi", SHA256: hex.EncodeToString(a[:])}, {Name: "root.raw", SHA256: hex.EncodeToString(r[:])}}}
	it := &request.Item{ID: "manifests/SHA256SUMS.p7s", Kind: request.KindManifestPKCS7, Key: "m", Hash: "sha256", TBS: sums, Manifest: ctx}
	if err := Item(it); err != nil {
		t.Fatal(err)
	}
	pgp := &request.Item{ID: "manifests/SHA256SUMS.gpg", Kind: request.KindManifestOpenPGP, Key: "m", Hash: "sha512", TBS: append(append([]byte{}, sums...), pgpTrailer(10)...), Manifest: ctx}
	if err := Item(pgp); err != nil {
		t.Fatal(err)
	}
	bad := *pgp
	bad.TBS = append(append([]byte{}, sums...), pgpTrailer(8)...)
	refused(t, "trailer hash", &bad)
	bad.TBS = sums
	refused(t, "no trailer", &bad)
	bad = *it
	bad.TBS = bytes.Replace(sums, []byte("root.raw"), []byte("evil.raw"), 1)
	refused(t, "other file", &bad)
	bad.TBS = sums[:len(sums)-1]
	refused(t, "no final newline", &bad)
	bad.TBS = append([]byte("garbage\n"), sums...)
	refused(t, "garbage line", &bad)
}

func TestIPE(t *testing.T) {
	pol := "policy_name=signet policy_version=0.1.0 # header\n\nDEFAULT action=DENY\nop=EXECUTE dmverity_signature=TRUE action=ALLOW\n"
	it := &request.Item{ID: "ipe/signet.policy", Kind: request.KindIPEPolicy, Key: "ipe", Hash: "sha256", TBS: []byte(pol),
		IPE: &request.IPEContext{File: "signet.policy", Name: "signet", Version: "0.1.0"}}
	if err := Item(it); err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]string{
		"version":  strings.Replace(pol, "0.1.0", "0.2.0", 1),
		"rule":     pol + "op=EXECUTE frobnicate=TRUE action=ALLOW\n",
		"action":   pol + "op=EXECUTE action=MAYBE\n",
		"noaction": pol + "op=EXECUTE\n",
		"header":   "DEFAULT action=DENY\n",
	} {
		bad := *it
		bad.TBS = []byte(p)
		refused(t, name, &bad)
	}
}

func FuzzItem(f *testing.F) {
	f.Add([]byte("policy_name=a policy_version=1.2.3\nDEFAULT action=ALLOW\n"), uint8(0))
	f.Add(append([]byte(strings.Repeat("a", 64)+" *x\n"), pgpTrailer(8)...), uint8(1))
	f.Add([]byte{0x31, 0x03, 0x30, 0x01, 0x00}, uint8(2))
	f.Fuzz(func(t *testing.T, tbs []byte, which uint8) {
		items := []*request.Item{
			{ID: "i", Kind: request.KindIPEPolicy, Key: "k", Hash: "sha256", TBS: tbs, IPE: &request.IPEContext{File: "f", Name: "a", Version: "1.2.3"}},
			{ID: "m", Kind: request.KindManifestOpenPGP, Key: "k", Hash: "sha256", TBS: tbs, Manifest: &request.ManifestContext{File: "f"}},
			{ID: "a", Kind: request.KindAuthenticode, Key: "k", Hash: "sha256", TBS: tbs, Authenticode: &request.AuthenticodeContext{File: "f", Digest: strings.Repeat("0", 64), SpcIndirectData: tbs}},
			{ID: "v", Kind: request.KindVerityRootHash, Key: "k", Hash: "sha256", TBS: tbs, Verity: &request.VerityContext{Image: "f", RootHash: strings.Repeat("0", 64)}},
		}
		Item(items[int(which)%len(items)])
	})
}

// TestPCRPolicyRef: a pcr-policy item bound to a policy reference has the
// tbs systemd-measure 262 policy-digest --policyref= prints (pol ‖
// SHA256(ref)); pol alone, or another reference, is refused.
func TestPCRPolicyRef(t *testing.T) {
	dir := testenv.SidDir(t)
	linux := filepath.Join(dir, "linux")
	os.WriteFile(linux, []byte("kernel image"), 0o600)
	d := sha256.Sum256([]byte("kernel image"))
	sections := []request.SectionDigest{{Name: ".linux", Digest: hex.EncodeToString(d[:])}}
	out := testenv.Sid(t, "systemd-measure", "calculate", "--linux="+linux, "--bank=sha256", "--phase=enter-initrd", "--json=short")
	pcr := regexp.MustCompile(`"hash":"([0-9a-f]{64})"`).FindSubmatch(out)
	out = testenv.Sid(t, "systemd-measure", "policy-digest", "--linux="+linux, "--bank=sha256", "--phase=enter-initrd", "--policyref=initrd", "--json=short")
	m := regexp.MustCompile(`"ref":"initrd","pol":"([0-9a-f]{64})","tbs":"([0-9a-f]{128})"`).FindSubmatch(out)
	if pcr == nil || m == nil {
		t.Fatalf("systemd-measure output: %s", out)
	}
	tbs, _ := hex.DecodeString(string(m[2]))
	c := &request.PCRContext{UKI: "uki.efi", Bank: "sha256", Phase: "enter-initrd", Sections: sections, PCR: string(pcr[1]), Ref: "initrd"}
	it := &request.Item{ID: "pcrs/uki.efi/" + string(m[2]), Kind: request.KindPCRPolicy, Key: "pcr", Hash: "sha256", TBS: tbs, PCR: c}
	if err := Item(it); err != nil {
		t.Fatal(err)
	}
	bad := *it
	bad.TBS = tbs[:32]
	refused(t, "pol without the reference", &bad)
	bad = *it
	cc := *c
	cc.Ref = "other"
	bad.PCR = &cc
	refused(t, "other reference", &bad)
	bad = *it
	cc = *c
	cc.Ref = ""
	bad.PCR = &cc
	refused(t, "no reference in the context", &bad)
}
