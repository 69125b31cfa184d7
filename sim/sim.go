// Package sim runs a whole edgefleet fleet inside one process: N agents, each
// with its own data directory, SQLite store and memberlist ports on
// 127.0.0.1, built through the same agent code paths as production. Network
// partitions are made by membership.Partition, a wrapper around memberlist's
// transport that drops traffic between groups.
//
// Run plays the standard scenario and measures it:
//
//  1. start the agents and wait until every agent sees every other alive;
//  2. writes on every agent (LWW keys, some contended, set adds, counters);
//  3. partition into two halves for Options.Partition, with writes on both sides;
//  4. heal, and time how long each agent takes to hold the final state
//     (the merge of every write, computed independently by an oracle store);
//     then time single fresh writes until every agent holds each;
//  5. kill one agent abruptly, write elsewhere, restart it on the same data
//     directory, and time its catch-up;
//  6. measure idle gossip traffic per agent.
package sim

import (
	"context"
	"errors"
	"fmt"
	"github.com/edgefleet/edgefleet/clock"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/agent/membership"
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

	// NoControlPlane runs the agents without the in-process control
	// plane (no enrollment, heartbeats or telemetry upload).
	NoControlPlane bool
	// Heartbeat is the interval the control plane asks agents to
	// heartbeat at, in simulated time; default 10s.
	Heartbeat time.Duration
	// DevicesPerAgent is how many simulated devices send to each agent
	// over MQTT; default 3. NoDevices skips them. They replay the
	// occupancy data set, or without it send synthetic rooms' readings
	// (ingest.SyntheticRoom), with "synthetic" in their ids.
	DevicesPerAgent int
	NoDevices       bool
	// Speedup compresses the replayed data set's time: a data minute per
	// 60/Speedup seconds; default 60.
	Speedup float64
	// DataSets is the shared data directory holding occupancy/ (see
	// ../shared/data/README.md). Empty or missing data makes the devices
	// synthetic, with a logged note.
	DataSets string
	// Outage cuts every agent off from the control plane for this long
	// (simulated time) after the restart phase, then reconnects them and
	// measures how they resume; 0 skips it. It needs the control plane.
	Outage time.Duration
	// TimeScale is how much faster than real time the uplink and the
	// control plane run (both read the same scaled clock); default 60
	// with an Outage, 1 without.
	TimeScale float64
	// AgentAPI gives every agent its local HTTP API on a free loopback
	// port (Serve turns it on).
	AgentAPI bool
	// Rotate rotates the data key "telemetry" and the gossip key this
	// often for RotateFor (default 60s) while every agent writes and its
	// devices send; 0 skips the phase. It needs the control plane, and
	// makes the heartbeat (when not set) 2s so agents fetch new key
	// versions quickly.
	Rotate    time.Duration
	RotateFor time.Duration
	// RotateGrace is the gossip key's install and remove grace in the
	// rotation phase (default 20s): a new version becomes primary this
	// long after its creation, older ones leave this long after that. The
	// revocation phase uses it as the install grace.
	RotateGrace time.Duration
	// Revoke, at the end of the run, decommissions one agent and measures
	// how long until every other agent refuses it, and whether an op it
	// injects afterwards reaches anyone (sim/revoke.go). It needs the
	// control plane.
	Revoke bool
	// DeviceRegistryInterval is how often an agent refreshes a device's
	// record in replicated state; 0 keeps the agent's default (Serve uses
	// 5s, so listings stay fresh).
	DeviceRegistryInterval time.Duration
	// PropagationWrites is how many single writes, on rotating agents,
	// the propagation phase times until every agent holds each; default
	// 20 (propagation.go).
	PropagationWrites int
	// NoRelay turns the agents' relay of gossiped deltas off (config
	// gossip.relay, on by default).
	NoRelay bool

	faults uplinkFaults // tests only (exactlyonce.go)
	fl     *flFleet     // set by RunFL (fl.go)
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
	if o.PropagationWrites < 0 {
		return errors.New("sim: propagation writes must not be negative")
	}
	if o.PropagationWrites == 0 {
		o.PropagationWrites = 20
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
	if o.Heartbeat < 0 || o.DevicesPerAgent < 0 || o.Speedup < 0 || o.Outage < 0 || o.TimeScale < 0 {
		return errors.New("sim: heartbeat, devices, speedup, outage and time scale must not be negative")
	}
	if o.Rotate < 0 || o.RotateFor < 0 {
		return errors.New("sim: rotation interval and length must not be negative")
	}
	if o.Rotate > 0 && o.NoControlPlane {
		return errors.New("sim: key rotation needs the control plane")
	}
	if o.Rotate > 0 && o.RotateFor == 0 {
		o.RotateFor = 60 * time.Second
	}
	if o.RotateGrace < 0 {
		return errors.New("sim: rotation grace must not be negative")
	}
	if o.RotateGrace == 0 {
		o.RotateGrace = 20 * time.Second
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = 10 * time.Second
		if o.Rotate > 0 {
			o.Heartbeat = 2 * time.Second
		}
	}
	if o.DevicesPerAgent == 0 {
		o.DevicesPerAgent = 3
	}
	if o.Speedup == 0 {
		o.Speedup = 60
	}
	if o.Revoke && o.NoControlPlane {
		return errors.New("sim: revocation needs the control plane")
	}
	if o.Outage > 0 && o.NoControlPlane {
		return errors.New("sim: an outage needs the control plane")
	}
	if o.TimeScale == 0 {
		o.TimeScale = 1
		if o.Outage > 0 {
			o.TimeScale = 60
		}
	}
	if o.TimeScale > 3600 {
		return fmt.Errorf("sim: time scale %g is more than 3600", o.TimeScale)
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
	// ControlPlane is what the in-process control plane saw (absent with
	// NoControlPlane).
	ControlPlane *ControlPlaneReport `json:"control_plane,omitempty"`
	// Devices is the simulated device traffic (absent without devices).
	Devices *DevicesReport `json:"devices,omitempty"`
	// Outage is the control plane outage phase (absent without Outage).
	Outage *OutageReport `json:"outage,omitempty"`
	// Rotation is the key rotation phase (absent without Rotate).
	Rotation *RotationReport `json:"rotation,omitempty"`
	// Revoke is the revocation phase (absent without Revoke).
	Revoke *RevokeReport `json:"revoke,omitempty"`

	// PropagationSeconds is, per single write on the healed fleet, the
	// time until every agent held it (PropagationWrites writes, one at a
	// time, on rotating agents); Relay whether the agents relayed
	// gossiped deltas.
	PropagationSeconds Quantiles `json:"propagation_seconds"`
	PropagationWrites  int       `json:"propagation_writes"`
	Relay              bool      `json:"relay"`
	// IdleGossip breaks GossipBytesPerAgentPerSecond down.
	IdleGossip *IdleGossip `json:"idle_gossip,omitempty"`
	// DevicesGossip is the same measure over a window of the same length
	// just before, while the devices send and the agents write their
	// device records (absent without devices).
	DevicesGossip *IdleGossip `json:"devices_gossip,omitempty"`
}

// ControlPlaneReport describes the fleet as the control plane saw it.
type ControlPlaneReport struct {
	URL string `json:"url"`
	// Enrolled and Online count the fleet's agents in the registry at the
	// end of the run, once every enrolled agent is online again (or at the
	// phase timeout).
	Enrolled int `json:"enrolled"`
	Online   int `json:"online"`
	// EnrollSeconds is, per agent, the time from its start until the
	// registry showed it online.
	EnrollSeconds Percentiles `json:"enroll_seconds"`
}

// DevicesReport describes the simulated devices' telemetry from MQTT to
// the control plane.
type DevicesReport struct {
	Devices int `json:"devices"`
	// Synthetic is true when the devices sent synthetic rooms' readings
	// because the occupancy data set was absent.
	Synthetic bool `json:"synthetic"`
	Messages  int  `json:"messages_published"`
	// StoredAtAgents is the readings the agents committed.
	StoredAtAgents int64 `json:"readings_stored_at_agents"`
	DeadLetters    int64 `json:"dead_letters"`
	// AtControlPlane is the readings the control plane holds for the
	// fleet; Duplicates is how many it stored more than once (must be 0),
	// Missing how many sent readings it lacks or holds with another value
	// (0 once uploads drained); see Delivery.
	AtControlPlane int64 `json:"readings_at_control_plane"`
	Duplicates     int64 `json:"duplicates_at_control_plane"`
	Missing        int64 `json:"missing_at_control_plane"`
	// DrainSeconds is how long the uploads took to drain after the
	// devices stopped.
	DrainSeconds float64 `json:"drain_seconds"`
	// Delivery is the exactly-once check, reading by reading (absent
	// without the control plane).
	Delivery *DeliveryReport `json:"delivery,omitempty"`
}

// OutageReport describes the control plane outage phase. Durations are
// in simulated seconds (real seconds × TimeScale) except RealSeconds.
type OutageReport struct {
	SimSeconds  float64 `json:"sim_seconds"`
	RealSeconds float64 `json:"real_seconds"`
	TimeScale   float64 `json:"time_scale"`
	// OfflineAtEnd is how many agents the registry showed offline just
	// before the link came back.
	OfflineAtEnd int `json:"offline_at_end"`
	// ReadingsDuringOutage is the readings the agents stored while cut off.
	ReadingsDuringOutage int64 `json:"readings_during_outage"`
	// ResumeSeconds is, per agent, the simulated time from reconnection
	// to its first acknowledged heartbeat; UploadCatchUpSeconds the
	// time until the control plane held every reading stored before
	// reconnection.
	ResumeSeconds        Percentiles `json:"resume_seconds"`
	UploadCatchUpSeconds float64     `json:"upload_catch_up_seconds"`
}

// node is one simulated agent and what is needed to restart it.
type node struct {
	idx     int
	name    string
	dir     string
	addr    string // gossip address, stable across restarts
	mqtt    string // embedded broker address, stable across restarts
	api     string // local API address, stable across restarts
	token   string // enrollment token (used on first start only)
	started time.Time
	ag      *agent.Agent
	devs    devices
}

// Fleet is a set of running simulated agents on one partitionable network.
type Fleet struct {
	opts      Options
	part      *membership.Partition
	nodes     []*node
	dir       string
	owned     bool // dir is temporary and removed on Close
	cp        *controlPlane
	clock     clock.Clock
	outage    outage
	occupancy []string // data files the devices replay
	synthetic bool     // the devices send synthetic rooms' readings (no occupancy data)

	loss answerLoss // lost upload answers (Options.faults)
}

// Collections the workload writes, with their types.
// The workload's collections share simPrefix; convergence is judged on
// them alone, as the device registry keeps changing while devices send.
const (
	simPrefix   = "sim."
	collKV      = "sim.kv"
	collTags    = "sim.tags"
	collCounter = "sim.counter"
)

// StartFleet starts o.Agents agents and waits until they form one cluster.
func StartFleet(ctx context.Context, o Options) (*Fleet, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	f := &Fleet{opts: o, part: membership.NewPartition(), dir: o.DataDir}
	if f.dir == "" {
		d, err := os.MkdirTemp("", "edgefleet-sim-")
		if err != nil {
			return nil, fmt.Errorf("sim: temp dir: %w", err)
		}
		f.dir, f.owned = d, true
	}
	f.clock = clock.Real()
	if o.TimeScale != 1 {
		f.clock = clock.NewScaled(time.Now(), o.TimeScale)
	}
	var tokens []string
	if !o.NoControlPlane {
		f.loss.every = o.faults.loseAnswerEvery
		cp, err := startControlPlane(cpDir(f.dir), cpConfig{clock: f.clock, heartbeat: o.Heartbeat, noDedup: o.faults.noDedup,
			log: o.AgentLogger.With("component", "controlplane"), fl: o.flControlPlane()})
		if err != nil {
			f.Close()
			return nil, err
		}
		f.cp = cp
		if tokens, err = cp.enrollmentTokens(ctx, o.Agents); err != nil {
			f.Close()
			return nil, err
		}
	}
	if !o.NoDevices {
		files, err := ingest.OccupancyFiles(o.DataSets)
		if o.DataSets == "" || err != nil {
			o.Logger.Info("synthetic devices: no occupancy data set (set EDGEFLEET_DATA or --datasets to replay it)", "path", o.DataSets)
			f.synthetic = true
		} else {
			f.occupancy = files
		}
	}
	for i := 0; i < o.Agents; i++ {
		n := &node{idx: i, name: fmt.Sprintf("agent-%03d", i), dir: filepath.Join(f.dir, fmt.Sprintf("agent-%03d", i))}
		if tokens != nil {
			n.token = tokens[i]
		}
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

// DevicesEnabled reports whether simulated devices send to the agents.
func (f *Fleet) DevicesEnabled() bool { return f.occupancy != nil || f.synthetic }

// SyntheticDevices reports whether the devices send synthetic rooms'
// readings because the occupancy data set is absent.
func (f *Fleet) SyntheticDevices() bool { return f.synthetic }

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
	cfg.Gossip.Relay = !f.opts.NoRelay
	cfg.Labels = map[string]string{"sim": "true", "group": strconv.Itoa(n.idx % 2)}
	if cfg.State.Collections == nil {
		cfg.State.Collections = map[string]crdt.Type{}
	}
	cfg.State.Collections[collKV] = crdt.TypeLWW
	cfg.State.Collections[collTags] = crdt.TypeORSet
	cfg.State.Collections[collCounter] = crdt.TypeCounter
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
	cfg.Ingest.Enabled = f.DevicesEnabled() || f.opts.fl != nil
	if f.opts.DeviceRegistryInterval > 0 {
		cfg.Ingest.DeviceRegistryInterval = f.opts.DeviceRegistryInterval
	}
	cfg.Ingest.MQTT.EmbeddedListen = orFree(n.mqtt)
	// Every simulated device dials from loopback: one address. And the
	// devices replay data sets many times faster than real time (a
	// federated run's device sends its whole share at once), past the
	// per-device message rate meant for real devices.
	cfg.Ingest.Broker.Limits.MaxConnectionsPerAddress = 0
	cfg.Ingest.Broker.Limits.MessageRate = 0
	if f.opts.AgentAPI {
		cfg.API.Addr = orFree(n.api)
	}
	if f.cp != nil {
		cfg.ControlPlane.URL = f.cp.url
		cfg.ControlPlane.CAFile = f.cp.caPath
		cfg.ControlPlane.EnrollmentToken = n.token
		// The control plane shares this process with every agent: on a
		// loaded machine an enrollment can take longer than the default
		// 10 s, and a retry after a client-side timeout is refused (the
		// server used the token), which leaves the agent without the
		// fleet's gossip key for good.
		cfg.ControlPlane.RequestTimeout = max(cfg.ControlPlane.RequestTimeout, simRequestTimeout)
	}
	deps := agent.Deps{
		Logger: f.opts.AgentLogger.With("agent", n.name),
		WrapTransport: func(t memberlist.Transport, addr string) memberlist.Transport {
			n.addr = addr
			return f.part.Wrap(t, addr)
		},
		UplinkClock:         f.clock,
		UplinkWrapTransport: f.wrapUplink,
	}
	if fl := f.opts.fl; fl != nil {
		deps.FLFaults = fl.faults(n.idx)
		if c := fl.carbon; c != nil {
			z := zoneOf(n.idx)
			cfg.Labels["zone"], cfg.Green.Zone, cfg.Green.Battery.SysfsRoot = z, z, ""
			deps.CarbonProvider = carbonProvider{c}
			deps.FLFaults = c.wrapFaults(n.name, z, deps.FLFaults)
		}
		deps.UplinkWrapTransport = func(rt http.RoundTripper) http.RoundTripper { return fl.tap.wrap(n.name, f.wrapUplink(rt)) }
		// Back on the control plane soon after its restart.
		cfg.ControlPlane.BackoffMin = 100 * time.Millisecond
		cfg.ControlPlane.BackoffMax = 2 * time.Second
	}
	ag, err := agent.New(cfg, deps)
	if err != nil {
		return fmt.Errorf("sim: %s: %w", n.name, err)
	}
	n.started = time.Now()
	if err := ag.Start(ctx); err != nil {
		return fmt.Errorf("sim: start %s: %w", n.name, err)
	}
	n.ag = ag
	n.api = ag.APIAddr()
	if u := ag.MQTTURL(); u != "" {
		n.mqtt = strings.TrimPrefix(u, "tcp://")
		if f.DevicesEnabled() {
			n.devs.start(f, n, u)
		}
	}
	return nil
}

// simRequestTimeout bounds each of the simulated agents' requests to the
// in-process control plane.
const simRequestTimeout = time.Minute

// orFree is addr, or a free loopback port when addr is not known yet.
func orFree(addr string) string {
	if addr == "" {
		return "127.0.0.1:0"
	}
	return addr
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
	f.stopDevices()
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
	if f.cp != nil {
		f.cp.close()
	}
	if f.owned {
		_ = os.RemoveAll(f.dir)
	}
}

// startDevices starts every running agent's device replay again.
func (f *Fleet) startDevices() {
	for _, n := range f.nodes {
		if n.ag != nil && n.ag.MQTTURL() != "" && f.DevicesEnabled() {
			n.devs.start(f, n, n.ag.MQTTURL())
		}
	}
}

// stopDevices ends every agent's device replay.
func (f *Fleet) stopDevices() {
	var wg sync.WaitGroup
	for _, n := range f.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); n.devs.stop() }()
	}
	wg.Wait()
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
func (f *Fleet) Partition() *membership.Partition { return f.part }

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
	rep := Report{Agents: o.Agents, Relay: !o.NoRelay}
	log.Info("starting fleet", "agents", o.Agents, "profile", o.Profile)
	f, err := StartFleet(ctx, o)
	if err != nil {
		return rep, err
	}
	defer f.Close()
	rep.FormationSeconds = time.Since(start).Seconds()
	log.Info("fleet formed", "seconds", round(rep.FormationSeconds))
	if f.cp != nil {
		enroll, err := f.waitOnline(ctx)
		if err != nil {
			return rep, err
		}
		rep.ControlPlane = &ControlPlaneReport{URL: f.cp.url, EnrollSeconds: percentiles(enroll)}
		log.Info("every agent enrolled and online at the control plane", "p99_seconds", rep.ControlPlane.EnrollSeconds.P99)
	}

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

	prop, err := f.propagation(ctx, o.PropagationWrites)
	if err != nil {
		return rep, err
	}
	rep.PropagationSeconds, rep.PropagationWrites = quantiles(prop), len(prop)
	log.Info("fresh writes reached every agent", "writes", len(prop), "p50", rep.PropagationSeconds.P50, "p95", rep.PropagationSeconds.P95)

	if o.Rotate > 0 {
		if rep.Rotation, err = f.runRotation(ctx); err != nil {
			return rep, err
		}
		rep.Writes += rep.Rotation.Writes
	}

	// Kill one agent abruptly, write while it is down, restart it.
	victim := f.nodes[len(f.nodes)/2]
	rep.RestartedAgent = victim.name
	log.Info("killing agent", "agent", victim.name)
	victim.devs.stop()
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

	// The same window with the devices sending: the device registry's
	// writes (a record per device at most every
	// ingest.device_registry_interval) are the fleet's steady write load.
	if f.DevicesEnabled() {
		log.Info("measuring gossip while devices send", "window", o.Idle)
		busy, err := f.idleGossip(ctx, o.Idle)
		if err != nil {
			return rep, err
		}
		busy.Total = round(busy.Total)
		rep.DevicesGossip = &busy
	}

	// Idle means no writes at all: the devices pause (their registry
	// updates are writes) while gossip is measured, and the window starts
	// once the writes they caused have been made and gossiped (quiesce).
	f.stopDevices()
	if err := f.quiesce(ctx); err != nil {
		return rep, err
	}
	log.Info("measuring idle gossip", "window", o.Idle)
	idle, err := f.idleGossip(ctx, o.Idle)
	if err != nil {
		return rep, err
	}
	rep.GossipBytesPerAgentPerSecond = idle.Total
	idle.Total = round(idle.Total)
	rep.IdleGossip = &idle
	f.startDevices()
	if o.Outage > 0 {
		if rep.Outage, err = f.runOutage(ctx); err != nil {
			return rep, err
		}
	}
	if f.DevicesEnabled() || f.cp != nil {
		if err := f.finishUplink(ctx, &rep); err != nil {
			return rep, err
		}
	}
	if o.Revoke {
		if rep.Revoke, err = f.runRevoke(ctx); err != nil {
			return rep, err
		}
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
	return o.StateHashPrefix(ctx, simPrefix)
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
				h, err := n.ag.Store().StateHashPrefix(ctx, simPrefix)
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
			lag, noState, noMembers := 0, 0, 0
			for i := range stateAt {
				if stateAt[i] < 0 || memAt[i] < 0 {
					lag++
				}
				if stateAt[i] < 0 {
					noState++
				}
				if memAt[i] < 0 {
					noMembers++
				}
			}
			return convergence{}, fmt.Errorf("sim: %d of %d agents had not converged within %s (%d lacked the final state, %d did not see every agent alive)",
				lag, len(f.nodes), timeout, noState, noMembers)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return convergence{}, err
		}
	}
}

// sameWholeState reports whether every agent holds the same state, all
// collections included (the device registry's too).
func (f *Fleet) sameWholeState(ctx context.Context) (bool, error) {
	first := ""
	for i, n := range f.nodes {
		h, err := n.ag.Store().StateHash(ctx)
		if err != nil {
			return false, fmt.Errorf("sim: state hash of %s: %w", n.name, err)
		}
		if i == 0 {
			first = h
		} else if h != first {
			return false, nil
		}
	}
	return true, nil
}

func (f *Fleet) hashes(ctx context.Context) ([]string, error) {
	out := make([]string, 0, len(f.nodes))
	for _, n := range f.nodes {
		h, err := n.ag.Store().StateHashPrefix(ctx, simPrefix)
		if err != nil {
			return nil, fmt.Errorf("sim: state hash of %s: %w", n.name, err)
		}
		out = append(out, h)
	}
	return out, nil
}

// quiesce waits until the fleet has nothing left to write or gossip: the
// devices' last messages committed, every device registry's pending
// records written (a registry writes a device's record at most every
// ingest.device_registry_interval, so without the flush its last records
// would be written up to that long after the devices stopped, inside the
// idle window, and be relayed by every agent), and every agent's gossip
// and relay queues empty for a second, and every agent holding the same
// whole state (on a loaded machine, deltas still on their way when the
// queues empty would otherwise arrive, by anti-entropy, inside the window,
// and be relayed).
func (f *Fleet) quiesce(ctx context.Context) error {
	if err := f.waitIngestIdle(ctx); err != nil {
		return err
	}
	for _, n := range f.nodes {
		if err := n.ag.FlushDevices(ctx); err != nil {
			return fmt.Errorf("sim: %s: %w", n.name, err)
		}
	}
	deadline := time.Now().Add(f.opts.Timeout)
	var quietSince time.Time
	for {
		busy := false
		for _, n := range f.nodes {
			if st := n.ag.Stats(); st.BroadcastsQueued > 0 || st.RelayQueued > 0 {
				busy = true
				break
			}
		}
		if !busy {
			same, err := f.sameWholeState(ctx)
			if err != nil {
				return err
			}
			busy = !same
		}
		now := time.Now()
		switch {
		case busy:
			quietSince = time.Time{}
		case quietSince.IsZero():
			quietSince = now
		case now.Sub(quietSince) >= time.Second:
			return nil
		}
		if now.After(deadline) {
			return fmt.Errorf("sim: gossip queues not empty after %s without writes", f.opts.Timeout)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// IdleGossip breaks the idle window's gossip traffic down, in bytes (or
// messages) per agent per second.
type IdleGossip struct {
	// Total is all memberlist traffic out (GossipBytesPerAgentPerSecond);
	// Streams its stream part (reliable messages and push/pulls), the rest
	// being packets (probes, gossip).
	Total   float64 `json:"total"`
	Streams float64 `json:"streams"`
	// Replication is replication's part by kind (replication.SentKinds),
	// before memberlist's framing and encryption; ReplicationMessages the
	// same in messages.
	Replication         map[string]float64 `json:"replication"`
	ReplicationMessages map[string]float64 `json:"replication_messages"`
	// Memberlist is the rest: probes, membership gossip, push/pull member
	// lists, framing and encryption.
	Memberlist float64 `json:"memberlist"`
	// TopAgent is the agent that sent the most, and its bytes per second.
	TopAgent            string  `json:"top_agent"`
	TopAgentBytesPerSec float64 `json:"top_agent_bytes_per_second"`
}

// idleGossip measures all gossip bytes sent by the agents over window per
// agent per second, and breaks them down.
func (f *Fleet) idleGossip(ctx context.Context, window time.Duration) (IdleGossip, error) {
	snap := func() []agent.Stats {
		out := make([]agent.Stats, len(f.nodes))
		for i, n := range f.nodes {
			out[i] = n.ag.Stats()
		}
		return out
	}
	before, t0 := snap(), time.Now()
	if err := sleep(ctx, window); err != nil {
		return IdleGossip{}, err
	}
	after, el := snap(), time.Since(t0).Seconds()
	return idleBreakdown(f.nodes, before, after, el), nil
}

// idleBreakdown turns the agents' counters before and after a window of
// el seconds into an IdleGossip.
func idleBreakdown(nodes []*node, before, after []agent.Stats, el float64) IdleGossip {
	per := el * float64(len(nodes))
	g := IdleGossip{Replication: map[string]float64{}, ReplicationMessages: map[string]float64{}}
	var total, streams, repl uint64
	for i := range nodes {
		b, a := before[i], after[i]
		sent := a.GossipBytesSent - b.GossipBytesSent
		total += sent
		streams += a.GossipStreamBytesSent - b.GossipStreamBytesSent
		if rate := float64(sent) / el; rate > g.TopAgentBytesPerSec {
			g.TopAgent, g.TopAgentBytesPerSec = nodes[i].name, round(rate)
		}
		for k, v := range a.ReplicationBytesSent {
			d := v - b.ReplicationBytesSent[k]
			repl += d
			g.Replication[k] += float64(d)
			g.ReplicationMessages[k] += float64(a.ReplicationMessagesSent[k] - b.ReplicationMessagesSent[k])
		}
	}
	for k := range g.Replication {
		g.Replication[k] = round(g.Replication[k] / per)
		g.ReplicationMessages[k] = round(g.ReplicationMessages[k] / per)
	}
	g.Total = float64(total) / per
	g.Streams = round(float64(streams) / per)
	g.Memberlist = round((float64(total) - float64(repl)) / per)
	return g
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
