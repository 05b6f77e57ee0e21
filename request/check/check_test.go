package check

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"signet.dev/authenticode"
	"signet.dev/cms"
	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/openpgp"
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

// TestAuthenticode checks an item made by package authenticode for a real
// kernel, with the PE digest pesign computes, and refuses what other tools
// compose (osslsigncode's attributes) and the hidden-payload forgery:
// an SpcIndirectDataContent that shows one digest to a DER reader and
// ends in another, the one EDK2 compares with the image.
func TestAuthenticode(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	dir := t.TempDir()
	out := testenv.Run(t, "pesign", "-h", "-i", "/var/cache/signet-test/vmlinuz")
	m := regexp.MustCompile(`([0-9a-f]{64})`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("pesign -h: %s", out)
	}
	digest, _ := hex.DecodeString(string(m[1]))
	prep, err := authenticode.PrepareDigest(digest, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	spc, _ := authenticode.SpcIndirectDataContent(authenticode.Hash, digest)
	it := &request.Item{ID: "ukis/vmlinuz", Kind: request.KindAuthenticode, Key: "db", Hash: "sha256",
		TBS:          prep.SignedAttributes,
		Authenticode: &request.AuthenticodeContext{File: "vmlinuz", Digest: string(m[1]), SpcIndirectData: spc}}
	if err := Item(it); err != nil {
		t.Fatal(err)
	}
	if got := edk2Digest(t, spc); !bytes.Equal(got, digest) {
		t.Fatalf("EDK2 would compare %x, the item shows %x", got, digest)
	}
	// pesign's encodings (mkosi's OBS flow stages them) are rebuilt too.
	for _, enc := range authenticode.Encodings[1:] {
		other, err := authenticode.SpcIndirectDataContentAs(enc, authenticode.Hash, digest)
		if err != nil {
			t.Fatal(err)
		}
		attrs, _ := authenticode.SignedAttributesFor(other, prep.SigningTime)
		pit := *it
		pit.TBS = attrs
		pit.Authenticode = &request.AuthenticodeContext{File: "vmlinuz", Digest: string(m[1]), SpcIndirectData: other}
		if err := Item(&pit); err != nil {
			t.Fatalf("%v: %v", enc, err)
		}
		if got := edk2Digest(t, other); !bytes.Equal(got, digest) {
			t.Fatalf("%v: EDK2 would compare %x", enc, got)
		}
		pit.TBS = prep.SignedAttributes // attributes for another encoding
		refused(t, enc.String()+" with signet's attributes", &pit)
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
	bad = *it
	bad.Hash = "sha384"
	refused(t, "sha384", &bad)

	// The hidden payload: a trailing element after messageDigest carrying
	// the digest of another image. A lenient DER reader sees the good
	// digest; EDK2 takes the last 32 bytes.
	evil := sha256.Sum256([]byte("another image"))
	forged := hiddenPayload(t, spc, evil[:])
	if got := edk2Digest(t, forged); !bytes.Equal(got, evil[:]) {
		t.Fatalf("forgery does not carry the other digest where EDK2 looks: %x", got)
	}
	octets := forged[3:]
	md := sha256.Sum256(octets)
	fattrs, _ := cms.ParseAttributes(it.TBS)
	for i := range fattrs {
		if fattrs[i].Type.Equal(cms.OIDMessageDigest) {
			fattrs[i].Values = append([]byte{0x04, 0x20}, md[:]...)
		}
	}
	bad = *it
	bad.TBS, _ = cms.MarshalAttributes(fattrs)
	fac := *it.Authenticode
	fac.SpcIndirectData = forged
	bad.Authenticode = &fac
	err = Item(&bad)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "spcIndirectData is not the canonical SpcIndirectDataContent") {
		t.Fatalf("hidden payload: %v", err)
	}

	// osslsigncode's own attributes (SpcSpOpusInfo, no SMIMECapabilities)
	// over its own SpcIndirectDataContent: valid Authenticode, but not the
	// canonical bytes, so not signed.
	signed := filepath.Join(dir, "signed.efi")
	testenv.Run(t, "osslsigncode", "sign", "-certs", k.CertPath, "-key", k.KeyPath, "-h", "sha256", "-in", "/var/cache/signet-test/vmlinuz", "-out", signed)
	sigPath := filepath.Join(dir, "sig.der")
	testenv.Run(t, "osslsigncode", "extract-signature", "-in", signed, "-out", sigPath)
	der, _ := os.ReadFile(sigPath)
	sd, err := cms.Parse(der)
	if err != nil {
		t.Fatal(err)
	}
	bad = *it
	bad.TBS = sd.Signers[0].SignedAttributes
	oac := *it.Authenticode
	oac.SpcIndirectData = sd.Content
	bad.Authenticode = &oac
	refused(t, "osslsigncode's composition", &bad)
}

// edk2Digest applies EDK2's rule (AuthenticodeVerify in
// CryptoPkg/Library/BaseCryptLib/Pk/CryptAuthenticode.c): skip the
// SpcIndirectDataContent SEQUENCE's tag and length, and compare the LAST
// hash-size bytes of its contents with the image digest.
func edk2Digest(t testing.TB, spc []byte) []byte {
	t.Helper()
	if len(spc) < 2 || spc[0] != 0x30 {
		t.Fatalf("not a SEQUENCE: %x", spc)
	}
	var size, hdr int
	if spc[1]&0x80 == 0 {
		size, hdr = int(spc[1]), 2
	} else {
		n := int(spc[1] & 0x7f)
		for i := 0; i < n; i++ {
			size = size<<8 | int(spc[2+i])
		}
		hdr = 2 + n
	}
	if hdr+size > len(spc) || size < 32 {
		t.Fatalf("bad length in %x", spc)
	}
	return spc[hdr+size-32 : hdr+size]
}

// hiddenPayload appends to spc's SEQUENCE an OCTET STRING holding digest.
func hiddenPayload(t testing.TB, spc, digest []byte) []byte {
	t.Helper()
	if spc[1]&0x80 != 0 {
		t.Fatal("test assumes a short-form length")
	}
	content := append(append([]byte{}, spc[2:]...), append([]byte{0x04, byte(len(digest))}, digest...)...)
	if len(content) > 0xff {
		t.Fatal("test assumes a length below 256")
	}
	return append([]byte{0x30, 0x81, byte(len(content))}, content...)
}

// FuzzAuthenticodeEDK2 is the differential check: whatever Authenticode
// item the check accepts, the digest EDK2 compares with the image is the
// digest the item shows.
func FuzzAuthenticodeEDK2(f *testing.F) {
	d := sha256.Sum256([]byte("x"))
	spc, _ := authenticode.SpcIndirectDataContent(authenticode.Hash, d[:])
	prep, _ := authenticode.PrepareDigest(d[:], time.Unix(1700000000, 0))
	f.Add(spc, prep.SignedAttributes)
	f.Add(hiddenPayload(f, spc, make([]byte, 32)), prep.SignedAttributes)
	for _, e := range authenticode.Encodings {
		other, _ := authenticode.SpcIndirectDataContentAs(e, authenticode.Hash, d[:])
		attrs, _ := authenticode.SignedAttributesFor(other, time.Unix(1700000000, 0))
		f.Add(other, attrs)
	}
	f.Fuzz(func(t *testing.T, spc, tbs []byte) {
		it := &request.Item{ID: "a", Kind: request.KindAuthenticode, Key: "k", Hash: "sha256", TBS: tbs,
			Authenticode: &request.AuthenticodeContext{File: "f", Digest: hex.EncodeToString(d[:]), SpcIndirectData: spc}}
		if Item(it) != nil {
			return
		}
		if got := edk2Digest(t, spc); !bytes.Equal(got, d[:]) {
			t.Fatalf("accepted an item whose EDK2 digest is %x, not %x", got, d)
		}
	})
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

// pgpTrailer is the trailer signet writes for an RSA key with hash h.
func pgpTrailer(h crypto.Hash) []byte {
	tr := &openpgp.Trailer{PubKeyAlgo: openpgp.PubKeyAlgoRSA, Hash: h, Created: time.Unix(1700000000, 0), Fingerprint: [20]byte{1, 2, 3}}
	b, err := tr.Marshal()
	if err != nil {
		panic(err)
	}
	return b
}

// gpgTrailer is what gpg hashes for a v4 binary signature with only a
// creation-time subpacket: valid OpenPGP, but not the trailer signet signs.
func gpgTrailer(hashAlgo byte) []byte {
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
	pgp := &request.Item{ID: "manifests/SHA256SUMS.gpg", Kind: request.KindManifestOpenPGP, Key: "m", Hash: "sha512", TBS: append(append([]byte{}, sums...), pgpTrailer(crypto.SHA512)...), Manifest: ctx}
	if err := Item(pgp); err != nil {
		t.Fatal(err)
	}
	bad := *pgp
	bad.TBS = append(append([]byte{}, sums...), pgpTrailer(crypto.SHA256)...)
	refused(t, "trailer hash", &bad)
	bad.TBS = append(append([]byte{}, sums...), gpgTrailer(10)...)
	refused(t, "foreign trailer", &bad)
	// A notation subpacket (client-chosen bytes) inside the hashed area.
	notation := append(append([]byte{}, sums...), pgpTrailer(crypto.SHA512)...)
	notation = append(notation[:len(notation)-6], []byte{9, 20, 0, 0, 0, 0, 'x', 'y', 'z', 'w'}...)
	bad.TBS = notation
	refused(t, "extra subpacket", &bad)
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
	pol := "policy_name=signet policy_version=0.1.0\nDEFAULT action=DENY\nop=EXECUTE dmverity_signature=TRUE action=ALLOW\n"
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
		// What the kernel's parser skips is refused: it is where chosen
		// bytes would hide.
		"comment":      strings.Replace(pol, "0.1.0\n", "0.1.0 # \x01\x02 chosen bytes\n", 1),
		"trailing":     pol + "#\x30\x82\x01\x00",
		"blank line":   pol + "\n",
		"double space": strings.Replace(pol, "DEFAULT action", "DEFAULT  action", 1),
		"no final LF":  strings.TrimSuffix(pol, "\n"),
	} {
		bad := *it
		bad.TBS = []byte(p)
		refused(t, name, &bad)
	}
}

func FuzzItem(f *testing.F) {
	f.Add([]byte("policy_name=a policy_version=1.2.3\nDEFAULT action=ALLOW\n"), uint8(0))
	f.Add(append([]byte(strings.Repeat("a", 64)+" *x\n"), pgpTrailer(crypto.SHA256)...), uint8(1))
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
