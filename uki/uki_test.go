package uki_test

import (
	"bytes"
	"crypto/rand"
	"debug/pe"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"signet.dev/internal/testenv"
	"signet.dev/internal/testkeys"
	"signet.dev/keys"
	"signet.dev/measure"
	"signet.dev/uki"
)

func TestStubRelease(t *testing.T) {
	rel, err := stub(t).StubRelease()
	if err != nil {
		t.Fatal(err)
	}
	if rel.Major != 252 || !strings.HasPrefix(rel.Version, "252") {
		t.Fatalf("release %+v", rel)
	}
	got, _ := uki.MeasuredSections(252)
	want := []measure.Section{measure.Linux, measure.OSRel, measure.Cmdline, measure.Initrd, measure.Splash, measure.DTB, measure.PCRPKey}
	if len(got) != len(want) {
		t.Fatalf("v252 measures %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("v252 measures %v, want %v", got, want)
		}
	}
	// systemd-boot is not a stub.
	if _, err := openUKI(t, "/usr/lib/systemd/boot/efi/systemd-bootx64.efi").StubRelease(); err == nil {
		t.Fatal("systemd-boot accepted as a stub")
	}
}

// extract dumps a section with objcopy (binutils, not signet's reader).
func extract(t *testing.T, path, name string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "sec")
	testenv.Run(t, "objcopy", "-O", "binary", "--only-section="+name, path, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A UKI built by signet: binutils reads every section back verbatim, the
// layout follows ukify's rules, sbsign/sbverify sign and verify it, the
// output is reproducible, and systemd-measure 252 over the sections the
// v252 stub measures predicts the same PCR 11 that signet signed.
func TestBuildLayoutAndPeers(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	dir := t.TempDir()
	kernel := make([]byte, 3<<20+17)
	rand.Read(kernel)
	path := buildUKI(t, dir, "a.efi", k, kernel, "quiet root=/dev/a\x00")
	again := buildUKI(t, dir, "b.efi", k, kernel, "quiet root=/dev/a\x00")
	a, _ := os.ReadFile(path)
	b, _ := os.ReadFile(again)
	if !bytes.Equal(a, b) {
		t.Fatal("two builds from the same inputs differ")
	}

	if got := extract(t, path, ".linux"); !bytes.Equal(got, kernel) {
		t.Fatal("objcopy reads back a different .linux")
	}
	if got := extract(t, path, ".cmdline"); string(got) != "quiet root=/dev/a\x00" {
		t.Fatalf("objcopy reads back .cmdline %q", got)
	}

	f, err := pe.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	oh := f.OptionalHeader.(*pe.OptionalHeader64)
	var names []string
	for i, s := range f.Sections {
		names = append(names, s.Name)
		if i < 8 {
			continue // the stub's own
		}
		prev := f.Sections[i-1]
		want := (prev.VirtualAddress + prev.VirtualSize + oh.SectionAlignment - 1) &^ (oh.SectionAlignment - 1)
		if s.VirtualAddress != want {
			t.Errorf("%s at %#x, want %#x", s.Name, s.VirtualAddress, want)
		}
		if s.Size%oh.FileAlignment != 0 || s.Offset%oh.FileAlignment != 0 || s.Size < s.VirtualSize {
			t.Errorf("%s raw data %#x+%#x not file-aligned", s.Name, s.Offset, s.Size)
		}
		ch := uint32(pe.IMAGE_SCN_MEM_READ | pe.IMAGE_SCN_CNT_INITIALIZED_DATA)
		if s.Name == ".linux" {
			ch = pe.IMAGE_SCN_MEM_READ | pe.IMAGE_SCN_CNT_CODE
		}
		if s.Characteristics != ch {
			t.Errorf("%s characteristics %#x, want %#x", s.Name, s.Characteristics, ch)
		}
	}
	if got := strings.Join(names[8:], " "); got != ".osrel .cmdline .pcrpkey .linux .initrd .pcrsig" {
		t.Errorf("section order %s", got)
	}
	last := f.Sections[len(f.Sections)-1]
	if oh.SizeOfImage != (last.VirtualAddress+last.VirtualSize+oh.SectionAlignment-1)&^(oh.SectionAlignment-1) {
		t.Errorf("SizeOfImage %#x", oh.SizeOfImage)
	}
	if oh.CheckSum != 0 || f.FileHeader.NumberOfSymbols != 0 {
		t.Errorf("CheckSum %#x, %d symbols", oh.CheckSum, f.FileHeader.NumberOfSymbols)
	}

	// sbsign and sbverify accept the layout.
	signed := filepath.Join(dir, "signed.efi")
	testenv.Run(t, "sbsign", "--key", k.KeyPath, "--cert", k.CertPath, "--output", signed, path)
	testenv.Contains(t, testenv.Run(t, "sbverify", "--cert", k.CertPath, signed), "Signature verification OK")

	// systemd-measure 252 over the sections the stub measures.
	var args []string
	for _, s := range []string{"linux", "osrel", "cmdline", "initrd", "pcrpkey"} {
		p := filepath.Join(dir, s)
		os.WriteFile(p, extract(t, path, "."+s), 0o644)
		args = append(args, "--"+s+"="+p)
	}
	want := testenv.Run(t, "systemd-measure", append([]string{"calculate", "--bank=sha256", "--json=short"}, args...)...)
	rep, err := uki.Inspect(bytes.NewReader(a), int64(len(a)), measure.DefaultPhases, []measure.Bank{measure.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	for i, ph := range rep.Profiles[0].PCR11[0].Phases {
		if !strings.Contains(string(want), `"hash":"`+ph.Value+`"`) {
			t.Errorf("phase %d: signet predicts %s, systemd-measure says %s", i, ph.Value, want)
		}
	}
	for _, e := range rep.Profiles[0].PCRSig {
		if !e.Verifies {
			t.Errorf(".pcrsig entry %s: %s", e.Pol, e.Problem)
		}
	}
	if len(rep.Profiles[0].PCRSig) != 4 {
		t.Errorf("%d .pcrsig entries, want 4", len(rep.Profiles[0].PCRSig))
	}
	srep, err := uki.Inspect(bytes.NewReader(mustRead(t, signed)), int64(len(mustRead(t, signed))), measure.DefaultPhases, []measure.Bank{measure.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	if len(srep.Signatures) != 1 || !srep.Signatures[0].DigestMatch {
		t.Fatalf("Authenticode signatures: %+v", srep.Signatures)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Offline: a UKI built with unsigned policies, the pols signed elsewhere,
// joined: byte-identical to the online build. Joining refuses signatures
// that do not verify and policies of another UKI.
func TestJoinPCRSig(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	other := testkeys.Generate(t, testkeys.RSA3072)
	dir := t.TempDir()
	online := buildUKI(t, dir, "online.efi", k, []byte("kernel"), "quiet")

	pem, _ := keys.MarshalPublicKeyPEM(k.Signer.Public())
	plan, err := uki.NewPlan(stub(t), []uki.Part{
		uki.BytesPart(".linux", []byte("kernel")), uki.BytesPart(".cmdline", []byte("quiet")),
		uki.BytesPart(".osrel", []byte("ID=signet\n")), uki.BytesPart(".initrd", []byte("070701 initrd")),
		uki.BytesPart(".pcrpkey", pem),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := plan.Prepare(measure.DefaultPhases, []measure.Bank{measure.SHA256}, k.Signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	var unsigned bytes.Buffer
	if _, err := plan.WriteTo(&unsigned, []*measure.PCRSig{measure.PolicyDigest(entries[0])}); err != nil {
		t.Fatal(err)
	}
	u, err := uki.Parse(bytes.NewReader(unsigned.Bytes()), int64(unsigned.Len()))
	if err != nil {
		t.Fatal(err)
	}
	sigs := map[string][]byte{}
	for _, e := range entries[0] {
		tbs, h := e.TBS()
		s, _ := keys.Sign(k.Signer, h, tbs)
		sigs[string(tbs)] = s
	}
	doc, err := measure.FillSignatures(measure.PolicyDigest(entries[0]), k.Signer.Public(), sigs)
	if err != nil {
		t.Fatal(err)
	}
	var joined bytes.Buffer
	if _, err := uki.JoinPCRSig(u, 0, doc, &joined); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(joined.Bytes(), mustRead(t, online)) {
		t.Fatal("offline-joined UKI differs from the online build")
	}

	// Signed by another key: refused.
	bad := map[string][]byte{}
	for _, e := range entries[0] {
		s, _ := keys.Sign(other.Signer, measure.Hash, e.Pol)
		bad[string(e.Pol)] = s
	}
	forged := &measure.PCRSig{}
	for _, e := range entries[0] {
		forged.Add("sha256", measure.SigEntry{PCRs: []int{11}, Pol: e.Pol, Sig: bad[string(e.Pol)]})
	}
	if _, err := uki.JoinPCRSig(u, 0, forged, &bytes.Buffer{}); err == nil {
		t.Fatal("signatures by another key accepted")
	}
	// Properly signed policies of a different UKI: refused.
	otherUKI := openUKI(t, buildUKI(t, dir, "other.efi", k, []byte("kernel 2"), "quiet"))
	if _, err := uki.JoinPCRSig(otherUKI, 0, doc, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "does not match any PCR 11 value") {
		t.Fatalf("policies of another UKI: %v", err)
	}
}

// synthStub is the Debian stub with .sdmagic claiming release 258, to
// exercise profile layout and prediction (no v257+ stub is packaged here).
func synthStub(t *testing.T) *uki.File {
	t.Helper()
	b := mustRead(t, stubPath)
	old := []byte("#### LoaderInfo: systemd-stub 252")
	i := bytes.Index(b, old)
	if i < 0 {
		t.Fatal("no .sdmagic in stub")
	}
	end := bytes.IndexByte(b[i:], 0)
	repl := []byte("#### LoaderInfo: systemd-stub 258.10-synthetic ####")
	copy(b[i:i+end], append(repl, make([]byte, end-len(repl))...))
	u, err := uki.Parse(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestProfiles(t *testing.T) {
	k := testkeys.Generate(t, testkeys.RSA2048)
	pem, _ := keys.MarshalPublicKeyPEM(k.Signer.Public())
	base := []uki.Part{
		uki.BytesPart(".linux", []byte("kernel")), uki.BytesPart(".cmdline", []byte("quiet")),
		uki.BytesPart(".pcrpkey", pem), uki.BytesPart(".profile", []byte("ID=main\n")),
	}
	if _, err := uki.NewPlan(stub(t), base, nil); err == nil {
		t.Fatal("profiles accepted on a v252 stub")
	}
	plan, err := uki.NewPlan(synthStub(t), base, [][]uki.Part{{
		uki.BytesPart(".cmdline", []byte("quiet systemd.unit=rescue.target")), uki.BytesPart(".profile", []byte("ID=rescue\n")),
	}})
	if err != nil {
		t.Fatal(err)
	}
	if plan.Contexts() != 2 {
		t.Fatalf("%d contexts", plan.Contexts())
	}
	entries, err := plan.Prepare([]string{"enter-initrd"}, []measure.Bank{measure.SHA256}, k.Signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	var docs []*measure.PCRSig
	for _, es := range entries {
		d, err := measure.Sign(es, k.Signer)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, d)
	}
	var out bytes.Buffer
	if _, err := plan.WriteTo(&out, docs); err != nil {
		t.Fatal(err)
	}
	rep, err := uki.Inspect(bytes.NewReader(out.Bytes()), int64(out.Len()), []string{"enter-initrd"}, []measure.Bank{measure.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Profiles) != 2 || rep.Profiles[0].ID != "main" || rep.Profiles[1].ID != "rescue" {
		t.Fatalf("profiles %+v", rep.Profiles)
	}
	var names []string
	for _, s := range rep.Sections[8:] {
		names = append(names, s.Name)
	}
	if got := strings.Join(names, " "); got != ".cmdline .pcrpkey .linux .profile .pcrsig .profile .cmdline .pcrsig" {
		t.Fatalf("layout %s", got)
	}
	// Profile 1's PCR 11 is the base with its own .cmdline and .profile,
	// measured in canonical order.
	want, err := measure.Calculate([]measure.Input{
		measure.BytesInput(measure.Linux, []byte("kernel")),
		measure.BytesInput(measure.Cmdline, []byte("quiet systemd.unit=rescue.target")),
		measure.BytesInput(measure.PCRPKey, pem),
		measure.BytesInput(measure.Profile, []byte("ID=rescue\n")),
		measure.BytesInput(measure.SBAT, mustSection(t, stubPath, ".sbat")),
	}, []string{"enter-initrd"}, []measure.Bank{measure.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.Profiles[1].PCR11[0].Phases[0].Value; got != hexs(want.Banks[0].Phases[0].PCR) {
		t.Fatalf("profile 1 PCR 11 %s, want %x", got, want.Banks[0].Phases[0].PCR)
	}
	for _, p := range rep.Profiles {
		if len(p.PCRSig) != 1 || !p.PCRSig[0].Verifies {
			t.Fatalf("profile %d .pcrsig %+v", p.Index, p.PCRSig)
		}
	}

	// Offline, profile by profile: unsigned policies, then each profile's
	// signatures joined; the result is the online build.
	var unsigned bytes.Buffer
	if _, err := plan.WriteTo(&unsigned, []*measure.PCRSig{measure.PolicyDigest(entries[0]), measure.PolicyDigest(entries[1])}); err != nil {
		t.Fatal(err)
	}
	cur := unsigned.Bytes()
	for i := range docs {
		u, err := uki.Parse(bytes.NewReader(cur), int64(len(cur)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := uki.JoinPCRSig(u, 1-i, docs[i], &bytes.Buffer{}); err == nil {
			t.Fatalf("profile %d's signatures accepted for profile %d", i, 1-i)
		}
		var next bytes.Buffer
		if _, err := uki.JoinPCRSig(u, i, docs[i], &next); err != nil {
			t.Fatalf("profile %d: %v", i, err)
		}
		cur = next.Bytes()
	}
	if !bytes.Equal(cur, out.Bytes()) {
		t.Fatal("profile-by-profile join differs from the online build")
	}
}

func mustSection(t *testing.T, path, name string) []byte {
	t.Helper()
	s := openUKI(t, path).Section(name)
	b, err := s.Data()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func hexs(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func TestBadInput(t *testing.T) {
	st := stub(t)
	if _, err := uki.NewPlan(st, []uki.Part{uki.BytesPart(".cmdline", []byte("x"))}, nil); err == nil {
		t.Error("UKI without .linux accepted")
	}
	if _, err := uki.NewPlan(st, []uki.Part{uki.BytesPart(".linux", []byte("x")), {Name: ".initrd", R: bytes.NewReader(nil)}}, nil); err == nil {
		t.Error("empty section accepted")
	}
	boot := openUKI(t, "/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
	if _, err := uki.NewPlan(boot, []uki.Part{uki.BytesPart(".linux", []byte("x"))}, nil); err == nil {
		t.Error("systemd-boot accepted as a stub")
	}
	if _, err := uki.Parse(bytes.NewReader([]byte("MZ not a PE")), 11); err == nil {
		t.Error("garbage parsed")
	}
}

func TestConcat(t *testing.T) {
	p := uki.Concat(".initrd", []uki.Part{uki.BytesPart("", []byte("abcde")), uki.BytesPart("", []byte("fg")), uki.BytesPart("", []byte("hijk"))})
	got := make([]byte, p.Size)
	if _, err := p.R.ReadAt(got, 0); err != nil && err.Error() != "EOF" {
		t.Fatal(err)
	}
	if want := "abcde\x00\x00\x00fg\x00\x00hijk"; string(got) != want {
		t.Fatalf("%q", got)
	}
	for off := int64(0); off < p.Size; off++ {
		b := make([]byte, 3)
		n, _ := p.R.ReadAt(b, off)
		if string(b[:n]) != string(got[off:min(off+3, p.Size)]) {
			t.Fatalf("ReadAt(%d) = %q", off, b[:n])
		}
	}
}

func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile(stubPath); err == nil {
		f.Add(b)
	}
	f.Add([]byte("MZ"))
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := uki.Parse(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		u.StubRelease()
		for _, p := range uki.Profiles(namedOf(u)) {
			uki.MeasuredInputs(p.Sections, 258)
		}
		for _, s := range u.Sections {
			if s.Size() > 1<<20 {
				return // fine, but slow to hash in a fuzz loop
			}
			s.Data()
		}
		uki.Inspect(bytes.NewReader(data), int64(len(data)), []string{"enter-initrd"}, []measure.Bank{measure.SHA256})
	})
}

// --sbat merges with the stub's .sbat in place, as ukify 258+ merges: the
// stub's lines, then the given ones, newline-terminated, no NUL. Debian
// 12's stub leaves 256 bytes before .sdmagic, so a given text that does not
// fit is refused rather than overlapping the next section, and without
// --sbat (ukify's default uki line does not fit there) the stub's .sbat
// stays as it is.
func TestSBAT(t *testing.T) {
	st := stub(t)
	own := mustSection(t, stubPath, ".sbat")
	given := []byte("sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\nuki,1\n")
	merged := uki.MergeSBAT(own, given)
	if !bytes.HasPrefix(merged, []byte("sbat,1,")) || !bytes.HasSuffix(merged, []byte("\nuki,1\n")) || bytes.Contains(merged, []byte("\nsbat,")) || bytes.Contains(merged, []byte{0}) {
		t.Fatalf("merged %q", merged)
	}
	build := func(parts ...uki.Part) (*uki.File, error) {
		plan, err := uki.NewPlan(st, append([]uki.Part{uki.BytesPart(".linux", []byte("k"))}, parts...), nil)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if _, err := plan.WriteTo(&out, nil); err != nil {
			return nil, err
		}
		return uki.Parse(bytes.NewReader(out.Bytes()), int64(out.Len()))
	}
	u, err := build(uki.BytesPart(".sbat", given))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := u.Section(".sbat").Data(); !bytes.Equal(got, merged) {
		t.Fatalf(".sbat %q", got)
	}
	if n := strings.Count(strings.Join(sectionNames(u), " "), ".sbat"); n != 1 {
		t.Fatalf("%d .sbat sections", n)
	}
	if _, err := build(uki.BytesPart(".sbat", []byte(uki.DefaultSBAT))); !errors.Is(err, uki.ErrNoRoom) {
		t.Fatalf("oversized .sbat: %v", err)
	}
	u, err = build()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := u.Section(".sbat").Data(); !bytes.Equal(got, own) {
		t.Fatalf("default .sbat on the 252 stub: %q", got)
	}
}

func sectionNames(u *uki.File) []string {
	var n []string
	for _, s := range u.Sections {
		n = append(n, s.Name)
	}
	return n
}

// Sections from files written to a file are copied by the kernel: the
// output equals the one written through a plain io.Writer, and objcopy
// reads the kernel back from it.
func TestKernelCopy(t *testing.T) {
	dir := t.TempDir()
	kernel := make([]byte, 5<<20+17)
	rand.Read(kernel)
	kpath := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kpath, kernel, 0o644); err != nil {
		t.Fatal(err)
	}
	kf, err := os.Open(kpath)
	if err != nil {
		t.Fatal(err)
	}
	defer kf.Close()
	plan, err := uki.NewPlan(stub(t), []uki.Part{
		{Name: ".linux", R: kf, Size: int64(len(kernel))},
		uki.BytesPart(".osrel", []byte("ID=signet\n")),
		{Name: ".initrd", R: io.NewSectionReader(kf, 3, 2<<20), Size: 2 << 20},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "a.efi")
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := plan.WriteTo(out, nil); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := plan.WriteTo(&buf, nil); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if !bytes.Equal(got, buf.Bytes()) {
		t.Fatalf("kernel-copied UKI (%d bytes) differs from the streamed one (%d bytes)", len(got), buf.Len())
	}
	if b := extract(t, path, ".linux"); !bytes.Equal(b, kernel) {
		t.Fatal("objcopy reads back a different .linux")
	}
	if b := extract(t, path, ".initrd"); !bytes.Equal(b, kernel[3:3+2<<20]) {
		t.Fatal("objcopy reads back a different .initrd")
	}
}
