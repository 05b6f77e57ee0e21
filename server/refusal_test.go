package server

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"signet.dev/server/audit"
	"signet.dev/server/client"
	"signet.dev/server/internal/pgtest"
)

// A refused request of several MiB, whose refusal reason is several MiB
// too, is audited as one small entry naming the reason's length and
// digest; the log still verifies and the service still signs. SQLite and
// PostgreSQL.
func TestRefusalAuditBounded(t *testing.T) {
	for _, driver := range []string{"sqlite", "postgres"} {
		t.Run(driver, func(t *testing.T) {
			e := newEnv(t, func(c *Config) {
				c.Limits.MaxItems = 16384
				c.Limits.MaxRequestBytes = 64 << 20
				if driver == "postgres" {
					c.Store = StoreConfig{Driver: "postgres", DSN: pgtest.Start(t).NewDatabase(t)}
				}
			})
			r, _ := newRequest(t, 16384, "verity")
			for i := range r.Items {
				r.Items[i].ID = fmt.Sprintf("%05d/%s", i, strings.Repeat("y", 240))
				r.Items[i].TBS = []byte("not the root hash")
			}
			body, _ := r.Marshal()
			if len(body) < 4<<20 {
				t.Fatalf("request of %d bytes: want several MiB", len(body))
			}
			_, err := e.client("ci").Submit(ctxT(t), body)
			var ce *client.Error
			if !errors.As(err, &ce) || ce.Status != http.StatusUnprocessableEntity || len(ce.Body.Items) != len(r.Items) {
				t.Fatalf("submit: %v, want 422 naming every item", err)
			}
			var rb strings.Builder
			rb.WriteString(ce.Body.Error)
			for _, it := range ce.Body.Items {
				rb.WriteString("; " + it.ID + ": " + it.Reason)
			}
			reason := rb.String()
			if len(reason) < 4<<20 {
				t.Fatalf("refusal reason of %d bytes: want several MiB", len(reason))
			}

			ok, _ := newRequest(t, 1, "verity")
			if _, err := e.client("ci").Sign(ctxT(t), ok, e.vkey); err != nil {
				t.Fatalf("after the refusal: %v", err)
			}
			cp, _, log := exportLog(t, e.client("ci"), e.vkey)
			lines := bytes.Split(bytes.TrimSuffix(log, []byte("\n")), []byte("\n"))
			if len(lines[0]) > 2*audit.MaxString {
				t.Fatalf("refusal entry of %d bytes for a %d-byte reason", len(lines[0]), len(reason))
			}
			ent, err := audit.ParseEntry(lines[0])
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256([]byte(reason))
			if want := fmt.Sprintf(" …[truncated, %d bytes, sha256:%x]", len(reason), sum); ent.Type != audit.TypeRefuse || !strings.HasSuffix(ent.Reason, want) || !strings.HasPrefix(reason, strings.TrimSuffix(ent.Reason, want)) {
				t.Fatalf("refusal entry %.200s…, want the reason's prefix and %q", ent.Reason, want)
			}
			rep, err := audit.VerifyLog(bytes.NewReader(log), cp, audit.VerifyOptions{Approvals: map[string]int{"gated": 2}})
			if err != nil || rep.Types[audit.TypeRefuse] != 1 || rep.Signed != 1 {
				t.Fatalf("log: %v %+v", err, rep)
			}
		})
	}
}
