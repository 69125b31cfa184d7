package agent

import (
	"context"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/cptest"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestUplinkWiring: with control_plane set the agent enrolls through
// Deps.UplinkWrapTransport, heartbeats with its health, and uploads what
// it ingests; GET /v1/uplink shows it.
func TestUplinkWiring(t *testing.T) {
	t.Parallel()
	cpCfg := cptest.Config(t.TempDir())
	cpCfg.HeartbeatInterval = 500 * time.Millisecond
	srv, cp := cptest.Start(t, cpCfg)
	toks, err := cp.CreateEnrollmentTokens(t.Context(), time.Hour, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	var requests atomic.Int64
	cfg := testConfig(t, "up")
	withIngest(&cfg)
	cfg.ControlPlane.URL = srv.URL()
	cfg.ControlPlane.CAFile = srv.CAPath()
	cfg.ControlPlane.EnrollmentToken = toks[0].Token
	a, err := New(cfg, Deps{Logger: testLogger(t), Rand: seededRand("up"),
		UplinkWrapTransport: func(rt http.RoundTripper) http.RoundTripper {
			return roundTripFunc(func(r *http.Request) (*http.Response, error) {
				requests.Add(1)
				return rt.RoundTrip(r)
			})
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Kill() })
	api := apiClient{t: t, base: "http://" + a.APIAddr()}
	dev := mqttClient(t, a.MQTTURL(), "m1")
	publish(t, dev, "devices/m1/telemetry", `{"a":1,"b":2}`, `{"a":3,"b":4}`)
	waitFor(t, 20*time.Second, "readings uploaded", func() (bool, string) {
		_, obj, raw := api.do("GET", "/v1/uplink", "")
		return obj["enrolled"] == true && obj["uploaded_readings"] == float64(4), raw
	})
	if requests.Load() < 3 {
		t.Fatalf("%d requests through the wrapped transport", requests.Load())
	}
	id := a.Uplink().Status().AgentID
	waitFor(t, 10*time.Second, "health at the control plane", func() (bool, string) {
		ag, err := cp.GetAgent(t.Context(), id)
		if err != nil {
			return false, err.Error()
		}
		return ag.Health != nil && ag.Health.Checks["ingest_subscribed"] == "ok" && ag.Resources != nil, ag.Name
	})
}

// TestControlPlaneDownNeverBlocksStart: an unreachable control plane
// leaves Start fast and the agent fully working; the uplink reports it.
func TestControlPlaneDownNeverBlocksStart(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A listener that never answers stands for the unreachable server
	// (kept open, so no other test can get the port).
	defer l.Close()
	go holdConns(l)
	addr := l.Addr().String()
	_, caPEM := selfSigned(t)
	caFile := t.TempDir() + "/ca.pem"
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t)
	begin := time.Now()
	a := c.start("offline", nil, func(cfg *Config) {
		withIngest(cfg)
		cfg.ControlPlane.URL = "https://" + addr
		cfg.ControlPlane.CAFile = caFile
		cfg.ControlPlane.EnrollmentToken = "tok"
		cfg.ControlPlane.BackoffMin = 50 * time.Millisecond
		cfg.ControlPlane.RequestTimeout = 300 * time.Millisecond
	})
	if d := time.Since(begin); d > 5*time.Second {
		t.Fatalf("Start took %v", d)
	}
	api := apiClient{t: t, base: "http://" + a.APIAddr()}
	api.expect("PUT", "/v1/state/notes/k", "v", 200)
	dev := mqttClient(t, a.MQTTURL(), "o1")
	publish(t, dev, "devices/o1/telemetry", `{"x":1}`)
	waitFor(t, 10*time.Second, "device registered while offline", func() (bool, string) {
		code, _, raw := api.do("GET", "/v1/devices/o1", "")
		return code == 200, raw
	})
	waitFor(t, 10*time.Second, "uplink reports its failure", func() (bool, string) {
		st := a.Uplink().Status()
		return st.Enabled && !st.Enrolled && st.LastError != "", st.LastError
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}
