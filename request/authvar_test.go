package request

import (
	"strings"
	"testing"

	"signet.dev/internal/testkeys"
)

// TestAuthVarDocument: an authenticated variable item is in the schema,
// round-trips, and its family keeps its key away from authenticode.
func TestAuthVarDocument(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	r := &Request{Format: FormatRequest, Items: []Item{{ID: "authvars/db.auth", Kind: KindUEFIAuthVar, Key: "kek", Hash: "sha256", TBS: []byte("d\x00b\x00"),
		AuthVar: &AuthVarContext{File: "db.auth", Variable: "db", VendorGUID: "d719b2cb-3d3a-4596-a3bc-dad00e67656f", Attributes: 0x27,
			Time: "2026-01-01 00:00:00", Owner: "8d54a3a6-2c1e-4b7f-9a39-5e2b1c0f5e11", Certificates: [][]byte{k.Cert.Raw}}}}}
	data, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := loadSchema(t, "request.schema.json").validate(t, data); err != nil {
		t.Fatalf("schema: %v", err)
	}
	back, err := Parse(data)
	if err != nil || back.Digest() != r.Digest() {
		t.Fatalf("round trip: %v", err)
	}
	bad := strings.Replace(string(data), `"variable": "db"`, `"variable": "MokList"`, 1)
	if bad == string(data) {
		t.Fatal("edit did not apply")
	}
	if _, err := Parse([]byte(bad)); err == nil {
		t.Error("Parse accepts variable MokList")
	}
	if err := loadSchema(t, "request.schema.json").validate(t, []byte(bad)); err == nil {
		t.Error("the schema accepts variable MokList")
	}
	if err := CheckKeyKinds([]Kind{KindAuthenticode, KindUEFIAuthVar}, nil); err == nil {
		t.Error("one key may sign authenticode and uefi-authvar undeclared")
	}
	if Family(KindUEFIAuthVar) != "uefi-authvar" {
		t.Errorf("family %q", Family(KindUEFIAuthVar))
	}
}
