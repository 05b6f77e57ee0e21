package authenticode

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"signet.dev/cms"
	"signet.dev/internal/testkeys"
	"signet.dev/keys"
)

// The signed attributes are systemd-sbsign's: 125 bytes, a DER SET of
// SMIMECapabilities, contentType, signingTime, messageDigest in that order.
func TestSignedAttributesShape(t *testing.T) {
	p, err := Prepare(parseFile(t, systemdBoot), time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.SignedAttributes) != 125 || p.SignedAttributes[0] != 0x31 {
		t.Fatalf("signed attributes: %d bytes, first %#x; want 125 bytes of DER SET", len(p.SignedAttributes), p.SignedAttributes[0])
	}
	attrs, err := cms.ParseAttributes(p.SignedAttributes)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{cms.OIDSMIMECaps.String(), cms.OIDContentType.String(), cms.OIDSigningTime.String(), cms.OIDMessageDigest.String()}
	for i, a := range attrs {
		if a.Type.String() != want[i] {
			t.Errorf("attribute %d is %v, want %v", i, a.Type, want[i])
		}
	}
	if !bytes.Contains(p.SignedAttributes, []byte("\x17\x0d231114221320Z")) {
		t.Errorf("signingTime is not UTCTime 231114221320Z: %x", p.SignedAttributes)
	}
	back, err := ParseSignedAttributes(p.SignedAttributes)
	if err != nil || !back.SigningTime.Equal(p.SigningTime) {
		t.Fatalf("ParseSignedAttributes: %v %v", back, err)
	}
	// After 2049 OpenSSL writes GeneralizedTime.
	p2, _ := PrepareDigest(p.Digest, time.Date(2051, 1, 1, 0, 0, 0, 0, time.UTC))
	if !bytes.Contains(p2.SignedAttributes, []byte("\x18\x0f20510101000000Z")) {
		t.Errorf("2051 is not GeneralizedTime: %x", p2.SignedAttributes)
	}
}

// Offline (Prepare, `openssl dgst -sha256 -sign`, Join) and online (Sign)
// give the same bytes for an RSA key and a fixed signing time.
func TestOfflineEqualsOnline(t *testing.T) {
	for _, kind := range []testkeys.Kind{testkeys.RSA2048, testkeys.RSA4096} {
		k := testkeys.Generate(t, kind)
		for _, in := range []string{systemdBoot, writeFile(t, "odd.efi", synthetics["trailing-odd"].build())} {
			online := signFile(t, in, k, fixedTime)
			f := parseFile(t, in)
			p, err := Prepare(f, fixedTime)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			tbs := filepath.Join(dir, "signed-data.bin")
			sigPath := filepath.Join(dir, "signed-data.sig")
			os.WriteFile(tbs, p.SignedAttributes, 0o644)
			runCmd(t, "openssl", "dgst", "-sha256", "-sign", k.KeyPath, "-out", sigPath, tbs)
			sig, _ := os.ReadFile(sigPath)
			var out bytes.Buffer // not an io.WriterAt: the sequential path
			if err := Join(f, p.SignedAttributes, k.Cert, sig, &out); err != nil {
				t.Fatal(err)
			}
			want, _ := os.ReadFile(online)
			if !bytes.Equal(out.Bytes(), want) {
				t.Errorf("%s %s: offline output differs from online output", kind, in)
			}
		}
	}
}

// sbsign (0.9.4) commits to the same SpcIndirectDataContent, bytes for
// bytes, and lays out the WIN_CERTIFICATE the same way (dwLength = 8 + DER
// length, directory Size padded). Its signed attributes differ only in
// carrying OpenSSL's default SMIMECapabilities list where systemd-sbsign
// and signet put an empty SEQUENCE, so the files are not byte-identical.
func TestMatchesSbsign(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	for _, in := range []string{systemdBoot, stub, writeFile(t, "odd.efi", synthetics["odd-section"].build())} {
		ref := filepath.Join(t.TempDir(), "sbsign.efi")
		runCmd(t, "sbsign", "--key", k.KeyPath, "--cert", k.CertPath, "--output", ref, in)
		ours := signFile(t, in, k, fixedTime)
		for _, out := range []string{ref, ours} {
			f := parseFile(t, out)
			sigs, err := f.Signatures()
			if err != nil || len(sigs) != 1 {
				t.Fatalf("%s: %v %v", out, sigs, err)
			}
			d, _ := parseFile(t, in).Digest(Hash)
			spc, _ := SpcIndirectDataContent(Hash, d)
			if !bytes.Equal(sigs[0].SignedData.Content, spc) {
				t.Errorf("%s: SpcIndirectDataContent %x, want %x", out, sigs[0].SignedData.Content, spc)
			}
			b, _ := os.ReadFile(out)
			ct := f.CertificateTable()
			dwLength := binary.LittleEndian.Uint32(b[ct.VirtualAddress:])
			der, _ := sigs[0].SignedData.Marshal()
			if int(dwLength) != 8+len(der) || ct.Size != (dwLength+7)&^7 || int64(ct.VirtualAddress) != (parseFile(t, in).Size()+7)&^7 {
				t.Errorf("%s: dwLength %d, table %+v for %d bytes of DER", out, dwLength, ct, len(der))
			}
			if sum, _ := f.Checksum(); sum != f.OptionalHeader.CheckSum {
				t.Errorf("%s: CheckSum %#x, computed %#x", out, f.OptionalHeader.CheckSum, sum)
			}
		}
	}
}

// Join refuses a signature that does not verify and attributes made for
// another image, and writes nothing.
func TestJoinRefuses(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	other := testkeys.Generate(t, testkeys.RSA3072)
	in := writeFile(t, "in.efi", synthetics["trailing-odd"].build())
	f := parseFile(t, in)
	p, _ := Prepare(f, fixedTime)
	sig, _ := keys.Sign(k.Signer, p.Hash, p.SignedAttributes)
	var out bytes.Buffer
	if err := Join(f, p.SignedAttributes, other.Cert, sig, &out); !errors.Is(err, ErrBadSignature) || out.Len() != 0 {
		t.Errorf("wrong certificate: %v, %d bytes written", err, out.Len())
	}
	bad := append([]byte(nil), sig...)
	bad[10] ^= 1
	if err := Join(f, p.SignedAttributes, k.Cert, bad, &out); !errors.Is(err, ErrBadSignature) || out.Len() != 0 {
		t.Errorf("corrupt signature: %v, %d bytes written", err, out.Len())
	}
	changed := synthetics["trailing-odd"].build()
	changed[len(changed)-1] ^= 1
	f2, _ := Parse(bytes.NewReader(changed), int64(len(changed)))
	if err := Join(f2, p.SignedAttributes, k.Cert, sig, &out); !errors.Is(err, ErrImageChanged) || out.Len() != 0 {
		t.Errorf("changed image: %v, %d bytes written", err, out.Len())
	}
	if err := CheckSignedAttributes(p.SignedAttributes, p.Digest); err != nil {
		t.Errorf("CheckSignedAttributes of Prepare's output: %v", err)
	}
	if err := CheckSignedAttributes(p.SignedAttributes, make([]byte, 32)); !errors.Is(err, ErrImageChanged) {
		t.Errorf("CheckSignedAttributes with another digest: %v", err)
	}
	if err := Join(f, []byte{0x30, 0}, k.Cert, sig, &out); !errors.Is(err, ErrSignedAttributes) {
		t.Errorf("garbage signed data: %v", err)
	}
	if err := Sign(f, other.Signer, k.Cert, fixedTime, &out); err == nil || out.Len() != 0 {
		t.Errorf("key and certificate that do not match: %v", err)
	}
}

// Keys on a PKCS#11 token (SoftHSM2) sign too, and the result verifies
// with sbverify and osslsigncode.
func TestPKCS11(t *testing.T) {
	hsm := testkeys.NewSoftHSM(t)
	for _, kind := range testkeys.All {
		k := testkeys.Generate(t, kind)
		uri := hsm.Import(t, k, "authenticode-"+string(kind))
		s, err := keys.Open("provider:pkcs11", uri)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		hk := *k
		hk.Signer = s
		out := signFile(t, systemdBoot, &hk, fixedTime)
		if ok, log := sbverify(t, k.CertPath, out); !ok {
			t.Errorf("%s: sbverify:\n%s", kind, log)
		}
		if ok, log := osslverify(t, k.CertPath, out); !ok {
			t.Errorf("%s: osslsigncode:\n%s", kind, log)
		}
		if kind == testkeys.RSA2048 {
			// Deterministic: the token signs what the file key signs.
			ref := signFile(t, systemdBoot, k, fixedTime)
			a, _ := os.ReadFile(ref)
			b, _ := os.ReadFile(out)
			if !bytes.Equal(a, b) {
				t.Errorf("PKCS#11 and file key outputs differ")
			}
		}
	}
}

// Malformed images fail Parse with the named error.
func TestParseErrors(t *testing.T) {
	good := synthetics["trailing-odd"].build()
	peOff := int(binary.LittleEndian.Uint32(good[0x3c:]))
	optOff := peOff + 24
	secOff := optOff + 240
	mod := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), good...))
	}
	k := testkeys.Generate(t, testkeys.RSA2048)
	signed, _ := os.ReadFile(signFile(t, writeFile(t, "s.efi", good), k, fixedTime))
	cases := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrNotPE},
		{"text", []byte("#!/bin/sh\necho this is not a PE image at all, not even close to one\n"), ErrNotPE},
		{"no-pe-signature", mod(func(b []byte) []byte { b[peOff] = 'X'; return b }), ErrNotPE},
		{"truncated-headers", good[:peOff+40], ErrTruncated},
		{"e_lfanew-past-eof", mod(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[0x3c:], 1<<30); return b }), ErrTruncated},
		{"bad-magic", mod(func(b []byte) []byte { b[optOff] = 7; return b }), ErrBadOptionalHeader},
		{"few-directories", mod(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[optOff+108:], 4); return b }), ErrNoCertTable},
		{"section-table-past-eof", mod(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[peOff+6:], 9000); return b }), ErrTruncated},
		{"section-past-eof", mod(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[secOff+16:], 0x100000); return b }), ErrSectionPastEOF},
		{"overlapping-sections", mod(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[secOff+40+20:], 0x300); return b }), ErrOverlappingSection},
		{"section-over-headers", mod(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[secOff+20:], 0x100); return b }), ErrOverlappingSection},
		{"misaligned-cert-table", func() []byte {
			b := append([]byte(nil), signed...)
			va := binary.LittleEndian.Uint32(b[optOff+144:])
			binary.LittleEndian.PutUint32(b[optOff+144:], va+4)
			binary.LittleEndian.PutUint32(b[optOff+148:], uint32(len(b))-va-4)
			return b
		}(), ErrCertTableAlignment},
		{"cert-table-not-at-end", append(append([]byte(nil), signed...), make([]byte, 8)...), ErrCertTable},
	}
	for _, c := range cases {
		_, err := Parse(bytes.NewReader(c.b), int64(len(c.b)))
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	// A cert table whose WIN_CERTIFICATE is garbage parses, but
	// Signatures and Verify name the problem.
	b := append([]byte(nil), signed...)
	va := binary.LittleEndian.Uint32(b[optOff+144:])
	binary.LittleEndian.PutUint32(b[va:], 3)
	f, err := Parse(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(f, []*x509.Certificate{k.Cert}); !errors.Is(err, ErrCertTable) {
		t.Errorf("bad dwLength: %v", err)
	}
	// Unsigned: Verify says so.
	f, _ = Parse(bytes.NewReader(good), int64(len(good)))
	if _, err := Verify(f, []*x509.Certificate{k.Cert}); !errors.Is(err, ErrNotSigned) {
		t.Errorf("unsigned: %v", err)
	}
}

// FuzzParse: no input panics Parse, Digest, Signatures or Verify.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"trailing-odd", "pe32", "gaps-and-trailing"} {
		f.Add(synthetics[name].build())
	}
	k := testkeys.Generate(f, testkeys.P256)
	signed, _ := os.ReadFile(signFile(f, writeFile(f, "s.efi", synthetics["one-section"].build()), k, fixedTime))
	f.Add(signed)
	f.Fuzz(func(t *testing.T, b []byte) {
		pf, err := Parse(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		pf.Digest(Hash)
		pf.Checksum()
		pf.Signatures()
		Verify(pf, []*x509.Certificate{k.Cert})
	})
}

// FuzzParseSignedAttributes: no input panics the offline join's parser,
// and whatever it accepts has a messageDigest.
func FuzzParseSignedAttributes(f *testing.F) {
	p, _ := PrepareDigest(make([]byte, 32), fixedTime)
	f.Add(p.SignedAttributes)
	f.Add([]byte{0x31, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := ParseSignedAttributes(b); err != nil {
			return
		}
		if _, err := cms.MessageDigest(b); err != nil {
			t.Fatalf("accepted attributes without a messageDigest: %v", err)
		}
	})
}

// A WIN_CERTIFICATE whose PKCS#7 is garbage is reported, and does not hide
// a good signature after it.
func TestUnreadableSignature(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	in := writeFile(t, "in.efi", synthetics["trailing-odd"].build())
	once, _ := os.ReadFile(signFile(t, in, k, fixedTime))
	f := parseFile(t, writeFile(t, "once.efi", once))
	ct := f.CertificateTable()
	once[ct.VirtualAddress+8] = 0x31 // the first PKCS#7 is no SEQUENCE
	twice := parseFile(t, signFile(t, writeFile(t, "broken.efi", once), k, fixedTime))
	sigs, err := twice.Signatures()
	if err != nil || len(sigs) != 2 || !errors.Is(sigs[0].Err, ErrCertTable) || sigs[1].Err != nil {
		t.Fatalf("Signatures: %v, %+v", err, sigs)
	}
	if s, err := Verify(twice, []*x509.Certificate{k.Cert}); err != nil || s.Offset != sigs[1].Offset {
		t.Fatalf("Verify: %v", err)
	}
}
