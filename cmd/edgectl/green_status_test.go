package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const providerTestdata = "../../greensched/provider/testdata"

// TestGreenStatusTrace: a trace served at --at, as a table and as JSON.
func TestGreenStatusTrace(t *testing.T) {
	trace := filepath.Join(providerTestdata, "trace.csv")
	out, errs, code := runEdgectl(t, "green", "status", "--trace", "DE="+trace, "--at", "2024-06-01 11:10",
		"--job-duration", "1h", "--within", "3h", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	got := decodeJSON[greenStatusOutput](t, out)
	if len(got.Zones) != 1 {
		t.Fatalf("%+v", got)
	}
	z := got.Zones[0]
	// now 11:10: the 11:00 point (210.5); from 11:30 the greenest hour
	// ending by 14:10 is 12:30-13:30 (180.5, 176).
	if z.Zone != "DE" || z.Provider != "trace" || z.Current == nil || z.Current.Point.Intensity != 210.5 {
		t.Fatalf("current %+v %q", z.Current, z.CurrentError)
	}
	if b := z.Best; b == nil || b.Start.Format("15:04") != "12:30" || b.End.Format("15:04") != "13:30" || b.Intensity != (180.5+176)/2 {
		t.Fatalf("best %+v %q", z.Best, z.BestError)
	}
	out, errs, code = runEdgectl(t, "green", "status", "--trace", trace, "--at", "2024-06-01 11:10", "--within", "3h")
	if code != 0 || !strings.Contains(out, "210.5") || !strings.Contains(out, "2024-06-01 13:00 to 13:30  176.0") {
		t.Fatalf("exit %d table:\n%s%s", code, out, errs)
	}
}

// TestGreenStatusProviders: a --providers file naming an Electricity Maps
// endpoint (a local server with the documented fixtures); a zone without
// data makes the exit code 1 and names the error.
func TestGreenStatusProviders(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("auth-token") != "tok" {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		name := map[string]string{"/v3/carbon-intensity/history": "history.json", "/v3/carbon-intensity/forecast": "forecast.json"}[r.URL.Path]
		b, err := os.ReadFile(filepath.Join(providerTestdata, "electricitymaps", name))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	}))
	defer srv.Close()
	dir := t.TempDir()
	tok := filepath.Join(dir, "em.token")
	os.WriteFile(tok, []byte("tok\n"), 0o600)
	cfg := filepath.Join(dir, "carbon.yaml")
	os.WriteFile(cfg, []byte("providers:\n  - kind: electricitymaps\n    zone: DE\n    base_url: "+srv.URL+"/v3\n    token_file: "+tok+"\n"), 0o600)
	out, errs, code := runEdgectl(t, "green", "status", "--providers", cfg, "--at", "2024-06-01 12:02", "--within", "4h", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	z := decodeJSON[greenStatusOutput](t, out).Zones[0]
	if z.Provider != "electricitymaps" || z.Current == nil || z.Current.Point.Intensity != 287 || z.Best == nil || z.Best.Intensity != 241 {
		t.Fatalf("%+v current %+v best %+v", z, z.Current, z.Best)
	}

	os.WriteFile(tok, []byte("wrong\n"), 0o600)
	out, errs, code = runEdgectl(t, "green", "status", "--providers", cfg, "--at", "2024-06-01 12:02")
	if code != 1 || !strings.Contains(out, "unauthorized (HTTP 401)") || !strings.Contains(errs, "1 of 1 zones without data") {
		t.Fatalf("exit %d:\n%s%s", code, out, errs)
	}
	_, errs, code = runEdgectl(t, "green", "status")
	if code != 2 || !strings.Contains(errs, "--providers FILE or --trace") {
		t.Fatalf("no provider: exit %d %s", code, errs)
	}
}
