package check

import "fmt"

// firstDiff says where got first differs from the canonical rebuild want,
// for a refusal a reviewer can act on.
func firstDiff(got, want []byte) string {
	n := min(len(got), len(want))
	for i := 0; i < n; i++ {
		if got[i] != want[i] {
			return fmt.Sprintf("byte %d is %#02x, the rebuild has %#02x (%d bytes, the rebuild %d)", i, got[i], want[i], len(got), len(want))
		}
	}
	if len(got) > len(want) {
		return fmt.Sprintf("%d bytes follow the rebuild's %d, from byte %d (%#02x)", len(got)-len(want), len(want), n, got[n])
	}
	return fmt.Sprintf("it ends at byte %d, the rebuild has %d bytes", len(got), len(want))
}
