package boottest

import (
	"os"
	"path/filepath"
	"testing"
)

// OwnerGUID owns every signature list the test enrolls.
const OwnerGUID = "8d54a3a6-2c1e-4b7f-9a39-5e2b1c0f5e11"

// Firmware paths inside the chroot (Debian's ovmf package): the Secure Boot
// build needs SMM, which QEMU gives only with TCG here (see Machine).
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// Vars writes dir/name.fd, an OVMF variable store with pk as the platform
// key, kek as the key exchange key and db in the signature database, with
// Secure Boot enforcing (virt-fw-vars --sb), and returns its path.
func Vars(t testing.TB, dir, name string, pk, kek *Key, db []*Key) string {
	t.Helper()
	out := filepath.Join(dir, name+".fd")
	args := []string{"-i", OVMFVars, "-o", out, "--set-pk", OwnerGUID, pk.CertPath, "--add-kek", OwnerGUID, kek.CertPath}
	for _, k := range db {
		args = append(args, "--add-db", OwnerGUID, k.CertPath)
	}
	Run(t, "virt-fw-vars", append(args, "--sb")...)
	return out
}

// SetupModeVars writes dir/name.fd, a copy of OVMF's empty variable store:
// no PK, so the firmware is in setup mode and lets a boot loader enroll keys.
func SetupModeVars(t testing.TB, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(File(t, OVMFVars))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name+".fd")
	if err := os.WriteFile(out, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// AuthFiles makes the authenticated variables PK.auth (signed by pk
// itself), KEK.auth (signed by pk) and db.auth (signed by kek) with efitools'
// cert-to-efi-sig-list and sign-efi-sig-list, as systemd-boot enrolls them
// from /loader/keys/auto/ (loader.conf: secure-boot-enroll force). The
// timestamp is fixed so the files are reproducible. It returns the ESP
// files to add.
func AuthFiles(t testing.TB, dir string, pk, kek *Key, db []*Key) map[string][]byte {
	t.Helper()
	const stamp = "2026-01-01 00:00:00"
	esl := func(name string, ks []*Key) string {
		var all []byte
		for _, k := range ks {
			p := filepath.Join(dir, name+"-"+k.Name+".esl")
			Run(t, "cert-to-efi-sig-list", "-g", OwnerGUID, k.CertPath, p)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, b...)
		}
		p := filepath.Join(dir, name+".esl")
		if err := os.WriteFile(p, all, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	files := map[string][]byte{}
	sign := func(varName string, ks []*Key, by *Key) {
		out := filepath.Join(dir, varName+".auth")
		Run(t, "sign-efi-sig-list", "-t", stamp, "-g", OwnerGUID, "-k", by.KeyPath, "-c", by.CertPath, varName, esl(varName, ks), out)
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		files["/loader/keys/auto/"+varName+".auth"] = b
	}
	sign("PK", []*Key{pk}, pk)
	sign("KEK", []*Key{kek}, pk)
	sign("db", db, kek)
	return files
}
