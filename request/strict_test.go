package request

import (
	"errors"
	"strings"
	"testing"
)

// A document that another JSON reader could read differently is refused.
func TestParseRefusesAmbiguousJSON(t *testing.T) {
	for _, in := range []string{
		`{"format":"signet.request/v1","items":[],"items":[]}`,
		`{"format":"signet.request/v1","Items":[]}`,
		`{"format":"signet.request/v1","items":[{"id":"a","ID":"b","kind":"pcr-policy","key":"k","hash":"sha256","tbs":"AA=="}]}`,
		`{"format":"signet.request/v1","items":[]} {}`,
	} {
		_, err := Parse([]byte(in))
		if err == nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err %v, want ErrInvalid", in, err)
		}
	}
	_, err := ParseResponse([]byte(`{"format":"signet.response/v1","request":"x","Request":"y","items":[]}`))
	if err == nil || !strings.Contains(err.Error(), "only by case") {
		t.Errorf("response with a case variant: err %v", err)
	}
}
