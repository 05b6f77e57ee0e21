package boottest

import (
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"signet.dev/authvar"
)

// AuthVarTime is the timestamp of the authenticated variables the test
// enrolls (fixed, so the files are reproducible).
var AuthVarTime = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// SignetAuthFiles is AuthFiles with signet writing the files (package
// authvar): PK.auth signed by pk itself, KEK.auth by pk, db.auth by kek,
// each certificate in its own X.509 signature list owned by OwnerGUID.
// With offline, each update goes through the offline pair: signet prepares
// the TBS, `openssl dgst -sha256 -sign` signs it in another process, and
// signet joins the raw signature. It returns the ESP files to add.
func SignetAuthFiles(t testing.TB, dir string, pk, kek *Key, db []*Key, offline bool) map[string][]byte {
	t.Helper()
	owner := authvar.MustGUID(OwnerGUID)
	files := map[string][]byte{}
	sign := func(name string, ks []*Key, by *Key) {
		var certs []*x509.Certificate
		for _, k := range ks {
			certs = append(certs, k.Cert)
		}
		v, err := authvar.NewSecureBootVariable(name, owner, certs, authvar.TimeOf(AuthVarTime))
		if err != nil {
			t.Fatal(err)
		}
		p, err := authvar.Prepare(v, by.Cert)
		if err != nil {
			t.Fatal(err)
		}
		var b []byte
		if offline {
			b, err = SignOffline(t, dir, name, p, by)
		} else {
			b, err = p.Sign(by.Signer)
		}
		if err != nil {
			t.Fatalf("%s.auth: %v", name, err)
		}
		files["/loader/keys/auto/"+name+".auth"] = b
	}
	sign("PK", []*Key{pk}, pk)
	sign("KEK", []*Key{kek}, pk)
	sign("db", db, kek)
	return files
}

// SignOffline runs the offline pair for p: the TBS goes to dir/name.tbs,
// `openssl dgst -sha256 -sign` signs it with by's key file in another
// process, and signet joins the raw signature into the .auth bytes.
func SignOffline(t testing.TB, dir, name string, p *authvar.Prepared, by *Key) ([]byte, error) {
	t.Helper()
	tbs, sig := filepath.Join(dir, name+".tbs"), filepath.Join(dir, name+".sig")
	if err := os.WriteFile(tbs, p.TBS, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("openssl", "dgst", "-sha256", "-sign", by.KeyPath, "-out", sig, tbs).CombinedOutput(); err != nil {
		t.Fatalf("openssl dgst -sign %s: %v\n%s", tbs, err, out)
	}
	return p.Join(ReadFile(t, sig))
}

// VarUpdate is an authenticated variable update the initrd of
// VarUpdateInitrd hands to the firmware through efivarfs.
type VarUpdate struct {
	// Label names the update on the console (letters, digits, '-').
	Label string
	// Name and Vendor name the variable (efivarfs file Name-Vendor).
	Name   string
	Vendor authvar.GUID
	// Attributes are those the update was signed with.
	Attributes uint32
	// Auth is the .auth file.
	Auth []byte
}

// VarWriteMarker starts the line on which the initrd reports each update:
// the label, then "accepted" or "refused".
const VarWriteMarker = "SIGNET-BOOTTEST-VARWRITE:"

// VarFSMarker is the line the initrd prints once efivarfs is mounted.
const VarFSMarker = "SIGNET-BOOTTEST-EFIVARFS"

// EfivarfsModule returns $SIGNET_TEST_CACHE/efivarfs.ko, the efivarfs
// module of Kernel (a module in Debian's kernel), which scripts/install-deps
// keeps in the test cache.
func EfivarfsModule(t testing.TB) string {
	t.Helper()
	p := filepath.Join(filepath.Dir(Kernel(t)), "efivarfs.ko")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is missing: scripts/install-deps keeps it in the test cache (%v)", p, err)
	}
	return p
}

// VarSizeMarker starts the line on which the initrd reports the size of
// the efivarfs file of the last update's variable after all writes (its
// four attribute bytes included).
const VarSizeMarker = "SIGNET-BOOTTEST-VARSIZE:"

// VarUpdateInitrd is Initrd whose /init then writes each update, in order,
// to efivarfs (the four attribute bytes, then the .auth), so that the
// firmware's SetVariable judges it; it prints VarWriteMarker lines and
// then VarSizeMarker.
func VarUpdateInitrd(t testing.TB, marker string, updates []VarUpdate) []byte {
	t.Helper()
	const vars = "/sys/firmware/efi/efivars"
	script := "$b insmod /efivarfs.ko && $b mount -t efivarfs efivarfs " + vars + " && echo \"" + VarFSMarker + "\"\n"
	extra := []cpioEntry{{name: "efivarfs.ko", mode: modeFile | 0o644, data: ReadFile(t, EfivarfsModule(t))}}
	last := ""
	for _, u := range updates {
		for _, c := range u.Label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				t.Fatalf("update label %q: only lowercase letters, digits and '-'", u.Label)
			}
		}
		data := []byte{byte(u.Attributes), byte(u.Attributes >> 8), byte(u.Attributes >> 16), byte(u.Attributes >> 24)}
		extra = append(extra, cpioEntry{name: "updates/" + u.Label, mode: modeFile | 0o644, data: append(data, u.Auth...)})
		f := vars + "/" + u.Name + "-" + u.Vendor.String()
		// efivarfs makes Secure Boot variables immutable; lift that for
		// the write, which the firmware alone then decides.
		script += "[ -e " + f + " ] && $b chattr -i " + f + "\n" +
			"if $b cat /updates/" + u.Label + " 2>/tmp/err > " + f + "; then echo \"" + VarWriteMarker + " " + u.Label + " accepted\"; else echo \"" + VarWriteMarker + " " + u.Label + " refused: $($b cat /tmp/err)\"; fi\n"
		last = f
	}
	if last != "" {
		script += "echo \"" + VarSizeMarker + " $($b wc -c < " + last + ")\"\n"
	}
	return initrd(t, marker, extra, script)
}
