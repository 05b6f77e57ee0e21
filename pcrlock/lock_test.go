package pcrlock_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/keys"
	"signet.dev/measure"
	"signet.dev/pcrlock"
	"signet.dev/uki"
)

const (
	sidStub    = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub" // inside the chroot
	sidRoot    = "/var/cache/signet-test/sid"
	debianStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub" // Debian 12's, systemd-stub 252
	kernel     = "/var/cache/signet-test/vmlinuz"
	sdPcrlock  = "/usr/lib/systemd/systemd-pcrlock"
)

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func lockUKI(t *testing.T, path string) []pcrlock.Variant {
	t.Helper()
	b := readFile(t, path)
	vs, err := pcrlock.LockUKI(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return vs
}

func lockPE(t *testing.T, path string, pcr int) []byte {
	t.Helper()
	b := readFile(t, path)
	f, err := pcrlock.LockPE(bytes.NewReader(b), int64(len(b)), pcr)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return f.Marshal()
}

func openStub(t *testing.T, path string) *uki.File {
	t.Helper()
	b := readFile(t, path)
	f, err := uki.Parse(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return f
}

// buildSignet writes a UKI assembled by package uki (what signet uki build
// writes) on the given stub.
func buildSignet(t *testing.T, path, stub string, parts []uki.Part, profiles [][]uki.Part) {
	t.Helper()
	parts = append([]uki.Part{uki.BytesPart(".linux", readFile(t, kernel))}, parts...)
	plan, err := uki.NewPlan(openStub(t, stub), parts, profiles)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := plan.WriteTo(&buf, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestLockParity262 compares signet's .pcrlock files with systemd-pcrlock
// 262's lock-uki and lock-pe, byte for byte, on UKIs built by ukify 262
// and by signet on the 262 stub, and on PE images of odd length.
func TestLockParity262(t *testing.T) {
	dir := testenv.SidDir(t)
	k := testkeys.Generate(t, testkeys.RSA2048)
	pub, err := keys.MarshalPublicKeyPEM(k.Signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	kt := testkeys.Write(t, testkeys.RSA2048, k.Signer, dir)
	os.WriteFile(filepath.Join(dir, "initrd"), []byte("070701 initrd"), 0o644)
	os.WriteFile(filepath.Join(dir, "osrel"), []byte("ID=signet\nVERSION_ID=1\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "sbat.csv"), []byte("signet,1,Signet,signet,1,https://signet.dev\n"), 0o644)
	common := []string{"build", "--stub=" + sidStub, "--linux=" + kernel, "--initrd=" + filepath.Join(dir, "initrd"), "--os-release=@" + filepath.Join(dir, "osrel")}
	var ukis []string
	for i, extra := range [][]string{
		{"--cmdline=quiet"},
		{"--cmdline=quiet root=PARTUUID=0", "--uname=6.1.0-signet", "--sbat=@" + filepath.Join(dir, "sbat.csv")},
		{"--cmdline=quiet", "--pcr-private-key=" + kt.KeyPath, "--pcr-public-key=" + kt.PubPath, "--pcr-banks=sha256"},
	} {
		out := filepath.Join(dir, "ukify"+string(rune('1'+i))+".efi")
		testenv.Sid(t, "ukify", append(append(append([]string{}, common...), extra...), "--output="+out)...)
		ukis = append(ukis, out)
	}
	sig := filepath.Join(dir, "signet.efi")
	buildSignet(t, sig, sidRoot+sidStub, []uki.Part{
		uki.BytesPart(".osrel", []byte("ID=signet\n")),
		uki.BytesPart(".cmdline", []byte("quiet splash")),
		uki.BytesPart(".initrd", []byte("070701 initrd")),
		uki.BytesPart(".uname", []byte("6.1.0-signet")),
		uki.BytesPart(".pcrpkey", pub),
		uki.BytesPart(".splash", []byte("BM not really a bitmap")),
	}, nil)
	ukis = append(ukis, sig)
	// Secure Boot signing (sbsign) changes neither the records nor parity.
	signed := filepath.Join(dir, "signed.efi")
	testenv.Run(t, "sbsign", "--key", kt.KeyPath, "--cert", kt.CertPath, "--output", signed, sig)
	if a, b := lockUKI(t, sig)[0].File.Marshal(), lockUKI(t, signed)[0].File.Marshal(); !bytes.Equal(a, b) {
		t.Errorf("signing changed the .pcrlock:\n%s\n%s", a, b)
	}
	ukis = append(ukis, signed)
	for _, u := range ukis {
		want := testenv.Sid(t, sdPcrlock, "lock-uki", u)
		vs := lockUKI(t, u)
		if len(vs) != 1 {
			t.Fatalf("%s: %d variants", u, len(vs))
		}
		if got := vs[0].File.Marshal(); !bytes.Equal(got, want) {
			t.Errorf("%s: lock-uki differs\nsystemd: %s\nsignet:  %s", u, want, got)
		}
		if n := len(vs[0].File.Records); n < 9 {
			t.Errorf("%s: only %d records", u, n)
		}
		if want := testenv.Sid(t, sdPcrlock, "lock-pe", u); !bytes.Equal(lockPE(t, u, 4), want) {
			t.Errorf("%s: lock-pe differs", u)
		}
	}
	// A PE whose length is not a multiple of 8, on another PCR.
	odd := filepath.Join(dir, "odd.efi")
	os.WriteFile(odd, append(readFile(t, sidRoot+"/usr/lib/systemd/boot/efi/systemd-bootx64.efi"), "abc"...), 0o644)
	if want := testenv.Sid(t, sdPcrlock, "lock-pe", "--pcr=9", odd); !bytes.Equal(lockPE(t, odd, 9), want) {
		t.Errorf("odd-length PE: lock-pe --pcr=9 differs\nsystemd: %s\nsignet:  %s", want, lockPE(t, odd, 9))
	}
}

// fold replays a variant's PCR 11 records from zero and then the phase
// words, per bank.
func fold(t *testing.T, f *pcrlock.File, bank measure.Bank, phase string) string {
	t.Helper()
	v := make([]byte, bank.Hash.Size())
	for _, r := range f.Records {
		if r.PCR == measure.PCR {
			v = measure.Extend(bank.Hash, v, r.Digest(bank.Name))
		}
	}
	for _, w := range strings.Split(phase, ":") {
		if w != "" {
			h := bank.Hash.New()
			h.Write([]byte(w))
			v = measure.Extend(bank.Hash, v, h.Sum(nil))
		}
	}
	return hex.EncodeToString(v)
}

// checkAgainstInspect folds every variant and compares it with what
// uki.Inspect (signet uki inspect) predicts for that profile, in every
// bank and default phase.
func checkAgainstInspect(t *testing.T, path string, vs []pcrlock.Variant) {
	t.Helper()
	b := readFile(t, path)
	rep, err := uki.Inspect(bytes.NewReader(b), int64(len(b)), measure.DefaultPhases, measure.DefaultBanks)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Profiles) != len(vs) {
		t.Fatalf("%s: %d profiles, %d variants", path, len(rep.Profiles), len(vs))
	}
	for i, p := range rep.Profiles {
		if vs[i].Profile != p.Index {
			t.Fatalf("variant %d is for profile %d, inspect's for %d", i, vs[i].Profile, p.Index)
		}
		for _, br := range p.PCR11 {
			bank, _ := measure.ParseBank(br.Bank)
			for _, ph := range br.Phases {
				phase := ph.Phase
				if phase == ":" {
					phase = ""
				}
				if got := fold(t, vs[i].File, bank, phase); got != ph.Value {
					t.Errorf("%s profile %d %s %s: records fold to %s, inspect predicts %s", path, p.Index, br.Bank, ph.Phase, got, ph.Value)
				}
			}
		}
	}
}

// TestStubAware checks the UKIs where lock-uki is wrong against signet's
// PCR 11 prediction (uki inspect) and shows that systemd-pcrlock gets them
// wrong or refuses them: a v252 stub, an empty section, multiple profiles.
func TestStubAware(t *testing.T) {
	dir := testenv.SidDir(t)
	base := []uki.Part{
		uki.BytesPart(".osrel", []byte("ID=signet\n")),
		uki.BytesPart(".cmdline", []byte("quiet")),
		uki.BytesPart(".initrd", []byte("070701 initrd")),
		uki.BytesPart(".uname", []byte("6.1.0-signet")),
	}

	t.Run("v252", func(t *testing.T) {
		if _, err := os.Stat(debianStub); err != nil {
			t.Fatalf("systemd-boot-efi is not installed (%s): run scripts/install-deps", debianStub)
		}
		u := filepath.Join(dir, "v252.efi")
		buildSignet(t, u, debianStub, base, nil)
		vs := lockUKI(t, u)
		checkAgainstInspect(t, u, vs)
		// The 252 stub measures neither .uname nor .sbat.
		if n := len(vs[0].File.Records); n != 1+2*4 {
			t.Errorf("%d records, want 9 (PCR 4, then .linux .osrel .cmdline .initrd)", n)
		}
		sd := testenv.Sid(t, sdPcrlock, "lock-uki", u)
		if bytes.Equal(sd, vs[0].File.Marshal()) {
			t.Error("systemd-pcrlock lock-uki agrees on a v252 stub: then it is no longer wrong there")
		}
	})

	t.Run("empty", func(t *testing.T) {
		u := filepath.Join(dir, "empty.efi")
		buildSignet(t, u, sidRoot+sidStub, base, nil)
		// Make .cmdline empty in the section table: the stub skips it.
		b := readFile(t, u)
		lfanew := binary.LittleEndian.Uint32(b[0x3c:])
		nsec := int(binary.LittleEndian.Uint16(b[lfanew+6:]))
		opt := int(binary.LittleEndian.Uint16(b[lfanew+20:]))
		tab := int(lfanew) + 24 + opt
		found := false
		for i := range nsec {
			h := b[tab+40*i:]
			if string(bytes.TrimRight(h[:8], "\x00")) == ".cmdline" {
				binary.LittleEndian.PutUint32(h[8:], 0)
				found = true
			}
		}
		if !found {
			t.Fatal("no .cmdline")
		}
		os.WriteFile(u, b, 0o644)
		vs := lockUKI(t, u)
		checkAgainstInspect(t, u, vs)
		sd := testenv.Sid(t, sdPcrlock, "lock-uki", u)
		if len(sd) <= len(vs[0].File.Marshal()) {
			t.Error("systemd-pcrlock lock-uki does not record the empty section: then signet need not differ")
		}
	})

	t.Run("profiles", func(t *testing.T) {
		u := filepath.Join(dir, "profiles.efi")
		buildSignet(t, u, sidRoot+sidStub, append(base, uki.BytesPart(".profile", []byte("ID=main\n"))), [][]uki.Part{
			{uki.BytesPart(".profile", []byte("ID=p1\nTITLE=one\n")), uki.BytesPart(".cmdline", []byte("quiet p1"))},
			{uki.BytesPart(".profile", []byte("ID=p2\n"))},
		})
		vs := lockUKI(t, u)
		if len(vs) != 3 {
			t.Fatalf("%d variants, want 3", len(vs))
		}
		for i, id := range []string{"main", "p1", "p2"} {
			if vs[i].ID != id || vs[i].Profile != i {
				t.Errorf("variant %d: profile %d ID %q, want %d %q", i, vs[i].Profile, vs[i].ID, i, id)
			}
		}
		if !bytes.Equal(vs[0].File.Records[0].Digest("sha256"), vs[2].File.Records[0].Digest("sha256")) {
			t.Error("profiles have different PCR 4 records: it is the whole image's")
		}
		checkAgainstInspect(t, u, vs)
		if out, err := testenv.SidCmd(t, sdPcrlock, "lock-uki", u).CombinedOutput(); err == nil {
			t.Errorf("systemd-pcrlock lock-uki accepted a multi-profile UKI:\n%s", out)
		}
	})
}

// TestMarshalStock parses systemd 262's own component files and writes
// them back byte for byte.
func TestMarshalStock(t *testing.T) {
	paths, _ := filepath.Glob(sidRoot + "/usr/lib/pcrlock.d/*.pcrlock")
	more, _ := filepath.Glob(sidRoot + "/usr/lib/pcrlock.d/*.pcrlock.d/*.pcrlock")
	paths = append(paths, more...)
	if len(paths) < 10 {
		t.Fatalf("only %d stock .pcrlock files in the sid chroot", len(paths))
	}
	for _, p := range paths {
		b := readFile(t, p)
		f, err := pcrlock.Parse(b)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if got := f.Marshal(); !bytes.Equal(got, b) {
			t.Errorf("%s: written back differently\n%s\n%s", p, b, got)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for _, in := range []string{
		``, `[]`, `{}`, `{"records":{}}`, `{"records":[{}]}`,
		`{"records":[{"pcr":24,"digests":[{"hashAlg":"sha1","digest":"0000000000000000000000000000000000000000"}]}]}`,
		`{"records":[{"pcr":4,"digests":[]}]}`,
		`{"records":[{"pcr":4,"digests":[{"hashAlg":"md5","digest":"00"}]}]}`,
		`{"records":[{"pcr":4,"digests":[{"hashAlg":"sha256","digest":"00"}]}]}`,
		`{"records":[{"pcr":4,"nv_index":5,"digests":[{"hashAlg":"sha1","digest":"0000000000000000000000000000000000000000"}]}]}`,
		`{"records":[]} x`,
	} {
		if _, err := pcrlock.Parse([]byte(in)); err == nil {
			t.Errorf("%q: accepted", in)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"records":[{"pcr":11,"digests":[{"hashAlg":"sha256","digest":"51e6b92f405d1f98d96e3de343d61d420ad6923b25de21d766f9298192f14fed"}]}]}`))
	f.Add([]byte(`{"records":[{"nv_index":16777216,"digests":[{"hashAlg":"sha1","digest":"b1b01d5f73f321eb70e76f8a0e241ac0a3fa4a6e"}]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := pcrlock.Parse(b)
		if err != nil {
			return
		}
		// What Parse accepts, Marshal writes and Parse reads back alike.
		q, err := pcrlock.Parse(p.Marshal())
		if err != nil || !bytes.Equal(q.Marshal(), p.Marshal()) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

func FuzzLockUKI(f *testing.F) {
	f.Add([]byte("MZ"))
	// systemd 262's stub: a real PE with .sdmagic and sections to mutate.
	if b, err := os.ReadFile(sidRoot + sidStub); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		pcrlock.LockUKI(bytes.NewReader(b), int64(len(b)))
		pcrlock.LockPE(bytes.NewReader(b), int64(len(b)), 4)
	})
}
