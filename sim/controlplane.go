package sim

import (
	"context"
	"errors"
	"fmt"
	"github.com/edgefleet/edgefleet/clock"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// controlPlane is the simulator's in-process control plane: the real
// server on 127.0.0.1 with its own data dir, TLS and SQLite store, and an
// admin client to drive it. Its clock is the fleet's uplink clock, so a
// time-compressed run compresses both ends of the uplink alike.
type controlPlane struct {
	srv    *controlplane.Server
	reg    *prometheus.Registry // the server's metrics
	store  controlplane.Store   // opened here (noDedup), else nil
	client *cpapi.Client
	url    string
	caPath string
	caPEM  []byte
	token  string // admin API token
	dir    string
}

// startControlPlane starts the control plane; noDedup switches its
// de-duplication of telemetry off (noDedupStore, for tests).
func startControlPlane(dir string, clock clock.Clock, heartbeat time.Duration, noDedup bool, log *slog.Logger) (*controlPlane, error) {
	cfg := controlplane.Config{
		DataDir:           dir,
		Listen:            "127.0.0.1:0",
		Logger:            log,
		Clock:             clock,
		HeartbeatInterval: heartbeat,
		Registry:          prometheus.NewRegistry(),
	}
	cfg.Keys.DevUnseal = true
	c := &controlPlane{reg: cfg.Registry, dir: dir}
	if noDedup {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("sim: control plane: %w", err)
		}
		st, err := controlplane.OpenSQLite(filepath.Join(dir, "controlplane.db"), controlplane.SQLiteOptions{})
		if err != nil {
			return nil, fmt.Errorf("sim: control plane: %w", err)
		}
		c.store = st
		cfg.Store = &noDedupStore{Store: st}
	}
	srv, err := controlplane.New(cfg)
	if err != nil {
		c.closeStore()
		return nil, fmt.Errorf("sim: control plane: %w", err)
	}
	c.srv = srv
	if err := srv.Start(); err != nil {
		c.close()
		return nil, fmt.Errorf("sim: control plane: %w", err)
	}
	if c.token, err = srv.AdminToken(); err != nil {
		c.close()
		return nil, fmt.Errorf("sim: %w", err)
	}
	c.url, c.caPath, c.caPEM = srv.URL(), srv.CAPath(), srv.CAPEM()
	c.client, err = cpapi.NewClient(cpapi.ClientConfig{URL: c.url, Token: c.token, CAPEM: c.caPEM, Timeout: 30 * time.Second})
	if err != nil {
		c.close()
		return nil, fmt.Errorf("sim: control plane client: %w", err)
	}
	return c, nil
}

func (c *controlPlane) close() {
	if c.client != nil {
		c.client.CloseIdleConnections()
	}
	_ = c.srv.Close()
	c.closeStore()
}

func (c *controlPlane) closeStore() {
	if c.store != nil {
		_ = c.store.Close()
	}
}

// enrollmentTokens makes one single-use token per agent.
func (c *controlPlane) enrollmentTokens(ctx context.Context, n int) ([]string, error) {
	var out []string
	for len(out) < n {
		batch := min(n-len(out), 1000)
		toks, err := c.client.CreateEnrollmentTokens(ctx, time.Hour, map[string]string{"sim": "true"}, batch)
		if err != nil {
			return nil, fmt.Errorf("sim: enrollment tokens: %w", err)
		}
		for _, t := range toks {
			out = append(out, t.Token)
		}
	}
	return out, nil
}

// agents returns the registry, by agent name.
func (c *controlPlane) agents(ctx context.Context) (map[string]cpapi.Agent, error) {
	list, err := c.client.ListAgents(ctx, cpapi.AgentFilter{})
	if err != nil {
		return nil, fmt.Errorf("sim: list agents: %w", err)
	}
	out := make(map[string]cpapi.Agent, len(list))
	for _, a := range list {
		out[a.Name] = a
	}
	return out, nil
}

// readings counts the telemetry readings the control plane holds for one
// agent id, over every device and metric.
func (c *controlPlane) readings(ctx context.Context, agentID string, now time.Time) (int64, error) {
	res, err := c.client.QueryTelemetry(ctx, cpapi.TelemetryQuery{
		Agent:  agentID,
		From:   now.Add(-30 * 24 * time.Hour),
		To:     now.Add(30 * time.Minute),
		Bucket: 60 * 24 * time.Hour,
	})
	if err != nil {
		return 0, fmt.Errorf("sim: telemetry of %s: %w", agentID, err)
	}
	var n int64
	for _, s := range res.Series {
		for _, b := range s.Buckets {
			n += b.Count
		}
	}
	return n, nil
}

// errOutage is what uplink requests fail with while the simulated
// control plane is unreachable.
var errOutage = errors.New("sim: control plane unreachable (simulated outage)")

// outage cuts the agents off from the control plane: while it is on,
// every uplink request fails before leaving the agent, as when the
// device's WAN link is down.
type outage struct{ on atomic.Bool }

func (o *outage) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if o.on.Load() {
			return nil, errOutage
		}
		return rt.RoundTrip(r)
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func cpDir(fleetDir string) string { return filepath.Join(fleetDir, "controlplane") }
