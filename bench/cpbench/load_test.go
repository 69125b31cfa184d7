package cpbench

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cptest"
)

// TestMain lets the test binary double as a standalone control plane for
// the measured load test, so that server memory is measured in a process
// of its own.
func TestMain(m *testing.M) {
	if dir := os.Getenv("EDGEFLEET_LOADSERVER_DIR"); dir != "" {
		os.Exit(runLoadServer(dir))
	}
	os.Exit(m.Run())
}

func runLoadServer(dir string) int {
	srv, err := controlplane.New(controlplane.Config{
		DataDir: dir, Listen: "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		SQLite: controlplane.SQLiteOptions{Synchronous: os.Getenv("EDGEFLEET_LOADSERVER_SYNC")},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := srv.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("URL %s\n", srv.URL())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	<-sig
	if path := os.Getenv("EDGEFLEET_LOADSERVER_HEAPPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
	if err := srv.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func TestRunHeartbeatLoadSmall(t *testing.T) {
	srv, admin := cptest.Start(t, cptest.Config(t.TempDir()))
	tok, err := srv.AdminToken()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rep, err := RunHeartbeatLoad(ctx, LoadOptions{
		URL: srv.URL(), AdminToken: tok, CAPEM: srv.CAPEM(),
		Agents: 20, Interval: 200 * time.Millisecond, Duration: time.Second, Workers: 8, EnrollConcurrency: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Errors != 0 || rep.Heartbeats < 50 || rep.P50MS <= 0 || rep.P99MS < rep.P50MS || rep.MaxMS < rep.P99MS {
		t.Fatalf("report %+v", rep)
	}
	if rep.OnlineAtEnd != 20 || rep.ServerRSSBytes <= 0 || rep.ServerP99UpperMS <= 0 {
		t.Errorf("report %+v", rep)
	}
	agents, err := admin.ListAgents(ctx, cpapi.AgentFilter{Labels: []string{"loadtest=true"}})
	if err != nil || len(agents) != 20 {
		t.Fatalf("%d load agents, %v", len(agents), err)
	}
	// Each agent used one connection: its heartbeats arrived and were
	// attributed to it.
	for _, a := range agents {
		if a.Version != "loadgen" || a.Health == nil {
			t.Errorf("agent %s not updated by heartbeats: %+v", a.ID, a)
		}
	}
}

func TestConnTransportReconnects(t *testing.T) {
	srv, admin := cptest.Start(t, cptest.Config(t.TempDir()))
	ctx := context.Background()
	cert := enrollAgent(t, admin, "rc")
	conf, err := cpapi.ClientTLSConfig(srv.CAPEM(), &cert)
	if err != nil {
		t.Fatal(err)
	}
	conf.ServerName = "127.0.0.1"
	tr := &connTransport{addr: srv.Addr().String(), conf: conf, timeout: 5 * time.Second}
	defer tr.Close()
	c, err := cpapi.NewClient(cpapi.ClientConfig{URL: srv.URL(), Transport: tr})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Heartbeat(ctx, cpapi.Heartbeat{}); err != nil {
		t.Fatal(err)
	}
	first := tr.conn
	if _, err := c.Heartbeat(ctx, cpapi.Heartbeat{}); err != nil {
		t.Fatal(err)
	}
	if tr.conn != first {
		t.Error("connection not reused")
	}
	tr.Close()
	if _, err := c.Heartbeat(ctx, cpapi.Heartbeat{}); err != nil {
		t.Fatalf("after close: %v", err)
	}
	// Error answers are read fully and keep the connection usable.
	var ae *cpapi.APIError
	if _, err = c.UploadTelemetry(ctx, cpapi.TelemetryBatch{}); !errors.As(err, &ae) || ae.Status != 400 {
		t.Fatalf("empty batch: %v, want HTTP 400", err)
	}
	if _, err := c.Heartbeat(ctx, cpapi.Heartbeat{}); err != nil {
		t.Fatal(err)
	}
}

// enrollAgent enrolls an agent named name with the admin client and
// returns its client certificate.
func enrollAgent(t testing.TB, admin *cpapi.Client, name string) tls.Certificate {
	t.Helper()
	ctx := context.Background()
	toks, err := admin.CreateEnrollmentTokens(ctx, time.Hour, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	key, csr, err := cpapi.GenerateAgentKey(name)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := admin.Enroll(ctx, cpapi.EnrollRequest{Token: toks[0].Token, CSR: csr, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := cpapi.AgentCertificate(resp.Certificate, key)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// TestHeartbeatLoadMeasured runs the load generator against a server in a
// separate process. It is skipped unless EDGEFLEET_LOAD_AGENTS is set:
//
//	EDGEFLEET_LOAD_AGENTS=1000 EDGEFLEET_LOAD_INTERVAL=10s EDGEFLEET_LOAD_DURATION=20s \
//	  go test -run TestHeartbeatLoadMeasured -v -timeout 30m ./bench/cpbench/
//
// EDGEFLEET_LOADSERVER_GOMEMLIMIT sets GOMEMLIMIT for the server process
// only; EDGEFLEET_LOADSERVER_SYNC its SQLite synchronous setting.
func TestHeartbeatLoadMeasured(t *testing.T) {
	agents, _ := strconv.Atoi(os.Getenv("EDGEFLEET_LOAD_AGENTS"))
	if agents <= 0 {
		t.Skip("set EDGEFLEET_LOAD_AGENTS (and EDGEFLEET_LOAD_INTERVAL, EDGEFLEET_LOAD_DURATION) to run the measured load test")
	}
	interval, duration := 10*time.Second, 20*time.Second
	if v := os.Getenv("EDGEFLEET_LOAD_INTERVAL"); v != "" {
		interval, _ = time.ParseDuration(v)
	}
	if v := os.Getenv("EDGEFLEET_LOAD_DURATION"); v != "" {
		duration, _ = time.ParseDuration(v)
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "EDGEFLEET_LOADSERVER_DIR="+dir)
	if v := os.Getenv("EDGEFLEET_LOADSERVER_GOMEMLIMIT"); v != "" {
		cmd.Env = append(cmd.Env, "GOMEMLIMIT="+v)
	}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("server did not start: %v", err)
	}
	url := strings.TrimSpace(strings.TrimPrefix(line, "URL "))
	tok, err := os.ReadFile(filepath.Join(dir, controlplane.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(dir, controlplane.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	rep, err := RunHeartbeatLoad(ctx, LoadOptions{
		URL: url, AdminToken: strings.TrimSpace(string(tok)), CAPEM: ca,
		Agents: agents, Interval: interval, Duration: duration,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.MarshalIndent(rep, "", "  ")
	t.Logf("load report:\n%s", b)
	if rep.Errors > 0 {
		t.Errorf("%d heartbeats failed; first: %s", rep.Errors, rep.FirstError)
	}
}

func TestHistogramQuantileUpper(t *testing.T) {
	before := map[float64]float64{0.001: 10, 0.01: 10, 0.1: 10, math.Inf(1): 10}
	after := map[float64]float64{0.001: 60, 0.01: 108, 0.1: 109, math.Inf(1): 110}
	if got := histogramQuantileUpper(before, after, 0.5); got != 0.001 {
		t.Errorf("p50 bound %g", got)
	}
	if got := histogramQuantileUpper(before, after, 0.99); got != 0.1 {
		t.Errorf("p99 bound %g", got)
	}
	if got := histogramQuantileUpper(after, after, 0.99); got != 0 {
		t.Errorf("empty window %g", got)
	}
}
