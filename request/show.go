package request

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
)

// Summarize writes a human summary of r: what is to be signed, with which
// key, and the context a person approving it would want to see.
func Summarize(w io.Writer, r *Request) error {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	p("%s  %s\n", r.Format, r.DigestString())
	if r.Build != "" || r.Round != 0 {
		p("build %q, round %d\n", r.Build, r.Round)
	}
	count := map[Kind]int{}
	keyset := map[string]bool{}
	for _, it := range r.Items {
		count[it.Kind]++
		keyset[it.Key] = true
	}
	var parts []string
	for _, k := range Kinds {
		if count[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", count[k], k))
		}
	}
	p("%d items (%s), %d keys\n", len(r.Items), strings.Join(parts, ", "), len(keyset))
	for _, it := range r.Items {
		sum := sha256.Sum256(it.TBS)
		p("\n%s\n  kind %s, key %s, %s over %d bytes (tbs sha256 %s)\n", it.ID, it.Kind, it.Key, it.Hash, len(it.TBS), hex.EncodeToString(sum[:8]))
		switch {
		case it.Authenticode != nil:
			p("  Secure Boot signature of %s, Authenticode digest %s\n", it.Authenticode.File, it.Authenticode.Digest)
		case it.PCR != nil:
			c := it.PCR
			names := make([]string, len(c.Sections))
			for i, s := range c.Sections {
				names[i] = s.Name
			}
			phase := c.Phase
			if phase == "" {
				phase = "(before the initrd)"
			}
			p("  PCR 11 policy of %s, bank %s, phase %s\n  sections %s\n  PCR 11 = %s\n", c.UKI, c.Bank, phase, strings.Join(names, " "), c.PCR)
		case it.Verity != nil:
			p("  dm-verity root hash of %s: %s\n", it.Verity.Image, it.Verity.RootHash)
		case it.Manifest != nil:
			p("  manifest %s, %d files:\n", it.Manifest.File, len(it.Manifest.Entries))
			for _, e := range it.Manifest.Entries {
				p("    %s  %s\n", e.SHA256, e.Name)
			}
		case it.AuthVar != nil:
			c := it.AuthVar
			p("  UEFI authenticated variable %s (%s) for %s, time %s, attributes %#x, owner %s, %d certificates:\n", c.Variable, c.VendorGUID, c.File, c.Time, c.Attributes, c.Owner, len(c.Certificates))
			for _, der := range c.Certificates {
				if cert, err := x509.ParseCertificate(der); err == nil {
					sum := sha256.Sum256(der)
					p("    %s (sha256 %s)\n", cert.Subject, hex.EncodeToString(sum[:]))
				} else {
					p("    (not a certificate: %v)\n", err)
				}
			}
		case it.IPE != nil:
			p("  IPE policy %s, name %s, version %s, in full:\n", it.IPE.File, it.IPE.Name, it.IPE.Version)
			for _, l := range strings.SplitAfter(string(it.TBS), "\n") {
				if l != "" {
					p("    %s", strings.TrimSuffix(l, "\n")+"\n")
				}
			}
		}
	}
	return nil
}
