package boottest

import (
	"crypto/x509"
	"fmt"
	"path/filepath"
	"testing"

	"signet.dev/authvar"
)

// TestEnrollSignetAuthVars has OVMF judge signet's authenticated
// variables. From an empty variable store (setup mode), systemd-boot
// (secure-boot-enroll force) enrolls PK, KEK and db from .auth files that
// signet wrote, and resets (QEMU ends, -no-reboot); in setup mode the
// firmware checks their layout and signature lists, not their signatures.
// The next boot of that store runs with Secure Boot enforcing under those
// keys: the UKI signet signed with the db key boots, and its initrd hands
// the firmware db updates through efivarfs, which OVMF, now in user mode,
// verifies against the enrolled KEK: it accepts signet's append signed by
// KEK through the offline pair (prepare, openssl, join) and refuses one
// signed by another key, one altered after signing and one whose time is
// not later than the stored one. A last boot shows the unsigned UKI
// refused. The offline pair writes the enrolled files byte for byte.
func TestEnrollSignetAuthVars(t *testing.T) {
	dir := t.TempDir()
	pk, kek, db := NewKey(t, dir, "PK"), NewKey(t, dir, "KEK"), NewKey(t, dir, "db")
	loader := Sign(t, File(t, SystemdBoot), filepath.Join(dir, "systemd-boot.efi"), db)
	const cmdline = "console=ttyS0 loglevel=4"
	unsigned := UKI(t, dir, "enroll", Initrd(t, "SIGNET-AUTHVAR"), cmdline)
	signed := Sign(t, unsigned, filepath.Join(dir, "enroll-signed.efi"), db)

	boot := func(t *testing.T, name, vars, uki string, extra map[string][]byte) *Console {
		t.Helper()
		files := map[string][]byte{
			"/EFI/BOOT/BOOTX64.EFI": ReadFile(t, loader),
			"/loader/loader.conf":   LoaderConf("signet.efi"),
			"/EFI/Linux/signet.efi": ReadFile(t, uki),
		}
		for p, b := range extra {
			files[p] = b
		}
		esp := ESP(t, dir, name, files)
		return Boot(t, Machine{Name: name, Dir: dir, Vars: vars, ESP: esp,
			Stop: []string{"Access denied", "rejected probably by Secure Boot", "SIGNET-BOOTTEST-DONE"}})
	}
	enroll := func(t *testing.T, name string, auth map[string][]byte) string {
		t.Helper()
		vars := SetupModeVars(t, dir, name+"-vars")
		auth["/loader/loader.conf"] = LoaderConf("signet.efi", "secure-boot-enroll force")
		c := boot(t, name, vars, signed, auth)
		c.Expect(t, "Custom Secure Boot keys successfully enrolled")
		return vars
	}

	other, db2 := NewKey(t, dir, "other"), NewKey(t, dir, "db2")
	owner := authvar.MustGUID(OwnerGUID)
	update := func(label string, certs []*Key, by *Key, appendWrite bool) VarUpdate {
		var cs []*x509.Certificate
		for _, k := range certs {
			cs = append(cs, k.Cert)
		}
		var when authvar.Time
		if !appendWrite {
			when = authvar.TimeOf(AuthVarTime)
		}
		v, err := authvar.NewSecureBootVariable("db", owner, cs, when)
		if err != nil {
			t.Fatal(err)
		}
		if appendWrite {
			v.Attributes |= authvar.AppendWrite
		}
		p, err := authvar.Prepare(v, by.Cert)
		if err != nil {
			t.Fatal(err)
		}
		var b []byte
		if label == "append" {
			b, err = SignOffline(t, dir, label, p, by)
		} else {
			b, err = p.Sign(by.Signer)
		}
		if err != nil {
			t.Fatal(err)
		}
		return VarUpdate{Label: label, Name: "db", Vendor: authvar.ImageSecurityDatabase, Attributes: v.Attributes, Auth: b}
	}
	tampered := update("tampered", []*Key{db2}, kek, true)
	tampered.Auth[len(tampered.Auth)-1] ^= 1
	updates := []VarUpdate{
		update("other-key", []*Key{db2}, other, true),
		tampered,
		update("stale", []*Key{db, db2}, kek, false),
		update("append", []*Key{db2}, kek, true),
	}
	esl, err := authvar.MarshalLists(authvar.CertificateLists(owner, []*x509.Certificate{db.Cert, db2.Cert}))
	if err != nil {
		t.Fatal(err)
	}
	updater := Sign(t, UKI(t, dir, "update", VarUpdateInitrd(t, "SIGNET-AUTHVAR", updates), cmdline), filepath.Join(dir, "update-signed.efi"), db)

	online := SignetAuthFiles(t, dir, pk, kek, []*Key{db}, false)
	for p, b := range SignetAuthFiles(t, dir, pk, kek, []*Key{db}, true) {
		if string(online[p]) != string(b) {
			t.Fatalf("%s: the offline pair writes other bytes than the online signer", p)
		}
	}
	t.Run("EnrollUpdateBoot", func(t *testing.T) {
		vars := enroll(t, "authvar", online)
		c := boot(t, "authvar-update", vars, updater, nil)
		c.Expect(t, InitMarker+" SIGNET-AUTHVAR", "secureboot: Secure boot enabled", VarFSMarker)
		for _, u := range updates {
			// The firmware's EFI_SECURITY_VIOLATION reaches the
			// writer as EACCES.
			want := "refused: cat: write error: Permission denied"
			if u.Label == "append" {
				want = "accepted"
			}
			if got := c.Value(VarWriteMarker + " " + u.Label); got != want {
				t.Errorf("db update %s: %q, want %q\n%s", u.Label, got, want, c.Tail(30))
			}
		}
		t.Logf("firmware's verdicts:\n%s", c.Tail(8))
		if got, want := c.Value(VarSizeMarker), fmt.Sprint(4+len(esl)); got != want {
			t.Errorf("db after the updates: %s bytes, want %s (the enrolled list and the appended one)", got, want)
		}
		c = boot(t, "authvar-unsigned", vars, unsigned, nil)
		c.Expect(t, "Access denied")
		c.Refuse(t, InitMarker+" SIGNET-AUTHVAR")
	})
}
