package server

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"testing"
	"time"

	"signet.dev/authenticode"
	"signet.dev/openpgp"
	"signet.dev/request"
	"signet.dev/request/check"
)

// vetSeeds are valid items of every kind, for keys of every family, and
// forgeries a fuzzer should start from.
func vetSeeds(t testing.TB) [][]byte {
	one := func(it request.Item) []byte {
		r := &request.Request{Format: request.FormatRequest, Items: []request.Item{it}}
		b, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	d := sha256.Sum256([]byte("image"))
	prep, _ := authenticode.PrepareDigest(d[:], time.Unix(1700000000, 0))
	spc, _ := authenticode.SpcIndirectDataContent(authenticode.Hash, d[:])
	ac := request.Item{ID: "ukis/a.efi", Kind: request.KindAuthenticode, Key: "db", Hash: "sha256", TBS: prep.SignedAttributes,
		Authenticode: &request.AuthenticodeContext{File: "a.efi", Digest: hex.EncodeToString(d[:]), SpcIndirectData: spc}}
	hidden := ac
	hctx := *ac.Authenticode
	hctx.SpcIndirectData = append(append([]byte{0x30, 0x81, byte(len(spc) - 2 + 34)}, spc[2:]...), append([]byte{0x04, 32}, make([]byte, 32)...)...)
	hidden.Authenticode = &hctx

	sd := sha256.Sum256([]byte("kernel"))
	pctx := &request.PCRContext{UKI: "a.efi", Bank: "sha256", Phase: "enter-initrd", Sections: []request.SectionDigest{{Name: ".linux", Digest: hex.EncodeToString(sd[:])}}}
	pcr, _ := check.PCR11(pctx)
	pctx.PCR = hex.EncodeToString(pcr)
	pol, _ := check.PolicyPCR("sha256", pcr)
	pc := request.Item{ID: "pcrs/a.efi/" + hex.EncodeToString(pol), Kind: request.KindPCRPolicy, Key: "pcr", Hash: "sha256", TBS: pol, PCR: pctx}

	policy := "policy_name=p policy_version=0.0.1\nDEFAULT action=DENY\nop=EXECUTE dmverity_signature=TRUE action=ALLOW\n"
	ipe := request.Item{ID: "ipe/p.p7b", Kind: request.KindIPEPolicy, Key: "content", Hash: "sha256", TBS: []byte(policy),
		IPE: &request.IPEContext{File: "p", Name: "p", Version: "0.0.1"}}
	commented := ipe
	commented.TBS = []byte(policy + "# \x01 chosen\n")

	fd := sha256.Sum256([]byte("file"))
	sums := hex.EncodeToString(fd[:]) + " *a.raw\n"
	mctx := &request.ManifestContext{File: "SHA256SUMS", Entries: []request.ManifestEntry{{Name: "a.raw", SHA256: hex.EncodeToString(fd[:])}}}
	p7 := request.Item{ID: "manifests/SHA256SUMS.p7s", Kind: request.KindManifestPKCS7, Key: "content", Hash: "sha256", TBS: []byte(sums), Manifest: mctx}
	tr, _ := (&openpgp.Trailer{PubKeyAlgo: openpgp.PubKeyAlgoRSA, Hash: crypto.SHA256, Created: time.Unix(1700000000, 0), Fingerprint: [20]byte{1}}).Marshal()
	gpg := request.Item{ID: "manifests/SHA256SUMS.gpg", Kind: request.KindManifestOpenPGP, Key: "content", Hash: "sha256", TBS: append([]byte(sums), tr...), Manifest: mctx}

	return [][]byte{one(ac), one(hidden), one(pc), one(ipe), one(commented), one(p7), one(gpg), one(verityItem("roothashes/r.roothash", "verity"))}
}

// FuzzVet runs the submission checks in process, without the store or
// HTTP, so it executes thousands of inputs a second: nothing panics, a
// refusal always says why, and whatever is accepted parses, passes every
// item's kind check and names only keys and kinds the client may use.
func FuzzVet(f *testing.F) {
	dir := f.TempDir()
	cfg, _, _, _ := testConfig(f, dir)
	file := cfg.Keys[0]
	for _, k := range []KeyConfig{
		{Name: "db", PrivateKey: file.PrivateKey, Certificate: file.Certificate, Kinds: []string{"authenticode"}},
		{Name: "pcr", PrivateKey: file.PrivateKey, Certificate: file.Certificate, Kinds: []string{"pcr-policy"}},
		{Name: "content", PrivateKey: file.PrivateKey, Certificate: file.Certificate, Kinds: []string{"ipe-policy", "manifest-pkcs7", "manifest-openpgp"}},
	} {
		cfg.Keys = append(cfg.Keys, k)
	}
	for i := range cfg.Clients {
		if cfg.Clients[i].Name == "ci" {
			cfg.Clients[i].Keys = append(cfg.Clients[i].Keys, "db", "pcr", "content")
		}
	}
	if err := cfg.Check(); err != nil {
		f.Fatal(err)
	}
	s, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	ci := s.byName["ci"]
	seeds := vetSeeds(f)
	for i, b := range seeds {
		_, _, v := s.vet(ci, b, time.Now())
		if (v.code == 0) != (i != 1 && i != 4) { // the hidden payload and the commented policy are refused
			f.Fatalf("seed %d: %+v", i, v)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, _, v := s.vet(ci, body, time.Now())
		if v.code != 0 {
			if v.msg == "" {
				t.Fatalf("refusal %d without a reason", v.code)
			}
			return
		}
		for i := range req.Items {
			it := &req.Items[i]
			if err := check.Item(it); err != nil {
				t.Fatalf("accepted item %q fails its check: %v", it.ID, err)
			}
			if s.allowed("ci", it.Key, it.Kind) != nil {
				t.Fatalf("accepted item %q the client may not have signed", it.ID)
			}
		}
	})
}
