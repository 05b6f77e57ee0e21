package pcrlock_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/keys"
	"signet.dev/measure"
	"signet.dev/pcrlock"
	"signet.dev/uki"
)

// release is one signed UKI as the update flow needs it: its .pcrlock
// and its .pcrsig (the signed PCR 11 policy the stub would pass on).
type release struct {
	name    string
	lock    *pcrlock.File
	pcrsig  []byte
	lockRaw []byte
}

func makeRelease(t *testing.T, dir, name string, k *testkeys.Key) release {
	t.Helper()
	pem, err := keys.MarshalPublicKeyPEM(k.Signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	plan, err := uki.NewPlan(openStub(t, sidRoot+sidStub), []uki.Part{
		uki.BytesPart(".linux", readFile(t, kernel)),
		uki.BytesPart(".osrel", []byte("ID=signet\nIMAGE_VERSION="+name+"\n")),
		uki.BytesPart(".cmdline", []byte("quiet release="+name)),
		uki.BytesPart(".initrd", []byte("070701 initrd "+name)),
		uki.BytesPart(".pcrpkey", pem),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := plan.Prepare(measure.DefaultPhases, measure.DefaultBanks, k.Signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	doc, err := measure.Sign(entries[0], k.Signer)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := plan.WriteTo(&buf, []*measure.PCRSig{doc}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name+".efi")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	vs := lockUKI(t, path)
	return release{name: name, lock: vs[0].File, lockRaw: vs[0].File.Marshal(), pcrsig: doc.Marshal(measure.Short)}
}

// tcgAlg are the TCG algorithm ids of pcrlock.Banks.
var tcgAlg = []uint16{0x0004, 0x000b, 0x000c, 0x000d}

// firmwareLog writes a TCG2 crypto-agile event log in which the firmware
// loaded the release's UKI (PCR 4) and its stub measured the sections (PCR
// 11), and returns the matching tpm2_pcrextend arguments.
func firmwareLog(r release) ([]byte, []string) {
	var b bytes.Buffer
	le := func(v any) { binary.Write(&b, binary.LittleEndian, v) }
	// Spec ID Event03 header, in the SHA-1 log format.
	var spec bytes.Buffer
	spec.WriteString("Spec ID Event03\x00")
	binary.Write(&spec, binary.LittleEndian, uint32(0)) // platform class
	spec.Write([]byte{0, 2, 0, 2})                      // version 2.0 errata 0, uintn size 2 (64 bit)
	binary.Write(&spec, binary.LittleEndian, uint32(len(pcrlock.Banks)))
	for i, bk := range pcrlock.Banks {
		binary.Write(&spec, binary.LittleEndian, tcgAlg[i])
		binary.Write(&spec, binary.LittleEndian, uint16(bk.Hash.Size()))
	}
	spec.WriteByte(0) // vendor info size
	le(uint32(0))
	le(uint32(3)) // EV_NO_ACTION
	b.Write(make([]byte, 20))
	le(uint32(spec.Len()))
	b.Write(spec.Bytes())

	var args []string
	for i, rec := range r.lock.Records {
		typ, data := uint32(0xD), []byte(fmt.Sprintf("record %d\x00", i)) // EV_IPL
		if rec.PCR == 4 {
			typ, data = 0x80000003, make([]byte, 32) // EV_EFI_BOOT_SERVICES_APPLICATION
		}
		le(uint32(rec.PCR))
		le(typ)
		le(uint32(len(pcrlock.Banks)))
		var spec []string
		for j, bk := range pcrlock.Banks {
			le(tcgAlg[j])
			b.Write(rec.Digest(bk.Name))
			spec = append(spec, fmt.Sprintf("%s=%x", bk.Name, rec.Digest(bk.Name)))
		}
		le(uint32(len(data)))
		b.Write(data)
		args = append(args, fmt.Sprintf("%d:%s", rec.PCR, strings.Join(spec, ",")))
	}
	return b.Bytes(), args
}

// machine is a swtpm whose state survives restarts ("reboots"), and the
// private /run/systemd and /var/lib/systemd the sid tools see.
type machine struct {
	t    *testing.T
	dir  string
	sock string
	cmd  *exec.Cmd
}

func (m *machine) start() {
	t := m.t
	m.cmd = exec.Command(testenv.Tool(t, "swtpm"), "socket", "--tpm2",
		"--tpmstate", "dir="+filepath.Join(m.dir, "tpm"),
		"--server", "type=unixio,path="+m.sock, "--ctrl", "type=unixio,path="+m.sock+".ctrl",
		"--flags", "not-need-init,startup-clear")
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 300; i++ {
		if c, err := net.Dial("unix", m.sock); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("swtpm did not open its socket")
}

func (m *machine) stop() {
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { m.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		m.cmd.Process.Kill()
		<-done
	}
	m.cmd = nil
	os.Remove(m.sock)
	os.Remove(m.sock + ".ctrl")
}

// run runs a sid tool with the machine's TPM, event logs and private
// systemd state directories.
func (m *machine) run(args ...string) ([]byte, error) {
	script := `mkdir -p /run/systemd /var/lib/systemd && mount --bind "$W/run" /run/systemd && mount --bind "$W/varlib" /var/lib/systemd && exec "$@"`
	// scripts/sid-chroot runs it in a mount namespace of its own: the
	// binds stay private.
	cmd := testenv.SidCmd(m.t, "sh", append([]string{"-c", script, "sh"}, args...)...)
	cmd.Env = append(os.Environ(),
		"W="+m.dir,
		"SYSTEMD_TPM2_DEVICE=swtpm:path="+m.sock,
		"TPM2TOOLS_TCTI=swtpm:path="+m.sock,
		"SYSTEMD_MEASURE_LOG_FIRMWARE="+filepath.Join(m.dir, "firmware.log"),
		"SYSTEMD_MEASURE_LOG_USERSPACE="+filepath.Join(m.dir, "run", "tpm2-measure.log"),
		"SYSTEMD_FORCE_MEASURE=1",
		"SYSTEMD_LOG_LEVEL=info",
	)
	return cmd.CombinedOutput()
}

func (m *machine) must(args ...string) []byte {
	m.t.Helper()
	out, err := m.run(args...)
	if err != nil {
		m.t.Fatalf("%s: %v\n%s", args[0], err, out)
	}
	return out
}

// boot reboots into r: the TPM restarts (PCRs reset, NV kept), the
// firmware and stub extend what their log says, systemd-pcrextend measures
// the boot phases up to phase, and r's .pcrsig is where the stub puts it.
func (m *machine) boot(r release, phases ...string) {
	m.t.Helper()
	m.stop()
	m.start()
	log, args := firmwareLog(r)
	os.WriteFile(filepath.Join(m.dir, "firmware.log"), log, 0o644)
	os.Remove(filepath.Join(m.dir, "run", "tpm2-measure.log"))
	os.WriteFile(filepath.Join(m.dir, "run", "tpm2-pcr-signature.json"), r.pcrsig, 0o644)
	m.must(append([]string{"tpm2_pcrextend"}, args...)...)
	for _, p := range phases {
		m.must("systemd-pcrextend", "--tpm2-device=swtpm:path="+m.sock, p)
	}
}

// components lays out a --components= directory: the releases as variants
// of 650-uki, and systemd's stock phase components.
func (m *machine) components(rs ...release) string {
	m.t.Helper()
	d, err := os.MkdirTemp(m.dir, "components-")
	if err != nil {
		m.t.Fatal(err)
	}
	os.Mkdir(filepath.Join(d, "650-uki.pcrlock.d"), 0o755)
	for _, r := range rs {
		os.WriteFile(filepath.Join(d, "650-uki.pcrlock.d", r.name+".pcrlock"), r.lockRaw, 0o644)
	}
	for _, p := range []string{"750-enter-initrd", "800-leave-initrd", "850-sysinit", "900-ready"} {
		os.WriteFile(filepath.Join(d, p+".pcrlock"), readFile(m.t, sidRoot+"/usr/lib/pcrlock.d/"+p+".pcrlock"), 0o644)
	}
	return d
}

// policyValues reads how many values per PCR the current pcrlock.json
// allows.
func (m *machine) policyValues() map[int]int {
	m.t.Helper()
	var p struct {
		PCRValues []struct {
			PCR    int      `json:"pcr"`
			Values []string `json:"values"`
		} `json:"pcrValues"`
	}
	if err := json.Unmarshal(readFile(m.t, filepath.Join(m.dir, "varlib", "pcrlock.json")), &p); err != nil {
		m.t.Fatal(err)
	}
	out := map[int]int{}
	for _, v := range p.PCRValues {
		out[v.PCR] = len(v.Values)
	}
	return out
}

// predicted is signet pcrlock check's count for the same components.
func predicted(t *testing.T, dir string, w pcrlock.Window) map[int]int {
	t.Helper()
	var comps []pcrlock.Component
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		var files []string
		id := strings.TrimSuffix(strings.TrimSuffix(e.Name(), ".d"), ".pcrlock")
		if e.IsDir() {
			files, _ = filepath.Glob(filepath.Join(dir, e.Name(), "*.pcrlock"))
		} else {
			files = []string{filepath.Join(dir, e.Name())}
		}
		c := pcrlock.Component{ID: id}
		for _, f := range files {
			p, err := pcrlock.Parse(readFile(t, f))
			if err != nil {
				t.Fatal(err)
			}
			c.Variants = append(c.Variants, p)
		}
		comps = append(comps, c)
	}
	out := map[int]int{}
	for _, c := range pcrlock.Predict(comps, w) {
		out[c.PCR] = c.Values
	}
	return out
}

var allPhases = []string{"enter-initrd", "leave-initrd", "sysinit", "ready"}

// TestDowngradeSwtpm runs the update and downgrade with systemd 262's
// real tools on a swtpm, with signet's .pcrlock files as the UKI
// component: release B unlocks after the update; once A has left the
// allowlist, booting A again no longer unlocks a pcrlock slot nor a
// combined signed + pcrlock slot, although A's .pcrsig still unlocks a
// signed-only slot. Then the limits: three UKIs do not fit the default
// window, the initrd location does, and --strict=yes refuses a weakened
// policy.
func TestDowngradeSwtpm(t *testing.T) {
	dir := testenv.SidDir(t)
	for _, d := range []string{"tpm", "run", "varlib"} {
		os.Mkdir(filepath.Join(dir, d), 0o755)
	}
	m := &machine{t: t, dir: dir, sock: filepath.Join(dir, "tpm.sock")}
	t.Cleanup(m.stop)
	k := testkeys.Generate(t, testkeys.RSA2048)
	kt := testkeys.Write(t, testkeys.RSA2048, k.Signer, dir)
	a, b, c := makeRelease(t, dir, "A", k), makeRelease(t, dir, "B", k), makeRelease(t, dir, "C", k)

	makePolicy := func(comps string, extra ...string) ([]byte, error) {
		return m.run(append([]string{"systemd-pcrlock", "make-policy", "--components=" + comps, "--pcr=4,11"}, extra...)...)
	}
	mustPolicy := func(comps string, extra ...string) {
		t.Helper()
		if out, err := makePolicy(comps, extra...); err != nil {
			t.Fatalf("make-policy: %v\n%s", err, out)
		}
	}

	// A is installed and booted; the first policy; three LUKS2 images.
	m.boot(a, allPhases...)
	mustPolicy(m.components(a))
	key := filepath.Join(dir, "passphrase")
	os.WriteFile(key, []byte("signet test passphrase"), 0o600)
	images := map[string][]string{
		"pcrlock": {"--tpm2-pcrlock=/var/lib/systemd/pcrlock.json"},
		"signed":  {"--tpm2-public-key=" + kt.PubPath, "--tpm2-public-key-pcrs=11", "--tpm2-pcrlock="},
		"both":    {"--tpm2-public-key=" + kt.PubPath, "--tpm2-public-key-pcrs=11", "--tpm2-pcrlock=/var/lib/systemd/pcrlock.json"},
	}
	for name, opts := range images {
		img := filepath.Join(dir, name+".img")
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Truncate(img, 20<<20)
		m.must("cryptsetup", "luksFormat", "-q", "--type=luks2", "--pbkdf=pbkdf2", "--pbkdf-force-iterations=1000", "--key-file="+key, img)
		m.must(append([]string{"systemd-cryptenroll", "--unlock-key-file=" + key, "--tpm2-device=swtpm:path=" + m.sock, "--tpm2-pcrs="}, append(opts, img)...)...)
	}
	// The slots are what they claim: a pcrlock token, a signed-only one,
	// and a combined one with two shards.
	for name, want := range map[string][2]bool{"pcrlock": {true, false}, "signed": {false, true}, "both": {true, true}} {
		var md struct {
			Tokens map[string]map[string]any `json:"tokens"`
		}
		out := m.must("cryptsetup", "luksDump", "--dump-json-metadata", filepath.Join(dir, name+".img"))
		if err := json.Unmarshal(out, &md); err != nil {
			t.Fatalf("%s: luksDump: %v\n%s", name, err, out)
		}
		tok := md.Tokens["0"]
		pcrlocked, _ := tok["tpm2_pcrlock"].(bool)
		_, signed := tok["tpm2_pubkey"]
		if tok["type"] != "systemd-tpm2" || pcrlocked != want[0] || signed != want[1] {
			t.Errorf("%s: token %v, want pcrlock=%v signed=%v", name, tok, want[0], want[1])
		}
		if hashes, _ := tok["tpm2-policy-hash"].([]any); name == "both" && len(hashes) != 2 {
			t.Errorf("combined slot: policy hashes %v, want two shards", tok["tpm2-policy-hash"])
		}
	}
	// unlocks reports whether the TPM slot of image name opens now (on a
	// copy: proving it means enrolling something with the unlocked key).
	unlocks := func(name string) (bool, string) {
		t.Helper()
		cp := filepath.Join(dir, "try.img")
		os.WriteFile(cp, readFile(t, filepath.Join(dir, name+".img")), 0o600)
		defer os.Remove(cp)
		out, err := m.run("systemd-cryptenroll", "--unlock-tpm2-device=swtpm:path="+m.sock,
			"--tpm2-device=swtpm:path="+m.sock, "--tpm2-pcrs=", "--tpm2-pcrlock=", cp)
		return err == nil, string(out)
	}
	expect := func(step string, want map[string]bool) {
		t.Helper()
		for _, name := range []string{"pcrlock", "signed", "both"} {
			got, out := unlocks(name)
			t.Logf("%s: %s slot unlocks=%v (%s)", step, name, got, lastLine(out))
			if got != want[name] {
				t.Errorf("%s: %s slot unlocks=%v, want %v\n%s", step, name, got, want[name], out)
			}
		}
	}
	all := map[string]bool{"pcrlock": true, "signed": true, "both": true}
	expect("A booted", all)

	// The update stages B's .pcrlock and reruns make-policy on A.
	comps := m.components(a, b)
	mustPolicy(comps)
	if got, want := m.policyValues(), predicted(t, comps, pcrlock.DefaultWindow); got[4] != 2 || got[11] != 8 || want[4] != 2 || want[11] != 8 {
		t.Errorf("A+B: pcrlock.json allows %v values per PCR, signet pcrlock check counts %v; want 2 on PCR 4 and 8 on PCR 11", got, want)
	}
	m.boot(b, allPhases...)
	expect("B booted, A and B allowed", all)

	// B has booted: A leaves the allowlist.
	mustPolicy(m.components(b))
	expect("B booted, only B allowed", all)

	// Downgrade: A is still Secure Boot valid and its .pcrsig still verifies.
	m.boot(a, allPhases...)
	expect("A booted after B's policy", map[string]bool{"signed": true})
	// Root on A cannot put A back: make-policy must first satisfy the policy.
	if out, err := makePolicy(m.components(a, b)); err == nil {
		t.Errorf("make-policy on A re-added A:\n%s", out)
	}
	expect("A booted after trying to re-add A", map[string]bool{"signed": true})

	// The limits. Three releases in the default window: 12 values.
	m.boot(b, allPhases...)
	comps = m.components(a, b, c)
	if want := predicted(t, comps, pcrlock.DefaultWindow); want[11] != 12 {
		t.Errorf("signet pcrlock check counts %d PCR 11 values for three releases, want 12", want[11])
	}
	out, err := makePolicy(comps)
	if err == nil || !strings.Contains(string(out), "more than 8") {
		t.Errorf("make-policy with three releases in the default window: %v\n%s", err, out)
	}
	// --strict=yes refuses to drop PCRs the components do not explain
	// (the stock components know no UKI).
	out, err = m.run("systemd-pcrlock", "make-policy", "--strict=yes", "--pcr=4,11")
	t.Logf("make-policy --strict=yes with the stock components: %v: %s", err, lastLine(string(out)))
	if err == nil || !strings.Contains(string(out), "PCR") {
		t.Errorf("make-policy --strict=yes wrote a policy without the UKI component:\n%s", out)
	}
	// At the initrd location one value per release fits.
	mustPolicy(comps, "--location=770")
	if got, want := m.policyValues(), predicted(t, comps, pcrlock.Window{Start: "770", End: "770"}); got[11] != 3 || want[11] != 3 || got[4] != 3 {
		t.Errorf("A+B+C at 770: pcrlock.json allows %v, signet pcrlock check counts %v; want 3 on PCRs 4 and 11", got, want)
	}
	m.boot(c, "enter-initrd")
	expect("C in the initrd, A+B+C allowed at 770", all)

	// Without --strict the same make-policy weakens the policy: it drops
	// PCRs 4 and 11 and succeeds. The combined slot still wants a vendor
	// signature, but A has one: the downgrade protection is gone, which
	// is why the make-policy services want --strict=yes.
	m.boot(c, "enter-initrd")
	out, err = m.run("systemd-pcrlock", "make-policy", "--pcr=4,11", "--location=770")
	t.Logf("make-policy without --strict: %v: %s", err, lastLine(string(out)))
	if err != nil {
		t.Fatalf("make-policy without --strict failed: %v\n%s", err, out)
	}
	if got := m.policyValues(); got[4] != 0 || got[11] != 0 {
		t.Errorf("weakened policy still has PCRs 4/11: %v", got)
	}
	m.boot(a, "enter-initrd")
	expect("A in the initrd after a weakened policy", map[string]bool{"pcrlock": true, "signed": true, "both": true})
}

func lastLine(s string) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	return ls[len(ls)-1]
}
