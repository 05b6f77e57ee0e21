package boottest

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestTPMUnsealSignedPolicy has the TPM (swtpm) judge signet's signed PCR 11
// policies in a Secure Boot boot: a secret sealed under
// TPM2_PolicyAuthorize by the PCR key unseals only with a .pcrsig that key
// signed for the PCR 11 the booted UKI's stub produced.
func TestTPMUnsealSignedPolicy(t *testing.T) {
	dir := t.TempDir()
	pk, kek, db := NewKey(t, dir, "PK"), NewKey(t, dir, "KEK"), NewKey(t, dir, "db")
	pcr, other := NewKey(t, dir, "pcr"), NewKey(t, dir, "otherpcr")
	vars := Vars(t, dir, "vars", pk, kek, []*Key{db})
	loader := Sign(t, File(t, SystemdBoot), filepath.Join(dir, "systemd-boot.efi"), db)
	initrd := UnsealInitrd(t, "TPM-UNSEAL", pcr)
	const cmdline = "console=ttyS0 loglevel=4"

	boot := func(t *testing.T, name, unsigned string) *Console {
		t.Helper()
		signed := Sign(t, unsigned, filepath.Join(dir, name+"-signed.efi"), db)
		esp := ESP(t, dir, name, map[string][]byte{
			"/EFI/BOOT/BOOTX64.EFI": ReadFile(t, loader),
			"/loader/loader.conf":   LoaderConf("signet.efi"),
			"/EFI/Linux/signet.efi": ReadFile(t, signed),
		})
		c := Boot(t, Machine{Name: name, Dir: dir, Vars: vars, ESP: esp, TPMState: filepath.Join(dir, name+".tpm"),
			Stop: []string{"Access denied", "SIGNET-BOOTTEST-DONE"}})
		c.Expect(t, InitMarker+" TPM-UNSEAL", "secureboot: Secure boot enabled")
		return c
	}

	t.Run("SignedPolicyUnseals", func(t *testing.T) {
		c := boot(t, "policy", PolicyUKI(t, dir, "policy", initrd, cmdline, pcr))
		c.Expect(t, UnsealedMarker+" "+SealedSecret)
	})
	t.Run("OtherKeyRefused", func(t *testing.T) {
		c := boot(t, "policy-otherkey", PolicyUKI(t, dir, "policy-otherkey", initrd, cmdline, other))
		c.Expect(t, UnsealFailedMarker+" verifysignature")
		c.Refuse(t, UnsealedMarker)
	})
	t.Run("ModifiedAfterPolicyRefused", func(t *testing.T) {
		// The policy signed for one cmdline, the cmdline changed after:
		// Secure Boot passes (re-signed), PCR 11 differs, the TPM refuses.
		b := ReadFile(t, PolicyUKI(t, dir, "policy-modified", initrd, cmdline, pcr))
		i := bytes.Index(b, []byte("loglevel=4"))
		if i < 0 {
			t.Fatal("cmdline not found in the UKI")
		}
		b[i+len("loglevel=")] = '5'
		p := filepath.Join(dir, "policy-modified.efi")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		c := boot(t, "policy-modified", p)
		// Another PCR 11 value: the signed pol no longer matches it.
		c.Expect(t, UnsealFailedMarker+" policyauthorize")
		c.Refuse(t, UnsealedMarker)
	})
}
