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
	"slices"
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
	cfg    cpConfig
	// regs are the registries of the instances before a restart.
	regs []*prometheus.Registry
}

// cpConfig is what a control plane is started with.
type cpConfig struct {
	clock     clock.Clock
	heartbeat time.Duration
	noDedup   bool
	log       *slog.Logger
	// fl configures the coordinator (tick, evaluation data); zero keeps
	// the server's defaults.
	fl controlplane.FLConfig
}

// startControlPlane starts the control plane in dir on a free port;
// cfg.noDedup switches its de-duplication of telemetry off (noDedupStore,
// for tests).
func startControlPlane(dir string, cfg cpConfig) (*controlPlane, error) {
	c := &controlPlane{dir: dir, cfg: cfg}
	if err := c.start("127.0.0.1:0"); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *controlPlane) start(listen string) error {
	cfg := controlplane.Config{
		DataDir:           c.dir,
		Listen:            listen,
		Logger:            c.cfg.log,
		Clock:             c.cfg.clock,
		HeartbeatInterval: c.cfg.heartbeat,
		Registry:          prometheus.NewRegistry(),
		FL:                c.cfg.fl,
	}
	cfg.Keys.DevUnseal = true
	c.reg = cfg.Registry
	if c.cfg.noDedup {
		if err := os.MkdirAll(c.dir, 0o700); err != nil {
			return fmt.Errorf("sim: control plane: %w", err)
		}
		st, err := controlplane.OpenSQLite(filepath.Join(c.dir, "controlplane.db"), controlplane.SQLiteOptions{})
		if err != nil {
			return fmt.Errorf("sim: control plane: %w", err)
		}
		c.store = st
		cfg.Store = &noDedupStore{Store: st}
	}
	srv, err := controlplane.New(cfg)
	if err != nil {
		c.closeStore()
		return fmt.Errorf("sim: control plane: %w", err)
	}
	c.srv = srv
	if err := srv.Start(); err != nil {
		c.close()
		return fmt.Errorf("sim: control plane: %w", err)
	}
	if c.token, err = srv.AdminToken(); err != nil {
		c.close()
		return fmt.Errorf("sim: %w", err)
	}
	c.url, c.caPath, c.caPEM = srv.URL(), srv.CAPath(), srv.CAPEM()
	c.client, err = cpapi.NewClient(cpapi.ClientConfig{URL: c.url, Token: c.token, CAPEM: c.caPEM, Timeout: 30 * time.Second})
	if err != nil {
		c.close()
		return fmt.Errorf("sim: control plane client: %w", err)
	}
	return nil
}

// restart stops the control plane abruptly and starts it again on the
// same data dir and address, as after a crash: the agents keep its URL.
func (c *controlPlane) restart() error {
	addr := c.srv.Addr().String()
	c.close()
	c.regs = append(c.regs, c.reg)
	return c.start(addr)
}

// counter sums a counter over every instance of the control plane.
func (c *controlPlane) counter(name, label, value string) (int64, error) {
	var sum int64
	for _, reg := range append(slices.Clone(c.regs), c.reg) {
		n, err := counter(reg, name, label, value)
		if err != nil {
			return 0, err
		}
		sum += n
	}
	return sum, nil
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
