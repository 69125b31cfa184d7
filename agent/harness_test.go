package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/internal/testutil"
	"github.com/hashicorp/memberlist"
)

// testKey is the gossip key shared by test clusters.
const testKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

// testLogWriter forwards logs to t.Log until the test ends (memberlist's
// goroutines may outlive the agent by a moment).
type testLogWriter struct {
	t    testing.TB
	done atomic.Bool
	mu   sync.Mutex
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.mu.Lock()
		if !w.done.Load() {
			w.t.Log(strings.TrimRight(string(p), "\n"))
		}
		w.mu.Unlock()
	}
	return len(p), nil
}

// testLogger logs warnings and errors through t.Log, or everything with
// EDGEFLEET_TEST_DEBUG=1.
func testLogger(t testing.TB) *slog.Logger {
	if path := os.Getenv("EDGEFLEET_TEST_LOGFILE"); path != "" {
		logFileOnce.Do(func() {
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			logFile = slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))
		})
		return logFile
	}
	level := slog.LevelWarn
	if os.Getenv("EDGEFLEET_TEST_DEBUG") == "1" {
		level = slog.LevelDebug
	} else if !testing.Verbose() {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	w := &testLogWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done.Store(true)
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

var (
	logFileOnce sync.Once
	logFile     *slog.Logger
)

// testConfig is a config for an agent on 127.0.0.1 with fast timers.
func testConfig(t testing.TB, name string) Config {
	cfg := DefaultConfig()
	cfg.NodeName = name
	cfg.DataDir = t.TempDir()
	cfg.Gossip.BindAddr = "127.0.0.1"
	cfg.Gossip.BindPort = 0
	cfg.Gossip.Profile = ProfileTest
	cfg.Gossip.Cluster = "test"
	cfg.Gossip.Key = testKey
	cfg.Gossip.SyncInterval = 500 * time.Millisecond
	cfg.Gossip.SyncTimeout = time.Second
	cfg.Gossip.ReconnectInterval = 200 * time.Millisecond
	cfg.Gossip.JoinRetryInterval = 300 * time.Millisecond
	cfg.API.Addr = "127.0.0.1:0"
	// Cluster tests run many agents: ingestion (its database and an
	// embedded broker each) is enabled only by the tests of it.
	cfg.Ingest.Enabled = false
	return cfg
}

// seededRand is a deterministic io.Reader for Deps.Rand.
func seededRand(name string) io.Reader {
	var seed [32]byte
	copy(seed[:], name)
	return mrand.NewChaCha8(seed)
}

// cluster is a set of agents on loopback sharing a membership.Partition.
type cluster struct {
	t      testing.TB
	part   *membership.Partition
	mu     sync.Mutex
	agents map[string]*Agent
	dirs   map[string]string
	clocks map[string]clock.Clock // Deps.Clock by agent name; none means the real clock
	// clk, when set, is every agent's clock (Deps.Clock).
	clk clock.Clock
	// wrap, when set, wraps each agent's (partitioned) transport; self is
	// its address.
	wrap func(t memberlist.Transport, self string) memberlist.Transport
}

func newCluster(t testing.TB) *cluster {
	return &cluster{t: t, part: membership.NewPartition(), agents: map[string]*Agent{}, dirs: map[string]string{},
		clocks: map[string]clock.Clock{}}
}

// setClock makes the named agent run on clk from its next start on.
func (c *cluster) setClock(name string, clk clock.Clock) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clocks[name] = clk
}

// start starts (or restarts, on the same data dir) the named agent, joining
// the given seeds. mod may adjust its config.
func (c *cluster) start(name string, seeds []string, mod func(*Config)) *Agent {
	t := c.t
	t.Helper()
	cfg := testConfig(t, name)
	c.mu.Lock()
	if dir, ok := c.dirs[name]; ok {
		cfg.DataDir = dir
	} else {
		c.dirs[name] = cfg.DataDir
	}
	clk := c.clocks[name]
	if clk == nil {
		clk = c.clk
	}
	c.mu.Unlock()
	cfg.Gossip.Join = seeds
	if mod != nil {
		mod(&cfg)
	}
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{"127.0.0.1"},
		BindPort:  0,
		Logger:    membership.Logger(slog.New(slog.NewTextHandler(io.Discard, nil)), func(string) {}),
	})
	if err != nil {
		t.Fatal(err)
	}
	self := net.JoinHostPort("127.0.0.1", strconv.Itoa(nt.GetAutoBindPort()))
	tr := c.part.Wrap(nt, self)
	if c.wrap != nil {
		tr = c.wrap(tr, self)
	}
	a, err := New(cfg, Deps{
		Logger:    testLogger(t),
		Rand:      seededRand(name + strconv.Itoa(int(time.Now().UnixNano()%1000))),
		Transport: tr,
		Clock:     clk,
	})
	if err != nil {
		nt.Shutdown()
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	if a.GossipAddr() != self {
		t.Fatalf("advertised %s, transport bound %s", a.GossipAddr(), self)
	}
	t.Cleanup(func() { a.Kill() })
	c.mu.Lock()
	c.agents[name] = a
	c.mu.Unlock()
	return a
}

func (c *cluster) get(name string) *Agent {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.agents[name]
}

func (c *cluster) all() []*Agent {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Agent
	for _, a := range c.agents {
		if a.Running() {
			out = append(out, a)
		}
	}
	return out
}

// startN starts agents a0..a{n-1}, each joining a0.
func (c *cluster) startN(n int) []*Agent {
	var out []*Agent
	for i := 0; i < n; i++ {
		var seeds []string
		if i > 0 {
			seeds = []string{out[0].GossipAddr()}
		}
		out = append(out, c.start(fmt.Sprintf("a%d", i), seeds, nil))
	}
	return out
}

// waitFor polls cond until it holds or timeout passes.
var waitFor = testutil.WaitFor

// allAlive reports whether every agent sees every other as alive.
func allAlive(agents []*Agent) (bool, string) {
	for _, a := range agents {
		alive := 0
		for _, m := range a.Members() {
			if m.State == StateAlive {
				alive++
			}
		}
		if alive != len(agents) {
			return false, fmt.Sprintf("%s sees %d/%d alive: %v", a.Name(), alive, len(agents), a.Members())
		}
	}
	return true, ""
}

// sameState reports whether every agent holds the same replicated state.
func sameState(agents []*Agent) (bool, string) {
	hashes := map[string][]string{}
	for _, a := range agents {
		h, err := a.Store().StateHash(context.Background())
		if err != nil {
			return false, err.Error()
		}
		hashes[h] = append(hashes[h], a.Name())
	}
	return len(hashes) == 1, fmt.Sprintf("%d distinct state hashes: %v", len(hashes), hashes)
}

// metricSum sums the series of a metric on reg.
var metricSum = testutil.MetricSum
