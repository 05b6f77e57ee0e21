package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"testing"

	"signet.dev/request"
	"signet.dev/server/api"
)

// FuzzSubmit feeds arbitrary bodies to the submission endpoint: the answer
// is never a 5xx or a panic, every 4xx carries a reason, and only bodies the
// request parser accepts are stored.
func FuzzSubmit(f *testing.F) {
	dir := f.TempDir()
	cfg, tokens, _, _ := testConfig(f, dir)
	cfg.Limits.MaxRequestBytes = 1 << 16
	cfg.Limits.Rate, cfg.Limits.Burst = 1e9, 1e9
	s, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	h := s.Handler()
	_, good := newRequest(f, 2, "verity")
	f.Add(good)
	f.Add([]byte(`{"format":"signet.request/v1","items":[]}`))
	f.Add([]byte(`{"format":"signet.request/v1","items":[{"id":"a","kind":"verity-roothash","key":"verity","hash":"sha256","tbs":"AA==","verity":{"image":"x","rootHash":"00"}}]}`))
	f.Add([]byte(`{"format":"signet.request/v1","items":[{"id":"a","kind":"pcr-policy","key":"hsm","hash":"sha256","tbs":"AA==","pcr":{}}]}`))
	f.Add([]byte("\xff\xfe{"))
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest("POST", "/v1/requests", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tokens["ci"])
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch {
		case rec.Code >= 500:
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		case rec.Code == 200 || rec.Code == 201:
			if _, err := request.Parse(body); err != nil {
				t.Fatalf("stored a request the parser refuses: %v", err)
			}
		default:
			var e api.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("status %d without a reason: %q", rec.Code, rec.Body)
			}
		}
	})
}

// FuzzConfig: any configuration text is accepted or refused with an
// error, never a panic, and an accepted one has its defaults filled in.
func FuzzConfig(f *testing.F) {
	data, err := os.ReadFile("../docs/server.example.toml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte("listen = \"127.0.0.1:1\"\naudit_key = \"k\"\n[store]\ndsn = \"x\"\n"))
	f.Add([]byte("[[keys]]\nname = \"a\"\nkinds = [\"nope\"]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data, "/etc/signet")
		if err != nil {
			return
		}
		if c.Batch <= 0 || c.Lease.Duration <= 0 || c.Limits.MaxItems <= 0 || c.Store.Driver == "" {
			t.Fatalf("accepted config without defaults: %+v", c)
		}
	})
}
