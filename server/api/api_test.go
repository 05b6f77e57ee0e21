package api

import "testing"

// The summary says which items the service keeps failing on, and
// why, grouped by error.
func TestSummaryErrors(t *testing.T) {
	st := &Status{State: StatePending, Items: []ItemStatus{
		{ID: "a", State: StateSigned},
		{ID: "b", State: StatePending, Error: "signing: CKR_DEVICE_ERROR"},
		{ID: "c", State: StatePending, Error: `key "uki" is not configured on this service`},
		{ID: "d", State: StatePending, Error: "signing: CKR_DEVICE_ERROR"},
		{ID: "e", State: StatePending},
	}}
	want := `pending, 1/5 items signed; 2 items failing, retried: signing: CKR_DEVICE_ERROR; 1 item failing, retried: key "uki" is not configured on this service`
	if got := st.Summary(); got != want {
		t.Fatalf("summary:\n got %s\nwant %s", got, want)
	}
}
