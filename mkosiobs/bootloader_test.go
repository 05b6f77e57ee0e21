package mkosiobs_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/mkosiobs"
	"signet.dev/request"
	"signet.dev/request/check"
)

// espRound1 makes a zstd-compressed DDI whose ESP (made by systemd-repart
// from a definition, as mkosi makes it) holds systemd-boot twice, as
// EFI/BOOT/BOOTX64.EFI and EFI/systemd/systemd-bootx64.efi, the addon stub
// as EFI/tools/addon.efi, and a stub under EFI/Linux; then stages bootloaders/ exactly as mkosi.postoutput
// does (unzstd, the ESP's offset from systemd-repart --json=short, mcopy
// -s ::EFI, EFI/Linux left out, pesign -E per *.efi). It returns the
// work directory (OTHER/ holds the DDI), the archive and the key.
func espRound1(t *testing.T) (string, []byte, *testkeys.Key) {
	t.Helper()
	testenv.Tool(t, "cpio")
	dir := testenv.SidDir(t)
	k := testkeys.Write(t, testkeys.RSA2048, testkeys.Generate(t, testkeys.RSA2048).Signer, dir)
	for _, d := range []string{dir + "/OTHER", dir + "/repart", dir + "/hashes", dir + "/nss"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	def := "[Partition]\nType=esp\nFormat=vfat\nSizeMinBytes=64M\n" +
		"CopyFiles=/usr/lib/systemd/boot/efi/systemd-bootx64.efi:/EFI/BOOT/BOOTX64.EFI\n" +
		"CopyFiles=/usr/lib/systemd/boot/efi/systemd-bootx64.efi:/EFI/systemd/systemd-bootx64.efi\n" +
		"CopyFiles=/usr/lib/systemd/boot/efi/addonx64.efi.stub:/EFI/tools/addon.efi\n" +
		"CopyFiles=/usr/lib/systemd/boot/efi/linuxx64.efi.stub:/EFI/Linux/test.efi\n"
	if err := os.WriteFile(dir+"/repart/10-esp.conf", []byte(def), 0o644); err != nil {
		t.Fatal(err)
	}
	testenv.Sid(t, "systemd-repart", "--empty=create", "--size=auto", "--dry-run=no", "--offline=yes", "--seed=0a3b0f4b-8c25-4f7d-b1c4-4e6e39dca2b9",
		"--definitions="+dir+"/repart", dir+"/OTHER/image.raw")
	testenv.Sid(t, "zstd", "-q", "--rm", dir+"/OTHER/image.raw")
	testenv.Sid(t, "bash", "-ec", `cd "$1"
		ddi=OTHER/image.raw.zst
		unzstd -q --force "$ddi"
		offset="$(systemd-repart --json=short "${ddi%.zst}" | jq -r '.[] | select(.type == "esp") | .offset')"
		certutil -N -d sql:nss --empty-password
		mcopy -s -i "${ddi%.zst}@@${offset}" ::EFI EFI
		rm -rf EFI/Linux
		while read -r BOOTLOADER; do
			mkdir -p "hashes/bootloaders/$(basename "${ddi%.zst}")/$(dirname "$BOOTLOADER")"
			pesign --force -n sql:nss -i "$BOOTLOADER" -E "hashes/bootloaders/$(basename "${ddi%.zst}")/$BOOTLOADER"
		done < <(find EFI -type f -iname '*.efi')
		rm -f "${ddi%.zst}"; rm -rf EFI`, "-", dir)
	return dir, cpioPack(t, dir+"/hashes"), k
}

// TestBootloaders: the boot loaders in a compressed DDI's ESP are read
// from the DDI, signed, and joined as mkosi.build joins them (mcopy out,
// pesign -I -R, mcopy back); sbverify accepts both binaries in the ESP.
func TestBootloaders(t *testing.T) {
	testenv.Tool(t, "sbverify")
	dir, data, k := espRound1(t)
	a, err := mkosiobs.ReadArchive(data)
	if err != nil {
		t.Fatal(err)
	}
	r, err := mkosiobs.Request(a, mkosiobs.Options{OutputDir: dir + "/OTHER", Key: "obs"})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Items) != 3 {
		t.Fatalf("%d items, want the three binaries outside EFI/Linux", len(r.Items))
	}
	resp, err := request.Sign(r, keyOf(k), check.Item)
	if err != nil {
		t.Fatal(err)
	}
	var sig bytes.Buffer
	if err := mkosiobs.WriteSignatures(&sig, a, mkosiobs.SignatureMap(resp)); err != nil {
		t.Fatal(err)
	}
	verifyWithOpenSSL(t, data, sig.Bytes(), k, 3)
	join := dir + "/join"
	if err := os.MkdirAll(join+"/hashes", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(join+"/in.cpio", data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(join+"/sig.cpio", sig.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	testenv.Sid(t, "bash", "-ec", `cd "$1"
		(cd hashes && cpio --quiet -idm <../sig.cpio && cpio --quiet -idm <../in.cpio)
		mkdir nss; certutil -N -d sql:nss --empty-password
		certutil -A -d sql:nss -n cert -t CT,CT,CT -i "$2"
		OUTPUTDIR="$1"/../OTHER
		while read -r BOOTLOADER; do
			unsigned="$(basename "${BOOTLOADER%.sig}")"; signed="$unsigned.signed"
			ddi="${OUTPUTDIR}/${BOOTLOADER%%/*}"
			dest="${BOOTLOADER#*/}"; dest="${dest%.sig}"
			[ -f "$ddi" ] || unzstd -q --force "${ddi}.zst"
			offset="$(systemd-repart --json=short "$ddi" | jq -r '.[] | select(.type == "esp") | .offset')"
			rm -f "$unsigned"; mcopy -i "${ddi}@@${offset}" "::$dest" "$unsigned"
			pesign -n sql:nss --force -c cert -i "$unsigned" -o "$signed" -d sha256 -I "hashes/bootloaders/${BOOTLOADER%.sig}" -R "hashes/bootloaders/${BOOTLOADER}"
			mcopy -o -i "${ddi}@@${offset}" "$signed" "::$dest"
		done < <(find hashes/bootloaders/image.raw/ -type f -iname '*.efi.sig' -printf 'image.raw/%P\n')
		ddi="$OUTPUTDIR/image.raw"
		offset="$(systemd-repart --json=short "$ddi" | jq -r '.[] | select(.type == "esp") | .offset')"
		mcopy -i "${ddi}@@${offset}" ::EFI/BOOT/BOOTX64.EFI final-boot.efi
		mcopy -i "${ddi}@@${offset}" ::EFI/systemd/systemd-bootx64.efi final-sd.efi
		mcopy -i "${ddi}@@${offset}" ::EFI/tools/addon.efi final-addon.efi`, "-", join, k.CertPath)
	for _, f := range []string{"final-boot.efi", "final-sd.efi", "final-addon.efi"} {
		testenv.Contains(t, testenv.Run(t, "sbverify", "--cert", k.CertPath, filepath.Join(join, f)), "Signature verification OK")
	}
}

// TestBootloaderRefusals: a boot loader member that is not the staged
// attributes of the binary in the DDI's ESP, or names no such binary, is
// refused with its name.
func TestBootloaderRefusals(t *testing.T) {
	dir, data, _ := espRound1(t)
	a, err := mkosiobs.ReadArchive(data)
	if err != nil {
		t.Fatal(err)
	}
	opts := mkosiobs.Options{OutputDir: dir + "/OTHER", Key: "obs"}
	first := a.Members[0]
	if strings.Contains(first.Path, "addon") {
		first = a.Members[1]
	}
	with := func(f func(m *mkosiobs.Member)) *mkosiobs.Archive {
		m := first
		m.Data = bytes.Clone(m.Data)
		f(&m)
		return &mkosiobs.Archive{Trailer: a.Trailer, Members: []mkosiobs.Member{m}}
	}
	req := func(b *mkosiobs.Archive) error { _, err := mkosiobs.Request(b, opts); return err }
	rename := func(p string) func(m *mkosiobs.Member) {
		return func(m *mkosiobs.Member) { m.Path, m.Name = p, p }
	}
	refusal(t, req(with(func(m *mkosiobs.Member) { m.Data[len(m.Data)-1] ^= 1 })), first.Name, "tbs")
	refusal(t, req(with(rename("bootloaders/image.raw/EFI/BOOT/none.efi"))), "bootloaders/image.raw/EFI/BOOT/none.efi", "no none.efi")
	refusal(t, req(with(rename("bootloaders/other.raw/EFI/BOOT/BOOTX64.EFI"))), "bootloaders/other.raw/EFI/BOOT/BOOTX64.EFI", "no other.raw or other.raw.zst")
	refusal(t, req(with(rename("bootloaders/image.raw/EFI/Linux/test.efi"))), "bootloaders/image.raw/EFI/Linux/test.efi", "EFI/Linux")
	refusal(t, req(with(rename("bootloaders/image.raw/loader/x.efi"))), "bootloaders/image.raw/loader/x.efi", "want bootloaders/<ddi>/EFI/")
	// The attributes of systemd-boot under the addon's name.
	refusal(t, req(with(rename("bootloaders/image.raw/EFI/tools/addon.efi"))), "bootloaders/image.raw/EFI/tools/addon.efi", "tbs")
}
