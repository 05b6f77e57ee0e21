package boottest

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"signet.dev/keys"
	"signet.dev/measure"
	"signet.dev/uki"
)

// Markers of the unseal step of UnsealInitrd.
const (
	UnsealedMarker     = "SIGNET-BOOTTEST-UNSEALED:"
	UnsealFailedMarker = "SIGNET-BOOTTEST-UNSEAL-FAILED:"
	// SealedSecret is what the initrd seals and, when the TPM lets it,
	// unseals.
	SealedSecret = "signet-sealed-secret"
)

// tpmTool is the chroot's tpm2-tools multi-call binary.
const tpmTool = "/usr/bin/tpm2"

// UnsealInitrd is Initrd with tpm2-tools and the PEM public key of trusted:
// its /init seals SealedSecret in the TPM under TPM2_PolicyAuthorize by
// trusted's key (what systemd-cryptenroll --tpm2-public-key does), then
// tries to unseal it with the policy the stub handed over in
// /.extra/tpm2-pcr-signature.json (the UKI's .pcrsig): TPM2_VerifySignature
// of its sha256 entry with the trusted key, TPM2_PolicyPCR over PCR 11 as
// it is now, TPM2_PolicyAuthorize with the entry's pol and the ticket. The
// TPM decides; /init prints UnsealedMarker and the secret, or
// UnsealFailedMarker and the step that failed.
func UnsealInitrd(t testing.TB, marker string, trusted *Key) []byte {
	t.Helper()
	pub, err := keys.MarshalPublicKeyPEM(&trusted.Signer.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	extra := []cpioEntry{
		{name: "usr/bin/tpm2", mode: modeFile | 0o755, data: ReadFile(t, File(t, tpmTool))},
		{name: "etc/trusted-pcr.pem", mode: modeFile | 0o644, data: pub},
	}
	libs := libraries(t, tpmTool)
	// The TCTI loader opens the device TCTI by name at run time.
	libs = append(libs, "/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0")
	for _, l := range libs {
		extra = append(extra, cpioEntry{name: strings.TrimPrefix(l, "/"), mode: modeFile | 0o755, data: ReadFile(t, File(t, l))})
	}
	script := `
$b mount -t devtmpfs devtmpfs /dev
$b mount -t tmpfs tmpfs /tmp
cd /tmp
export TPM2TOOLS_TCTI=device:/dev/tpmrm0 LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu
fail() { echo "` + UnsealFailedMarker + ` $1"; }
unseal() {
	j=/.extra/tpm2-pcr-signature.json
	[ -r $j ] || { fail "no $j"; return; }
	# The sha256 bank's entry: pol (hex) and sig (base64).
	e=$($b tr -d ' \n' < $j | $b sed -n 's/.*"sha256":\[{\([^}]*\)}.*/\1/p')
	echo "$e" | $b sed -n 's/.*"pol":"\([0-9a-f]*\)".*/\1/p' | $b xxd -r -p > pol.bin
	echo "$e" | $b sed -n 's/.*"sig":"\([^"]*\)".*/\1/p' | $b base64 -d > sig.bin
	tpm2 createprimary -Q -C o -G ecc -c prim.ctx || { fail createprimary; return; }
	tpm2 loadexternal -Q -C o -G rsa -u /etc/trusted-pcr.pem -c key.ctx -n key.name || { fail loadexternal; return; }
	tpm2 startauthsession -Q -S trial.ctx || { fail trial; return; }
	tpm2 policyauthorize -Q -S trial.ctx -L auth.policy -n key.name || { fail trial-policyauthorize; return; }
	tpm2 flushcontext trial.ctx
	echo -n ` + SealedSecret + ` | tpm2 create -Q -C prim.ctx -L auth.policy -i- -u s.pub -r s.priv || { fail create; return; }
	tpm2 load -Q -C prim.ctx -u s.pub -r s.priv -c s.ctx || { fail load; return; }
	tpm2 flushcontext -t
	tpm2 verifysignature -Q -c key.ctx -g sha256 -m pol.bin -f rsassa -s sig.bin -t tkt.bin 2>&1 || { fail verifysignature; return; }
	tpm2 startauthsession -Q --policy-session -S sess.ctx || { fail session; return; }
	tpm2 policypcr -Q -S sess.ctx -l sha256:11 || { fail policypcr; return; }
	tpm2 policyauthorize -Q -S sess.ctx -i pol.bin -n key.name -t tkt.bin 2>&1 || { fail policyauthorize; return; }
	v=$(tpm2 unseal -p session:sess.ctx -c s.ctx) || { fail unseal; return; }
	echo "` + UnsealedMarker + ` $v"
}
unseal
`
	// gzip: the firmware and the stub hash the UKI several times (the
	// Authenticode digest, one measurement per PCR bank) at emulation
	// speed, so fewer bytes boot faster than an uncompressed archive.
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	if _, err := zw.Write(initrd(t, marker, extra, script)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return z.Bytes()
}

// libraries lists the shared objects (and the dynamic loader) that prog in
// the chroot needs, as ldd there resolves them.
func libraries(t testing.TB, prog string) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(string(Run(t, "ldd", prog)), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			out = append(out, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			out = append(out, f[0])
		}
	}
	if len(out) == 0 {
		t.Fatalf("ldd %s in the chroot named no libraries", prog)
	}
	return out
}

// PolicyUKI is UKI with a signed PCR 11 policy, as `signet uki build
// --pcr-private-key` makes it: .pcrpkey holds pcrKey's public key and
// .pcrsig the sha256 policy for PCR 11 as the stub leaves it (the empty
// phase: no boot phase word measured yet), signed by pcrKey with package
// measure.
func PolicyUKI(t testing.TB, dir, name string, initrd []byte, cmdline string, pcrKey *Key) string {
	t.Helper()
	stub, closeStub := parseStub(t)
	defer closeStub()
	pub, err := keys.MarshalPublicKeyPEM(&pcrKey.Signer.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := uki.NewPlan(stub, append(parts(t, name, initrd, cmdline), uki.BytesPart(".pcrpkey", pub)), nil)
	if err != nil {
		t.Fatal(err)
	}
	banks, err := measure.ParseBanks([]string{"sha256"})
	if err != nil {
		t.Fatal(err)
	}
	entries, err := plan.Prepare([]string{""}, banks, &pcrKey.Signer.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	var docs []*measure.PCRSig
	for _, es := range entries {
		doc, err := measure.Sign(es, pcrKey.Signer)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, doc)
	}
	var b bytes.Buffer
	if _, err := plan.WriteTo(&b, docs); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name+".efi")
	if err := os.WriteFile(out, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}
