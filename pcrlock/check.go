package pcrlock

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"signet.dev/measure"
)

// MaxAlternatives is how many values per PCR a systemd-pcrlock policy can
// allow: the TPM's PolicyOR takes at most 8 branches, and systemd-pcrlock
// 262 builds one PolicyOR per PCR ("more than 8 alternatives").
const MaxAlternatives = 8

// Component is one systemd-pcrlock component: its id (the file name
// without .pcrlock) and its variants.
type Component struct {
	ID       string
	Variants []*File
}

// Window is a systemd-pcrlock --location= range: predictions are recorded
// at every point between two components that lies within [Start, End] in
// the order of component ids. The default is "760-:940-"; the stock
// make-policy service and the sysupdate hook use "770".
type Window struct{ Start, End string }

// DefaultWindow is systemd-pcrlock's default location range.
var DefaultWindow = Window{"760-", "940-"}

// ParseWindow reads a --location= value: "START:END" or one point.
func ParseWindow(s string) (Window, error) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		b = a
	}
	if a == "" || b == "" || a > b {
		return Window{}, fmt.Errorf("location %q: want START:END with START <= END, or one point", s)
	}
	return Window{a, b}, nil
}

// Count is the number of distinct values one PCR may hold inside the
// window.
type Count struct {
	PCR    int
	Values int
}

// Predict counts, per PCR the components touch, the distinct values (of
// the sha256 bank, the one systemd-pcrlock matches and predicts on) the
// PCR can hold at the location points of w, trying every combination of
// variants as systemd-pcrlock predict does (each PCR on its own).
// Components are ordered by id; every PCR starts from the same unknown
// value, so the counts hold whatever the firmware measured before.
func Predict(comps []Component, w Window) []Count {
	comps = slices.Clone(comps)
	sort.SliceStable(comps, func(i, j int) bool { return comps[i].ID < comps[j].ID })
	pcrs := map[int]bool{}
	for _, c := range comps {
		for _, v := range c.Variants {
			for _, r := range v.Records {
				if r.NVIndex == 0 {
					pcrs[r.PCR] = true
				}
			}
		}
	}
	var out []Count
	for pcr := range 24 {
		if !pcrs[pcr] {
			continue
		}
		cur := map[string]bool{string(make([]byte, 32)): true}
		seen := map[string]bool{}
		record := func(k int) {
			// The point after comps[k-1] and before comps[k].
			if k < len(comps) && comps[k].ID <= w.Start {
				return
			}
			if k > 0 && comps[k-1].ID >= w.End {
				return
			}
			for v := range cur {
				seen[v] = true
			}
		}
		record(0)
		for k, c := range comps {
			next := map[string]bool{}
			for v := range cur {
				for _, vr := range c.Variants {
					x := []byte(v)
					for _, r := range vr.Records {
						if r.NVIndex == 0 && r.PCR == pcr {
							if d := r.Digest("sha256"); d != nil {
								x = measure.Extend(measure.SHA256.Hash, x, d)
							}
						}
					}
					next[string(x)] = true
				}
			}
			if len(c.Variants) > 0 {
				cur = next
			}
			record(k + 1)
		}
		out = append(out, Count{pcr, len(seen)})
	}
	return out
}
