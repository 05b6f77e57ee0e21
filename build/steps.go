package build

import (
	"crypto"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"signet.dev/authenticode"
	"signet.dev/image"
	"signet.dev/internal/atomicfile"
	"signet.dev/ipe"
	"signet.dev/keys"
	"signet.dev/manifest"
	"signet.dev/measure"
	"signet.dev/openpgp"
	"signet.dev/pcrlock"
	"signet.dev/request"
	"signet.dev/uki"
	"signet.dev/verity"
)

// image builds a disk image from repart.d definitions with its verity
// signature partitions deferred, then joins their signatures when it has
// them (image.Build then image.Join, as systemd-repart --defer-partitions=
// and --join-signature=).
func (p *pass) image(im *ImageConfig) error {
	defs, err := image.ReadDefinitions(p.c.Path(im.Definitions))
	if err != nil {
		return err
	}
	seed, err := p.seedFor(im.Seed, im.Output)
	if err != nil {
		return err
	}
	opts := image.Options{Seed: seed, Defer: func(t image.PartType) bool { return strings.HasSuffix(t.Class, "-verity-sig") }}
	path := p.out(im.Output)
	rep, err := image.Build(path, defs, opts)
	if err != nil {
		return err
	}
	for _, part := range rep.Partitions {
		if part.RootHash == "" {
			continue
		}
		t, err := image.LookupType(part.Type)
		if err != nil {
			continue
		}
		param := ""
		switch t.Class {
		case "root", "root-verity":
			param = "roothash=" + part.RootHash
		case "usr", "usr-verity":
			param = "usrhash=" + part.RootHash
		}
		if param != "" && !contains(p.rootHashes[im.Output], param) {
			p.rootHashes[im.Output] = append(p.rootHashes[im.Output], param)
		}
	}
	keysUsed := map[string]string{}
	if len(rep.Pending) > 0 {
		if im.VerityKey == "" {
			return fmt.Errorf("definitions have verity signature partitions, but no verity-key is configured")
		}
		keysUsed["verity"] = im.VerityKey
		var payloads []*verity.SignaturePayload
		missing := false
		for _, rh := range rep.Pending {
			tbs, h := verity.PrepareSignature(rh)
			hashName, err := request.HashName(h)
			if err != nil {
				return err
			}
			it := request.Item{ID: fmt.Sprintf("roothashes/%s/%x.roothash", im.Output, rh), Kind: request.KindVerityRootHash,
				Key: im.VerityKey, Hash: hashName, TBS: tbs,
				Verity: &request.VerityContext{Image: im.Output, RootHash: string(tbs)}}
			sig, cert, ok, err := p.sign(it)
			if err != nil {
				return err
			}
			if !ok {
				missing = true
				continue
			}
			pl, err := verity.JoinSignature(cert, rh, sig)
			if err != nil {
				return err
			}
			payloads = append(payloads, pl)
		}
		if missing {
			p.blocked = true
			p.logf("image %s: built; verity signatures requested", im.Output)
			return nil
		}
		if _, err := image.Join(path, defs, p.keys[im.VerityKey].cert, payloads, opts); err != nil {
			return err
		}
	}
	p.logf("image %s: done", im.Output)
	p.outputs = append(p.outputs, Output{File: im.Output, Kind: "image", Keys: keysUsed})
	return nil
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// ipe signs an IPE policy as an attached PKCS#7 without signed attributes
// (package ipe: openssl smime -sign -binary -noattr -nodetach -outform DER).
func (p *pass) ipe(c *IPEConfig) error {
	text, err := os.ReadFile(p.c.Path(c.Policy))
	if err != nil {
		return err
	}
	prep, err := ipe.Prepare(text, p.keys[c.Key].cert)
	if err != nil {
		return fmt.Errorf("%s: %w", c.Policy, err)
	}
	hashName, err := request.HashName(prep.Hash)
	if err != nil {
		return err
	}
	it := request.Item{ID: "ipe/" + c.Output, Kind: request.KindIPEPolicy, Key: c.Key, Hash: hashName, TBS: prep.TBS,
		IPE: &request.IPEContext{File: filepath.Base(c.Policy), Name: prep.Policy.Name, Version: prep.Policy.Version.String()}}
	sig, _, ok, err := p.sign(it)
	if err != nil {
		return err
	}
	if !ok {
		p.blocked = true
		p.logf("ipe %s: signature requested", c.Output)
		return nil
	}
	der, err := prep.Join(sig)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(p.out(c.Output), der, 0o644); err != nil {
		return err
	}
	p.logf("ipe %s: done", c.Output)
	p.outputs = append(p.outputs, Output{File: c.Output, Kind: "ipe", Keys: map[string]string{"signer": c.Key}})
	return nil
}

// openPart opens a file as a UKI section; the caller closes the file.
func openPart(name, path string) (uki.Part, *os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return uki.Part{}, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return uki.Part{}, nil, err
	}
	return uki.Part{Name: name, R: f, Size: fi.Size()}, f, nil
}

// uki assembles a UKI (ukify's layout), signs its PCR 11 policies into
// .pcrsig, and signs the result for Secure Boot.
func (p *pass) uki(u *UKIConfig) error {
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	stubPart, f, err := openPart(".stub", p.c.Path(u.Stub))
	if err != nil {
		return err
	}
	files = append(files, f)
	stub, err := uki.Parse(stubPart.R, stubPart.Size)
	if err != nil {
		return fmt.Errorf("stub %s: %w", u.Stub, err)
	}
	var parts []uki.Part
	for _, s := range []struct{ name, path string }{{".linux", u.Linux}, {".initrd", u.Initrd}, {".osrel", u.OSRelease}} {
		if s.path == "" {
			continue
		}
		part, f, err := openPart(s.name, p.c.Path(s.path))
		if err != nil {
			return err
		}
		files = append(files, f)
		parts = append(parts, part)
	}
	cmdline := u.Cmdline
	if u.VerityImage != "" {
		hashes := p.rootHashes[u.VerityImage]
		if len(hashes) == 0 {
			return fmt.Errorf("image %s has no root or usr verity partition for the command line", u.VerityImage)
		}
		cmdline = strings.TrimSpace(cmdline + " " + strings.Join(hashes, " "))
	}
	if cmdline != "" {
		parts = append(parts, uki.BytesPart(".cmdline", []byte(cmdline)))
	}
	var pcrKey *key
	if u.PCRKey != "" {
		pcrKey = p.keys[u.PCRKey]
		pem, err := keys.MarshalPublicKeyPEM(pcrKey.cert.PublicKey)
		if err != nil {
			return err
		}
		parts = append(parts, uki.BytesPart(".pcrpkey", pem))
	}
	plan, err := uki.NewPlan(stub, parts, nil)
	if err != nil {
		return err
	}
	// The stub's TimeDateStamp is kept, as ukify (>= 258) keeps it, so a
	// UKI of signet build is the one ukify and signet uki build make.
	keysUsed := map[string]string{}
	output := Output{File: u.Output, Kind: "uki", Keys: keysUsed}

	var pcrsigs []*measure.PCRSig
	if pcrKey != nil {
		keysUsed["pcr"] = u.PCRKey
		banks, err := measure.ParseBanks(orDefault(u.PCRBanks, []string{"sha256"}))
		if err != nil {
			return err
		}
		phases, err := measure.ParsePhases(u.Phases)
		if err != nil {
			return err
		}
		for _, b := range banks {
			output.Banks = append(output.Banks, b.Name)
		}
		output.Phases = phases
		contexts, err := plan.Prepare(phases, banks, pcrKey.cert.PublicKey)
		if err != nil {
			return err
		}
		sections, err := measuredSections(stub, parts, plan.Release().Major)
		if err != nil {
			return err
		}
		missing := false
		for _, entries := range contexts {
			var sigs [][]byte
			for _, e := range entries {
				tbs, h := e.TBS()
				hashName, err := request.HashName(h)
				if err != nil {
					return err
				}
				digests, err := sectionDigests(sections, e.Bank.Hash)
				if err != nil {
					return err
				}
				// Named by what is signed: with a policy reference two
				// entries may share a pol.
				it := request.Item{ID: fmt.Sprintf("pcrs/%s/%x", u.Output, tbs), Kind: request.KindPCRPolicy, Key: u.PCRKey, Hash: hashName, TBS: tbs,
					PCR: &request.PCRContext{UKI: u.Output, Bank: e.Bank.Name, Phase: e.Phase, Sections: digests, PCR: hex.EncodeToString(e.PCR), Ref: e.Ref}}
				sig, _, ok, err := p.sign(it)
				if err != nil {
					return err
				}
				if !ok {
					missing = true
				}
				sigs = append(sigs, sig)
			}
			if missing {
				continue
			}
			doc, err := measure.Join(entries, pcrKey.cert.PublicKey, sigs)
			if err != nil {
				return err
			}
			pcrsigs = append(pcrsigs, doc)
		}
		if missing {
			p.blocked = true
			p.logf("uki %s: PCR policy signatures requested", u.Output)
			return nil
		}
	}

	unsigned := p.work(u.Output + ".unsigned")
	w, err := atomicfile.Create(unsigned, 0o644)
	if err != nil {
		return err
	}
	if _, err := plan.WriteTo(w, pcrsigs); err != nil {
		w.Close()
		return err
	}
	if err := w.Commit(); err != nil {
		return err
	}
	// The .pcrlock is a function of the PE minus its signature (PCR 4
	// takes the Authenticode hash), so it is made from the unsigned UKI,
	// in the round that fixes it.
	if u.lockUKI() {
		if err := p.pcrlock(unsigned, PCRLockName(u.Output), u.Output, true); err != nil {
			return err
		}
	}
	if u.SecureBootKey == "" {
		if err := copyFile(p.out(u.Output), unsigned); err != nil {
			return err
		}
		p.logf("uki %s: done (not Secure Boot signed)", u.Output)
		p.outputs = append(p.outputs, output)
		return nil
	}
	keysUsed["secure-boot"] = u.SecureBootKey
	ok, err := p.secureBoot("ukis/"+u.Output, u.Output, unsigned, u.SecureBootKey)
	if err != nil || !ok {
		return err
	}
	p.logf("uki %s: done", u.Output)
	p.outputs = append(p.outputs, output)
	return nil
}

// bootLoader signs a boot loader PE for Secure Boot and writes its
// .pcrlock.
func (p *pass) bootLoader(b *BootLoaderConfig) error {
	in := p.c.Path(b.Input)
	if b.lockPE() {
		if err := p.pcrlock(in, PCRLockName(b.Output), b.Output, false); err != nil {
			return err
		}
	}
	ok, err := p.secureBoot("bootloaders/"+b.Output, b.Output, in, b.SecureBootKey)
	if err != nil || !ok {
		return err
	}
	p.logf("bootloader %s: done", b.Output)
	p.outputs = append(p.outputs, Output{File: b.Output, Kind: "bootloader", Keys: map[string]string{"secure-boot": b.SecureBootKey}})
	return nil
}

// pcrlock writes the systemd-pcrlock component file of the PE at src as
// output name: lock-uki's records for a UKI, lock-pe's (PCR 4) for any
// other PE.
func (p *pass) pcrlock(src, name, of string, isUKI bool) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	data, err := lockFile(f, fi.Size(), isUKI)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := atomicfile.WriteFile(p.out(name), data, 0o644); err != nil {
		return err
	}
	kind := "pcrlock-pe"
	if isUKI {
		kind = "pcrlock-uki"
	}
	p.outputs = append(p.outputs, Output{File: name, Kind: kind, Of: of})
	return nil
}

// lockFile returns the .pcrlock bytes of a UKI (one boot profile) or of
// another PE.
func lockFile(r io.ReaderAt, size int64, isUKI bool) ([]byte, error) {
	if !isUKI {
		lf, err := pcrlock.LockPE(r, size, pcrlock.PEPCR)
		if err != nil {
			return nil, err
		}
		return lf.Marshal(), nil
	}
	vs, err := pcrlock.LockUKI(r, size)
	if err != nil {
		return nil, err
	}
	if len(vs) != 1 {
		return nil, fmt.Errorf("%d profiles: multi-profile UKIs are not supported by signet build", len(vs))
	}
	return vs[0].File.Marshal(), nil
}

// secureBoot signs the PE at src for Secure Boot (Authenticode, item id)
// into output file; ok is false when the signature was requested.
func (p *pass) secureBoot(id, file, src, keyName string) (bool, error) {
	uf, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer uf.Close()
	fi, err := uf.Stat()
	if err != nil {
		return false, err
	}
	pe, err := authenticode.Parse(uf, fi.Size())
	if err != nil {
		return false, err
	}
	prep, err := authenticode.Prepare(pe, p.buildTime())
	if err != nil {
		return false, err
	}
	spc, err := authenticode.SpcIndirectDataContent(prep.Hash, prep.Digest)
	if err != nil {
		return false, err
	}
	hashName, err := request.HashName(prep.Hash)
	if err != nil {
		return false, err
	}
	it := request.Item{ID: id, Kind: request.KindAuthenticode, Key: keyName, Hash: hashName, TBS: prep.SignedAttributes,
		Authenticode: &request.AuthenticodeContext{File: file, Digest: hex.EncodeToString(prep.Digest), SpcIndirectData: spc}}
	sig, cert, ok, err := p.sign(it)
	if err != nil {
		return false, err
	}
	if !ok {
		p.blocked = true
		p.logf("%s: Secure Boot signature requested", file)
		return false, nil
	}
	out, err := atomicfile.Create(p.out(file), 0o644)
	if err != nil {
		return false, err
	}
	defer out.Close()
	if err := authenticode.Join(pe, prep.SignedAttributes, cert, sig, out.File); err != nil {
		return false, err
	}
	return true, out.Commit()
}

func orDefault(v, d []string) []string {
	if len(v) == 0 {
		return d
	}
	return v
}

// measuredSections returns what the stub of this release measures of the
// UKI (stub sections plus added ones), in measurement order.
func measuredSections(stub *uki.File, parts []uki.Part, major int) ([]measure.Input, error) {
	var named []*uki.Named
	for _, s := range stub.Sections {
		named = append(named, &uki.Named{Name: s.Name, R: s.Open(), Size: s.Size()})
	}
	for _, s := range parts {
		named = append(named, &uki.Named{Name: s.Name, R: s.R, Size: s.Size})
	}
	profiles := uki.Profiles(named)
	if len(profiles) != 1 {
		return nil, fmt.Errorf("%d profiles: multi-profile UKIs are not supported by signet build", len(profiles))
	}
	ins, _, err := uki.MeasuredInputs(profiles[0].Sections, major)
	return ins, err
}

// sectionDigests hashes each measured section with the bank's hash, for a
// PCR item's context.
func sectionDigests(ins []measure.Input, h crypto.Hash) ([]request.SectionDigest, error) {
	// The context lists sections in the stub's measurement order.
	ins = append([]measure.Input(nil), ins...)
	sort.SliceStable(ins, func(i, j int) bool { return ins[i].Section < ins[j].Section })
	var out []request.SectionDigest
	for _, in := range ins {
		if in.Size == 0 {
			continue
		}
		d := h.New()
		if _, err := io.Copy(d, io.NewSectionReader(in.R, 0, in.Size)); err != nil {
			return nil, fmt.Errorf("section %s: %w", in.Section, err)
		}
		out = append(out, request.SectionDigest{Name: in.Section.String(), Digest: hex.EncodeToString(d.Sum(nil))})
	}
	return out, nil
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := atomicfile.Create(dst, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		return err
	}
	return out.Commit()
}

// manifest writes SHA256SUMS over every other output and signs it.
func (p *pass) manifest(m *ManifestConfig) error {
	var paths []string
	for _, o := range p.outputs {
		paths = append(paths, p.out(o.File))
	}
	entries, err := manifest.Create(paths, nil)
	if err != nil {
		return err
	}
	sums, err := manifest.Marshal(entries)
	if err != nil {
		return err
	}
	// The context lists the lines as written (sorted by name).
	if entries, err = manifest.Parse(sums); err != nil {
		return err
	}
	var ctx []request.ManifestEntry
	for _, e := range entries {
		ctx = append(ctx, request.ManifestEntry{Name: e.Name, SHA256: hex.EncodeToString(e.Digest[:])})
	}
	type sigOut struct {
		file string
		data []byte
		kind string
		key  string
	}
	var outs []sigOut
	missing := false
	for _, s := range []struct {
		key, suffix string
		kind        request.Kind
	}{{m.OpenPGPKey, ".gpg", request.KindManifestOpenPGP}, {m.PKCS7Key, ".p7s", request.KindManifestPKCS7}} {
		if s.key == "" {
			continue
		}
		cert := p.keys[s.key].cert
		var prep *manifest.Prepared
		if s.kind == request.KindManifestOpenPGP {
			// The configured OpenPGP key's creation time, which its
			// fingerprint binds; the certificate's notBefore without one.
			created := cert.NotBefore
			if t := p.keys[s.key].openpgpCreated; !t.IsZero() {
				created = t
			}
			okey, err := openpgp.NewKey(cert.PublicKey, created)
			if err != nil {
				return err
			}
			prep, err = manifest.PrepareOpenPGP(sums, okey, p.buildTime())
			if err != nil {
				return err
			}
		} else {
			prep, err = manifest.PreparePKCS7(sums, cert)
			if err != nil {
				return err
			}
		}
		hashName, err := request.HashName(prep.Hash)
		if err != nil {
			return err
		}
		it := request.Item{ID: "manifests/" + m.Output + s.suffix, Kind: s.kind, Key: s.key, Hash: hashName, TBS: prep.TBS,
			Manifest: &request.ManifestContext{File: m.Output, Entries: ctx}}
		sig, _, ok, err := p.sign(it)
		if err != nil {
			return err
		}
		if !ok {
			missing = true
			continue
		}
		data, err := prep.Join(sig)
		if err != nil {
			return err
		}
		outs = append(outs, sigOut{m.Output + s.suffix, data, string(s.kind), s.key})
	}
	if missing {
		p.logf("manifest %s: signatures requested", m.Output)
		return nil
	}
	if err := atomicfile.WriteFile(p.out(m.Output), sums, 0o644); err != nil {
		return err
	}
	p.outputs = append(p.outputs, Output{File: m.Output, Kind: "manifest"})
	for _, o := range outs {
		if err := atomicfile.WriteFile(p.out(o.file), o.data, 0o644); err != nil {
			return err
		}
		p.outputs = append(p.outputs, Output{File: o.file, Kind: o.kind, Keys: map[string]string{"signer": o.key}})
	}
	p.logf("manifest %s: done", m.Output)
	return nil
}
