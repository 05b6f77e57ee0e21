package boottest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Markers of the update test's guest scripts (UpdateLib and the per-boot
// scripts written to the state disk).
const (
	// UpdateReleasePrefix starts the line naming the booted release (the
	// signet.release= word of the UKI's cmdline).
	UpdateReleasePrefix = "BOOTPROOF: RELEASE "
	// UpdatePolicyPrefix starts the verdict line of systemd-pcrlock
	// make-policy: its exit code and the number of values per PCR of
	// the policy it wrote.
	UpdatePolicyPrefix = "BOOTPROOF: PCRLOCK-POLICY "
)

// StateLabel is the FAT label by which bootproof-test finds the state disk.
const StateLabel = "BOOTSTATE"

// UpdateLib is the shell library the update boots' scripts source from the
// state disk (/run/state/lib.sh). It names the booted release, mounts the
// ESP, installs the sysupdate keyring (/etc/systemd/import-pubring.pgp is a
// link into /run: the root is read-only), and offers:
//
//	policy        systemd-pcrlock make-policy --pcr=4,11 into the state disk,
//	              then the verdict line "PCRLOCK-POLICY rc=N pcr4=A pcr11=B"
//	enroll        format the LUKS disk and enroll one combined TPM2 slot:
//	              signed PCR 11 policy (--tpm2-public-key) + pcrlock
//	unlock TAG    systemd-cryptsetup attach: "UNLOCKED[TAG] …" or
//	              "UNLOCK-FAILED[TAG]" with systemd-cryptsetup's words
//	net           the virtio NIC up at 10.0.2.15/24 (QEMU user networking)
//	sysupdate SET systemd-sysupdate update with /run/state/sysupdate-SET.d,
//	              then "SYSUPDATE SET rc=N" and what it installed
//
// /var/lib/pcrlock.d and /var/lib/systemd/pcrlock.json are links into the
// state disk (/run/state), so pcrlock and systemd-cryptsetup find them where
// systemd 262 looks.
const UpdateLib = `PATH=$PATH:/usr/lib/systemd
say() { echo "BOOTPROOF: $*"; }
rel=$(sed -n 's/.*signet\.release=\([0-9]*\).*/\1/p' /proc/cmdline)
say "RELEASE $rel"
say "SECUREBOOT $(od -An -tu1 -j4 -N1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c 2>/dev/null | tr -d ' ')"
esp=$(bootctl --print-esp-path 2>/dev/null)
if [ -z "$esp" ]; then
	mount -t vfat -o quiet /dev/disk/by-label/ESP /boot && esp=/boot
fi
say "ESP $esp: $(ls "$esp/EFI/Linux" | tr '\n' ' ')"
cp /run/state/import-pubring.pgp /run/bootproof/import-pubring.pgp
disk=
for d in /dev/vd?; do
	[ "$(blockdev --getsize64 "$d")" = 33554432 ] && disk=$d
done
key=/run/bootproof.key
(umask 077 && printf signet-luks-key >$key)
pcrs() {
	tr '{' '\n' </run/state/pcrlock.json | sed -n 's/^"pcr":\([0-9]*\),"values":\[\([^]]*\)\].*/\1 \2/p' |
		while read -r p v; do printf 'pcr%s=%s ' "$p" "$(echo "$v" | tr ',' '\n' | grep -c .)"; done
}
policy() {
	systemd-pcrlock make-policy --pcr=4,11 --policy=/run/state/pcrlock.json "$@" >/run/mp.log 2>&1
	rc=$?
	sed 's/^/BOOTPROOF: make-policy: /' /run/mp.log
	say "PCRLOCK-POLICY rc=$rc $(pcrs)"
}
enroll() {
	cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 "$disk" $key &&
		cryptsetup open --key-file $key "$disk" init &&
		printf 'signet-luks-secret\n' | dd of=/dev/mapper/init conv=fsync 2>/dev/null &&
		cryptsetup close init &&
		systemd-cryptenroll --unlock-key-file=$key --tpm2-device=auto \
			--tpm2-public-key=/run/systemd/tpm2-pcr-public-key.pem --tpm2-public-key-pcrs=11 \
			--tpm2-pcrlock=/run/state/pcrlock.json --tpm2-pcrs= "$disk" 2>&1 | sed 's/^/BOOTPROOF: cryptenroll: /'
	cryptsetup token export --token-id 0 "$disk" | grep -q '"tpm2_pcrlock":true' && say "ENROLLED-COMBINED $disk"
}
unlock() {
	if systemd-cryptsetup attach secret "$disk" - tpm2-device=auto,headless=true,tries=1 >/run/attach.log 2>&1; then
		say "UNLOCKED[$1] $(head -c 18 /dev/mapper/secret)"
		systemd-cryptsetup detach secret
	else
		sed 's/^/BOOTPROOF: attach: /' /run/attach.log
		say "UNLOCK-FAILED[$1]"
	fi
}
net() {
	i=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
	ip link set "$i" up && ip addr add 10.0.2.15/24 dev "$i" && say "NET $i"
}
installed() {
	ls "$esp/EFI/Linux/signet_2.efi" /var/lib/pcrlock.d/650-uki.pcrlock.d/signet_2.pcrlock 2>/dev/null | tr '\n' ' '
}
sysupdate() {
	systemd-sysupdate --definitions=/run/state/sysupdate-$1.d update >/run/su.log 2>&1
	rc=$?
	sed "s/^/BOOTPROOF: sysupdate-$1: /" /run/su.log
	say "SYSUPDATE $1 rc=$rc installed: $(installed)"
}
`

// SysupdateTransfers returns the two sysupdate.d transfer files that fetch
// release UKIs (signet_VERSION.efi into the ESP's /EFI/Linux) and their
// .pcrlock files (into /var/lib/pcrlock.d/650-uki.pcrlock.d) from url, both
// verified against the SHA256SUMS and SHA256SUMS.gpg there.
func SysupdateTransfers(url string) map[string]string {
	return map[string]string{
		"50-uki.transfer": `[Transfer]
Verify=yes

[Source]
Type=url-file
Path=` + url + `
MatchPattern=signet_@v.efi

[Target]
Type=regular-file
Path=/EFI/Linux
PathRelativeTo=esp
MatchPattern=signet_@v.efi
Mode=0444
InstancesMax=2
`,
		"60-pcrlock.transfer": `[Transfer]
Verify=yes

[Source]
Type=url-file
Path=` + url + `
MatchPattern=signet_@v.pcrlock

[Target]
Type=regular-file
Path=/var/lib/pcrlock.d/650-uki.pcrlock.d
MatchPattern=signet_@v.pcrlock
Mode=0444
InstancesMax=2
`,
	}
}

// ReleaseUKI builds dir/signet_VERSION.efi with `signet uki build` from g:
// cmdline plus "signet.release=VERSION", an os-release with
// IMAGE_VERSION=VERSION, PCR 11 policies signed by pcrKey. Not Secure Boot
// signed.
func ReleaseUKI(t testing.TB, dir string, g *Guest, cmdline, version string, pcrKey *Key) string {
	t.Helper()
	name := "signet_" + version
	osrel := filepath.Join(dir, name+".os-release")
	s := fmt.Sprintf("ID=signet-boottest\nNAME=\"signet boot test\"\nPRETTY_NAME=\"signet boot test release %s\"\nIMAGE_ID=signet\nIMAGE_VERSION=%s\n", version, version)
	if err := os.WriteFile(osrel, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name+"-unsigned.efi")
	RunSignet(t, "uki", "build", "--stub="+File(t, Stub), "--linux="+g.Kernel, "--initrd="+g.Initrd,
		"--cmdline="+cmdline+" signet.release="+version, "--os-release=@"+osrel,
		"--pcr-private-key="+pcrKey.KeyPath, "--pcr-public-key="+PublicPEM(t, dir, pcrKey), "--output="+out)
	return out
}

// ServeDir serves dir over HTTP on a loopback port until the test ends and
// returns the port; every request is logged.
func ServeDir(t testing.TB, dir string) string {
	t.Helper()
	fs := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Logf("http: %s %s", r.Method, r.URL.Path)
		fs.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	_, port, ok := strings.Cut(strings.TrimPrefix(srv.URL, "http://"), ":")
	if !ok {
		t.Fatalf("test server URL %s has no port", srv.URL)
	}
	return port
}

// GuestNet is the -nic argument that gives the guest one way out: TCP to
// 10.0.2.100:80, forwarded to port on the host's loopback (restrict=on:
// nothing else is reachable). The forward runs busybox nc per connection:
// a guestfwd to a tcp: chardev is one connection for QEMU's lifetime, and
// systemd-pull opens several.
func GuestNet(port string) string {
	return "user,model=virtio-net-pci,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:/bin/busybox nc 127.0.0.1 " + port
}
