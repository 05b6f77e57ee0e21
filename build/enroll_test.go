package build

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"signet.dev/internal/boottest"
	"signet.dev/internal/testenv"
	"signet.dev/keys"
	"signet.dev/request"
	"signet.dev/request/check"
)

// enrollEpoch is boottest.AuthFiles' sign-efi-sig-list -t time, so that
// efitools' files and the build's can be compared byte for byte.
var enrollEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// enrollKeys are the keys of an enroll build: PK, KEK, the db (Secure Boot)
// key and a release key for the manifest; extra's certificate goes into db
// as a file, revoked's into db and dbx.
type enrollKeys struct {
	pk, kek, db, release *boottest.Key
	extra, revoked       *boottest.Key
}

func newEnrollKeys(t *testing.T, dir string) *enrollKeys {
	return &enrollKeys{pk: boottest.NewKey(t, dir, "PK"), kek: boottest.NewKey(t, dir, "KEK"),
		db: boottest.NewKey(t, dir, "db"), release: boottest.NewKey(t, dir, "release"),
		extra: boottest.NewKey(t, dir, "extra"), revoked: boottest.NewKey(t, dir, "revoked")}
}

// dbx is the [secure-boot-enroll] addition that puts extra and revoked
// into db and revoked into dbx.
func (k *enrollKeys) dbx() string {
	return fmt.Sprintf("db-certificates = [%q, %q]\ndbx-certificates = [%q]\n", k.extra.CertPath, k.revoked.CertPath, k.revoked.CertPath)
}

func (k *enrollKeys) all() map[string]*boottest.Key {
	return map[string]*boottest.Key{"pk": k.pk, "kek": k.kek, "db": k.db, "release": k.release}
}

// writeEnrollConfig writes dir/enroll.toml: the auto-enroll set of k (with
// enroll added to its table), a Secure Boot signed systemd-boot (boot
// loader) and extra, all signed by keys that are offline or PEM files, and
// a PKCS#7 signed SHA256SUMS.
func writeEnrollConfig(t *testing.T, dir string, k *enrollKeys, offline bool, enroll, extra string) string {
	t.Helper()
	var b strings.Builder
	for _, name := range []string{"pk", "kek", "db", "release"} {
		key := k.all()[name]
		ref := fmt.Sprintf("%q", key.KeyPath)
		if offline {
			ref = `"offline"`
		}
		fmt.Fprintf(&b, "[keys.%s]\ncertificate = %q\nkey = %s\n\n", name, key.CertPath, ref)
	}
	fmt.Fprintf(&b, `[secure-boot-enroll]
pk-key = "pk"
kek-key = "kek"
db-keys = ["db"]
owner = %q
%s
[[bootloader]]
input = %q
secure-boot-key = "db"

[manifest]
pkcs7-key = "release"
%s`, boottest.OwnerGUID, enroll, boottest.File(t, boottest.SystemdBoot), extra)
	p := filepath.Join(dir, "enroll.toml")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// signEnrollRound signs a round's request with the PEM keys, as
// `signet request sign` does, each key bound to its configured kinds.
func signEnrollRound(t *testing.T, path string, k *enrollKeys, c *Config) []byte {
	t.Helper()
	req, err := request.Parse(mustRead(t, path))
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]request.Key{}
	for name, key := range k.all() {
		s, err := keys.Open("file", key.KeyPath)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		named[name] = request.Key{Signer: s, Certificate: key.Cert, Kinds: c.KeyKinds(name)}
	}
	resp, err := request.Sign(req, named, check.Item)
	if err != nil {
		t.Fatal(err)
	}
	out, err := resp.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// buildEnrollOffline runs the enroll build at cfg in rounds, signing each
// request; it returns the number of rounds and round 1's items by kind.
func buildEnrollOffline(t *testing.T, cfg string, k *enrollKeys) (int, map[request.Kind]int) {
	t.Helper()
	c, err := LoadConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rounds := 0
	first := map[request.Kind]int{}
	for !res.Done {
		rounds++
		if rounds == 1 {
			req, err := request.Parse(mustRead(t, res.Request))
			if err != nil {
				t.Fatal(err)
			}
			for _, it := range req.Items {
				first[it.Kind]++
			}
		}
		if rounds > 4 {
			t.Fatal("the build does not finish")
		}
		resp := signEnrollRound(t, res.Request, k, c)
		c, _ = LoadConfig(cfg)
		if res, err = Run(c, Options{Responses: [][]byte{resp}}); err != nil {
			t.Fatalf("round %d: %v", rounds, err)
		}
	}
	return rounds, first
}

// TestEnrollSet builds the auto-enroll set online and in offline rounds:
// the same bytes both ways, PK, KEK and db signed in round 1 as
// uefi-authvar items, and efitools' sign-efi-sig-list (sid chroot) writes
// the same three files for the same time, owner and keys. signet verify
// (with openssl judging each PKCS#7) accepts the build and refuses a
// substituted KEK certificate, a tampered db.auth and an ESP copy that is
// not the listed file.
func TestEnrollSet(t *testing.T) {
	testenv.Tool(t, "openssl")
	t.Setenv("SOURCE_DATE_EPOCH", fmt.Sprint(enrollEpoch.Unix()))
	dir := t.TempDir()
	k := newEnrollKeys(t, dir)

	onDir, offDir := filepath.Join(dir, "online"), filepath.Join(dir, "offline")
	os.MkdirAll(onDir, 0o755)
	os.MkdirAll(offDir, 0o755)
	onCfg := writeEnrollConfig(t, onDir, k, false, k.dbx(), "")
	offCfg := writeEnrollConfig(t, offDir, k, true, k.dbx(), "")
	c, err := LoadConfig(onCfg)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Done {
		t.Fatalf("online build not done: %+v", res)
	}
	rounds, first := buildEnrollOffline(t, offCfg, k)
	if rounds != 2 || first[request.KindUEFIAuthVar] != 4 || first[request.KindAuthenticode] != 1 {
		t.Fatalf("offline: %d rounds, round 1 %v; want 2 rounds, round 1 with 4 uefi-authvar and 1 authenticode items", rounds, first)
	}

	onBuild, offBuild := filepath.Join(onDir, "build"), filepath.Join(offDir, "build")
	efitools := boottest.AuthFiles(t, dir, k.pk, k.kek, []*boottest.Key{k.db, k.extra, k.revoked})
	dbxESL, dbxAuth := filepath.Join(dir, "dbx.esl"), filepath.Join(dir, "dbx.auth")
	boottest.Run(t, "cert-to-efi-sig-list", "-g", boottest.OwnerGUID, k.revoked.CertPath, dbxESL)
	boottest.Run(t, "sign-efi-sig-list", "-t", enrollEpoch.Format(time.DateTime), "-g", boottest.OwnerGUID,
		"-k", k.kek.KeyPath, "-c", k.kek.CertPath, "dbx", dbxESL, dbxAuth)
	efitools["/loader/keys/auto/dbx.auth"] = mustRead(t, dbxAuth)
	for _, v := range []string{"PK", "KEK", "db", "dbx"} {
		on := mustRead(t, filepath.Join(onBuild, v+".auth"))
		if off := mustRead(t, filepath.Join(offBuild, v+".auth")); !bytes.Equal(on, off) {
			t.Errorf("%s.auth: offline rounds and online differ", v)
		}
		esp := mustRead(t, filepath.Join(onBuild, "loader", "keys", "auto", v+".auth"))
		if !bytes.Equal(esp, on) {
			t.Errorf("loader/keys/auto/%s.auth is not %s.auth", v, v)
		}
		if want := efitools["/loader/keys/auto/"+v+".auth"]; !bytes.Equal(on, want) {
			t.Errorf("%s.auth (%d bytes) differs from sign-efi-sig-list's (%d bytes) for the same time, owner and key", v, len(on), len(want))
		}
	}
	sums := string(mustRead(t, filepath.Join(onBuild, "SHA256SUMS")))
	for _, v := range []string{"PK", "KEK", "db", "dbx"} {
		if !strings.Contains(sums, "*"+v+".auth\n") {
			t.Errorf("SHA256SUMS does not list %s.auth:\n%s", v, sums)
		}
	}
	if strings.Contains(sums, "loader") {
		t.Errorf("SHA256SUMS lists the ESP copies:\n%s", sums)
	}

	checks, err := verifyWith(t, onBuild, onCfg)
	if err != nil {
		t.Fatal(err)
	}
	peers := 0
	for _, ch := range checks {
		if ch.Err != nil {
			t.Errorf("verify: FAIL %s: %s [%s]: %v", ch.File, ch.What, ch.By, ch.Err)
		}
		if strings.HasSuffix(ch.File, ".auth") && ch.By == "openssl" {
			peers++
		}
	}
	if peers != 4 {
		t.Errorf("openssl judged %d .auth files, want 4", peers)
	}

	// Refusals: each must fail the check that names it.
	failing := func(t *testing.T, dir string, c *Config, tr *Trust, file, what string) {
		t.Helper()
		checks, err := Verify(dir, c, tr)
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range checks {
			if ch.File == file && ch.Err != nil && strings.Contains(ch.What, what) {
				t.Logf("refused: %s: %s [%s]: %v", ch.File, ch.What, ch.By, ch.Err)
				return
			}
		}
		t.Errorf("verify does not refuse %s (%s)", file, what)
	}
	failingBy := func(t *testing.T, dir string, c *Config, tr *Trust, file, by string) {
		t.Helper()
		checks, err := Verify(dir, c, tr)
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range checks {
			if ch.File == file && ch.Err != nil && ch.By == by {
				t.Logf("refused by %s: %s: %s: %v", by, ch.File, ch.What, ch.Err)
				return
			}
		}
		t.Errorf("%s does not refuse %s", by, file)
	}
	t.Run("OtherKEK", func(t *testing.T) {
		other := boottest.NewKey(t, dir, "other")
		c, _ := LoadConfig(onCfg)
		tr, err := LoadTrust(c, map[string]string{"kek": other.CertPath}, nil)
		if err != nil {
			t.Fatal(err)
		}
		failing(t, onBuild, c, tr, "db.auth", "signature of db")
		failing(t, onBuild, c, tr, "KEK.auth", "content of KEK")
		failingBy(t, onBuild, c, tr, "db.auth", "openssl")
	})
	t.Run("OtherBuildsDB", func(t *testing.T) {
		// db.auth of a build at another time, validly signed.
		t.Setenv("SOURCE_DATE_EPOCH", fmt.Sprint(enrollEpoch.Unix()+60))
		other := filepath.Join(dir, "later")
		c, _ := LoadConfig(onCfg)
		if res, err := Run(c, Options{Dir: other}); err != nil || !res.Done {
			t.Fatalf("%+v %v", res, err)
		}
		d := filepath.Join(dir, "mixed")
		copyDir(t, d, onBuild)
		copyFileT(t, filepath.Join(d, "db.auth"), filepath.Join(other, "db.auth"))
		copyFileT(t, filepath.Join(d, "loader", "keys", "auto", "db.auth"), filepath.Join(other, "db.auth"))
		failing(t, d, c, mustTrust(t, c), "db.auth", "content of db")
	})
	t.Run("Tampered", func(t *testing.T) {
		d := filepath.Join(dir, "tampered")
		copyDir(t, d, onBuild)
		p := filepath.Join(d, "db.auth")
		b := mustRead(t, p)
		b[len(b)-40] ^= 1 // inside db's certificate
		os.WriteFile(p, b, 0o644)
		c, _ := LoadConfig(onCfg)
		failing(t, d, c, mustTrust(t, c), "db.auth", "signature of db")
		failingBy(t, d, c, mustTrust(t, c), "db.auth", "openssl")
		failing(t, d, c, mustTrust(t, c), "loader/keys/auto/db.auth", "ESP copy")
	})
}

// TestEnrollConfigErrors checks the table's refusals: one line naming the
// file.
func TestEnrollConfigErrors(t *testing.T) {
	dir := t.TempDir()
	k := newEnrollKeys(t, dir)
	for _, c := range []struct{ name, table, want string }{
		{"PKSignsImages", `[secure-boot-enroll]
pk-key = "db"
kek-key = "kek"
db-keys = ["db"]
`, "[keys.db]: kinds"},
		// mkosi's default, one key for everything, declared.
		{"DeclaredShared", `[keys.one]
certificate = "one.crt"
key = "offline"
kinds = ["authenticode", "uefi-authvar"]
[secure-boot-enroll]
pk-key = "one"
kek-key = "one"
db-keys = ["one"]
`, ""},
		{"UndeclaredKind", `[keys.one]
certificate = "one.crt"
key = "offline"
kinds = ["authenticode"]
[secure-boot-enroll]
pk-key = "one"
kek-key = "kek"
db-keys = ["db"]
`, "uefi-authvar, which its kinds"},
		{"NoDB", `[secure-boot-enroll]
pk-key = "pk"
kek-key = "kek"
`, "db-keys or db-certificates"},
		{"NoKey", `[secure-boot-enroll]
pk-key = "pk"
kek-key = "nokek"
db-keys = ["db"]
`, "no [keys.nokek]"},
		{"BadOwner", `[secure-boot-enroll]
pk-key = "pk"
kek-key = "kek"
db-keys = ["db"]
owner = "nope"
`, "owner"},
		{"BadName", `[secure-boot-enroll]
name = "../x"
pk-key = "pk"
kek-key = "kek"
db-keys = ["db"]
`, "not a directory name"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := filepath.Join(dir, c.name)
			os.MkdirAll(d, 0o755)
			var b strings.Builder
			for name, key := range k.all() {
				fmt.Fprintf(&b, "[keys.%s]\ncertificate = %q\nkey = \"offline\"\n\n", name, key.CertPath)
			}
			b.WriteString("[[bootloader]]\ninput = \"/nonexistent/systemd-bootx64.efi\"\nsecure-boot-key = \"db\"\n\n" + c.table)
			p := filepath.Join(d, "enroll.toml")
			os.WriteFile(p, []byte(b.String()), 0o644)
			_, err := LoadConfig(p)
			if c.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), p+": ") || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %v; want one line starting with %s: and naming %q", err, p, c.want)
			}
		})
	}
}

// FuzzEnrollConfig feeds LoadConfig variations of a configuration with a
// [secure-boot-enroll] table: refusals are errors, never panics.
func FuzzEnrollConfig(f *testing.F) {
	f.Add([]byte(`[keys.pk]
certificate = "pk.crt"
key = "offline"
[keys.kek]
certificate = "kek.crt"
key = "offline"
[keys.db]
certificate = "db.crt"
key = "offline"
[secure-boot-enroll]
name = "auto"
pk-key = "pk"
kek-key = "kek"
db-keys = ["db"]
db-certificates = ["extra.crt"]
owner = "8d54a3a6-2c1e-4b7f-9a39-5e2b1c0f5e11"
`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "c.toml")
		os.WriteFile(p, data, 0o644)
		if c, err := LoadConfig(p); err == nil {
			ExpectedOutputs(c)
		}
	})
}
