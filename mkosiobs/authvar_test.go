package mkosiobs_test

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"signet.dev/authvar"
	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/mkosiobs"
	"signet.dev/request"
	"signet.dev/request/check"
)

// authVarsRound1 stages authvars/ as mkosi.postoutput does, with the
// real efitools of the sid chroot: cert-to-efi-sig-list of the project
// certificate for PK, KEK and db, the sources' mkosi.uefi.db/*.crt
// appended to db, and sign-efi-sig-list -o at SOURCE_DATE_EPOCH's time.
// The ESLs stay in hashes/ and are packed too, as mkosi packs them.
func authVarsRound1(t *testing.T, epoch int64) (dir string, data []byte, k *testkeys.Key) {
	t.Helper()
	testenv.Tool(t, "cpio")
	dir = testenv.SidDir(t)
	k = testkeys.Write(t, testkeys.RSA2048, testkeys.Generate(t, testkeys.RSA2048).Signer, dir)
	extra := testkeys.Write(t, testkeys.P256, testkeys.Generate(t, testkeys.P256).Signer, t.TempDir())
	src := filepath.Join(dir, "SOURCES")
	for _, d := range []string{src + "/proj/mkosi.uefi.db", dir + "/hashes/authvars"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(src+"/proj/mkosi.uefi.db/extra.crt", readFile(t, extra.CertPath), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src+"/_projectcert.crt", readFile(t, k.CertPath), 0o644); err != nil {
		t.Fatal(err)
	}
	stamp := time.Unix(epoch, 0).UTC().Format(time.DateTime)
	g := mkosiobs.AuthVarOwner.String()
	testenv.Sid(t, "bash", "-ec", `cd "$1"/hashes/authvars
		cert-to-efi-sig-list -g "$2" "$1"/SOURCES/_projectcert.crt db.esl
		cp db.esl KEK.esl; cp db.esl PK.esl
		for c in "$1"/SOURCES/*/mkosi.uefi.db/*.crt; do cert-to-efi-sig-list -g "$2" "$c" tmp.esl; cat tmp.esl >>db.esl; rm tmp.esl; done
		for i in *.esl; do sign-efi-sig-list -o -g "$2" -t "$3" "${i%.esl}" "$i" "${i%.esl}.auth"; done`,
		"-", dir, g, stamp)
	return dir, cpioPack(t, dir+"/hashes"), k
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAuthVars: the authvars/ members mkosi stages are rebuilt from the
// project certificate, the sources' extra certificates and
// SOURCE_DATE_EPOCH, signed, and joined the way mkosi.build joins them
// (systemd-keyutil pkcs7, then sign-efi-sig-list -i). The result is byte
// for byte what sign-efi-sig-list makes when it signs with the key itself.
func TestAuthVars(t *testing.T) {
	const epoch = 1700000000
	dir, data, k := authVarsRound1(t, epoch)
	a, err := mkosiobs.ReadArchive(data)
	if err != nil {
		t.Fatal(err)
	}
	when := time.Unix(epoch, 0)
	r, err := mkosiobs.Request(a, mkosiobs.Options{OutputDir: dir + "/OTHER", Key: "obs", Certificate: k.Cert, SourcesDir: dir + "/SOURCES", AuthVarTime: &when})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Items) != 3 {
		t.Fatalf("%d items, want PK, KEK and db", len(r.Items))
	}
	for _, it := range r.Items {
		if it.Kind != request.KindUEFIAuthVar {
			t.Fatalf("item %s: kind %s", it.ID, it.Kind)
		}
	}
	resp, err := request.Sign(r, keyOf(k), check.Item)
	if err != nil {
		t.Fatal(err)
	}
	var sig bytes.Buffer
	if err := mkosiobs.WriteSignatures(&sig, a, mkosiobs.SignatureMap(resp)); err != nil {
		t.Fatal(err)
	}
	sa, err := mkosiobs.ReadArchive(sig.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(sa.Members) != 3 {
		t.Fatalf("answer has %d members, want the three .auth.sig (none for the .esl)", len(sa.Members))
	}
	join := filepath.Join(dir, "join")
	if err := os.MkdirAll(join+"/hashes", 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"in.cpio": data, "sig.cpio": sig.Bytes()} {
		if err := os.WriteFile(filepath.Join(join, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	stamp := when.UTC().Format(time.DateTime)
	testenv.Sid(t, "bash", "-ec", `cd "$1"/hashes
		cpio --quiet -idm <../sig.cpio; cpio --quiet -idm <../in.cpio
		for s in authvars/*.auth.sig; do v="${s%.auth.sig}"
			systemd-keyutil --certificate "$2" --output "$v.p7s" --signature "$s" pkcs7
			rm -f "$v.auth"; sign-efi-sig-list -t "$3" -i "$v.p7s" "$(basename "$v")" "$v.esl" "$v.auth"
			sign-efi-sig-list -t "$3" -g "$4" -k "$5" -c "$2" "$(basename "$v")" "$v.esl" "$v.direct"
		done`, "-", join, k.CertPath, stamp, mkosiobs.AuthVarOwner.String(), k.KeyPath)
	// mkosi's joiner (systemd-keyutil pkcs7) encodes the PKCS#7 its own
	// way, so the files differ from sign-efi-sig-list's own; the time,
	// the data and the RSA signature itself (PKCS#1 v1.5 is
	// deterministic) must be the same.
	sigs := mkosiobs.SignatureMap(resp)
	for _, v := range []string{"PK", "KEK", "db"} {
		joined, err := authvar.Parse(readFile(t, join+"/hashes/authvars/"+v+".auth"))
		if err != nil {
			t.Fatal(err)
		}
		direct, err := authvar.Parse(readFile(t, join+"/hashes/authvars/"+v+".direct"))
		if err != nil {
			t.Fatal(err)
		}
		if joined.Time != direct.Time || !bytes.Equal(joined.Data, direct.Data) {
			t.Errorf("%s.auth joined by mkosi's commands: time %s and %d bytes of data; sign-efi-sig-list's own: %s and %d bytes", v, joined.Time, len(joined.Data), direct.Time, len(direct.Data))
		}
		s := sigs["authvars/"+v+".auth"]
		if !bytes.Contains(direct.CertData, s) || !bytes.Contains(joined.CertData, s) {
			t.Errorf("%s: signet's signature is not the one sign-efi-sig-list makes with the same key and time", v)
		}
		vendor, _ := authvar.VendorGUID(v)
		if _, err := authvar.Verify(readFile(t, join+"/hashes/authvars/"+v+".auth"), v, vendor, authvar.DefaultAttributes, []*x509.Certificate{k.Cert}); err != nil {
			t.Errorf("%s.auth joined by mkosi's commands: %v", v, err)
		}
	}
}

// TestAuthVarRefusals: a member that is not the update mkosi would make
// from the certificate, the sources and the time is refused, naming it.
func TestAuthVarRefusals(t *testing.T) {
	const epoch = 1700000000
	dir, data, k := authVarsRound1(t, epoch)
	a, err := mkosiobs.ReadArchive(data)
	if err != nil {
		t.Fatal(err)
	}
	other := testkeys.Write(t, testkeys.RSA3072, testkeys.Generate(t, testkeys.RSA3072).Signer, t.TempDir())
	when, later := time.Unix(epoch, 0), time.Unix(epoch+1, 0)
	opts := func() mkosiobs.Options {
		return mkosiobs.Options{OutputDir: dir + "/OTHER", Key: "obs", Certificate: k.Cert, SourcesDir: dir + "/SOURCES", AuthVarTime: &when}
	}
	edit := func(name string, f func(m *mkosiobs.Member)) *mkosiobs.Archive {
		b := &mkosiobs.Archive{Trailer: a.Trailer}
		for _, m := range a.Members {
			m.Data = bytes.Clone(m.Data)
			if m.Path == name {
				f(&m)
			}
			b.Members = append(b.Members, m)
		}
		return b
	}
	req := func(b *mkosiobs.Archive, o mkosiobs.Options) error {
		_, err := mkosiobs.Request(b, o)
		return err
	}
	refusal(t, req(a, func() mkosiobs.Options { o := opts(); o.AuthVarTime = &later; return o }()), "authvars/KEK.auth", "SOURCE_DATE_EPOCH")
	refusal(t, req(a, func() mkosiobs.Options { o := opts(); o.Certificate = other.Cert; return o }()), "authvars/KEK.auth", "certificate 0 of KEK")
	refusal(t, req(a, func() mkosiobs.Options { o := opts(); o.SourcesDir = ""; return o }()), "authvars/db.auth", "holds 2 certificates, want 1")
	refusal(t, req(a, func() mkosiobs.Options { o := opts(); o.Certificate = nil; return o }()), "authvars/KEK.auth", "project certificate")
	// One byte of the attributes: APPEND_WRITE.
	refusal(t, req(edit("authvars/PK.auth", func(m *mkosiobs.Member) { m.Data[4+16] |= 0x40 }), opts()), "authvars/PK.auth", "attributes")
	refusal(t, req(edit("authvars/PK.auth", func(m *mkosiobs.Member) { m.Data[4] ^= 1 }), opts()), "authvars/PK.auth", "vendor GUID")
	refusal(t, req(edit("authvars/db.esl", func(m *mkosiobs.Member) { m.Data[len(m.Data)-1] ^= 1 }), opts()), "authvars/db.esl", "not the signature lists")
	refusal(t, req(edit("authvars/db.auth", func(m *mkosiobs.Member) { m.Path, m.Name = "authvars/dbx.auth", "authvars/dbx.auth" }), opts()), "authvars/dbx.auth", "want authvars/PK.auth")
	noAuth := edit("", nil)
	var kept []mkosiobs.Member
	for _, m := range noAuth.Members {
		if m.Path != "authvars/KEK.auth" {
			kept = append(kept, m)
		}
	}
	noAuth.Members = kept
	refusal(t, req(noAuth, opts()), "authvars/KEK.esl", "has no authvars/KEK.auth")
	if !strings.Contains(req(edit("authvars/PK.auth", func(m *mkosiobs.Member) { m.Data = m.Data[:10] }), opts()).Error(), "shorter") {
		t.Fatal("a truncated member is not refused as such")
	}
}
