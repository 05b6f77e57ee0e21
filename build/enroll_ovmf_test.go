package build

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"signet.dev/internal/boottest"
)

// TestEnrollOVMF has OVMF judge the auto-enroll set a build makes in
// offline rounds. The build signs systemd-boot and a UKI with its db key
// and makes PK.auth, KEK.auth and db.auth; the ESP takes the build's
// loader/ tree as it is. From an empty variable store (setup mode)
// systemd-boot (secure-boot-enroll force) enrolls the set and resets; the
// next boot of that store runs with Secure Boot enabled and the build's
// UKI runs; an unsigned UKI is refused by the firmware; a UKI signed by a
// certificate db holds from db-certificates runs, and one signed by a
// certificate dbx (dbx-certificates) also holds is refused.
func TestEnrollOVMF(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", fmt.Sprint(enrollEpoch.Unix()))
	dir := t.TempDir()
	k := newEnrollKeys(t, dir)
	const cmdline = "console=ttyS0 loglevel=4"
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := os.WriteFile(initrd, boottest.Initrd(t, "SIGNET-ENROLLED"), 0o644); err != nil {
		t.Fatal(err)
	}
	// systemd-boot lists a UKI only with an .osrel.
	osrel := filepath.Join(dir, "os-release")
	if err := os.WriteFile(osrel, []byte("ID=signet-enroll\nNAME=\"signet enroll test\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := writeEnrollConfig(t, dir, k, true, k.dbx(), fmt.Sprintf(`
[[uki]]
output = "signet.efi"
stub = %q
linux = %q
initrd = %q
os-release = %q
cmdline = %q
secure-boot-key = "db"
`, boottest.File(t, boottest.Stub), boottest.Kernel(t), initrd, osrel, cmdline))
	if rounds, _ := buildEnrollOffline(t, cfg, k); rounds != 2 {
		t.Fatalf("%d rounds, want 2", rounds)
	}
	build := filepath.Join(dir, "build")
	unsigned := boottest.UKI(t, dir, "unsigned", boottest.Initrd(t, "SIGNET-UNSIGNED"), cmdline)
	// db also holds extra's and revoked's certificates (db-certificates);
	// dbx holds revoked's (dbx-certificates).
	extra := boottest.Sign(t, boottest.UKI(t, dir, "extra", boottest.Initrd(t, "SIGNET-EXTRA"), cmdline), filepath.Join(dir, "extra-signed.efi"), k.extra)
	revoked := boottest.Sign(t, boottest.UKI(t, dir, "revoked", boottest.Initrd(t, "SIGNET-REVOKED"), cmdline), filepath.Join(dir, "revoked-signed.efi"), k.revoked)

	// The ESP: the build's boot loader and UKI, and its loader/ tree
	// copied as it is (what CopyFiles=BUILD/loader:/loader does).
	keyFiles := map[string][]byte{}
	err := filepath.WalkDir(filepath.Join(build, EnrollDir), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(build, p)
		keyFiles["/"+filepath.ToSlash(rel)] = mustRead(t, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(keyFiles) != 4 || keyFiles["/loader/keys/auto/dbx.auth"] == nil {
		t.Fatalf("the build's loader/ tree holds %d files, want /loader/keys/auto/{PK,KEK,db,dbx}.auth", len(keyFiles))
	}
	vars := boottest.SetupModeVars(t, dir, "vars")
	boot := func(t *testing.T, name, uki string, conf []byte, extra map[string][]byte) *boottest.Console {
		t.Helper()
		files := map[string][]byte{
			"/EFI/BOOT/BOOTX64.EFI": mustRead(t, filepath.Join(build, "systemd-bootx64.efi")),
			"/loader/loader.conf":   conf,
			"/EFI/Linux/signet.efi": mustRead(t, uki),
		}
		for p, b := range extra {
			files[p] = b
		}
		esp := boottest.ESP(t, dir, name, files)
		c := boottest.Boot(t, boottest.Machine{Name: name, Dir: dir, Vars: vars, ESP: esp,
			Stop: []string{"Access denied", "rejected probably by Secure Boot", "SIGNET-BOOTTEST-DONE"}})
		t.Logf("boot %s: %.1f s (%s)", name, c.Elapsed.Seconds(), c.Ended)
		return c
	}
	c := boot(t, "enroll", filepath.Join(build, "signet.efi"), boottest.LoaderConf("signet.efi", "secure-boot-enroll force"), keyFiles)
	c.Expect(t, "Custom Secure Boot keys successfully enrolled")
	c = boot(t, "enrolled", filepath.Join(build, "signet.efi"), boottest.LoaderConf("signet.efi"), nil)
	c.Expect(t, boottest.InitMarker+" SIGNET-ENROLLED", "secureboot: Secure boot enabled")
	c = boot(t, "enrolled-unsigned", unsigned, boottest.LoaderConf("signet.efi"), nil)
	c.Expect(t, "Access denied")
	c.Refuse(t, boottest.InitMarker)
	// A certificate db holds from a file: its UKI runs; one dbx also
	// holds: refused.
	c = boot(t, "enrolled-extra", extra, boottest.LoaderConf("signet.efi"), nil)
	c.Expect(t, boottest.InitMarker+" SIGNET-EXTRA", "secureboot: Secure boot enabled")
	c = boot(t, "enrolled-revoked", revoked, boottest.LoaderConf("signet.efi"), nil)
	c.Expect(t, "Access denied")
	c.Refuse(t, boottest.InitMarker)
}
