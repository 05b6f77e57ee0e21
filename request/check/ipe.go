package check

import (
	"signet.dev/ipe"
	"signet.dev/request"
)

// IPEPolicy checks that the TBS is an IPE policy the kernel's parser
// accepts (package ipe) with the context's name and version.
func IPEPolicy(it *request.Item) error {
	p, err := ipe.Parse(it.TBS)
	if err != nil {
		return refuse("not an IPE policy: %v", err)
	}
	if p.Name != it.IPE.Name || p.Version.String() != it.IPE.Version {
		return refuse("IPE policy is %s %s, the context says %s %s", p.Name, p.Version, it.IPE.Name, it.IPE.Version)
	}
	return nil
}
