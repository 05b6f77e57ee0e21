package authvar_test

import (
	"crypto"
	"crypto/x509"
	"strings"
	"testing"

	"signet.dev/authvar"
	"signet.dev/cms"
	"signet.dev/internal/boottest"
	"signet.dev/keys"
)

// TestRefused: what firmware would refuse, Verify and Join refuse.
func TestRefused(t *testing.T) {
	dir := t.TempDir()
	pk, kek := boottest.NewKey(t, dir, "PK"), boottest.NewKey(t, dir, "KEK")
	v, err := authvar.NewSecureBootVariable("KEK", owner, []*x509.Certificate{kek.Cert}, stamp)
	if err != nil {
		t.Fatal(err)
	}
	p, err := authvar.Prepare(v, pk.Cert)
	if err != nil {
		t.Fatal(err)
	}
	good, err := p.Sign(pk.Signer)
	if err != nil {
		t.Fatal(err)
	}
	trusted := []*x509.Certificate{pk.Cert}
	if _, err := authvar.Verify(good, "KEK", authvar.GlobalVariable, authvar.DefaultAttributes, trusted); err != nil {
		t.Fatal(err)
	}
	tamper := func(off int) []byte {
		b := append([]byte(nil), good...)
		b[off] ^= 1
		return b
	}
	for _, c := range []struct {
		name    string
		auth    []byte
		varName string
		vendor  authvar.GUID
		trusted []*x509.Certificate
		want    string
	}{
		{"last data byte", tamper(len(good) - 1), "KEK", authvar.GlobalVariable, trusted, "does not verify"},
		{"timestamp", tamper(5), "KEK", authvar.GlobalVariable, trusted, "does not verify"},
		{"other name", good, "db", authvar.GlobalVariable, trusted, "does not verify"},
		{"other vendor", good, "KEK", authvar.ImageSecurityDatabase, trusted, "does not verify"},
		{"untrusted signer", good, "KEK", authvar.GlobalVariable, []*x509.Certificate{kek.Cert}, "not a trusted"},
		{"revision", tamper(21), "KEK", authvar.GlobalVariable, trusted, "revision"},
		{"cert type", tamper(24), "KEK", authvar.GlobalVariable, trusted, "CertType"},
		{"truncated", good[:30], "KEK", authvar.GlobalVariable, trusted, "shorter"},
	} {
		_, err := authvar.Verify(c.auth, c.varName, c.vendor, authvar.DefaultAttributes, c.trusted)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Verify = %v, want an error with %q", c.name, err, c.want)
		}
	}
	// CertData as a ContentInfo (what `systemd-keyutil pkcs7` writes and
	// mkosi-obs passes to sign-efi-sig-list -i) joins and verifies too.
	ci, err := cms.AssembleNoAttr(pk.Cert, p.TBS, crypto.SHA256, mustSig(t, pk, p.TBS), true)
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := p.JoinPKCS7(ci)
	if err != nil {
		t.Fatalf("a ContentInfo CertData: %v", err)
	}
	if _, err := authvar.Verify(wrapped, "KEK", authvar.GlobalVariable, authvar.DefaultAttributes, trusted); err != nil {
		t.Fatalf("a ContentInfo CertData: %v", err)
	}
	// A signature by another key is not joined.
	other, err := authvar.Prepare(v, kek.Cert)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := authvar.Parse(good)
	if _, err := other.JoinPKCS7(a.CertData); err == nil {
		t.Error("JoinPKCS7 joined PK's PKCS#7 for KEK's certificate")
	}
	if _, err := other.Join(make([]byte, 256)); err == nil {
		t.Error("Join accepted a zero signature")
	}
	if _, err := authvar.NewSecureBootVariable("PK", owner, []*x509.Certificate{pk.Cert, kek.Cert}, stamp); err == nil {
		t.Error("a PK with two certificates was made")
	}
	if _, err := authvar.NewSecureBootVariable("MokList", owner, []*x509.Certificate{pk.Cert}, stamp); err == nil {
		t.Error("a Secure Boot variable named MokList was made")
	}
	bad := *v
	bad.Time.TimeZone = 60
	if _, err := authvar.Prepare(&bad, pk.Cert); err == nil {
		t.Error("a timestamp with a time zone was prepared")
	}
}

func mustSig(t *testing.T, k *boottest.Key, tbs []byte) []byte {
	t.Helper()
	sig, err := keys.Sign(k.Signer, crypto.SHA256, tbs)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func TestGUID(t *testing.T) {
	const s = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
	g, err := authvar.ParseGUID(s)
	if err != nil || g.String() != s || g[0] != 0x61 || g[3] != 0x8b || g[8] != 0xaa {
		t.Fatalf("ParseGUID(%s) = % x, %v", s, g, err)
	}
	for _, bad := range []string{"", "8be4df61-93ca-11d2-aa0d-00e098032b8", "8be4df6193ca11d2aa0d00e098032b8c", "zbe4df61-93ca-11d2-aa0d-00e098032b8c"} {
		if _, err := authvar.ParseGUID(bad); err == nil {
			t.Errorf("ParseGUID(%q) accepted", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(authvar.Marshal(stamp, []byte{0x30, 0}, []byte("data")))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := authvar.Parse(b)
		if err != nil {
			return
		}
		authvar.Verify(b, "db", authvar.ImageSecurityDatabase, authvar.DefaultAttributes, nil)
		authvar.ParseLists(a.Data)
	})
}

func FuzzParseLists(f *testing.F) {
	l, _ := authvar.MarshalLists([]authvar.SignatureList{{Type: authvar.CertSHA256, Signatures: []authvar.Signature{{Data: make([]byte, 32)}}}})
	f.Add(l)
	f.Fuzz(func(t *testing.T, b []byte) {
		lists, err := authvar.ParseLists(b)
		if err != nil {
			return
		}
		again, err := authvar.MarshalLists(lists)
		if err != nil || string(again) != string(b) {
			t.Fatalf("lists do not round-trip: %v", err)
		}
	})
}
