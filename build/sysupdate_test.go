package build

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"signet.dev/image"
	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/openpgp"
)

// lockOf returns what signet pcrlock lock-uki writes for the UKI at path.
func lockOf(t *testing.T, path string) []byte {
	t.Helper()
	return lockPath(t, path, true)
}

func lockPath(t *testing.T, path string, isUKI bool) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	data, err := lockFile(f, fi.Size(), isUKI)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// sidRoot is the sid chroot's directory.
func sidRoot() string {
	cache := os.Getenv("SIGNET_TEST_CACHE")
	if cache == "" {
		cache = "/var/cache/signet-test"
	}
	return filepath.Join(cache, "sid")
}

// releaseKeys are the keys of the test releases, as PEM files.
type releaseKeys struct {
	db, verity, release, other *testkeys.Key
	ring, otherRing            string // OpenPGP public keys of release and other
}

func newReleaseKeys(t *testing.T, dir string) *releaseKeys {
	k := &releaseKeys{db: testkeys.Generate(t, testkeys.RSA2048), verity: testkeys.Generate(t, testkeys.RSA3072),
		release: testkeys.Generate(t, testkeys.RSA2048), other: testkeys.Generate(t, testkeys.RSA4096)}
	for _, r := range []struct {
		key  *testkeys.Key
		ring *string
		name string
	}{{k.release, &k.ring, "release"}, {k.other, &k.otherRing, "other"}} {
		okey, err := openpgp.NewKey(r.key.Cert.PublicKey, r.key.Cert.NotBefore)
		if err != nil {
			t.Fatal(err)
		}
		ring, err := openpgp.ExportPublicKey(r.key.Signer, okey, "signet test "+r.name)
		if err != nil {
			t.Fatal(err)
		}
		*r.ring = filepath.Join(dir, r.name+".pgp")
		os.WriteFile(*r.ring, ring, 0o644)
	}
	return k
}

// writeRelease writes the configuration of release v of a small OS: a UKI
// on systemd 262's stub carrying the root hash of the /usr data shipped on
// its own (with its verity tree, for the partition transfers),
// systemd-boot, a DPS disk image with /usr, its verity tree and signature
// (for a first install), a signed SHA256SUMS, and sysupdate transfers (UKI,
// .pcrlock, partitions) pointing at url. offline makes every key offline;
// other signs SHA256SUMS with the other key.
func writeRelease(t *testing.T, dir, v, url string, k *releaseKeys, offline, other bool) string {
	t.Helper()
	os.MkdirAll(filepath.Join(dir, "repart.d"), 0o755)
	usr := bytes.Repeat([]byte("usr of release "+v+"\n"), 1<<20/16)[:1<<20]
	os.WriteFile(filepath.Join(dir, "usr_"+v+".img"), usr, 0o644)
	os.WriteFile(filepath.Join(dir, "initrd"), []byte("initrd of release "+v+"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "os-release"), []byte("ID=exos\nIMAGE_VERSION="+v+"\n"), 0o644)
	defs := map[string]string{
		"10-usr.conf":            "[Partition]\nType=usr\nLabel=exos_" + v + "\nVerity=data\nVerityMatchKey=usr\nCopyBlocks=../usr_" + v + ".img\nSizeMinBytes=1M\nSizeMaxBytes=1M\n",
		"20-usr-verity.conf":     "[Partition]\nType=usr-verity\nLabel=exos_" + v + "_verity\nVerity=hash\nVerityMatchKey=usr\n",
		"30-usr-verity-sig.conf": "[Partition]\nType=usr-verity-sig\nVerity=signature\nVerityMatchKey=usr\n",
	}
	for name, body := range defs {
		os.WriteFile(filepath.Join(dir, "repart.d", name), []byte(body), 0o644)
	}
	keyRef := func(k *testkeys.Key) string {
		if offline {
			return Offline
		}
		return k.KeyPath
	}
	rel, ring := k.release, k.ring
	if other {
		rel, ring = k.other, k.otherRing
	}
	sid := sidRoot()
	cfg := fmt.Sprintf(`name = "exos"
[keys.db]
certificate = %q
key = %q
[keys.verity]
certificate = %q
key = %q
[keys.release]
certificate = %q
key = %q
openpgp-public-key = %q

[[verity]]
data = "usr_%[9]s.img"
output = "usr_%[9]s.erofs"
key = "verity"

[[image]]
output = "exos_%[9]s.raw"
definitions = "repart.d"
verity-key = "verity"

[[bootloader]]
input = %[8]q
secure-boot-key = "db"

[[uki]]
output = "exos_%[9]s.efi"
stub = %[10]q
linux = "/var/cache/signet-test/vmlinuz"
initrd = "initrd"
os-release = "os-release"
cmdline = "console=ttyS0"
verity-image = "usr_%[9]s.erofs"
secure-boot-key = "db"

[manifest]
openpgp-key = "release"

[sysupdate]
version = %[9]q
url = %[11]q
partitions = true
`, k.db.CertPath, keyRef(k.db), k.verity.CertPath, keyRef(k.verity), rel.CertPath, keyRef(rel), ring,
		filepath.Join(sid, "usr/lib/systemd/boot/efi/systemd-bootx64.efi"), v,
		filepath.Join(sid, "usr/lib/systemd/boot/efi/linuxx64.efi.stub"), url)
	path := filepath.Join(dir, "release.toml")
	os.WriteFile(path, []byte(cfg), 0o644)
	return path
}

func buildOnline(t *testing.T, cfg, dir string) *Config {
	t.Helper()
	c, err := LoadConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(c, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Done {
		t.Fatalf("online build of %s stopped at round %d", cfg, res.Round)
	}
	return c
}

// sidKeyring runs name in the sid chroot with ring as systemd's import
// keyring: bound over the vendor keyring in a private mount namespace, so
// the chroot is left as it is.
func sidKeyring(t *testing.T, ring string, name string, args ...string) ([]byte, error) {
	t.Helper()
	for _, f := range []string{"etc/systemd/import-pubring.pgp", "etc/systemd/import-pubring.gpg"} {
		if _, err := os.Stat(filepath.Join(sidRoot(), f)); err == nil {
			t.Fatalf("the sid chroot has /%s, which systemd-pull would read before the vendor keyring", f)
		}
	}
	inner := testenv.SidCmd(t, "env", append([]string{"SYSTEMD_RELAX_ESP_CHECKS=1", name}, args...)...)
	cmd := exec.Command("unshare", append([]string{"-m", "--propagation", "private", "sh", "-c", `mount --bind "$1" "$2" && shift 2 && exec "$@"`, "sh",
		ring, filepath.Join(sidRoot(), "usr/lib/systemd/import-pubring.pgp")}, inner.Args...)...)
	return cmd.CombinedOutput()
}

// tree lists every file under root (hidden partial downloads included)
// with its SHA-256.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		data, _ := os.ReadFile(p)
		sum := sha256.Sum256(data)
		rel, _ := filepath.Rel(root, p)
		out = append(out, rel+" "+hex.EncodeToString(sum[:8]))
		return nil
	})
	sort.Strings(out)
	return out
}

func copyDir(t *testing.T, dst, src string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
}

func flipByte(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	os.WriteFile(path, data, 0o644)
}

// TestSysupdateLive has systemd 262 (sid chroot) judge a release signet
// build makes: systemd-sysupdate, from a loopback HTTP server, installs
// release 2's UKI and .pcrlock over release 1 with the transfer
// definitions the build wrote, verifying signet's SHA256SUMS.gpg, and
// refuses, installing nothing, a tampered SHA256SUMS, a file whose hash
// does not match and a SHA256SUMS signed by another key, and release 3
// then removes release 1's UKI and .pcrlock together; systemd-pull raw
// --verify=signature fetches the release's disk image and refuses the
// same tampering. The installed .pcrlock is systemd-pcrlock 262's lock-uki
// of the installed UKI; the boot loader's is its lock-pe, the same before
// and after signing; and an offline build in rounds gives the same bytes.
func TestSysupdateLive(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	work := testenv.SidDir(t)
	k := newReleaseKeys(t, work)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String() + "/os/"
	var serving atomic.Value // directory published at /os/
	serving.Store(filepath.Join(work, "empty"))
	srv := &http.Server{Handler: http.StripPrefix("/os/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.FileServer(http.Dir(serving.Load().(string))).ServeHTTP(w, r)
	}))}
	go srv.Serve(ln)
	defer srv.Close()

	var dirs [3]string
	var cfgs [3]*Config
	for _, v := range []int{1, 2} {
		src := filepath.Join(work, fmt.Sprintf("src%d", v))
		dirs[v] = filepath.Join(work, fmt.Sprintf("release%d", v))
		cfgs[v] = buildOnline(t, writeRelease(t, src, fmt.Sprint(v), url, k, false, false), dirs[v])
	}
	r2 := dirs[2]
	for _, f := range []string{"exos_2.efi", "exos_2.pcrlock", "exos_2.raw", "systemd-bootx64.efi", "systemd-bootx64.pcrlock", "usr_2.erofs", "usr_2.erofs.verity", "SHA256SUMS", "SHA256SUMS.gpg",
		"sysupdate.d/10-exos-usr.transfer", "sysupdate.d/20-exos-usr-verity.transfer", "sysupdate.d/70-exos-pcrlock.transfer", "sysupdate.d/90-exos.transfer"} {
		if _, err := os.Stat(filepath.Join(r2, f)); err != nil {
			t.Fatalf("release 2: %v", err)
		}
	}
	sums, _ := os.ReadFile(filepath.Join(r2, "SHA256SUMS"))
	if !bytes.Contains(sums, []byte(" *exos_2.pcrlock\n")) || bytes.Contains(sums, []byte("transfer")) {
		t.Fatalf("SHA256SUMS must list the .pcrlock and no transfer:\n%s", sums)
	}
	checks, err := verifyWith(t, r2, filepath.Join(work, "src2", "release.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range checks {
		if ch.Err != nil {
			t.Errorf("signet verify: %s: %s [%s]: %v", ch.File, ch.What, ch.By, ch.Err)
		}
	}

	// The machine runs release 1, installed with its transfers in /usr.
	root := filepath.Join(work, "root")
	install1 := func() {
		os.RemoveAll(root)
		for _, d := range []string{"efi/EFI/Linux", UKIPCRLockDir[1:]} {
			os.MkdirAll(filepath.Join(root, d), 0o755)
		}
		if _, err := WriteTransfers(cfgs[1], filepath.Join(root, "usr/lib/sysupdate.d")); err != nil {
			t.Fatal(err)
		}
		// The partition transfers need a disk; this root has none.
		for _, p := range []string{"10-exos-usr.transfer", "20-exos-usr-verity.transfer"} {
			os.Remove(filepath.Join(root, "usr/lib/sysupdate.d", p))
		}
		copyFileT(t, filepath.Join(root, "efi/EFI/Linux/exos_1.efi"), filepath.Join(dirs[1], "exos_1.efi"))
		copyFileT(t, filepath.Join(root, UKIPCRLockDir[1:], "exos_1.pcrlock"), filepath.Join(dirs[1], "exos_1.pcrlock"))
	}

	// Release 2 re-signed: the same SHA256SUMS, signed by another key.
	otherDir := filepath.Join(work, "release2-other")
	buildOnline(t, writeRelease(t, filepath.Join(work, "src2-other"), "2", url, k, false, true), otherDir)
	if a, _ := os.ReadFile(filepath.Join(otherDir, "SHA256SUMS")); !bytes.Equal(a, sums) {
		t.Fatal("the re-signed release has another SHA256SUMS")
	}

	bad := map[string]string{}
	// Tampered SHA256SUMS: the UKI swapped and its line fixed to match.
	bad["tampered SHA256SUMS"] = filepath.Join(work, "bad-sums")
	copyDir(t, bad["tampered SHA256SUMS"], r2)
	efi := filepath.Join(bad["tampered SHA256SUMS"], "exos_2.efi")
	flipByte(t, efi)
	data, _ := os.ReadFile(efi)
	sum := sha256.Sum256(data)
	lines := strings.Split(string(sums), "\n")
	for i, l := range lines {
		if strings.HasSuffix(l, " *exos_2.efi") {
			lines[i] = hex.EncodeToString(sum[:]) + " *exos_2.efi"
		}
	}
	os.WriteFile(filepath.Join(bad["tampered SHA256SUMS"], "SHA256SUMS"), []byte(strings.Join(lines, "\n")), 0o644)
	// A file whose hash does not match the signed SHA256SUMS.
	bad["file mismatch"] = filepath.Join(work, "bad-file")
	copyDir(t, bad["file mismatch"], r2)
	flipByte(t, filepath.Join(bad["file mismatch"], "exos_2.efi"))
	flipByte(t, filepath.Join(bad["file mismatch"], "exos_2.raw"))
	// SHA256SUMS.gpg by a key not in the keyring.
	bad["another key"] = filepath.Join(work, "bad-key")
	copyDir(t, bad["another key"], r2)
	copyFileT(t, filepath.Join(bad["another key"], "SHA256SUMS.gpg"), filepath.Join(otherDir, "SHA256SUMS.gpg"))

	for _, name := range []string{"tampered SHA256SUMS", "file mismatch", "another key"} {
		install1()
		before := tree(t, root)
		serving.Store(bad[name])
		out, err := sidKeyring(t, k.ring, "systemd-sysupdate", "--root="+root, "update")
		if err == nil {
			t.Errorf("%s: systemd-sysupdate exits 0:\n%s", name, out)
		}
		// Nothing is installed: no file under a name a reader takes
		// (systemd-pcrlock and systemd-boot skip hidden files). A
		// refused download can leave sysupdate's hidden
		// .sysupdate.partial.* and .sysupdate.pending.* files, which
		// "systemd-sysupdate vacuum" removes.
		var extra []string
		for _, f := range tree(t, root) {
			if !slices.Contains(before, f) {
				extra = append(extra, f)
				if base := filepath.Base(f); !strings.HasPrefix(base, ".sysupdate.partial.") && !strings.HasPrefix(base, ".sysupdate.pending.") {
					t.Errorf("%s: systemd-sysupdate installed %s:\n%s", name, f, out)
				}
			}
		}
		if len(tree(t, root)) != len(before)+len(extra) {
			t.Errorf("%s: systemd-sysupdate removed files of release 1", name)
		}
		t.Logf("%s: refused; hidden leftovers %q", name, extra)
		if len(extra) > 0 {
			out, err := sidKeyring(t, k.ring, "systemd-sysupdate", "--root="+root, "vacuum")
			if after := tree(t, root); err != nil || !slices.Equal(after, before) {
				t.Errorf("%s: systemd-sysupdate vacuum (%v) leaves %q:\n%s", name, err, after, out)
			}
		}

		// systemd-pull into an image root renames the download into
		// place only once it is verified.
		machines := filepath.Join(work, "machines")
		os.RemoveAll(machines)
		os.MkdirAll(machines, 0o755)
		out, err = sidKeyring(t, k.ring, "systemd-pull", "raw", "--verify=signature", "--image-root="+machines, url+"exos_2.raw", "exos")
		if err == nil || !bytes.Contains(out, []byte("DOWNLOAD INVALID")) && !bytes.Contains(out, []byte("does not match")) {
			t.Errorf("%s: systemd-pull is not refused (%v):\n%s", name, err, out)
		}
		if left, _ := filepath.Glob(filepath.Join(machines, "exos*")); len(left) > 0 {
			t.Errorf("%s: systemd-pull left %q", name, left)
		}
		// --direct writes in place as it downloads: only the exit
		// status and the message tell a refused download.
		pulled := filepath.Join(work, "pulled.raw")
		out, err = sidKeyring(t, k.ring, "systemd-pull", "raw", "--direct", "--verify=signature", url+"exos_2.raw", pulled)
		if err == nil {
			t.Errorf("%s: systemd-pull --direct exits 0:\n%s", name, out)
		}
		os.Remove(pulled)
	}

	// The real release installs.
	install1()
	serving.Store(r2)
	if out, err := sidKeyring(t, k.ring, "systemd-sysupdate", "--root="+root, "update"); err != nil || !bytes.Contains(out, []byte("Signature verification succeeded")) {
		t.Fatalf("systemd-sysupdate update: %v\n%s", err, out)
	}
	installedUKI := filepath.Join(root, "efi/EFI/Linux/exos_2.efi")
	installedLock := filepath.Join(root, UKIPCRLockDir[1:], "exos_2.pcrlock")
	for f, want := range map[string]string{installedUKI: "exos_2.efi", installedLock: "exos_2.pcrlock"} {
		a, err := os.ReadFile(f)
		b, _ := os.ReadFile(filepath.Join(r2, want))
		if err != nil || !bytes.Equal(a, b) {
			t.Fatalf("%s is not release 2's %s: %v", f, want, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, UKIPCRLockDir[1:], "exos_1.pcrlock")); err != nil {
		t.Fatal("the booted release's .pcrlock went (InstancesMax=2 keeps it)")
	}
	lock, _ := os.ReadFile(installedLock)
	if !bytes.Equal(lockOf(t, installedUKI), lock) {
		t.Fatal("the installed .pcrlock is not signet pcrlock lock-uki of the installed UKI")
	}
	if peer := testenv.Sid(t, "systemd-pcrlock", "lock-uki", installedUKI); !bytes.Equal(peer, lock) {
		t.Fatalf("systemd-pcrlock 262 lock-uki of the installed UKI differs:\n%s\n%s", peer, lock)
	}
	bl, _ := os.ReadFile(filepath.Join(r2, "systemd-bootx64.pcrlock"))
	if peer := testenv.Sid(t, "systemd-pcrlock", "lock-pe", filepath.Join(r2, "systemd-bootx64.efi")); !bytes.Equal(peer, bl) {
		t.Fatalf("systemd-pcrlock 262 lock-pe of the signed boot loader differs:\n%s\n%s", peer, bl)
	}
	if !bytes.Equal(lockPath(t, filepath.Join(sidRoot(), "usr/lib/systemd/boot/efi/systemd-bootx64.efi"), false), bl) {
		t.Fatal("the boot loader's .pcrlock differs between the unsigned and the signed PE")
	}

	machines := filepath.Join(work, "machines")
	os.RemoveAll(machines)
	os.MkdirAll(machines, 0o755)
	if out, err := sidKeyring(t, k.ring, "systemd-pull", "raw", "--verify=signature", "--image-root="+machines, url+"exos_2.raw", "exos"); err != nil || !bytes.Contains(out, []byte("Signature verification succeeded")) {
		t.Fatalf("systemd-pull: %v\n%s", err, out)
	}
	if a, _ := os.ReadFile(filepath.Join(machines, "exos.raw")); !bytes.Equal(a, mustRead(t, filepath.Join(r2, "exos_2.raw"))) {
		t.Fatal("systemd-pull wrote another image")
	}

	// Release 3: InstancesMax=2 removes release 1's .pcrlock with its UKI,
	// leaving the booted release and the new one as the variants.
	r3 := filepath.Join(work, "release3")
	buildOnline(t, writeRelease(t, filepath.Join(work, "src3"), "3", url, k, false, false), r3)
	serving.Store(r3)
	if out, err := sidKeyring(t, k.ring, "systemd-sysupdate", "--root="+root, "update"); err != nil {
		t.Fatalf("systemd-sysupdate update to 3: %v\n%s", err, out)
	}
	for f, want := range map[string]bool{"efi/EFI/Linux/exos_1.efi": false, "efi/EFI/Linux/exos_2.efi": true, "efi/EFI/Linux/exos_3.efi": true,
		UKIPCRLockDir[1:] + "/exos_1.pcrlock": false, UKIPCRLockDir[1:] + "/exos_2.pcrlock": true, UKIPCRLockDir[1:] + "/exos_3.pcrlock": true} {
		if _, err := os.Stat(filepath.Join(root, f)); (err == nil) != want {
			t.Errorf("after the update to 3: %s present %v, want %v", f, err == nil, want)
		}
	}

	serving.Store(r2)
	partitionUpdate(t, work, k.ring, cfgs[1], r2)

	// Offline, in rounds, with the same keys: the same bytes.
	offSrc := filepath.Join(work, "src2-offline")
	offCfg := writeRelease(t, offSrc, "2", url, k, true, false)
	c, err := LoadConfig(offCfg)
	if err != nil {
		t.Fatal(err)
	}
	offDir := filepath.Join(work, "release2-offline")
	uris := map[string]string{"db": k.db.KeyPath, "verity": k.verity.KeyPath, "release": k.release.KeyPath}
	res, err := Run(c, Options{Dir: offDir})
	for round := 1; err == nil && !res.Done && round < 5; round++ {
		res, err = Run(c, Options{Dir: offDir, Responses: [][]byte{signRound(t, res.Request, uris, c)}})
	}
	if err != nil || !res.Done {
		t.Fatalf("offline build: %v", err)
	}
	st, err := LoadState(offDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range st.Outputs {
		if a, b := mustRead(t, filepath.Join(offDir, o.File)), mustRead(t, filepath.Join(r2, o.File)); !bytes.Equal(a, b) {
			t.Errorf("%s: offline and online builds differ", o.File)
		}
	}
	if len(st.Outputs) != len(ExpectedOutputs(c)) {
		t.Errorf("the offline build made %d outputs, the configuration expects %d", len(st.Outputs), len(ExpectedOutputs(c)))
	}
}

// partitionUpdate has systemd-sysupdate 262 install release 2's /usr
// partition and its verity tree into a disk holding release 1 and two
// empty partitions, with release 1's partition transfers (their Path=auto
// pointed at the disk image), and checks what sysupdate wrote: the labels,
// the partition UUIDs systemd finds them by (the root hash halves, from
// the files' @u), the flags, and a verity pair veritysetup
// accepts for the root hash on release 2's UKI command line.
func partitionUpdate(t *testing.T, work, ring string, c1 *Config, r2 string) {
	t.Helper()
	root := filepath.Join(work, "root-disk")
	defs := filepath.Join(work, "disk.repart.d")
	os.MkdirAll(defs, 0o755)
	for name, body := range map[string]string{
		"10-usr-a.conf":        "[Partition]\nType=usr\nLabel=exos_1\nSizeMinBytes=2M\nSizeMaxBytes=2M\n",
		"11-usr-verity-a.conf": "[Partition]\nType=usr-verity\nLabel=exos_1_verity\nSizeMinBytes=1M\nSizeMaxBytes=1M\n",
		"20-usr-b.conf":        "[Partition]\nType=usr\nLabel=_empty\nSizeMinBytes=2M\nSizeMaxBytes=2M\n",
		"21-usr-verity-b.conf": "[Partition]\nType=usr-verity\nLabel=_empty\nSizeMinBytes=1M\nSizeMaxBytes=1M\n",
	} {
		os.WriteFile(filepath.Join(defs, name), []byte(body), 0o644)
	}
	os.MkdirAll(filepath.Join(root, "usr/lib/sysupdate.d"), 0o755)
	disk := filepath.Join(root, "disk.raw")
	testenv.Sid(t, "systemd-repart", "--empty=create", "--size=auto", "--dry-run=no", "--seed=0f3ab1c4-3c1e-4b43-9a4e-2f1b0d9c8e71", "--definitions="+defs, disk)
	ts, err := Transfers(c1)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, tr := range ts {
		if !bytes.Contains(tr.Data, []byte("Type=partition\n")) {
			continue
		}
		n++
		data := bytes.Replace(tr.Data, []byte("\nPath=auto\n"), []byte("\nPath=/disk.raw\n"), 1)
		os.WriteFile(filepath.Join(root, "usr/lib/sysupdate.d", tr.Name), data, 0o644)
	}
	if n != 2 {
		t.Fatalf("%d partition transfers, want 2", n)
	}
	if out, err := sidKeyring(t, ring, "systemd-sysupdate", "--root="+root, "update"); err != nil || !bytes.Contains(out, []byte("Signature verification succeeded")) {
		t.Fatalf("systemd-sysupdate (partitions): %v\n%s", err, out)
	}
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	tab, err := image.Read(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	rh := mustRead(t, filepath.Join(r2, "usr_2.erofs.roothash"))
	root2, _ := hex.DecodeString(string(rh))
	du, hu := PartitionUUIDs(root2)
	if !bytes.Contains(mustRead(t, filepath.Join(r2, "exos_2.efi")), []byte("usrhash="+string(rh))) {
		t.Fatal("release 2's UKI does not carry the usrhash of usr_2.erofs")
	}
	extract := map[string]string{}
	for _, e := range tab.Entries {
		if !e.Used() {
			continue
		}
		want := map[string]string{"exos_2": du, "exos_2_verity": hu}[e.Name]
		if want == "" {
			continue
		}
		if e.UUID.String() != want {
			t.Errorf("partition %s: UUID %s, want %s (from the root hash)", e.Name, e.UUID, want)
		}
		if e.Attributes != 0 {
			t.Errorf("partition %s: flags %#x, want PartitionFlags=0", e.Name, e.Attributes)
		}
		p := filepath.Join(work, e.Name+".part")
		buf := make([]byte, e.Size())
		f.ReadAt(buf, e.Offset())
		os.WriteFile(p, buf, 0o644)
		extract[e.Name] = p
	}
	if len(extract) != 2 {
		t.Fatalf("sysupdate wrote partitions %v, want exos_2 and exos_2_verity", extract)
	}
	data := mustRead(t, extract["exos_2"])
	if !bytes.Equal(data[:len(mustRead(t, filepath.Join(r2, "usr_2.erofs")))], mustRead(t, filepath.Join(r2, "usr_2.erofs"))) {
		t.Error("partition exos_2 does not hold usr_2.erofs")
	}
	testenv.Run(t, "veritysetup", "verify", extract["exos_2"], extract["exos_2_verity"], string(rh))
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func copyFileT(t *testing.T, dst, src string) {
	t.Helper()
	if err := os.WriteFile(dst, mustRead(t, src), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestSysupdateConfig checks the configuration side: what is refused (one
// line naming the file and the problem), the default .pcrlock outputs,
// and the transfer definitions' keys.
func TestSysupdateConfig(t *testing.T) {
	dir := t.TempDir()
	const keys = "[keys.db]\nkey = \"offline\"\n[keys.r]\nkey = \"offline\"\n[manifest]\nopenpgp-key = \"r\"\n"
	const uki = "[[uki]]\noutput = \"os_3.efi\"\nstub = \"s\"\nlinux = \"l\"\nsecure-boot-key = \"db\"\n"
	for body, want := range map[string]string{
		keys + uki + "[sysupdate]\nversion = \"3\"\n":                                                                                      "url is required",
		keys + uki + "[sysupdate]\nversion = \"3\"\nurl = \"/srv\"\n":                                                                      "not an http:// or https:// URL",
		keys + uki + "[sysupdate]\nversion = \"3/4\"\nurl = \"https://h/\"\n":                                                              "does not accept in a version",
		keys + uki + "[sysupdate]\nversion = \"4\"\nurl = \"https://h/\"\n":                                                                "holds the release version \"4\" 0 times",
		keys + uki + "[sysupdate]\nversion = \"3\"\nurl = \"https://h/\"\ninstances-max = 1\n":                                             "at least 2",
		keys + uki + "[sysupdate]\nversion = \"3\"\nurl = \"https://h/\"\npartitions = true\n":                                             "no [[verity]] output",
		"[keys.db]\nkey = \"offline\"\n" + uki + "[sysupdate]\nversion = \"3\"\nurl = \"https://h/\"\n":                                    "needs [manifest] with openpgp-key",
		keys + "[[bootloader]]\ninput = \"b.efi\"\n":                                                                                       "input and secure-boot-key are required",
		keys + uki + "[[uki]]\noutput = \"os_3.pcrlock\"\nstub = \"s\"\nlinux = \"l\"\n":                                                   "used twice",
		keys + "[[bootloader]]\ninput = \"x/sd.efi\"\nsecure-boot-key = \"db\"\n[[image]]\noutput = \"sd.pcrlock\"\ndefinitions = \"d\"\n": "used twice",
	} {
		p := filepath.Join(dir, "c.toml")
		os.WriteFile(p, []byte(body), 0o644)
		_, err := LoadConfig(p)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), p) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: error %v, want one line naming %s and saying %q", body, err, p, want)
		}
	}

	// A UKI not signed for Secure Boot gets no .pcrlock unless asked; a
	// signed one gets it unless turned off.
	p := filepath.Join(dir, "ok.toml")
	os.WriteFile(p, []byte(keys+uki+"[[uki]]\noutput = \"plain_3.efi\"\nstub = \"s\"\nlinux = \"l\"\n[[uki]]\noutput = \"off_3.efi\"\nstub = \"s\"\nlinux = \"l\"\nsecure-boot-key = \"db\"\npcrlock = false\n"+
		"[[bootloader]]\ninput = \"/x/systemd-bootx64.efi\"\nsecure-boot-key = \"db\"\n[sysupdate]\nversion = \"3\"\nurl = \"https://dl.example/os 1/%/\"\ninstances-max = 3\n"), 0o644)
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, o := range ExpectedOutputs(c) {
		files = append(files, o.File)
	}
	want := []string{"systemd-bootx64.pcrlock", "systemd-bootx64.efi", "os_3.pcrlock", "os_3.efi", "plain_3.efi", "off_3.efi", "SHA256SUMS", "SHA256SUMS.gpg",
		"sysupdate.d/70-os-pcrlock.transfer", "sysupdate.d/90-off.transfer", "sysupdate.d/90-os.transfer", "sysupdate.d/90-plain.transfer"}
	if !slices.Equal(files, want) {
		t.Fatalf("outputs %q, want %q", files, want)
	}
	ts, _ := Transfers(c)
	got := string(ts[0].Data)
	for _, line := range []string{"[Transfer]\nVerify=yes\n", "Type=url-file\nPath=https://dl.example/os 1/%%/\nMatchPattern=os_@v.pcrlock\n",
		"[Target]\nType=regular-file\nPath=/var/lib/pcrlock.d/650-uki.pcrlock.d\nMatchPattern=os_@v.pcrlock\nMode=0644\nInstancesMax=3\n"} {
		if !strings.Contains(got, line) {
			t.Errorf("%s lacks %q:\n%s", ts[0].Name, line, got)
		}
	}
	if got := string(ts[2].Data); !strings.Contains(got, "Path=/EFI/Linux\nPathRelativeTo=boot\nMatchPattern=os_@v.efi\n") {
		t.Errorf("%s:\n%s", ts[2].Name, got)
	}
	// signet build --transfers writes the same files.
	out := filepath.Join(dir, "usr/lib/sysupdate.d")
	names, err := WriteTransfers(c, out)
	if err != nil || len(names) != len(ts) {
		t.Fatalf("WriteTransfers: %v %v", names, err)
	}
	for _, tr := range ts {
		if !bytes.Equal(mustRead(t, filepath.Join(out, tr.Name)), tr.Data) {
			t.Errorf("%s differs", tr.Name)
		}
	}
}
