package authenticode

import (
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
)

// osslsigncode 2.9 hashes images with gaps between sections differently
// from the Authenticode specification, sbsign, pesign and systemd's
// pe_hash (which start the trailing data at SizeOfHeaders plus the sum of
// the section sizes); it cannot read a second WIN_CERTIFICATE either.
// Those images are judged by sbverify, pesign and Verify.
func osslsigncodeAgrees(image string) bool {
	return image != "gaps-and-trailing" && image != "vmlinuz"
}

var fixedTime = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// Every image signet signs, with every key type, is accepted by sbverify,
// osslsigncode and Verify. Debian's vmlinuz is already signed, so it gets a
// second WIN_CERTIFICATE, which osslsigncode cannot read (it reports a
// corrupted certificate table for sbsign's double signatures too).
func TestSignAcceptedByPeers(t *testing.T) {
	imgs := images(t)
	for _, kind := range testkeys.All {
		k := testkeys.Generate(t, kind)
		for _, name := range sortedKeys(imgs) {
			in := imgs[name]
			t.Run(string(kind)+"/"+name, func(t *testing.T) {
				out := signFile(t, in, k, fixedTime)
				if ok, log := sbverify(t, k.CertPath, out); !ok {
					t.Errorf("sbverify rejects %s:\n%s", name, log)
				}
				if osslsigncodeAgrees(name) {
					if ok, log := osslverify(t, k.CertPath, out); !ok {
						t.Errorf("osslsigncode rejects %s:\n%s", name, log)
					}
				}
				s, err := Verify(parseFile(t, out), []*x509.Certificate{k.Cert})
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if !s.SigningTime.Equal(fixedTime) {
					t.Errorf("signing time %v, want %v", s.SigningTime, fixedTime)
				}
			})
		}
	}
}

// The digest signet computes is the one osslsigncode calculates, for signed
// files (Debian's kernel, signet's output) and unsigned ones (the digest
// osslsigncode embeds when it signs them), and pesign -h agrees on both
// the padded and the unpadded variant.
func TestDigestOracles(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	imgs := images(t)
	for _, name := range sortedKeys(imgs) {
		in := imgs[name]
		t.Run(name, func(t *testing.T) {
			f := parseFile(t, in)
			d, err := f.Digest(Hash)
			if err != nil {
				t.Fatal(err)
			}
			ud, err := f.DigestUnpadded(Hash)
			if err != nil {
				t.Fatal(err)
			}
			signed := f.CertificateTable().Size != 0
			if signed {
				// Exits 1: Debian's CA is not given; the digest is printed.
				out, _ := testenv.RunErr(t, "osslsigncode", "verify", "-in", in)
				if got := match(t, reCalculated, string(out)); got != hex.EncodeToString(d) {
					t.Errorf("osslsigncode calculated %s, signet %x", got, d)
				}
			} else if osslsigncodeAgrees(name) {
				// osslsigncode embeds its digest of the unsigned input.
				o := filepath.Join(t.TempDir(), "ossl.efi")
				runCmd(t, "osslsigncode", "sign", "-certs", k.CertPath, "-key", k.KeyPath, "-h", "sha256", "-in", in, "-out", o)
				out, _ := testenv.RunErr(t, "osslsigncode", "verify", "-in", o, "-CAfile", k.CertPath)
				if got := match(t, reCurrent, string(out)); got != hex.EncodeToString(d) {
					t.Errorf("osslsigncode embedded %s, signet %x", got, d)
				}
				if got := match(t, reCalculated, string(out)); got != hex.EncodeToString(d) {
					t.Errorf("osslsigncode calculated %s, signet %x", got, d)
				}
				// The checksum osslsigncode wrote is the one signet computes.
				sf := parseFile(t, o)
				sum, err := sf.Checksum()
				if err != nil {
					t.Fatal(err)
				}
				if sum != sf.OptionalHeader.CheckSum {
					t.Errorf("osslsigncode's CheckSum %#x, signet computes %#x", sf.OptionalHeader.CheckSum, sum)
				}
			}
			if name == "no-sections-trailer" {
				return // pesign 0.112 crashes on an image without sections
			}
			// pesign -h hashes the file as it is: unpadded when unsigned.
			out := runCmd(t, "pesign", "-h", "-i", in)
			want := d
			if !signed {
				want = ud
			}
			if got := match(t, rePesignHash, out); got != hex.EncodeToString(want) {
				t.Errorf("pesign -h %s, signet %x (padded %x)", got, ud, d)
			}
		})
	}
}

// The CheckSum signet writes is the one osslsigncode calculates.
func TestChecksumOracle(t *testing.T) {
	k := testkeys.Generate(t, testkeys.P256)
	for _, name := range []string{"odd-section", "trailing-odd", "pe32"} {
		in := writeFile(t, name, synthetics[name].build())
		out := signFile(t, in, k, fixedTime)
		log := runCmd(t, "osslsigncode", "verify", "-in", out, "-CAfile", k.CertPath)
		f := parseFile(t, out)
		// osslsigncode prints "PE checksum : X" when the header matches its
		// calculation, and "Current"/"Calculated" lines when not.
		if strings.Contains(log, "Calculated PE checksum") || match(t, rePESum, log) != fmt.Sprintf("%08x", f.OptionalHeader.CheckSum) {
			t.Errorf("%s: osslsigncode disagrees with the CheckSum %#x:\n%s", name, f.OptionalHeader.CheckSum, log)
		}
		if got, _ := f.Checksum(); got != f.OptionalHeader.CheckSum {
			t.Errorf("%s: header CheckSum %#x, computed %#x", name, f.OptionalHeader.CheckSum, got)
		}
	}
}

// Signing an already-signed image appends a second WIN_CERTIFICATE; each
// certificate then verifies with sbverify and Verify. The input's table
// may use either dwLength convention (osslsigncode pads it, sbsign and
// signet do not).
func TestDoubleSignature(t *testing.T) {
	a := testkeys.Generate(t, testkeys.RSA2048)
	b := testkeys.Generate(t, testkeys.P384)
	in := writeFile(t, "in.efi", synthetics["trailing-odd"].build())
	ossl := filepath.Join(t.TempDir(), "ossl.efi")
	runCmd(t, "osslsigncode", "sign", "-certs", a.CertPath, "-key", a.KeyPath, "-h", "sha256", "-in", in, "-out", ossl)
	for name, first := range map[string]string{"signet-first": signFile(t, in, a, fixedTime), "osslsigncode-first": ossl} {
		t.Run(name, func(t *testing.T) {
			two := signFile(t, first, b, fixedTime)
			for _, k := range []*testkeys.Key{a, b} {
				if ok, log := sbverify(t, k.CertPath, two); !ok {
					t.Errorf("sbverify --cert %s rejects:\n%s", k.Kind, log)
				}
				if _, err := Verify(parseFile(t, two), []*x509.Certificate{k.Cert}); err != nil {
					t.Errorf("Verify with %s: %v", k.Kind, err)
				}
			}
			sigs, err := parseFile(t, two).Signatures()
			if err != nil {
				t.Fatal(err)
			}
			if len(sigs) != 2 || sigs[0].Signer == nil || sigs[1].Signer == nil ||
				!sigs[0].Signer.Equal(a.Cert) || !sigs[1].Signer.Equal(b.Cert) {
				t.Fatalf("signatures %+v", sigs)
			}
		})
	}
}

// One flipped byte in section data makes every verifier reject.
func TestTamper(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	for _, in := range []string{systemdBoot, writeFile(t, "t.efi", synthetics["trailing-odd"].build())} {
		out := signFile(t, in, k, fixedTime)
		f := parseFile(t, out)
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		s := f.Sections[0]
		b[s.PointerToRawData+s.SizeOfRawData/2] ^= 1
		bad := writeFile(t, "bad.efi", b)
		if ok, _ := sbverify(t, k.CertPath, bad); ok {
			t.Errorf("sbverify accepts a tampered %s", in)
		}
		if ok, _ := osslverify(t, k.CertPath, bad); ok {
			t.Errorf("osslsigncode accepts a tampered %s", in)
		}
		if _, err := Verify(parseFile(t, bad), []*x509.Certificate{k.Cert}); err != ErrDigestMismatch {
			t.Errorf("Verify of a tampered %s: %v, want ErrDigestMismatch", in, err)
		}
		// And a certificate that did not sign it is refused.
		other := testkeys.Generate(t, testkeys.P256)
		if _, err := Verify(parseFile(t, out), []*x509.Certificate{other.Cert}); err != ErrNotSignedBy {
			t.Errorf("Verify with another certificate: %v", err)
		}
		if ok, _ := sbverify(t, other.CertPath, out); ok {
			t.Errorf("sbverify accepts another certificate")
		}
	}
}
