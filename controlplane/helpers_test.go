package controlplane

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/testutil"
)

// newFakeClock is a manual clock started at the real time, so that
// certificates issued by the server are valid for clients verifying with
// the real clock.
func newFakeClock() *clock.Manual {
	return clock.NewManual(time.Now().UTC().Truncate(time.Second))
}

// lockedRand is a deterministic, concurrency-safe io.Reader.
type lockedRand struct {
	mu sync.Mutex
	r  *rand.ChaCha8
}

func newTestRand(seed byte) *lockedRand {
	var s [32]byte
	s[0] = seed
	return &lockedRand{r: rand.NewChaCha8(s)}
}

func (l *lockedRand) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Read(p)
}

type testEnv struct {
	t          *testing.T
	dir        string
	clock      *clock.Manual
	srv        *Server
	adminToken string
	admin      *cpapi.Client
	logs       *testutil.SyncBuffer
	cfg        Config
}

// newTestEnv starts a server on 127.0.0.1:0 in a temporary directory.
func newTestEnv(t *testing.T, mutate func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{t: t, dir: t.TempDir(), clock: newFakeClock(), logs: &testutil.SyncBuffer{}}
	e.cfg = Config{
		DataDir: e.dir,
		Listen:  "127.0.0.1:0",
		Logger:  slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Clock:   e.clock,
		Rand:    newTestRand(1),
		SQLite:  SQLiteOptions{Synchronous: "NORMAL"},
	}
	if mutate != nil {
		mutate(&e.cfg)
	}
	e.start()
	return e
}

func (e *testEnv) start() {
	t := e.t
	t.Helper()
	srv, err := New(e.cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	e.srv = srv
	t.Cleanup(func() { srv.Close() })
	b, err := os.ReadFile(filepath.Join(e.dir, AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	e.adminToken = strings.TrimSpace(string(b))
	e.admin = e.client(e.adminToken)
}

// restart closes the server and starts a new one on the same directory.
func (e *testEnv) restart() {
	e.t.Helper()
	if err := e.srv.Close(); err != nil {
		e.t.Fatalf("Close: %v", err)
	}
	e.start()
}

func (e *testEnv) client(token string) *cpapi.Client {
	e.t.Helper()
	c, err := cpapi.NewClient(cpapi.ClientConfig{URL: e.srv.URL(), Token: token, CAPEM: e.srv.CAPEM(), Timeout: 20 * time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(c.CloseIdleConnections)
	return c
}

func (e *testEnv) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	e.t.Cleanup(cancel)
	return ctx
}

// tokenFor creates an API token with the given role.
func (e *testEnv) tokenFor(role cpapi.Role) string {
	e.t.Helper()
	tok, err := e.admin.CreateAPIToken(e.ctx(), "test "+string(role), role, 0)
	if err != nil {
		e.t.Fatalf("CreateAPIToken(%s): %v", role, err)
	}
	return tok.Token
}

type enrolledAgent struct {
	id     string
	resp   cpapi.EnrollResponse
	cert   tls.Certificate
	client *cpapi.Client
}

// enroll creates a token and enrolls one agent with it.
func (e *testEnv) enroll(name string, labels map[string]string) *enrolledAgent {
	e.t.Helper()
	toks, err := e.admin.CreateEnrollmentTokens(e.ctx(), time.Hour, labels, 1)
	if err != nil {
		e.t.Fatalf("CreateEnrollmentTokens: %v", err)
	}
	return e.enrollWith(toks[0].Token, name)
}

func (e *testEnv) enrollWith(token, name string) *enrolledAgent {
	e.t.Helper()
	key, csr, err := cpapi.GenerateAgentKey(name)
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := e.client("").Enroll(e.ctx(), cpapi.EnrollRequest{Token: token, CSR: csr, Name: name, Version: "1.0.0", OS: "linux", Arch: "arm64"})
	if err != nil {
		e.t.Fatalf("Enroll: %v", err)
	}
	cert, err := cpapi.AgentCertificate(resp.Certificate, key)
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := cpapi.NewClient(cpapi.ClientConfig{URL: e.srv.URL(), CAPEM: []byte(resp.CABundle), Certificate: &cert, Timeout: 20 * time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(c.CloseIdleConnections)
	return &enrolledAgent{id: resp.AgentID, resp: resp, cert: cert, client: c}
}

// rawRequest sends a request with an arbitrary body and returns status and
// decoded error message.
func (e *testEnv) rawRequest(method, path, token string, body []byte, header map[string]string, cert *tls.Certificate) (int, string) {
	e.t.Helper()
	conf, err := cpapi.ClientTLSConfig(e.srv.CAPEM(), cert)
	if err != nil {
		e.t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: conf}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL()+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func wantStatus(t *testing.T, err error, status int) *cpapi.APIError {
	t.Helper()
	var ae *cpapi.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("want HTTP %d, got error %v", status, err)
	}
	if ae.Status != status {
		t.Fatalf("want HTTP %d, got %d: %s", status, ae.Status, ae.Message)
	}
	return ae
}

// seriesBatch is one telemetry batch of size readings over series
// (device, metric) pairs, one reading per series per second from start.
func seriesBatch(size, series int, start time.Time) cpapi.TelemetryBatch {
	b := cpapi.TelemetryBatch{BatchSeq: 1, Epoch: testEpoch, Readings: make([]cpapi.Reading, size)}
	for k := range b.Readings {
		s := k % series
		b.Readings[k] = cpapi.Reading{
			Device: fmt.Sprintf("device-%02d", s/4),
			Metric: [...]string{"temperature", "humidity", "co2", "light"}[s%4],
			TS:     start.Add(time.Duration(k/series) * time.Second),
			Value:  float64(k%1000) / 10,
		}
	}
	return b
}

// testEpoch is the epoch of the test batches.
const testEpoch = "ep-test"
