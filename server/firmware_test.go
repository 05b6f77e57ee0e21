package server

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"signet.dev/authenticode"
	"signet.dev/internal/atomicfile"
	"signet.dev/internal/boottest"
	"signet.dev/internal/testenv"
	"signet.dev/keys"
	"signet.dev/request"
	"signet.dev/server/client"
)

// Console markers: what the firmware, systemd-boot and the kernel print.
const (
	// systemd-boot, when the firmware's LoadImage refuses a UKI.
	markUKIRefused = "Access denied"
	// OVMF's boot manager, when it refuses the boot loader itself.
	markLoaderRefused = "rejected probably by Secure Boot"
	// The kernel, booted with Secure Boot on.
	markSecureBoot = "secureboot: Secure boot enabled"
	markLockdown   = "Kernel is locked down from EFI Secure Boot"
)

// TestFirmware hands what the signing service signs to real firmware: OVMF
// with Secure Boot enforcing, a db holding the service's Authenticode
// certificate, systemd-boot and a UKI signed through `signet serve`
// (prepare with package authenticode, submit and fetch with server/client,
// join). The firmware runs them and refuses the forged variants; it also
// runs the hidden-payload forgery, which the service must refuse.
func TestFirmware(t *testing.T) {
	dir := t.TempDir()
	db := boottest.NewKey(t, dir, "db")
	pk, kek := boottest.NewKey(t, dir, "PK"), boottest.NewKey(t, dir, "KEK")
	other := boottest.NewKey(t, dir, "other")

	bootTok := newToken()
	e := newEnv(t, func(c *Config) {
		c.Keys = append(c.Keys, KeyConfig{Name: "db", PrivateKey: db.KeyPath, Certificate: db.CertPath, Kinds: []string{"authenticode"}})
		c.Clients = append(c.Clients, ClientConfig{Name: "boot", TokenSHA256: []string{tokenHash(bootTok)}, Keys: []string{"db"}})
	})
	e.tokens["boot"] = bootTok
	cl := e.client("boot")

	vars := boottest.Vars(t, dir, "vars", pk, kek, []*boottest.Key{db})
	const cmdline = "console=ttyS0 loglevel=4"
	good := boottest.UKI(t, dir, "good", boottest.Initrd(t, "SIGNET-GOOD"), cmdline)
	evil := boottest.UKI(t, dir, "evil", boottest.Initrd(t, "SIGNET-EVIL"), cmdline)

	loader := serviceSign(t, cl, e.vkey, boottest.File(t, boottest.SystemdBoot), filepath.Join(dir, "systemd-boot-signed.efi"))
	goodSigned := serviceSign(t, cl, e.vkey, good, filepath.Join(dir, "good-signed.efi"))

	// One boot: the signed systemd-boot loading uki as its only entry.
	boot := func(t *testing.T, name, loaderPath, uki string, vars string, extra map[string][]byte, tpm bool) *boottest.Console {
		t.Helper()
		files := map[string][]byte{
			"/EFI/BOOT/BOOTX64.EFI": boottest.ReadFile(t, loaderPath),
			"/loader/loader.conf":   boottest.LoaderConf("signet.efi"),
			"/EFI/Linux/signet.efi": boottest.ReadFile(t, uki),
		}
		for p, b := range extra {
			files[p] = b
		}
		esp := boottest.ESP(t, dir, name, files)
		m := boottest.Machine{Name: name, Dir: dir, Vars: vars, ESP: esp,
			Stop: []string{markUKIRefused, markLoaderRefused, "SIGNET-BOOTTEST-DONE"}}
		if tpm {
			m.TPMState = filepath.Join(dir, name+".tpm")
		}
		return boottest.Boot(t, m)
	}
	refused := func(t *testing.T, c *boottest.Console, marker string) {
		t.Helper()
		c.Expect(t, marker)
		c.Refuse(t, boottest.InitMarker)
	}

	t.Run("ServiceSigned", func(t *testing.T) {
		c := boot(t, "service-signed", loader, goodSigned, vars, nil, true)
		c.Expect(t, boottest.InitMarker+" SIGNET-GOOD", markSecureBoot, markLockdown,
			"integrity: Loaded X.509 cert 'signet boot test db")
		// The TPM's PCR 11 is what systemd-stub measured: signet's
		// prediction for this UKI must match it.
		got, want := strings.ToLower(c.Value(boottest.PCR11Marker)), boottest.PCR11(t, goodSigned)
		if got != want {
			t.Fatalf("PCR 11 (sha256) in the booted system is %q, signet predicts %s:\n%s", got, want, c.Tail(30))
		}
	})
	t.Run("UnsignedUKI", func(t *testing.T) {
		refused(t, boot(t, "unsigned-uki", loader, good, vars, nil, false), markUKIRefused)
	})
	t.Run("OtherKey", func(t *testing.T) {
		u := boottest.Sign(t, good, filepath.Join(dir, "other-signed.efi"), other)
		refused(t, boot(t, "other-key", loader, u, vars, nil, false), markUKIRefused)
	})
	t.Run("ModifiedAfterSigning", func(t *testing.T) {
		b := boottest.ReadFile(t, goodSigned)
		i := bytes.Index(b, []byte("SIGNET-GOOD"))
		if i < 0 {
			t.Fatal("the initrd's marker is not in the signed UKI")
		}
		copy(b[i:], "SIGNET-EVIL")
		p := filepath.Join(dir, "modified.efi")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		refused(t, boot(t, "modified", loader, p, vars, nil, false), markUKIRefused)
	})
	t.Run("UnsignedBootLoader", func(t *testing.T) {
		refused(t, boot(t, "unsigned-loader", boottest.File(t, boottest.SystemdBoot), goodSigned, vars, nil, false), markLoaderRefused)
	})

	// The hidden payload: an item whose SpcIndirectDataContent shows good's
	// digest and carries evil's after it.
	goodDigest, evilDigest := peDigest(t, good), peDigest(t, evil)
	spc, err := boottest.HiddenPayloadSPC(goodDigest, evilDigest)
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := boottest.SignedAttributesFor(spc)
	if err != nil {
		t.Fatal(err)
	}
	hidden := request.Item{ID: "ukis/good.efi", Kind: request.KindAuthenticode, Key: "db", Hash: "sha256", TBS: attrs,
		Authenticode: &request.AuthenticodeContext{File: "good.efi", Digest: hex.EncodeToString(goodDigest), SpcIndirectData: spc}}

	t.Run("HiddenPayloadRunsOnFirmware", func(t *testing.T) {
		// What a signer that trusts the client's structure signs: the
		// attributes, with the db key.
		sig, err := keys.Sign(db.Signer, authenticode.Hash, attrs)
		if err != nil {
			t.Fatal(err)
		}
		p7, err := boottest.AssembleAuthenticode(spc, attrs, db.Cert, sig)
		if err != nil {
			t.Fatal(err)
		}
		forged, err := boottest.AttachPKCS7(boottest.ReadFile(t, evil), p7)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "hidden-payload.efi")
		if err := os.WriteFile(p, forged, 0o644); err != nil {
			t.Fatal(err)
		}
		c := boot(t, "hidden-payload", loader, p, vars, nil, false)
		c.Expect(t, boottest.InitMarker+" SIGNET-EVIL", markSecureBoot)
		// Verifiers that parse the structure strictly refuse what the
		// firmware runs: signet's own and sbverify.
		if _, err := authenticode.Verify(peFile(t, p), []*x509.Certificate{db.Cert}); err == nil {
			t.Error("signet's Authenticode verifier accepts the hidden-payload image")
		}
		if out, err := testenv.RunErr(t, "sbverify", "--cert", db.CertPath, p); err == nil {
			t.Errorf("sbverify accepts the hidden-payload image:\n%s", out)
		}
	})
	t.Run("ServiceRefusesHiddenPayload", func(t *testing.T) {
		r := &request.Request{Format: request.FormatRequest, Build: "firmware-test", Items: []request.Item{hidden}}
		body, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		st, err := cl.Submit(ctx, body)
		var ce *client.Error
		if !errors.As(err, &ce) {
			t.Fatalf("the service accepted the hidden-payload item (request %v, err %v): it would sign a signature that OVMF runs on another binary", st, err)
		}
		if ce.Status != http.StatusUnprocessableEntity || !strings.Contains(ce.Reason(), "SpcIndirectDataContent") {
			t.Fatalf("refusal %d %q, want 422 naming the SpcIndirectDataContent", ce.Status, ce.Reason())
		}
		t.Logf("refused: %d %s", ce.Status, ce.Reason())
	})

	t.Run("EnrollFromAuthFiles", func(t *testing.T) {
		// Setup mode; systemd-boot enrolls PK, KEK and db from .auth files
		// (efitools' sign-efi-sig-list) and resets, which ends QEMU
		// (-no-reboot); the next boot runs with Secure Boot enforcing.
		sv := boottest.SetupModeVars(t, dir, "setup-vars")
		auth := boottest.AuthFiles(t, dir, pk, kek, []*boottest.Key{db})
		auth["/loader/loader.conf"] = boottest.LoaderConf("signet.efi", "secure-boot-enroll force")
		c := boot(t, "enroll", loader, goodSigned, sv, auth, false)
		c.Expect(t, "Custom Secure Boot keys successfully enrolled")
		c = boot(t, "enrolled", loader, goodSigned, sv, nil, false)
		c.Expect(t, boottest.InitMarker+" SIGNET-GOOD", markSecureBoot)
		refused(t, boot(t, "enrolled-unsigned", loader, good, sv, nil, false), markUKIRefused)
	})
}

// peFile parses the PE at path; the file stays open until the test ends.
func peFile(t *testing.T, path string) *authenticode.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	p, err := authenticode.Parse(f, fi.Size())
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return p
}

// peDigest is the SHA-256 Authenticode digest of the PE at path.
func peDigest(t *testing.T, path string) []byte {
	t.Helper()
	d, err := peFile(t, path).Digest(authenticode.Hash)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// serviceSign signs the PE at in through the service as a build does:
// prepare the signed attributes, submit one authenticode item for key db,
// wait for the signature and its audit proof, join. It returns out.
func serviceSign(t *testing.T, cl *client.Client, vkey, in, out string) string {
	t.Helper()
	f, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	p, err := authenticode.Parse(f, fi.Size())
	if err != nil {
		t.Fatalf("%s: %v", in, err)
	}
	prep, err := authenticode.Prepare(p, boottest.SignedAt)
	if err != nil {
		t.Fatal(err)
	}
	spc, err := authenticode.SpcIndirectDataContent(prep.Hash, prep.Digest)
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(in)
	it := request.Item{ID: "efi/" + name, Kind: request.KindAuthenticode, Key: "db", Hash: "sha256", TBS: prep.SignedAttributes,
		Authenticode: &request.AuthenticodeContext{File: name, Digest: hex.EncodeToString(prep.Digest), SpcIndirectData: spc}}
	r := &request.Request{Format: request.FormatRequest, Build: "firmware-test", Items: []request.Item{it}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := cl.Sign(ctx, r, vkey)
	if err != nil {
		t.Fatalf("signing %s through the service: %v", in, err)
	}
	s := res.Response.Signature(it.ID)
	if s == nil {
		t.Fatalf("the service's response has no signature for %s", it.ID)
	}
	cert, err := x509.ParseCertificate(s.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	w, err := atomicfile.Create(out, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := authenticode.Join(p, prep.SignedAttributes, cert, s.Signature, w.File); err != nil {
		t.Fatalf("joining the service's signature into %s: %v", in, err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	return out
}
