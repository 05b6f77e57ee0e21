package request

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/keys"
)

func hexOf(b byte, n int) string { return strings.Repeat(string("0123456789abcdef"[b%16]), 2*n) }

// sample is a request with one item of every kind. Its contents are shaped
// right but not checked (package check has the content tests).
func sample() *Request {
	return &Request{
		Format: FormatRequest,
		Build:  "example",
		Round:  1,
		Items: []Item{
			{ID: "ukis/uki.efi", Kind: KindAuthenticode, Key: "db", Hash: "sha256", TBS: []byte{0x31, 0},
				Authenticode: &AuthenticodeContext{File: "uki.efi", Digest: hexOf(1, 32), SpcIndirectData: []byte{0x30, 0}}},
			{ID: "pcrs/uki.efi/" + hexOf(2, 32), Kind: KindPCRPolicy, Key: "pcr", Hash: "sha256", TBS: bytes.Repeat([]byte{2}, 32),
				PCR: &PCRContext{UKI: "uki.efi", Bank: "sha256", Phase: "enter-initrd",
					Sections: []SectionDigest{{Name: ".linux", Digest: hexOf(3, 32)}}, PCR: hexOf(4, 32)}},
			{ID: "roothashes/root.roothash", Kind: KindVerityRootHash, Key: "verity", Hash: "sha256", TBS: []byte(hexOf(5, 32)),
				Verity: &VerityContext{Image: "root.raw", RootHash: hexOf(5, 32)}},
			{ID: "manifests/SHA256SUMS.gpg", Kind: KindManifestOpenPGP, Key: "release", Hash: "sha512", TBS: []byte("x"),
				Manifest: &ManifestContext{File: "SHA256SUMS", Entries: []ManifestEntry{{Name: "a", SHA256: hexOf(6, 32)}}}},
			{ID: "manifests/SHA256SUMS.p7s", Kind: KindManifestPKCS7, Key: "release", Hash: "sha256", TBS: []byte("y"),
				Manifest: &ManifestContext{File: "SHA256SUMS", Entries: []ManifestEntry{}}},
			{ID: "ipe/policy", Kind: KindIPEPolicy, Key: "ipe", Hash: "sha256", TBS: []byte("policy_name=a policy_version=0.0.1\n"),
				IPE: &IPEContext{File: "policy.ipe", Name: "a", Version: "0.0.1"}},
		},
	}
}

func TestRoundTrip(t *testing.T) {
	r := sample()
	data, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	data2, _ := r2.Marshal()
	if !bytes.Equal(data, data2) {
		t.Fatalf("re-encoding differs:\n%s\n%s", data, data2)
	}
	// The binding digest survives re-indentation.
	var compact bytes.Buffer
	if err := json.Compact(&compact, data); err != nil {
		t.Fatal(err)
	}
	r3, err := Parse(compact.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if r3.DigestString() != r.DigestString() {
		t.Fatal("digest changed with whitespace")
	}
	r3.Items[0].TBS[1] = 1
	if r3.DigestString() == r.DigestString() {
		t.Fatal("digest did not change with the TBS")
	}
}

func TestStrict(t *testing.T) {
	good, _ := sample().Marshal()
	cases := map[string]struct {
		edit func(string) string
		want error
	}{
		"unknown field": {func(s string) string { return strings.Replace(s, `"build"`, `"bulid"`, 1) }, ErrInvalid},
		"format":        {func(s string) string { return strings.Replace(s, "signet.request/v1", "signet.request/v2", 1) }, ErrFormat},
		"trailing":      {func(s string) string { return s + "{}" }, ErrInvalid},
		"bad base64":    {func(s string) string { return strings.Replace(s, `"tbs": "MQA="`, `"tbs": "MQA"`, 1) }, ErrInvalid},
		"duplicate id":  {func(s string) string { return strings.Replace(s, "ipe/policy", "ukis/uki.efi", 1) }, ErrInvalid},
		"dotdot id":     {func(s string) string { return strings.Replace(s, "ipe/policy", "../policy", 1) }, ErrInvalid},
		"absolute id":   {func(s string) string { return strings.Replace(s, "ipe/policy", "/policy", 1) }, ErrInvalid},
		"sig id":        {func(s string) string { return strings.Replace(s, "ipe/policy", "ipe/policy.sig", 1) }, ErrInvalid},
		"kind":          {func(s string) string { return strings.Replace(s, `"ipe-policy"`, `"ipe"`, 1) }, ErrInvalid},
		"wrong context": {func(s string) string {
			return strings.Replace(s, `"kind": "ipe-policy"`, `"kind": "verity-roothash"`, 1)
		}, ErrInvalid},
		"hash":           {func(s string) string { return strings.Replace(s, `"sha512"`, `"sha1"`, 1) }, ErrInvalid},
		"upper hex":      {func(s string) string { return strings.Replace(s, hexOf(1, 32), strings.ToUpper(hexOf(10, 32)), 1) }, ErrInvalid},
		"bank":           {func(s string) string { return strings.Replace(s, `"bank": "sha256"`, `"bank": "sm3"`, 1) }, ErrInvalid},
		"empty key":      {func(s string) string { return strings.Replace(s, `"key": "db"`, `"key": ""`, 1) }, ErrInvalid},
		"negative round": {func(s string) string { return strings.Replace(s, `"round": 1`, `"round": -1`, 1) }, ErrInvalid},
		"not json":       {func(s string) string { return "SHA256SUMS" }, ErrInvalid},
		"ipe no version": {func(s string) string { return strings.Replace(s, `"version": "0.0.1"`, `"version": ""`, 1) }, ErrInvalid},
	}
	for name, c := range cases {
		bad := c.edit(string(good))
		if bad == string(good) {
			t.Fatalf("%s: edit did not apply", name)
		}
		if _, err := Parse([]byte(bad)); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", name, err, c.want)
		}
	}
	// Two contexts on one item.
	r := sample()
	r.Items[2].IPE = &IPEContext{File: "x", Name: "x", Version: "1.0.0"}
	if err := r.Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("two contexts: %v", err)
	}
}

// kindsOf declares every kind r asks key for.
func kindsOf(r *Request, key string) []Kind {
	var ks []Kind
	for _, it := range r.Items {
		if it.Key == key {
			ks = append(ks, it.Kind)
		}
	}
	return ks
}

func signAll(t *testing.T, r *Request, k *testkeys.Key) *Response {
	t.Helper()
	named := map[string]Key{}
	for _, it := range r.Items {
		named[it.Key] = Key{Signer: k.Signer, Certificate: k.Cert, Kinds: kindsOf(r, it.Key)}
	}
	resp, err := Sign(r, named, func(*Item) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestSignVerify(t *testing.T) {
	for _, kind := range []testkeys.Kind{testkeys.RSA2048, testkeys.P256} {
		t.Run(string(kind), func(t *testing.T) {
			k := testkeys.Generate(t, kind)
			r := sample()
			resp := signAll(t, r, k)
			data, err := resp.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			resp2, err := ParseResponse(data)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Verify(r, resp2, map[string]*x509.Certificate{"db": k.Cert}); err != nil {
				t.Fatal(err)
			}
			// Every signature is what openssl dgst verifies over the TBS.
			dir := t.TempDir()
			for i, s := range resp2.Items {
				it := r.Item(s.ID)
				tbs, sig := filepath.Join(dir, "tbs"), filepath.Join(dir, "sig")
				os.WriteFile(tbs, it.TBS, 0o600)
				os.WriteFile(sig, s.Signature, 0o600)
				out := testenv.Run(t, "openssl", "dgst", "-"+it.Hash, "-verify", k.PubPath, "-signature", sig, tbs)
				testenv.Contains(t, out, "Verified OK")
				_ = i
			}

			// A corrupted signature is refused.
			bad, _ := ParseResponse(data)
			bad.Items[2].Signature[5] ^= 1
			if _, err := Verify(r, bad, nil); !errors.Is(err, ErrBadSignature) {
				t.Errorf("corrupted signature: %v", err)
			}
			// A response for another request is refused.
			other := sample()
			other.Round = 2
			if _, err := Verify(other, resp2, nil); !errors.Is(err, ErrWrongRequest) {
				t.Errorf("other request: %v", err)
			}
			// A missing item is refused.
			short, _ := ParseResponse(data)
			short.Items = short.Items[1:]
			if _, err := Verify(r, short, nil); !errors.Is(err, ErrMissing) {
				t.Errorf("missing item: %v", err)
			}
			// The expected certificate is enforced.
			otherKey := testkeys.Generate(t, testkeys.RSA3072)
			if _, err := Verify(r, resp2, map[string]*x509.Certificate{"verity": otherKey.Cert}); err == nil {
				t.Error("a signature by another key than the expected one was accepted")
			}
		})
	}
}

func TestSignRefusesOnCheck(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	r := sample()
	named := map[string]Key{}
	for _, it := range r.Items {
		named[it.Key] = Key{Signer: k.Signer, Certificate: k.Cert}
	}
	calls := 0
	_, err := Sign(r, named, func(it *Item) error {
		calls++
		if it.Kind == KindIPEPolicy {
			return errors.New("no")
		}
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), `"ipe/policy" refused`) {
		t.Fatalf("got %v", err)
	}
	delete(named, "ipe")
	if _, err := Sign(r, named, func(*Item) error { return nil }); err == nil || !strings.Contains(err.Error(), `no key named "ipe"`) {
		t.Fatalf("missing key: %v", err)
	}
}

// TestSignKeyKinds shows a key signs one kind family unless declared, and
// only its declared kinds when declared: the whole request is refused,
// naming the item, its kind and the key.
func TestSignKeyKinds(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	ok := func(*Item) error { return nil }
	r := sample()
	// One key for an Authenticode and a PCR item, undeclared: refused.
	r.Items[1].Key = "db"
	named := map[string]Key{}
	for _, it := range r.Items {
		named[it.Key] = Key{Signer: k.Signer, Certificate: k.Cert, Kinds: kindsOf(r, it.Key)}
	}
	named["db"] = Key{Signer: k.Signer, Certificate: k.Cert}
	_, err := Sign(r, named, ok)
	if err == nil || !strings.Contains(err.Error(), `item "pcrs/uki.efi/`) || !strings.Contains(err.Error(), "(kind pcr-policy)") || !strings.Contains(err.Error(), `key "db"`) {
		t.Fatalf("two families on an undeclared key: %v", err)
	}
	// Declared for both: signed.
	named["db"] = Key{Signer: k.Signer, Certificate: k.Cert, Kinds: []Kind{KindAuthenticode, KindPCRPolicy}}
	if _, err := Sign(r, named, ok); err != nil {
		t.Fatalf("declared kinds: %v", err)
	}
	// Declared for Authenticode only: the PCR item is refused, and so is
	// the whole request.
	named["db"] = Key{Signer: k.Signer, Certificate: k.Cert, Kinds: []Kind{KindAuthenticode}}
	if _, err := SignPartial(r, named, ok); err == nil || !strings.Contains(err.Error(), "(kind pcr-policy) refused") {
		t.Fatalf("undeclared kind: %v", err)
	}
	// Undeclared, one family of three kinds: signed.
	r = sample()
	r.Items[5].Key = "verity"
	r.Items[4].Key = "verity"
	named = map[string]Key{"verity": {Signer: k.Signer, Certificate: k.Cert}}
	resp, err := SignPartial(r, named, ok)
	if err != nil || len(resp.Items) != 3 {
		t.Fatalf("one family: %v", err)
	}
}

// TestOBS exports a request, unpacks it with GNU cpio, signs every file as
// OBS does (openssl dgst -sha256 -sign), packs <name>.sig with GNU cpio and
// imports the result.
func TestOBS(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	r := sample()
	r.Items[3].Hash = "sha256"
	var buf bytes.Buffer
	if err := ExportOBS(&buf, r); err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	ExportOBS(&again, r)
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Fatal("export is not reproducible")
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	os.Mkdir(in, 0o755)
	cmd := exec.Command(testenv.Tool(t, "cpio"), "-idm", "--quiet")
	cmd.Dir, cmd.Stdin = in, bytes.NewReader(buf.Bytes())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	var names []string
	for _, it := range r.Items {
		got, err := os.ReadFile(filepath.Join(in, it.ID))
		if err != nil || !bytes.Equal(got, it.TBS) {
			t.Fatalf("cpio entry %s: %v", it.ID, err)
		}
		testenv.Run(t, "openssl", "dgst", "-sha256", "-sign", k.KeyPath, "-out", filepath.Join(in, it.ID+".sig"), filepath.Join(in, it.ID))
		names = append(names, it.ID+".sig")
	}
	pack := func(names []string) []byte {
		cmd := exec.Command(testenv.Tool(t, "cpio"), "-o", "-H", "newc", "--quiet")
		cmd.Dir, cmd.Stdin = in, strings.NewReader(strings.Join(names, "\n")+"\n")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("cpio -o: %v", err)
		}
		return out
	}
	certs := map[string]*x509.Certificate{"db": k.Cert, "pcr": k.Cert, "verity": k.Cert, "release": k.Cert, "ipe": k.Cert}
	resp, err := ImportOBS(bytes.NewReader(pack(names)), r, certs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(r, resp, certs); err != nil {
		t.Fatal(err)
	}
	if _, err := ImportOBS(bytes.NewReader(pack(names[1:])), r, certs); !errors.Is(err, ErrMissing) {
		t.Errorf("missing signature: %v", err)
	}
	// A signature file that does not belong to its item.
	os.Rename(filepath.Join(in, names[0]), filepath.Join(in, "x"))
	os.Rename(filepath.Join(in, names[1]), filepath.Join(in, names[0]))
	if _, err := ImportOBS(bytes.NewReader(pack(names[:1])), r, certs); err == nil {
		t.Error("a swapped signature was accepted")
	}
	other := testkeys.Generate(t, testkeys.RSA3072)
	os.Rename(filepath.Join(in, names[0]), filepath.Join(in, names[1]))
	os.Rename(filepath.Join(in, "x"), filepath.Join(in, names[0]))
	bad := map[string]*x509.Certificate{"db": other.Cert, "pcr": k.Cert, "verity": k.Cert, "release": k.Cert, "ipe": k.Cert}
	if _, err := ImportOBS(bytes.NewReader(pack(names)), r, bad); !errors.Is(err, ErrBadSignature) {
		t.Errorf("wrong certificate: %v", err)
	}
	// obs-sign's default hash: the error names the hash expected and the
	// one the signature used.
	testenv.Run(t, "openssl", "dgst", "-sha1", "-sign", k.KeyPath, "-out", filepath.Join(in, names[2]), filepath.Join(in, r.Items[2].ID))
	_, err = ImportOBS(bytes.NewReader(pack(names)), r, certs)
	if !errors.Is(err, ErrBadSignature) || !strings.Contains(err.Error(), "expected a signature over the SHA-256 digest, the signature is over the SHA-1 digest") || !strings.Contains(err.Error(), r.Items[2].ID) {
		t.Errorf("SHA-1 signature: %v", err)
	}
	r.Items[0].Hash = "sha384"
	if err := ExportOBS(&buf, r); err == nil {
		t.Error("a sha384 item was exported for OBS")
	}
	_ = crypto.SHA256
	_ = keys.ErrBadSignature
}

func FuzzParse(f *testing.F) {
	good, _ := sample().Marshal()
	f.Add(good)
	f.Add([]byte(`{"format":"signet.request/v1","items":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse(data)
		if err != nil {
			return
		}
		out, err := r.Marshal()
		if err != nil {
			t.Fatalf("parsed request does not re-encode: %v", err)
		}
		if _, err := Parse(out); err != nil {
			t.Fatalf("re-encoded request does not parse: %v", err)
		}
		var w bytes.Buffer
		Summarize(&w, r)
	})
}

func FuzzParseResponse(f *testing.F) {
	f.Add([]byte(`{"format":"signet.response/v1","request":"sha256:` + hexOf(1, 32) + `","items":[{"id":"a","signature":"AA==","certificate":"AA=="}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		resp, err := ParseResponse(data)
		if err != nil {
			return
		}
		Verify(sample(), resp, nil)
	})
}

func FuzzReadOBSSignatures(f *testing.F) {
	var buf bytes.Buffer
	ExportOBS(&buf, &Request{Format: FormatRequest, Items: []Item{sample().Items[2]}})
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		ReadOBSSignatures(bytes.NewReader(data))
	})
}

func TestPartialAndMerge(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	r := sample()
	check := func(*Item) error { return nil }
	parts := []*Response{}
	for _, keyset := range [][]string{{"db", "pcr"}, {"verity", "release"}, {"ipe"}} {
		named := map[string]Key{}
		for _, n := range keyset {
			named[n] = Key{Signer: k.Signer, Certificate: k.Cert, Kinds: kindsOf(r, n)}
		}
		p, err := SignPartial(r, named, check)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(r, p, nil); !errors.Is(err, ErrMissing) {
			t.Fatalf("a partial response verified as complete: %v", err)
		}
		parts = append(parts, p)
	}
	merged, err := Merge(r, parts[2], parts[0], parts[1])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(r, merged, nil); err != nil {
		t.Fatal(err)
	}
	for i, s := range merged.Items {
		if s.ID != r.Items[i].ID {
			t.Fatalf("merged item %d is %s, want request order", i, s.ID)
		}
	}
	if _, err := Merge(r, parts[0], parts[0]); err == nil {
		t.Error("an item answered twice was merged")
	}
	other := sample()
	other.Round = 9
	if _, err := Merge(other, parts[0]); !errors.Is(err, ErrWrongRequest) {
		t.Errorf("merge for another request: %v", err)
	}
	if _, err := SignPartial(r, map[string]Key{"nobody": {Signer: k.Signer, Certificate: k.Cert}}, check); err == nil {
		t.Error("a partial signing with no matching key succeeded")
	}
}
