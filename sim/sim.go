// Package sim runs a whole edgefleet fleet inside one process: N agents, each
// with its own data directory, SQLite store and memberlist ports on
// 127.0.0.1, built through the same agent code paths as production. Network
// partitions are made by agent.Partition, a wrapper around memberlist's
// transport that drops traffic between groups.
//
// Run plays the standard scenario and measures it:
//
//  1. start the agents and wait until every agent sees every other alive;
//  2. writes on every agent (LWW keys, some contended, set adds, counters);
//  3. partition into two halves for Options.Partition, with writes on both sides;
//  4. heal, and time how long each agent takes to hold the final state
//     (the merge of every write, computed independently by an oracle store);
//  5. kill one agent abruptly, write elsewhere, restart it on the same data
//     directory, and time its catch-up;
//  6. measure idle gossip traffic per agent.
package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/crdt"
)

// Options configure a simulated run. Zero values take the defaults noted.
type Options struct {
	Agents         int           // number of agents; default 10
	Partition      time.Duration // how long the fleet stays split in two; default 10s; 0 with NoPartition skips it
	NoPartition    bool          // skip the partition phase
	WritesPerAgent int           // writes per agent in each write phase; default 20
	Idle           time.Duration // window over which idle gossip is measured; default 10s
	Profile        string        // memberlist profile of the agents; default "lan"
	DataDir        string        // parent of the agents' data dirs; default a temporary dir removed afterwards
	Seed           uint64        // seed of the workload; default 1
	Timeout        time.Duration // bound on each waiting phase; default 60s
	Logger         *slog.Logger  // progress; nil discards
	AgentLogger    *slog.Logger  // the agents' own logs; nil discards
}

func (o *Options) setDefaults() error {
	if o.Agents == 0 {
		o.Agents = 10
	}
	if o.Agents < 2 {
		return fmt.Errorf("sim: need at least 2 agents, got %d", o.Agents)
	}
	if o.Agents > 500 {
		return fmt.Errorf("sim: %d agents is more than one process should run (max 500)", o.Agents)
	}
	if o.Partition < 0 || o.Idle < 0 || o.Timeout < 0 || o.WritesPerAgent < 0 {
		return errors.New("sim: durations and counts must not be negative")
	}
	if o.Partition == 0 && !o.NoPartition {
		o.Partition = 10 * time.Second
	}
	if o.WritesPerAgent == 0 {
		o.WritesPerAgent = 20
	}
	if o.Idle == 0 {
		o.Idle = 10 * time.Second
	}
	if o.Profile == "" {
		o.Profile = "lan"
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.AgentLogger == nil {
		o.AgentLogger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// Percentiles summarises a set of durations in seconds.
type Percentiles struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Report is what a run measured. Its JSON form is part of the user-facing
// contract of `edgectl sim --json`.
type Report struct {
	Agents                       int         `json:"agents"`
	Converged                    bool        `json:"converged"`
	ConvergenceSeconds           Percentiles `json:"convergence_seconds"`
	RejoinSeconds                Percentiles `json:"rejoin_seconds"`
	DistinctStateHashes          int         `json:"distinct_state_hashes"`
	StateHash                    string      `json:"state_hash"`
	GossipBytesPerAgentPerSecond float64     `json:"gossip_bytes_per_agent_per_second"`
	PartitionSeconds             float64     `json:"partition_seconds"`
	Writes                       int         `json:"writes"`
	RestartedAgent               string      `json:"restarted_agent"`
	RestartCatchUpSeconds        float64     `json:"restart_catch_up_seconds"`
	RestartRejoinSeconds         float64     `json:"restart_rejoin_seconds"`
	FormationSeconds             float64     `json:"formation_seconds"`
	TotalSeconds                 float64     `json:"total_seconds"`
}

// node is one simulated agent and what is needed to restart it.
type node struct {
	idx  int
	name string
	dir  string
	addr string // gossip address, stable across restarts
	ag   *agent.Agent
}

// Fleet is a set of running simulated agents on one partitionable network.
type Fleet struct {
	opts  Options
	part  *agent.Partition
	nodes []*node
	dir   string
	owned bool // dir is temporary and removed on Close
}

// Collections the workload writes, with their types.
const (
	collKV      = "sim.kv"
	collTags    = "sim.tags"
	collCounter = "sim.counter"
)

// StartFleet starts o.Agents agents and waits until they form one cluster.
func StartFleet(ctx context.Context, o Options) (*Fleet, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	f := &Fleet{opts: o, part: agent.NewPartition(), dir: o.DataDir}
	if f.dir == "" {
		d, err := os.MkdirTemp("", "edgefleet-sim-")
		if err != nil {
			return nil, fmt.Errorf("sim: temp dir: %w", err)
		}
		f.dir, f.owned = d, true
	}
	for i := 0; i < o.Agents; i++ {
		n := &node{idx: i, name: fmt.Sprintf("agent-%03d", i), dir: filepath.Join(f.dir, fmt.Sprintf("agent-%03d", i))}
		f.nodes = append(f.nodes, n)
		if err := f.start(ctx, n); err != nil {
			f.Close()
			return nil, err
		}
	}
	if err := f.waitMembers(ctx, o.Timeout); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// start brings up (or restarts) one agent. The first start binds a free
// port; restarts reuse it so the node keeps its address, as a real device does.
func (f *Fleet) start(ctx context.Context, n *node) error {
	cfg := agent.DefaultConfig()
	cfg.NodeName = n.name
	cfg.DataDir = n.dir
	cfg.API.Addr = ""
	cfg.Gossip.Profile = f.opts.Profile
	cfg.Gossip.BindAddr = "127.0.0.1"
	cfg.Gossip.Key = simGossipKey
	cfg.Gossip.Cluster = "edgefleet-sim"
	cfg.Labels = map[string]string{"sim": "true", "group": strconv.Itoa(n.idx % 2)}
	cfg.State.Collections = map[string]crdt.Type{collKV: crdt.TypeLWW, collTags: crdt.TypeORSet, collCounter: crdt.TypeCounter}
	if n.idx > 0 {
		cfg.Gossip.Join = f.seeds(n.idx)
	}
	if n.addr != "" {
		// A restart binds the port the agent had, as a real device keeps its address.
		_, port, err := splitHostPort(n.addr)
		if err != nil {
			return fmt.Errorf("sim: %s address %q: %w", n.name, n.addr, err)
		}
		cfg.Gossip.BindPort = port
	} else {
		cfg.Gossip.BindPort = 0
	}
	ag, err := agent.New(cfg, agent.Deps{
		Logger: f.opts.AgentLogger.With("agent", n.name),
		WrapTransport: func(t memberlist.Transport, addr string) memberlist.Transport {
			n.addr = addr
			return f.part.Wrap(t, addr)
		},
	})
	if err != nil {
		return fmt.Errorf("sim: %s: %w", n.name, err)
	}
	if err := ag.Start(ctx); err != nil {
		return fmt.Errorf("sim: start %s: %w", n.name, err)
	}
	n.ag = ag
	return nil
}

// seeds are up to three earlier agents, as an operator would list a few
// well-known devices.
func (f *Fleet) seeds(idx int) []string {
	var s []string
	for i := 0; i < idx && len(s) < 3; i++ {
		s = append(s, f.nodes[i].addr)
	}
	return s
}

// Close stops every agent gracefully and removes a temporary data dir.
func (f *Fleet) Close() {
	var wg sync.WaitGroup
	for _, n := range f.nodes {
		if n.ag == nil {
			continue
		}
		wg.Add(1)
		go func(n *node) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = n.ag.Stop(ctx)
		}(n)
	}
	wg.Wait()
	if f.owned {
		_ = os.RemoveAll(f.dir)
	}
}

// Agents returns the running agents in order.
func (f *Fleet) Agents() []*agent.Agent {
	out := make([]*agent.Agent, 0, len(f.nodes))
	for _, n := range f.nodes {
		out = append(out, n.ag)
	}
	return out
}

// Partition returns the fleet's network, to split and heal.
func (f *Fleet) Partition() *agent.Partition { return f.part }

// waitMembers waits until every agent sees every agent alive.
func (f *Fleet) waitMembers(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		all := true
		for _, n := range f.nodes {
			if aliveCount(n.ag) != len(f.nodes) {
				all = false
				break
			}
		}
		if all {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sim: fleet did not form one cluster within %s", timeout)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

func aliveCount(a *agent.Agent) int {
	c := 0
	for _, m := range a.Members() {
		if m.State == "alive" {
			c++
		}
	}
	return c
}

// Run plays the whole scenario described in the package comment.
func Run(ctx context.Context, o Options) (Report, error) {
	if err := o.setDefaults(); err != nil {
		return Report{}, err
	}
	start := time.Now()
	log := o.Logger
	rep := Report{Agents: o.Agents}
	log.Info("starting fleet", "agents", o.Agents, "profile", o.Profile)
	f, err := StartFleet(ctx, o)
	if err != nil {
		return rep, err
	}
	defer f.Close()
	rep.FormationSeconds = time.Since(start).Seconds()
	log.Info("fleet formed", "seconds", round(rep.FormationSeconds))

	rng := rand.New(rand.NewPCG(o.Seed, 0x5eed))
	w, err := f.writeRound(ctx, rng, "a", f.nodes)
	rep.Writes += w
	if err != nil {
		return rep, err
	}
	if !o.NoPartition {
		half := len(f.nodes) / 2
		groupA, groupB := f.nodes[:half], f.nodes[half:]
		f.part.Split(addrs(groupA), addrs(groupB))
		log.Info("partitioned", "sides", fmt.Sprintf("%d/%d", len(groupA), len(groupB)), "for", o.Partition)
		partStart := time.Now()
		wa, err := f.writeRound(ctx, rng, "b", groupA)
		rep.Writes += wa
		if err != nil {
			return rep, err
		}
		wb, err := f.writeRound(ctx, rng, "b", groupB)
		rep.Writes += wb
		if err != nil {
			return rep, err
		}
		if err := sleep(ctx, o.Partition-time.Since(partStart)); err != nil {
			return rep, err
		}
		rep.PartitionSeconds = time.Since(partStart).Seconds()
	}

	// No more writes until convergence: the final state is the merge of
	// every agent's ops, computed by a separate oracle store.
	want, err := f.oracleHash(ctx)
	if err != nil {
		return rep, err
	}
	healed := time.Now()
	f.part.Heal()
	log.Info("healed; waiting for convergence")
	conv, err := f.waitConverged(ctx, want, healed, o.Timeout)
	if err != nil {
		return rep, err
	}
	rep.ConvergenceSeconds = percentiles(conv.both)
	rep.RejoinSeconds = percentiles(conv.members)
	log.Info("converged after heal", "p50", round(rep.ConvergenceSeconds.P50), "p99", round(rep.ConvergenceSeconds.P99))

	// Kill one agent abruptly, write while it is down, restart it.
	victim := f.nodes[len(f.nodes)/2]
	rep.RestartedAgent = victim.name
	log.Info("killing agent", "agent", victim.name)
	if err := victim.ag.Kill(); err != nil {
		return rep, fmt.Errorf("sim: kill %s: %w", victim.name, err)
	}
	victim.ag = nil
	others := make([]*node, 0, len(f.nodes)-1)
	for _, n := range f.nodes {
		if n != victim {
			others = append(others, n)
		}
	}
	w, err = f.writeRound(ctx, rng, "c", others[:min(len(others), 5)])
	rep.Writes += w
	if err != nil {
		return rep, err
	}
	if err := f.start(ctx, victim); err != nil {
		return rep, err
	}
	restarted := time.Now()
	want, err = f.oracleHash(ctx)
	if err != nil {
		return rep, err
	}
	conv, err = f.waitConverged(ctx, want, restarted, o.Timeout)
	if err != nil {
		return rep, err
	}
	rep.RestartCatchUpSeconds = round(conv.state[victim.idx])
	rep.RestartRejoinSeconds = percentiles(conv.members).Max
	log.Info("restarted agent caught up", "seconds", round(rep.RestartCatchUpSeconds))

	hashes, err := f.hashes(ctx)
	if err != nil {
		return rep, err
	}
	distinct := map[string]bool{}
	for _, h := range hashes {
		distinct[h] = true
	}
	rep.DistinctStateHashes = len(distinct)
	rep.Converged = len(distinct) == 1 && hashes[0] == want
	rep.StateHash = want

	log.Info("measuring idle gossip", "window", o.Idle)
	rep.GossipBytesPerAgentPerSecond, err = f.idleGossip(ctx, o.Idle)
	if err != nil {
		return rep, err
	}
	rep.TotalSeconds = time.Since(start).Seconds()
	return rep, nil
}

// writeRound makes WritesPerAgent writes on each of nodes, in parallel per
// agent. A third of the LWW keys are shared by all agents, so concurrent
// writes to the same key happen on both sides of a partition.
func (f *Fleet) writeRound(ctx context.Context, rng *rand.Rand, phase string, nodes []*node) (int, error) {
	type job struct {
		n    *node
		keys []int
	}
	jobs := make([]job, len(nodes))
	for i, n := range nodes {
		keys := make([]int, f.opts.WritesPerAgent)
		for k := range keys {
			keys[k] = rng.IntN(1 << 20)
		}
		jobs[i] = job{n, keys}
	}
	errs := make(chan error, len(jobs))
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Add(1)
		go func(j job) {
			defer wg.Done()
			for k, r := range j.keys {
				var err error
				switch k % 3 {
				case 0:
					err = j.n.ag.Put(ctx, collKV, fmt.Sprintf("shared-%d", r%16), []byte(fmt.Sprintf(`{"by":%q,"phase":%q,"n":%d}`, j.n.name, phase, k)))
				case 1:
					err = j.n.ag.SetAdd(ctx, collTags, fmt.Sprintf("tag-%d", r%64))
				default:
					err = j.n.ag.CounterAdd(ctx, collCounter, fmt.Sprintf("c-%d", r%8), int64(r%5)-1)
				}
				if err != nil {
					errs <- fmt.Errorf("sim: write on %s: %w", j.n.name, err)
					return
				}
			}
		}(j)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return len(nodes) * f.opts.WritesPerAgent, nil
}

// oracleHash merges every running agent's full op history into a fresh store
// and returns its state hash: the state every agent must reach.
func (f *Fleet) oracleHash(ctx context.Context) (string, error) {
	dir, err := os.MkdirTemp(f.dir, "oracle-")
	if err != nil {
		return "", fmt.Errorf("sim: oracle dir: %w", err)
	}
	defer os.RemoveAll(dir)
	o, err := crdt.Open(filepath.Join(dir, "oracle.db"), crdt.Options{ReplicaID: "sim-oracle"})
	if err != nil {
		return "", fmt.Errorf("sim: oracle store: %w", err)
	}
	defer o.Close()
	for _, n := range f.nodes {
		if n.ag == nil {
			continue
		}
		vv := crdt.VersionVector{}
		for {
			ds, err := n.ag.Store().DeltasSince(ctx, vv, 1<<20)
			if err != nil {
				return "", fmt.Errorf("sim: oracle read %s: %w", n.name, err)
			}
			if len(ds) == 0 {
				break
			}
			if _, err := o.Merge(ctx, ds); err != nil {
				return "", fmt.Errorf("sim: oracle merge %s: %w", n.name, err)
			}
			vv.Advance(ds)
		}
	}
	return o.StateHash(ctx)
}

// convergence holds, per agent, the seconds until it held the final state,
// until it saw every agent alive, and until both.
type convergence struct{ state, members, both []float64 }

// waitConverged polls every agent until its state hash equals want and it
// sees every agent alive, and returns, per agent, the seconds from since to
// reaching the state and to seeing the full membership.
func (f *Fleet) waitConverged(ctx context.Context, want string, since time.Time, timeout time.Duration) (convergence, error) {
	stateAt := make([]float64, len(f.nodes))
	memAt := make([]float64, len(f.nodes))
	for i := range stateAt {
		stateAt[i], memAt[i] = -1, -1
	}
	deadline := since.Add(timeout)
	for {
		done := true
		for i, n := range f.nodes {
			if stateAt[i] < 0 {
				h, err := n.ag.Store().StateHash(ctx)
				if err != nil {
					return convergence{}, fmt.Errorf("sim: state hash of %s: %w", n.name, err)
				}
				if h == want {
					stateAt[i] = time.Since(since).Seconds()
				}
			}
			if memAt[i] < 0 && aliveCount(n.ag) == len(f.nodes) {
				memAt[i] = time.Since(since).Seconds()
			}
			if stateAt[i] < 0 || memAt[i] < 0 {
				done = false
			}
		}
		if done {
			// Convergence includes rejoin: an agent has converged when it
			// holds the final state and sees the whole fleet again.
			c := convergence{state: stateAt, members: memAt, both: make([]float64, len(f.nodes))}
			for i := range c.both {
				c.both[i] = max(stateAt[i], memAt[i])
			}
			return c, nil
		}
		if time.Now().After(deadline) {
			lag := 0
			for i := range stateAt {
				if stateAt[i] < 0 || memAt[i] < 0 {
					lag++
				}
			}
			return convergence{}, fmt.Errorf("sim: %d of %d agents had not converged within %s", lag, len(f.nodes), timeout)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return convergence{}, err
		}
	}
}

func (f *Fleet) hashes(ctx context.Context) ([]string, error) {
	out := make([]string, 0, len(f.nodes))
	for _, n := range f.nodes {
		h, err := n.ag.Store().StateHash(ctx)
		if err != nil {
			return nil, fmt.Errorf("sim: state hash of %s: %w", n.name, err)
		}
		out = append(out, h)
	}
	return out, nil
}

// idleGossip measures all gossip bytes sent by the agents over window, with
// no writes, per agent per second.
func (f *Fleet) idleGossip(ctx context.Context, window time.Duration) (float64, error) {
	sent := func() uint64 {
		var s uint64
		for _, n := range f.nodes {
			s += n.ag.Stats().GossipBytesSent
		}
		return s
	}
	before, t0 := sent(), time.Now()
	if err := sleep(ctx, window); err != nil {
		return 0, err
	}
	after, el := sent(), time.Since(t0).Seconds()
	return float64(after-before) / el / float64(len(f.nodes)), nil
}

func addrs(ns []*node) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = n.addr
	}
	return out
}

func percentiles(xs []float64) Percentiles {
	if len(xs) == 0 {
		return Percentiles{}
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	at := func(q float64) float64 {
		i := int(q*float64(len(s))+0.999999) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return Percentiles{P50: round(at(0.50)), P99: round(at(0.99)), Max: round(s[len(s)-1])}
}

func round(x float64) float64 { return float64(int64(x*1000+0.5)) / 1000 }

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func splitHostPort(addr string) (string, int, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.Atoi(ps)
	return host, p, err
}

// simGossipKey is the fleet's shared gossip encryption key: a fixed,
// public value, fine for a simulation on loopback and nothing else.
var simGossipKey = "ZWRnZWZsZWV0LXNpbXVsYXRlZC1mbGVldC1rZXktMDA="
