package boottest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestUpdate boots the chain test's guest through a signed update and a
// downgrade, with the real tools deciding: systemd-sysupdate (and
// systemd-pull, gpg) inside the VM, systemd-pcrlock over OVMF's real event
// log, systemd-cryptenroll/-cryptsetup and the TPM.
//
//  1. Release 1 boots from a signet DPS image. pcrlock, given signet's
//     .pcrlock files for systemd-boot (630-boot-loader) and the UKI
//     (650-uki) next to systemd's own components, makes a policy that keeps
//     PCRs 4 and 11; the LUKS2 disk gets one combined slot (signed PCR 11
//     policy + pcrlock) and unlocks. sysupdate, pointed at a loopback HTTP
//     server, refuses a tampered SHA256SUMS and one signed by another key
//     (nothing installed), then installs release 2's UKI into the ESP and
//     its .pcrlock into /var/lib/pcrlock.d; make-policy allows both.
//  2. The same disk boots again: systemd-boot picks release 2, which
//     unlocks; release 1's .pcrlock is removed and make-policy rewrites
//     the NV index for release 2 only; release 2 still unlocks.
//  3. Release 1 (the same Secure Boot signed UKI, its .pcrsig unchanged)
//     boots from an ESP that holds only it: the disk stays locked.
//
// The boots depend on each other. go test ./... boots only the first
// (CI's time limit) and says so; SIGNET_BOOT_CHAIN=full (scripts/boot-test)
// boots all three.
func TestUpdate(t *testing.T) {
	full := os.Getenv("SIGNET_BOOT_CHAIN") == "full"
	if !full {
		t.Log("update: reduced set, 1 of 3 boots (Release2BootsAndUnlocks and DowngradeLocked left out: release 2's boot, the policy for it alone, the downgrade's refusal); SIGNET_BOOT_CHAIN=full or scripts/boot-test boots all")
	}
	fullOnly := func(t *testing.T) {
		if !full {
			t.Skip("update: reduced set; SIGNET_BOOT_CHAIN=full (scripts/boot-test) boots this one")
		}
	}
	dir := t.TempDir()
	pk, kek, db := NewKey(t, dir, "PK"), NewKey(t, dir, "KEK"), NewKey(t, dir, "db")
	verity, pcr := NewKey(t, dir, "verity"), NewKey(t, dir, "pcr")
	release, otherRelease := NewKey(t, dir, "release"), NewKey(t, dir, "otherrelease")
	vars := Vars(t, dir, "vars", pk, kek, []*Key{db, verity})
	g := MakeGuest(t)
	loaderPath := Sign(t, File(t, SystemdBoot), filepath.Join(dir, "systemd-boot.efi"), db)
	loader := ReadFile(t, loaderPath)

	pass1, rootHash := DPSImage(t, dir, "pass1", "", g.Root, verity)
	os.Remove(pass1)
	cmdline := "console=ttyS0 ro roothash=" + rootHash +
		" systemd.verity_root_options=root-hash-signature=auto dm_verity.require_signatures=1"

	// The two releases: Secure Boot signed UKIs and their .pcrlock files,
	// made offline by signet.
	uki := map[string]string{}
	lock := map[string][]byte{}
	for _, v := range []string{"1", "2"} {
		uki[v] = Sign(t, ReleaseUKI(t, dir, g, cmdline, v, pcr), filepath.Join(dir, "signet_"+v+".efi"), db)
		p := filepath.Join(dir, "signet_"+v+".pcrlock")
		RunSignet(t, "pcrlock", "lock-uki", uki[v], "--pcrlock="+p)
		lock[v] = ReadFile(t, p)
	}
	loaderLock := RunSignet(t, "pcrlock", "lock-pe", loaderPath)

	// Release 2 as the update server offers it: good/ signed by the
	// release key, tampered/ with the UKI changed and SHA256SUMS
	// rewritten under the old signature, otherkey/ signed by a key the
	// guest does not hold.
	serve := filepath.Join(dir, "serve")
	publish := func(sub string, k *Key, efi []byte) string {
		d := filepath.Join(serve, sub)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(d, "signet_2.efi"), efi)
		writeFile(t, filepath.Join(d, "signet_2.pcrlock"), lock["2"])
		sums := filepath.Join(d, "SHA256SUMS")
		RunSignet(t, "manifest", "create", d, "--output="+sums)
		RunSignet(t, "manifest", "sign", sums, "--key="+k.KeyPath, "--certificate="+k.CertPath, "--output="+sums+".gpg")
		return d
	}
	good := ReadFile(t, uki["2"])
	publish("good", release, good)
	publish("otherkey", otherRelease, good)
	tampered := publish("tampered", release, good)
	bad := bytes.Clone(good)
	bad[len(bad)-1] ^= 1
	writeFile(t, filepath.Join(tampered, "signet_2.efi"), bad)
	sig := ReadFile(t, filepath.Join(tampered, "SHA256SUMS.gpg"))
	RunSignet(t, "manifest", "create", filepath.Join(tampered, "signet_2.efi"), filepath.Join(tampered, "signet_2.pcrlock"),
		"--output="+filepath.Join(tampered, "SHA256SUMS"))
	writeFile(t, filepath.Join(tampered, "SHA256SUMS.gpg"), sig)
	port := ServeDir(t, serve)
	pubring := filepath.Join(dir, "import-pubring.pgp")
	RunSignet(t, "openpgp", "export-key", "--key="+release.KeyPath, "--certificate="+release.CertPath, "--output="+pubring)

	// The state disk: what /var holds on a real installation (pcrlock's
	// components and policy), the sysupdate definitions and the keyring,
	// and each boot's script. Release 1's .pcrlock is there from the
	// start, as an installer puts it.
	stateFiles := map[string][]byte{
		"/lib.sh":             []byte(UpdateLib),
		"/bootproof.sh":       []byte(bootUpdate1),
		"/import-pubring.pgp": ReadFile(t, pubring),
		"/pcrlock.d/650-uki.pcrlock.d/signet_1.pcrlock":             lock["1"],
		"/pcrlock.d/630-boot-loader.pcrlock.d/systemd-boot.pcrlock": loaderLock,
	}
	for _, set := range []string{"good", "tampered", "otherkey"} {
		for n, s := range SysupdateTransfers("http://10.0.2.100/" + set + "/") {
			stateFiles["/sysupdate-"+set+".d/"+n] = []byte(s)
		}
	}
	state := FAT(t, dir, "state", StateLabel, 16<<20, stateFiles)

	luks := filepath.Join(dir, "luks.img")
	writeFile(t, luks, nil)
	if err := os.Truncate(luks, LUKSDiskSize); err != nil {
		t.Fatal(err)
	}
	tpmState := filepath.Join(dir, "tpm")
	disk := func(name string, files map[string][]byte, room int64) string {
		t.Helper()
		esp := FAT(t, dir, name+"-esp", "ESP", room, files)
		img, h := DPSImage(t, dir, name, esp, g.Root, verity)
		os.Remove(esp)
		if h != rootHash {
			t.Fatalf("%s: root hash %s, the first pass gave %s", img, h, rootHash)
		}
		return img
	}
	boot := func(t *testing.T, name, img string) *Console {
		t.Helper()
		return Boot(t, Machine{Name: name, Dir: dir, Vars: vars, ESP: img, Disks: []string{luks, state}, TPMState: tpmState,
			Net: GuestNet(port), Timeout: 15 * time.Minute, Stop: []string{"Access denied", GuestDone, "Root hash verification failed"}})
	}
	// Release 1's disk: systemd-boot boots the newest UKI in /EFI/Linux
	// (no default entry), with room for the update.
	updDisk := disk("update", map[string][]byte{
		"/EFI/BOOT/BOOTX64.EFI":   loader,
		"/loader/loader.conf":     []byte("timeout 0\n"),
		"/EFI/Linux/signet_1.efi": ReadFile(t, uki["1"]),
	}, 96<<20)

	var c1, c2 *Console
	t.Run("Release1PolicyAndUnlock", func(t *testing.T) {
		c1 = boot(t, "update-1", updDisk)
		c1.Expect(t, "secureboot: Secure boot enabled", GuestStart, UpdateReleasePrefix+"1")
		if v := c1.Value(UpdatePolicyPrefix); v != "rc=0 pcr4=2 pcr11=4" {
			t.Fatalf("first make-policy: %q, want rc=0 pcr4=2 pcr11=4 (PCRs 4 and 11 kept, one UKI):\n%s", v, c1.Tail(60))
		}
		c1.Expect(t, "BOOTPROOF: ENROLLED-COMBINED", "BOOTPROOF: UNLOCKED[release1] signet-luks-secret")
		t.Logf("release 1: make-policy %s (%s)", c1.Value(UpdatePolicyPrefix), c1.Value("BOOTPROOF: make-policy: PCRs in protection mask:"))
	})
	t.Run("TamperedManifestRefused", func(t *testing.T) {
		need(t, c1)
		if v := c1.Value("BOOTPROOF: SYSUPDATE tampered "); v != "rc=1 installed:" {
			t.Fatalf("sysupdate from tampered/: %q, want rc=1 and nothing installed:\n%s", v, c1.Tail(60))
		}
	})
	t.Run("OtherKeyManifestRefused", func(t *testing.T) {
		need(t, c1)
		if v := c1.Value("BOOTPROOF: SYSUPDATE otherkey "); v != "rc=1 installed:" {
			t.Fatalf("sysupdate from otherkey/: %q, want rc=1 and nothing installed:\n%s", v, c1.Tail(60))
		}
	})
	t.Run("SysupdateInstallsRelease2", func(t *testing.T) {
		need(t, c1)
		v := c1.Value("BOOTPROOF: SYSUPDATE good ")
		if !strings.HasPrefix(v, "rc=0 ") || !strings.Contains(v, "/EFI/Linux/signet_2.efi ") ||
			!strings.Contains(v, " /var/lib/pcrlock.d/650-uki.pcrlock.d/signet_2.pcrlock") {
			t.Fatalf("sysupdate from good/: %q, want rc=0 and release 2's UKI and .pcrlock installed:\n%s", v, c1.Tail(60))
		}
		if p := values(c1, UpdatePolicyPrefix); len(p) != 2 || p[1] != "rc=0 pcr4=4 pcr11=8" {
			t.Fatalf("make-policy verdicts %q, want the second to allow both releases (rc=0 pcr4=4 pcr11=8)", p)
		}
	})
	t.Run("Release2BootsAndUnlocks", func(t *testing.T) {
		fullOnly(t)
		need(t, c1)
		if !strings.HasPrefix(c1.Value("BOOTPROOF: SYSUPDATE good "), "rc=0 ") {
			t.Fatal("the first boot did not install release 2")
		}
		FATPut(t, state, "/bootproof.sh", []byte(bootUpdate2))
		c2 = boot(t, "update-2", updDisk)
		c2.Expect(t, "secureboot: Secure boot enabled", GuestStart, UpdateReleasePrefix+"2",
			"BOOTPROOF: UNLOCKED[release2] signet-luks-secret",
			UpdatePolicyPrefix+"rc=0 pcr4=2 pcr11=4",
			"BOOTPROOF: UNLOCKED[release2-only] signet-luks-secret")
	})
	t.Run("DowngradeLocked", func(t *testing.T) {
		fullOnly(t)
		need(t, c2)
		if !c2.Has("BOOTPROOF: UNLOCKED[release2-only]") {
			t.Fatal("release 2 did not unlock under its own policy")
		}
		img := disk("downgrade", map[string][]byte{
			"/EFI/BOOT/BOOTX64.EFI":   loader,
			"/loader/loader.conf":     []byte("timeout 0\n"),
			"/EFI/Linux/signet_1.efi": ReadFile(t, uki["1"]),
		}, 32<<20)
		FATPut(t, state, "/bootproof.sh", []byte(bootUpdate3))
		c := boot(t, "update-3", img)
		// The same signed file that unlocked in the first boot: its
		// Secure Boot signature and .pcrsig are as valid as they were.
		c.Expect(t, "secureboot: Secure boot enabled", GuestStart, UpdateReleasePrefix+"1", "BOOTPROOF: UNLOCK-FAILED[downgrade]",
			// pcrlock's shard refuses: release 1's PCR 4 (its
			// Authenticode hash) is no longer in the NV index.
			"None of the alternative values for PCR 4 encoded in policy match the current TPM state")
		c.Refuse(t, "BOOTPROOF: UNLOCKED[")
		for _, l := range values(c, "BOOTPROOF: attach: ") {
			t.Logf("downgrade: systemd-cryptsetup: %s", l)
		}
	})
}

// values returns the rest of every console line that starts with prefix,
// trimmed.
func values(c *Console, prefix string) []string {
	var out []string
	for _, l := range strings.Split(clean(c.Text), "\n") {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			out = append(out, strings.TrimSpace(v))
		}
	}
	return out
}

// need fails the test unless the console c (of an earlier boot) exists.
func need(t *testing.T, c *Console) {
	t.Helper()
	if c == nil {
		t.Fatal("the boot this check reads did not run")
	}
}

func writeFile(t testing.TB, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// The update boots' scripts (see UpdateLib).
const (
	bootUpdate1 = `. /run/state/lib.sh
systemd-pcrlock log --pcr=4,11 2>&1 | sed 's/^/BOOTPROOF: log: /'
policy
enroll
unlock release1
net
sysupdate tampered
sysupdate otherkey
sysupdate good
policy
`
	bootUpdate2 = `. /run/state/lib.sh
unlock release2
rm -f /var/lib/pcrlock.d/650-uki.pcrlock.d/signet_1.pcrlock
policy
unlock release2-only
`
	bootUpdate3 = `. /run/state/lib.sh
systemd-pcrlock log --pcr=4,11 2>&1 | sed 's/^/BOOTPROOF: log: /'
unlock downgrade
`
)
