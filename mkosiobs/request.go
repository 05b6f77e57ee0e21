package mkosiobs

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"signet.dev/authenticode"
	"signet.dev/measure"
	"signet.dev/request"
	"signet.dev/request/check"
	"signet.dev/uki"
)

// Kind is what a member's path says it holds.
type Kind string

// The member kinds of mkosi-obs, by top directory.
const (
	KindPCR        Kind = "pcrs"        // pcrs/<uki>/<hex of the TBS>: a PCR policy
	KindUKI        Kind = "ukis"        // ukis/<uki>: Authenticode signed attributes
	KindKernel     Kind = "kernels"     // kernels/<file>: Authenticode signed attributes
	KindBootloader Kind = "bootloaders" // bootloaders/<ddi>/<path in its ESP>
	KindRootHash   Kind = "roothashes"  // roothashes/<Output>.roothash
	KindAuthVar    Kind = "authvars"    // authvars/{PK,KEK,db}.auth
)

// policyRefs are the TPM2 policy references a 64-byte PCR member may be
// bound to besides one its .pcrs file names: systemd signs initrd and
// NvPCR policies with the reference "initrd".
var policyRefs = []string{"initrd"}

// Refusal is why a member is not signed.
type Refusal struct {
	Member string
	Reason string
}

func (r *Refusal) Error() string { return fmt.Sprintf("member %q refused: %s", r.Member, r.Reason) }

func refuse(m *Member, format string, a ...any) error {
	return &Refusal{Member: m.Name, Reason: fmt.Sprintf(format, a...)}
}

// Classify returns the kind a member's path implies, or a refusal for a
// path mkosi-obs does not write.
func Classify(m *Member) (Kind, error) {
	p := m.Path
	if p == "" || !filepath.IsLocal(p) || path.Clean(p) != p {
		return "", refuse(m, "not a clean relative path")
	}
	parts := strings.Split(p, "/")
	switch Kind(parts[0]) {
	case KindPCR:
		if len(parts) >= 3 {
			return KindPCR, nil
		}
		return "", refuse(m, "want pcrs/<uki>/<hex policy digest>")
	case KindUKI, KindKernel:
		// mkosi stages every *.efi and vmlinu* under its output
		// directory by its path there.
		if len(parts) >= 2 {
			return Kind(parts[0]), nil
		}
		return "", refuse(m, "want %s/<file>", parts[0])
	case KindRootHash, KindAuthVar:
		if len(parts) != 2 {
			return "", refuse(m, "want %s/<file>", parts[0])
		}
		return Kind(parts[0]), nil
	case KindBootloader:
		if len(parts) >= 3 {
			return KindBootloader, nil
		}
		return "", refuse(m, "want bootloaders/<ddi>/<path in its ESP>")
	}
	return "", refuse(m, "path is none of mkosi-obs's (pcrs/, ukis/, kernels/, bootloaders/, roothashes/, authvars/)")
}

// Options say how Request builds items.
type Options struct {
	// OutputDir is mkosi's output directory of the round (OBS's OTHER/):
	// the UKIs, kernels and split artifacts the members were made from.
	OutputDir string
	// Key is the key name every item is signed with (mkosi-obs signs
	// everything with the one project key).
	Key string
	// Certificate is the project certificate (_projectcert.crt), which
	// authvars/ members enroll; needed only for them.
	Certificate *x509.Certificate
	// SourcesDir is the round's sources (OBS's SOURCES/), whose
	// */mkosi.uefi.{KEK,db}/*.crt mkosi appends to KEK and db. Without
	// it, KEK and db must hold the project certificate alone.
	SourcesDir string
	// AuthVarTime is the SOURCE_DATE_EPOCH mkosi ran with, the EFI_TIME
	// of its authvars/ members. Without it the member's time is taken.
	AuthVarTime *time.Time
}

// Request builds the signet request that signs every member of a: each
// item's id is the member's path, its TBS the member's bytes, and its
// context is read from the output directory, so that check.Item rebuilds
// the TBS. A member whose path is unknown, whose bytes are not what its
// path implies, or that disagrees with the output directory is refused
// (a *Refusal naming it); nothing is returned then.
func Request(a *Archive, o Options) (*request.Request, error) {
	if len(a.Members) == 0 {
		return nil, fmt.Errorf("the archive has no regular files to sign")
	}
	if o.Key == "" {
		return nil, fmt.Errorf("no key name given")
	}
	r := &request.Request{Format: request.FormatRequest, Build: filepath.Base(o.OutputDir), Items: []request.Item{}}
	ukis := map[string]*ukiPolicies{}
	var esls []*Member
	ddis := map[string]*espVolume{}
	defer closeESPs(ddis)
	for i := range a.Members {
		m := &a.Members[i]
		k, err := Classify(m)
		if err != nil {
			return nil, err
		}
		if err := request.ValidID(m.Path); err != nil {
			return nil, refuse(m, "name unusable as an item id: %v", err)
		}
		if Companion(m) {
			esls = append(esls, m)
			continue
		}
		it := request.Item{ID: m.Path, Key: o.Key, Hash: "sha256", TBS: m.Data}
		switch k {
		case KindPCR:
			err = pcrItem(m, o.OutputDir, ukis, &it)
		case KindUKI, KindKernel:
			err = authenticodeItem(m, o.OutputDir, &it)
		case KindRootHash:
			err = rootHashItem(m, o.OutputDir, &it)
		case KindBootloader:
			err = bootloaderItem(m, o.OutputDir, ddis, &it)
		case KindAuthVar:
			err = authVarItem(m, o, &it)
		}
		if err != nil {
			return nil, err
		}
		if err := check.Item(&it); err != nil {
			return nil, refuse(m, "%v", err)
		}
		r.Items = append(r.Items, it)
	}
	for _, m := range esls {
		if err := checkESL(m, r); err != nil {
			return nil, err
		}
	}
	if len(r.Items) == 0 {
		return nil, fmt.Errorf("the archive has nothing to sign")
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// local resolves a relative file name of the output directory (Classify
// has made sure member paths are clean and relative).
func local(m *Member, dir, name string) (string, error) {
	if !filepath.IsLocal(name) {
		return "", refuse(m, "%q is not a file of the output directory", name)
	}
	return filepath.Join(dir, name), nil
}

func authenticodeItem(m *Member, dir string, it *request.Item) error {
	_, name, _ := strings.Cut(m.Path, "/")
	p, err := local(m, dir, name)
	if err != nil {
		return err
	}
	f, err := os.Open(p)
	if err != nil {
		return refuse(m, "the output directory has no %s: %v", name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return refuse(m, "%s: %v", name, err)
	}
	return peItem(m, name, f, fi.Size(), it)
}

// peItem makes the Authenticode item of a member staged with pesign -E
// (or systemd-sbsign) from the PE it was made from.
func peItem(m *Member, name string, r io.ReaderAt, size int64, it *request.Item) error {
	pe, err := authenticode.Parse(r, size)
	if err != nil {
		return refuse(m, "%s: %v", name, err)
	}
	d, err := pe.Digest(authenticode.Hash)
	if err != nil {
		return refuse(m, "%s: %v", name, err)
	}
	// The member says who staged it: pesign's attributes commit to
	// pesign's SpcIndirectDataContent, systemd-sbsign's to signet's.
	spc, err := authenticode.SpcIndirectDataContent(authenticode.Hash, d)
	if err != nil {
		return refuse(m, "%s: %v", name, err)
	}
	if a, err := authenticode.ParseSignedAttributes(m.Data); err == nil {
		for _, e := range authenticode.Encodings {
			ps, err := authenticode.SpcIndirectDataContentAs(e, authenticode.Hash, d)
			if err != nil {
				continue
			}
			if want, err := authenticode.SignedAttributesFor(ps, a.SigningTime); err == nil && bytes.Equal(want, m.Data) {
				spc = ps
				break
			}
		}
	}
	it.Kind = request.KindAuthenticode
	it.Authenticode = &request.AuthenticodeContext{File: name, Digest: hex.EncodeToString(d), SpcIndirectData: spc}
	return nil
}

func rootHashItem(m *Member, dir string, it *request.Item) error {
	name := path.Base(m.Path)
	if !strings.HasSuffix(name, ".roothash") {
		return refuse(m, "want roothashes/<Output>.roothash")
	}
	p, err := local(m, dir, name)
	if err != nil {
		return err
	}
	split, err := os.ReadFile(p)
	if err != nil {
		return refuse(m, "the output directory has no split root hash %s: %v", name, err)
	}
	if !bytes.Equal(split, m.Data) {
		return refuse(m, "differs from the output directory's %s", name)
	}
	it.Kind = request.KindVerityRootHash
	it.Verity = &request.VerityContext{Image: strings.TrimSuffix(name, ".roothash"), RootHash: string(m.Data)}
	return nil
}

// ukiPolicies are a UKI's PCR 11 predictions and the policies its .pcrs
// file lists, computed once per UKI.
type ukiPolicies struct {
	sections []request.SectionDigest
	phases   []measure.PhaseValue
	listed   map[string]string // hex pol or tbs -> policy reference ("" if none)
	err      error
}

// pcrsFile is ukify's --policy-digest --json=short output as mkosi saves
// it (<Output>.pcrs): per bank, entries with pol (and, from systemd 262
// on, tbs and a policy reference).
type pcrsEntry struct {
	PCRs []int  `json:"pcrs"`
	Pkfp string `json:"pkfp"`
	Pol  string `json:"pol"`
	TBS  string `json:"tbs"`
	Ref  string `json:"ref"`
}

func loadUKI(m *Member, dir, name string) *ukiPolicies {
	u := &ukiPolicies{listed: map[string]string{}}
	p, err := local(m, dir, name)
	if err != nil {
		u.err = err
		return u
	}
	pcrsName := strings.TrimSuffix(name, ".efi") + ".pcrs"
	raw, err := os.ReadFile(filepath.Join(dir, pcrsName))
	if err != nil {
		u.err = refuse(m, "the output directory has no %s listing the UKI's policies: %v", pcrsName, err)
		return u
	}
	var doc map[string][]pcrsEntry
	if err := json.Unmarshal(raw, &doc); err != nil {
		u.err = refuse(m, "%s: %v", pcrsName, err)
		return u
	}
	for _, entries := range doc {
		for _, e := range entries {
			u.listed[strings.ToLower(e.Pol)] = ""
			if e.TBS != "" {
				u.listed[strings.ToLower(e.TBS)] = e.Ref
			}
		}
	}
	f, err := os.Open(p)
	if err != nil {
		u.err = refuse(m, "the output directory has no UKI %s: %v", name, err)
		return u
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		u.err = refuse(m, "%s: %v", name, err)
		return u
	}
	sha256Bank, _ := measure.ParseBank("sha256")
	rep, err := uki.Inspect(f, fi.Size(), uki.CandidatePhases(), []measure.Bank{sha256Bank})
	if err != nil {
		u.err = refuse(m, "UKI %s: %v", name, err)
		return u
	}
	if len(rep.Profiles) == 0 || len(rep.Profiles[0].PCR11) == 0 {
		u.err = refuse(m, "UKI %s: no PCR 11 prediction", name)
		return u
	}
	// The base profile's measured sections are the first of their names.
	digest := map[string]string{}
	for _, s := range rep.Sections {
		if _, ok := digest[s.Name]; !ok {
			digest[s.Name] = s.SHA256
		}
	}
	for _, d := range rep.Profiles[0].Sections {
		if d.Measured {
			u.sections = append(u.sections, request.SectionDigest{Name: d.Name, Digest: digest[d.Name]})
		}
	}
	// In the order the stub measures them, not the PE's.
	slices.SortFunc(u.sections, func(a, b request.SectionDigest) int {
		x, _ := measure.SectionByName(a.Name)
		y, _ := measure.SectionByName(b.Name)
		return int(x) - int(y)
	})
	for _, ph := range rep.Profiles[0].PCR11[0].Phases {
		v, err := hex.DecodeString(ph.Value)
		if err != nil {
			u.err = refuse(m, "UKI %s: %v", name, err)
			return u
		}
		norm, err := measure.NormalizePhase(ph.Phase)
		if err != nil {
			norm = ""
		}
		u.phases = append(u.phases, measure.PhaseValue{Phase: norm, PCR: v})
	}
	return u
}

func pcrItem(m *Member, dir string, ukis map[string]*ukiPolicies, it *request.Item) error {
	parts := strings.Split(m.Path, "/")
	name, hexName := strings.Join(parts[1:len(parts)-1], "/"), parts[len(parts)-1]
	if got := hex.EncodeToString(m.Data); strings.ToLower(hexName) != got {
		return refuse(m, "holds %d bytes that are not the policy %s its name says", len(m.Data), hexName)
	}
	if len(m.Data) != 32 && len(m.Data) != 64 {
		return refuse(m, "%d bytes: a PCR policy is 32 bytes (pol) or 64 (pol and SHA256 of a policy reference)", len(m.Data))
	}
	u := ukis[name]
	if u == nil {
		u = loadUKI(m, dir, name)
		ukis[name] = u
	}
	if u.err != nil {
		return u.err
	}
	ref, listed := u.listed[hexName]
	if !listed {
		return refuse(m, "the output directory's %s does not list this policy", strings.TrimSuffix(name, ".efi")+".pcrs")
	}
	sha256Bank, _ := measure.ParseBank("sha256")
	refs := []string{""}
	if len(m.Data) == 64 {
		refs = policyRefs
		if ref != "" {
			refs = []string{ref}
		}
	}
	for _, ph := range u.phases {
		pol, err := measure.Pol(sha256Bank, ph.PCR)
		if err != nil {
			return refuse(m, "%v", err)
		}
		for _, ref := range refs {
			if bytes.Equal(measure.PolicyTBS(pol, ref), m.Data) {
				it.Kind = request.KindPCRPolicy
				it.PCR = &request.PCRContext{UKI: name, Bank: "sha256", Phase: ph.Phase, Sections: u.sections, PCR: hex.EncodeToString(ph.PCR), Ref: ref}
				return nil
			}
		}
	}
	return refuse(m, "no boot phase of UKI %s gives this policy (sha256 bank)", name)
}

// SignatureMap indexes a response's signatures by item id (= member path)
// for WriteSignatures.
func SignatureMap(resp *request.Response) map[string][]byte {
	m := map[string][]byte{}
	for _, s := range resp.Items {
		m[s.ID] = s.Signature
	}
	return m
}
