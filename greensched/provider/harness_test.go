package provider

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/internal/testutil"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// t0 is the fixtures' "now": the latest observed point is at 12:00.
var t0 = time.Date(2024, 6, 1, 12, 2, 0, 0, time.UTC)

// Failure modes of the fake provider server.
const (
	modeOK        = ""
	modeTimeout   = "timeout"
	mode401       = "401"
	mode403       = "403"
	mode429       = "429"
	mode500       = "500"
	modeGarbage   = "garbage"
	modeTruncated = "truncated"
	modeEmpty     = "empty"
	modeCut       = "cut" // the connection drops halfway through the body
)

// fakeServer serves fixtures at paths, as a provider would, and fails on
// demand.
type fakeServer struct {
	t      *testing.T
	srv    *httptest.Server
	routes map[string]string // path -> fixture file under testdata
	empty  map[string]string // path -> a documented-shape body with no data

	mu       sync.Mutex
	mode     string
	requests []*http.Request
	// handle, when set, answers instead of the fixture (return false to
	// fall through).
	handle func(w http.ResponseWriter, r *http.Request) bool
}

func newFakeServer(t *testing.T, routes, empty map[string]string) *fakeServer {
	f := &fakeServer{t: t, routes: routes, empty: empty}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeServer) setMode(m string) {
	f.mu.Lock()
	f.mode = m
	f.mu.Unlock()
}

// paths returns the paths requested so far, in order.
func (f *fakeServer) paths() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.requests {
		out = append(out, r.URL.Path)
	}
	return out
}

func (f *fakeServer) last(path string) *http.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.requests) - 1; i >= 0; i-- {
		if f.requests[i].URL.Path == path {
			return f.requests[i]
		}
	}
	f.t.Fatalf("no request to %s (got %v)", path, f.requests)
	return nil
}

func (f *fakeServer) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, r.Clone(context.Background()))
	mode, handle := f.mode, f.handle
	f.mu.Unlock()
	if handle != nil && handle(w, r) {
		return
	}
	fixture, ok := f.routes[r.URL.Path]
	if !ok {
		http.Error(w, "no such path", http.StatusNotFound)
		return
	}
	body, err := os.ReadFile(filepath.Join("testdata", fixture))
	if err != nil {
		f.t.Errorf("fixture: %v", err)
		return
	}
	switch mode {
	case modeTimeout:
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
		return
	case mode401:
		http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
		return
	case mode403:
		http.Error(w, `{"error":"forbidden"}`, http.StatusForbidden)
		return
	case mode429:
		http.Error(w, `{"error":"rate limited"}`, http.StatusTooManyRequests)
		return
	case mode500:
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	case modeGarbage:
		body = []byte("<html><body>Bad gateway</body></html>")
	case modeTruncated:
		body = body[:len(body)/2]
	case modeCut:
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	case modeEmpty:
		if e, ok := f.empty[r.URL.Path]; ok {
			if e == "204" {
				w.WriteHeader(http.StatusNoContent)
				return
			}
			body = []byte(e)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
}

// env is a provider under test with its clock, metrics and log.
type env struct {
	p   Provider
	clk *clock.Manual
	m   *Metrics
	log *testutil.SyncBuffer
}

func newEnv(t *testing.T, cfg Config) *env { return newEnvAt(t, cfg, t0) }

// newEnvAt is newEnv with the clock at start.
func newEnvAt(t *testing.T, cfg Config, start time.Time) *env {
	t.Helper()
	m, err := NewMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{clk: clock.NewManual(start), m: m, log: &testutil.SyncBuffer{}}
	e.p, err = New(cfg, Options{Clock: e.clk, Metrics: m, Logger: slog.New(slog.NewTextHandler(e.log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

func (e *env) failures(reason string) float64 {
	return counterValue(e.m.Failures.WithLabelValues(e.p.Name(), reason))
}

func (e *env) fallbacks(reason string) float64 {
	return counterValue(e.m.Fallbacks.WithLabelValues(e.p.Name(), reason))
}

func (e *env) requests(op string) float64 {
	return counterValue(e.m.Requests.WithLabelValues(e.p.Name(), op))
}

// secretFile writes content to a file in a temporary directory.
func secretFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func query(r *http.Request) url.Values { return r.URL.Query() }

func at(hhmm string) time.Time {
	t, err := time.Parse("15:04", hhmm)
	if err != nil {
		panic(err)
	}
	return time.Date(2024, 6, 1, t.Hour(), t.Minute(), 0, 0, time.UTC)
}
