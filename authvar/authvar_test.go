package authvar_test

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"signet.dev/authvar"
	"signet.dev/internal/boottest"
)

// owner is the signature owner of the test lists.
var owner = authvar.MustGUID(boottest.OwnerGUID)

var stamp = authvar.TimeOf(time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC))

func read(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestEfitools has efitools judge every byte: cert-to-efi-sig-list must
// write our signature lists, sign-efi-sig-list our signed .auth files (RSA
// PKCS#1 v1.5 is deterministic, so the same key gives the same bytes), its
// -o our TBS, and its -i with our PKCS#7 our joined file.
func TestEfitools(t *testing.T) {
	dir := t.TempDir()
	pk, kek := boottest.NewKey(t, dir, "PK"), boottest.NewKey(t, dir, "KEK")
	db1, db2 := boottest.NewKey(t, dir, "db1"), boottest.NewKey(t, dir, "db2")
	for _, c := range []struct {
		name  string
		certs []*boottest.Key
		by    *boottest.Key
	}{
		{"PK", []*boottest.Key{pk}, pk},
		{"KEK", []*boottest.Key{kek}, pk},
		{"db", []*boottest.Key{db1, db2}, kek},
	} {
		t.Run(c.name, func(t *testing.T) {
			var certs []*x509.Certificate
			var esl []byte
			for _, k := range c.certs {
				certs = append(certs, k.Cert)
				p := filepath.Join(dir, c.name+"-"+k.Name+".esl")
				boottest.Run(t, "cert-to-efi-sig-list", "-g", boottest.OwnerGUID, k.CertPath, p)
				esl = append(esl, read(t, p)...)
			}
			eslPath := filepath.Join(dir, c.name+".esl")
			if err := os.WriteFile(eslPath, esl, 0o644); err != nil {
				t.Fatal(err)
			}
			v, err := authvar.NewSecureBootVariable(c.name, owner, certs, stamp)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(v.Data, esl) {
				t.Fatalf("signature lists differ from cert-to-efi-sig-list's (%d vs %d bytes)", len(v.Data), len(esl))
			}
			p, err := authvar.Prepare(v, c.by.Cert)
			if err != nil {
				t.Fatal(err)
			}

			// Online: one command signs.
			ref := filepath.Join(dir, c.name+".auth")
			boottest.Run(t, "sign-efi-sig-list", "-t", stamp.String(), "-g", boottest.OwnerGUID, "-k", c.by.KeyPath, "-c", c.by.CertPath, c.name, eslPath, ref)
			ours, err := p.Sign(c.by.Signer)
			if err != nil {
				t.Fatal(err)
			}
			if want := read(t, ref); !bytes.Equal(ours, want) {
				t.Fatalf("signet's %s.auth (%d bytes) differs from sign-efi-sig-list's (%d bytes) at offset %d", c.name, len(ours), len(want), diffAt(ours, want))
			}
			vendor, _ := authvar.VendorGUID(c.name)
			if _, err := authvar.Verify(read(t, ref), c.name, vendor, authvar.DefaultAttributes, []*x509.Certificate{c.by.Cert}); err != nil {
				t.Fatalf("signet does not verify sign-efi-sig-list's %s.auth: %v", c.name, err)
			}

			// Offline: -o writes the TBS, -i joins a PKCS#7 made elsewhere.
			tbs := filepath.Join(dir, c.name+".tbs")
			boottest.Run(t, "sign-efi-sig-list", "-o", "-t", stamp.String(), "-g", boottest.OwnerGUID, c.name, eslPath, tbs)
			if want := read(t, tbs); !bytes.Equal(p.TBS, want) {
				t.Fatalf("signet's TBS differs from sign-efi-sig-list -o's at offset %d", diffAt(p.TBS, want))
			}
			a, err := authvar.Parse(ours)
			if err != nil {
				t.Fatal(err)
			}
			p7 := filepath.Join(dir, c.name+".p7")
			if err := os.WriteFile(p7, a.CertData, 0o644); err != nil {
				t.Fatal(err)
			}
			joined := filepath.Join(dir, c.name+"-joined.auth")
			boottest.Run(t, "sign-efi-sig-list", "-i", p7, "-t", stamp.String(), "-g", boottest.OwnerGUID, c.name, eslPath, joined)
			if want := read(t, joined); !bytes.Equal(ours, want) {
				t.Fatalf("sign-efi-sig-list -i with signet's PKCS#7 differs from signet's .auth at offset %d", diffAt(ours, want))
			}
		})
	}
}

func diffAt(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
