package check

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"signet.dev/authvar"
	"signet.dev/internal/testkeys"
	"signet.dev/request"
)

// authVarItem is a KEK update signed by pk, as a build would submit it.
func authVarItem(t *testing.T, pk *testkeys.Key, kek *x509.Certificate) (*request.Item, *authvar.Prepared) {
	t.Helper()
	owner := "8d54a3a6-2c1e-4b7f-9a39-5e2b1c0f5e11"
	when := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	v, err := authvar.NewSecureBootVariable("KEK", authvar.MustGUID(owner), []*x509.Certificate{kek, pk.Cert}, authvar.TimeOf(when))
	if err != nil {
		t.Fatal(err)
	}
	p, err := authvar.Prepare(v, pk.Cert)
	if err != nil {
		t.Fatal(err)
	}
	return &request.Item{ID: "authvars/KEK.auth", Kind: request.KindUEFIAuthVar, Key: "pk", Hash: "sha256", TBS: p.TBS,
		AuthVar: &request.AuthVarContext{File: "KEK.auth", Variable: "KEK", VendorGUID: authvar.GlobalVariable.String(),
			Attributes: authvar.DefaultAttributes, Time: when.Format(time.DateTime), Owner: owner,
			Certificates: [][]byte{kek.Raw, pk.Cert.Raw}}}, p
}

// TestUEFIAuthVar: the rebuilt update is signed through the generic path
// and joins into a file that verifies; every change to the TBS or the
// context is refused, naming the part that differs.
func TestUEFIAuthVar(t *testing.T) {
	pk := testkeys.Generate(t, testkeys.RSA2048)
	kek := testkeys.Generate(t, testkeys.RSA3072)
	it, p := authVarItem(t, pk, kek.Cert)
	if err := Item(it); err != nil {
		t.Fatalf("a well-formed KEK update is refused: %v", err)
	}
	r := &request.Request{Format: request.FormatRequest, Items: []request.Item{*it}}
	resp, err := request.Sign(r, map[string]request.Key{"pk": {Signer: pk.Signer, Certificate: pk.Cert}}, Item)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := p.Join(resp.Items[0].Signature)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := authvar.Verify(auth, "KEK", authvar.GlobalVariable, authvar.DefaultAttributes, []*x509.Certificate{pk.Cert}); err != nil {
		t.Fatal(err)
	}

	n := 2 * len("KEK")
	for _, c := range []struct {
		name string
		edit func(*request.Item)
		want string
	}{
		{"name byte", func(it *request.Item) { it.TBS[0] = 'k' }, "the variable name differs"},
		{"vendor byte", func(it *request.Item) { it.TBS[n+3] ^= 1 }, "the vendor GUID differs"},
		{"attribute byte", func(it *request.Item) { it.TBS[n+16] |= 0x40 }, "the attributes differ"},
		{"time byte", func(it *request.Item) { it.TBS[n+20+5] ^= 1 }, "the EFI_TIME differs"},
		{"list byte", func(it *request.Item) { it.TBS[len(it.TBS)-1] ^= 1 }, "the signature lists (at list byte"},
		{"trailing byte", func(it *request.Item) { it.TBS = append(it.TBS, 0) }, "the length"},
		{"other time", func(it *request.Item) { it.AuthVar.Time = "2026-01-02 03:04:06" }, "the EFI_TIME differs"},
		{"one certificate less", func(it *request.Item) { it.AuthVar.Certificates = it.AuthVar.Certificates[:1] }, "the length"},
		{"other owner", func(it *request.Item) { it.AuthVar.Owner = "00000000-0000-0000-0000-000000000000" }, "the signature lists"},
		{"db vendor for KEK", func(it *request.Item) { it.AuthVar.VendorGUID = authvar.ImageSecurityDatabase.String() }, "the specification's is"},
		{"other variable", func(it *request.Item) {
			it.AuthVar.Variable = "db"
			it.AuthVar.VendorGUID = authvar.ImageSecurityDatabase.String()
		}, "the variable name differs"},
		{"attributes", func(it *request.Item) { it.AuthVar.Attributes = 0x07 }, "want 0x27"},
		{"zero time without append", func(it *request.Item) { it.AuthVar.Time = "0000-00-00 00:00:00" }, "APPEND_WRITE"},
		{"not a certificate", func(it *request.Item) { it.AuthVar.Certificates[0] = []byte{0x30, 0} }, "certificate 0"},
		{"sha384", func(it *request.Item) { it.Hash = "sha384" }, "sha256 only"},
		{"MokList", func(it *request.Item) { it.AuthVar.Variable = "MokList" }, "not one of PK, KEK, db, dbx"},
		{"bad time", func(it *request.Item) { it.AuthVar.Time = "2026-13-01 00:00:00" }, "not YYYY-MM-DD HH:MM:SS"},
		{"upper-case GUID", func(it *request.Item) { it.AuthVar.Owner = strings.ToUpper(it.AuthVar.Owner) }, "not a lowercase GUID"},
		{"no context", func(it *request.Item) { it.AuthVar = nil }, `needs exactly one context, "authvar"`},
	} {
		bad, _ := authVarItem(t, pk, kek.Cert)
		c.edit(bad)
		err := Item(bad)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a refusal with %q", c.name, err, c.want)
		}
	}
	// Two PK certificates are refused though the TBS matches them.
	pkIt, _ := authVarItem(t, pk, kek.Cert)
	pkIt.AuthVar.Variable, pkIt.TBS = "PK", append([]byte{'P', 0}, pkIt.TBS[6:]...)
	if err := Item(pkIt); err == nil || !strings.Contains(err.Error(), "exactly one certificate") {
		t.Errorf("a PK with two certificates: %v", err)
	}
}

// FuzzUEFIAuthVar: any TBS, certificate bytes, time and attributes are
// checked without a panic, and what is accepted is exactly the rebuild.
func FuzzUEFIAuthVar(f *testing.F) {
	f.Add([]byte("K\x00E\x00K\x00"), []byte{0x30, 0}, "2026-01-01 00:00:00", uint32(0x27), "KEK")
	f.Add([]byte{}, []byte{}, "0000-00-00 00:00:00", uint32(0x67), "db")
	f.Fuzz(func(t *testing.T, tbs, cert []byte, when string, attrs uint32, variable string) {
		vendor, _ := authvar.VendorGUID(variable)
		it := &request.Item{ID: "authvars/x.auth", Kind: request.KindUEFIAuthVar, Key: "k", Hash: "sha256", TBS: tbs,
			AuthVar: &request.AuthVarContext{File: "x.auth", Variable: variable, VendorGUID: vendor.String(), Attributes: attrs,
				Time: when, Owner: "00000000-0000-0000-0000-000000000000", Certificates: [][]byte{cert}}}
		if Item(it) == nil && len(tbs) < 2*len(variable)+20+authvar.TimeSize {
			t.Fatalf("accepted a %d-byte TBS", len(tbs))
		}
	})
}
