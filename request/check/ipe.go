package check

import (
	"signet.dev/ipe"
	"signet.dev/request"
)

// IPEPolicy checks an IPE item by rebuilding it: the TBS must parse as a
// policy the kernel's parser accepts (package ipe) with the context's name
// and version, and be exactly that policy's canonical text. Comments,
// blank lines and odd spacing are refused: the kernel's parser skips them,
// so they could carry bytes nobody reviewed.
func IPEPolicy(it *request.Item) error {
	p, err := ipe.Parse(it.TBS)
	if err != nil {
		return refuse("not an IPE policy: %v", err)
	}
	if p.Name != it.IPE.Name || p.Version.String() != it.IPE.Version {
		return refuse("IPE policy is %s %s, the context says %s %s", p.Name, p.Version, it.IPE.Name, it.IPE.Version)
	}
	if canon := []byte(p.String()); string(it.TBS) != string(canon) {
		return refuse("tbs is not the canonical text of IPE policy %s %s (no comments, blank lines or extra spaces): %s", p.Name, p.Version, firstDiff(it.TBS, canon))
	}
	return nil
}
