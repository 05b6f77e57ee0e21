package boottest

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestChain boots a full systemd guest (sid kernel, dracut initrd, erofs
// root) from a signet DPS image under OVMF Secure Boot with swtpm, and has
// the TPM, systemd-cryptsetup and the kernel's dm-verity judge signet's
// signed PCR 11 policies and its verity signature:
//
//   - a LUKS2 disk enrolled by systemd-cryptenroll --tpm2-public-key-pcrs=11
//     --tpm2-pcrs= (signed policy only) unlocks under a UKI whose .pcrsig
//     the PCR key signed, online or offline, and stays locked under a UKI
//     whose policy another key signed and under a forged .pcrsig;
//   - the root's verity signature partition, signed by signet with a key
//     in db, is checked by the kernel against the platform keyring, and a
//     root hash signed by another key is refused
//     (dm_verity.require_signatures=1).
//
// Five boots with SIGNET_BOOT_CHAIN=full (scripts/boot-test), else a
// reduced set of two (go test ./...: CI's time limit): the first boot
// (enroll, unlock, verity signature) and the other verity key's refusal; it
// says so. The forged-signature refusal by the TPM is also judged, in a
// smaller guest, by TestTPMUnsealSignedPolicy. The verity check of the first
// boot is its own subtest.
func TestChain(t *testing.T) {
	full := os.Getenv("SIGNET_BOOT_CHAIN") == "full"
	if !full {
		t.Log("chain: reduced set, 2 of 5 boots (OfflineSignedPolicyUnlocks, OtherKeyPolicyLocked and ForgedPCRSigLocked left out); SIGNET_BOOT_CHAIN=full or scripts/boot-test boots all")
	}
	fullOnly := func(t *testing.T) {
		if !full {
			t.Skip("chain: reduced set; SIGNET_BOOT_CHAIN=full (scripts/boot-test) boots this one")
		}
	}
	dir := t.TempDir()
	pk, kek, db := NewKey(t, dir, "PK"), NewKey(t, dir, "KEK"), NewKey(t, dir, "db")
	verity, wrongVerity := NewKey(t, dir, "verity"), NewKey(t, dir, "wrongverity")
	pcr, otherPCR := NewKey(t, dir, "pcr"), NewKey(t, dir, "otherpcr")
	// db holds the verity certificate too: Linux loads db into the
	// platform keyring, which dm-verity trusts.
	vars := Vars(t, dir, "vars", pk, kek, []*Key{db, verity})
	g := MakeGuest(t)
	loader := ReadFile(t, Sign(t, File(t, SystemdBoot), filepath.Join(dir, "systemd-boot.efi"), db))

	// The root hash depends on the data and the seed only: a first image
	// without the ESP gives it to the UKIs' cmdline.
	pass1, rootHash := DPSImage(t, dir, "pass1", "", g.Root, verity)
	os.Remove(pass1)
	// The kernel's default console log level: its Secure Boot and
	// dm-verity lines show on the console.
	cmdline := "console=ttyS0 ro roothash=" + rootHash +
		" systemd.verity_root_options=root-hash-signature=auto dm_verity.require_signatures=1"

	luks := filepath.Join(dir, "luks.img")
	if err := os.WriteFile(luks, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(luks, LUKSDiskSize); err != nil {
		t.Fatal(err)
	}
	tpmState := filepath.Join(dir, "tpm")

	// boot Secure Boot signs the UKI, puts it with systemd-boot on the ESP
	// of a DPS image whose root verity-sig verityKey signed, and boots it
	// with the LUKS disk and the one swtpm.
	boot := func(t *testing.T, name, unsignedUKI string, verityKey *Key) *Console {
		t.Helper()
		signed := Sign(t, unsignedUKI, filepath.Join(dir, name+"-signed.efi"), db)
		esp := ESP(t, dir, name+"-esp", map[string][]byte{
			"/EFI/BOOT/BOOTX64.EFI": loader,
			"/loader/loader.conf":   LoaderConf("signet.efi"),
			"/EFI/Linux/signet.efi": ReadFile(t, signed),
		})
		img, h := DPSImage(t, dir, name, esp, g.Root, verityKey)
		os.Remove(esp)
		defer os.Remove(img)
		if h != rootHash {
			t.Fatalf("%s: root hash %s, the first pass gave %s", img, h, rootHash)
		}
		// A full systemd boot takes about a minute under TCG alone and
		// five with three other QEMUs on the two cores: a wide bound.
		return Boot(t, Machine{Name: name, Dir: dir, Vars: vars, ESP: img, Disks: []string{luks}, TPMState: tpmState,
			Timeout: 15 * time.Minute, Stop: []string{"Access denied", GuestDone, "Root hash verification failed"}})
	}

	var first *Console
	t.Run("SignedPolicyUnlocks", func(t *testing.T) {
		first = boot(t, "chain-a", GuestUKI(t, dir, "chain-a", g, cmdline, pcr), verity)
		first.Expect(t, "secureboot: Secure boot enabled", GuestStart, GuestEnrolled, GuestUnlocked)
	})
	t.Run("VerityRootSignatureChecked", func(t *testing.T) {
		if first == nil || !first.Has(GuestStart) {
			t.Fatal("the first boot did not reach the root file system")
		}
		first.Expect(t, GuestVeritySig)
	})
	enrolled := func(t *testing.T) {
		t.Helper()
		if first == nil || !first.Has(GuestEnrolled) {
			t.Fatal("the LUKS disk was not enrolled by the first boot")
		}
	}
	t.Run("OfflineSignedPolicyUnlocks", func(t *testing.T) {
		fullOnly(t)
		enrolled(t)
		// Another cmdline, so another PCR 11: the signature unlocks, not
		// the value.
		c := boot(t, "chain-b", OfflineGuestUKI(t, dir, "chain-b", g, cmdline+" signet.variant=b", pcr), verity)
		c.Expect(t, GuestStart, GuestUnlocked)
		c.Refuse(t, GuestEnrolled)
	})
	t.Run("OtherKeyPolicyLocked", func(t *testing.T) {
		fullOnly(t)
		enrolled(t)
		c := boot(t, "chain-c", GuestUKI(t, dir, "chain-c", g, cmdline, otherPCR), verity)
		c.Expect(t, GuestStart, GuestLocked, "No signature for current PCR policy")
		c.Refuse(t, GuestUnlocked)
	})
	t.Run("ForgedPCRSigLocked", func(t *testing.T) {
		fullOnly(t)
		enrolled(t)
		good := GuestUKI(t, dir, "chain-e-good", g, cmdline, pcr)
		c := boot(t, "chain-e", ForgePCRSig(t, good, filepath.Join(dir, "chain-e.efi"), otherPCR), verity)
		// TPM_RC_SIGNATURE from TPM2_VerifySignature: the TPM refuses.
		c.Expect(t, GuestStart, GuestLocked, "0x000002db")
		c.Refuse(t, GuestUnlocked)
	})
	t.Run("OtherVerityKeyRefused", func(t *testing.T) {
		c := boot(t, "chain-wrongverity", GuestUKI(t, dir, "chain-wrongverity", g, cmdline, pcr), wrongVerity)
		c.Expect(t, "secureboot: Secure boot enabled", "verity: Root hash verification failed (-ENOKEY)")
		c.Refuse(t, GuestStart)
	})
}
