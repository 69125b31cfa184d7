// Package agent is the edgefleet daemon: membership and failure detection
// (hashicorp/memberlist), replication of the crdt store between agents,
// device-data ingestion over MQTT (package agent/ingest, with an embedded
// broker unless one is configured), the uplink to the control plane
// (package agent/uplink), and the local HTTP API.
//
// The agent is wired from rooms, one package per job: agent/membership
// (memberlist, the member table, the gossip transport, reconnects),
// agent/replication (the protocol described below, reaching peers only
// through its Members interface), agent/keys (key material, the key relay,
// gossip key rotation), agent/devices (the device registry), agent/ingest
// and agent/uplink. A room imports only rooms below it (replication imports
// membership); this package builds them in Start and keeps the Agent API.
//
// Ingestion feeds three consumers after each group commit: the uplink,
// which uploads the commit's outbox batch, the device registry, a
// replicated LWW collection "devices" holding one DeviceRecord per device
// (written on first sight, then at most every
// ingest.device_registry_interval), so every agent lists the whole
// fleet's devices, and the model runtime (package agent/models), which
// takes the readings its deployed models read through a bounded queue
// and publishes their predictions. Neither the control plane nor the broker being away
// stops the agent: Start never waits for them.
//
// Replication has two paths. Local writes go through the agent (Put,
// SetAdd, ...): the op commits durably in the store, and its delta is
// queued on memberlist's transmit-limited broadcast queue, which piggybacks
// it on gossip to a few random members per round (deltas too large for a
// gossip packet are left to anti-entropy). memberlist sends a broadcast
// only from the node that queued it, a bounded number of times, so an
// agent that receives a delta by gossip and finds it new queues it for
// gossip again, once per delta (gossip.relay): a write spreads
// epidemically, as serf's events do. Broadcasts can be lost, so
// anti-entropy repairs whatever they miss: an agent sends its version
// vector to one random live peer every gossip.sync_interval, to every member
// that joins or comes back (after a partition heals, after a restart), and
// in memberlist's periodic push/pull state exchange. The receiver answers
// with exactly the deltas the sender lacks, in chunks of at most
// gossip.max_chunk_bytes, and includes its own version vector so the sender
// pushes back what the receiver lacks: one exchange converges both sides.
// Full state is shipped only to an agent deltas cannot repair (behind a
// peer's compaction horizon, or a new database under a known node name: see
// package replication, recover.go). An agent asks one peer at a time and waits
// for the answer, and asks only one requester at a time to push back, so a
// burst of joins (a healed partition, a restart) moves each missing op
// about once rather than once per peer.
//
// Members declared dead (not left) are retried by a reconnect loop, as
// Serf does, so agents on both sides of a healed partition find each other
// again by themselves; while failed members are coming back it runs twice
// as often, and each agent re-advertises itself with a new incarnation as
// soon as it sees the other side again, so memberlist revives it everywhere
// without waiting to hear that it had been declared dead. Sync requests also carry a digest of the members the sender
// sees alive; when two agents disagree in the steady state (a missed join
// announcement) they run a memberlist push/pull. Graceful leaves are
// announced with a leave intent, so peers record "left" rather than "dead"
// and do not try to reconnect.
//
// Received messages are handed from memberlist's network goroutines to a
// bounded queue drained by one worker; when it is full, messages are
// dropped and counted (anti-entropy repairs them). Gossip is encrypted
// (memberlist keyring) and labelled with the cluster name. Malformed,
// oversized, foreign-cluster, undecryptable and undecodable traffic and
// invalid deltas are rejected with a logged reason and counted in
// edgefleet_gossip_rejected_total{reason}.
//
// Ops whose timestamp is more than state.max_clock_drift ahead of the
// store clock's reference time are refused for their origin alone (the
// other origins of the same message apply) and counted in
// edgefleet_gossip_refused_ops_total{origin}. The reference time is the
// local wall clock while it is sane; a board that boots with its clock in
// 1970 (no real-time clock, no NTP yet), or behind its last persisted
// timestamp, judges drift against the median of the clocks its peers
// report in sync requests, responses and push/pull state (a peer reports
// whether its own wall clock is sane; only sane ones count), and warns
// (edgefleet_clock_wall_sane is 0 meanwhile).
package agent

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/agent/devices"
	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/agent/keys"
	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/agent/modelsync"
	"github.com/edgefleet/edgefleet/agent/replication"
	"github.com/edgefleet/edgefleet/agent/training"
	"github.com/edgefleet/edgefleet/agent/uplink"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/edgefleet/edgefleet/greensched/provider"
	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// Sentinel errors.
var (
	// ErrNotRunning: the agent has not been started, or has been stopped.
	ErrNotRunning = errors.New("agent: not running")
	// ErrAlreadyStarted: Start was called twice; an Agent runs once.
	ErrAlreadyStarted = errors.New("agent: already started")
	// ErrNodeNameMismatch: the data directory belongs to another node name.
	ErrNodeNameMismatch = errors.New("agent: data directory belongs to another node")
)

// Deps are the agent's effects; zero values mean production defaults.
type Deps struct {
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
	// Registry receives the agent's metrics (and the store's); nil means a
	// new registry owned by the agent. It is served on /metrics. Give every
	// agent of a process its own registry.
	Registry *prometheus.Registry
	// Clock is the agent's clock (timestamps of replicated writes and of
	// device records, the intervals of its loops); nil means clock.Real().
	Clock clock.Clock
	// Rand seeds jitter and peer choice and generates the gossip key; nil
	// means crypto/rand.
	Rand io.Reader
	// Transport carries memberlist traffic; nil means a memberlist
	// NetTransport on gossip.bind_addr:bind_port.
	Transport memberlist.Transport
	// WrapTransport, when set and Transport is nil, wraps the agent's own
	// NetTransport once it is bound; addr is its bound "host:port". The
	// simulator uses it to put a Partition around an otherwise production
	// transport.
	WrapTransport func(t memberlist.Transport, addr string) memberlist.Transport
	// UplinkClock is the uplink's clock (heartbeat and upload intervals,
	// back-off); nil means the real clock. The simulator compresses time
	// with it.
	UplinkClock clock.Clock
	// UplinkTransport replaces the uplink's HTTPS transport (it must do
	// TLS itself, see uplink.Deps.Transport); nil means the production
	// transport.
	UplinkTransport http.RoundTripper
	// UplinkWrapTransport wraps the uplink's transport; the simulator
	// injects control plane outages with it. Nil wraps nothing.
	UplinkWrapTransport func(http.RoundTripper) http.RoundTripper
	// Started, when set, is called once by Run after Start has returned
	// (the agent serves, has joined or tried to); the process uses it to
	// hand start-up's memory back (see RuntimeConfig.ReleaseStartupPages).
	Started func()
	// Models is the model runtime that receives the model versions
	// deployed to the agent through the uplink (see uplink.Deps.Models);
	// nil means the agent's own (package agent/models, models.enabled;
	// with the model runtime disabled no models are fetched).
	Models modelsync.ModelInstaller
	// FLFaults injects faults into the agent's federated-learning rounds:
	// the simulator's dropouts and Byzantine clients. The zero value
	// injects nothing; no configuration key reaches it.
	FLFaults FLFaults
	// CarbonProvider, when set, replaces the carbon provider of
	// green.carbon (green.zone names the zone): the simulator's traces
	// replayed on its clock. Nil: green.carbon's.
	CarbonProvider provider.Provider
}

const (
	stateDBFile   = "state.db"
	nodeNameFile  = "node-name"
	leaveTimeout  = 5 * time.Second
	startJoinWait = 5 * time.Second // how long Start waits for the first join
	// startReportWait is how long Start waits, once joined, for a peer to
	// release the local writes of a new database.
	startReportWait = 2 * time.Second
)

// Agent is one edgefleet daemon. Create with New, then Start (or Run); an
// Agent runs once: after Stop or Kill, create a new one (with the same
// DataDir it resumes where it stopped).
type Agent struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
	reg  *prometheus.Registry
	clk  clock.Clock
	rnd  io.Reader
	rng  *lockedRand
	m    *metrics
	dbm  *dbMetrics
	dbs  dbIncidents // databases quarantined since Start

	// lifeMu is held by Start and by Stop/Kill, so they never overlap.
	lifeMu  sync.Mutex
	mu      sync.Mutex // guards phase, name and the fields set by Start
	phase   int        // 0 new, 1 running, 2 stopped
	name    string
	peers   atomic.Pointer[membership.Table]
	store   *crdt.Store
	cluster *membership.Cluster
	repl    atomic.Pointer[replication.Replicator]

	apiAddr string
	api     *http.Server

	// Device-facing and control-plane parts (nil when not configured).
	ingestStore *ingest.Store
	ingestor    *ingest.Ingestor
	broker      *ingest.Broker
	mqttURL     string
	registry    *devices.Registry
	idWatch     *identityWatch // nil without the embedded broker
	models      *modelParts    // nil with the model runtime off
	up          *uplink.Uplink
	training    *training.Manager // nil when training is disabled
	green       atomic.Pointer[greenParts]
	startedAt   time.Time
	// keysChanged run after key fetches that accepted messages.
	keysChanged keys.Hooks
	// keyRelay passes key messages to and from peers.
	keyRelay atomic.Pointer[keys.Relay]
	// revocations holds the revocation list the cluster enforces.
	revocations atomic.Pointer[keys.Revocations]
	gossipKeys  *keys.Rotator // nil with gossip encryption off
	cpu         cpuSampler

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	running atomic.Bool
}

// New validates cfg and builds an agent; it does no network or disk I/O.
func New(cfg Config, deps Deps) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Agent{
		cfg: cfg,
		log: deps.Logger,
		reg: deps.Registry,
		clk: clock.Or(deps.Clock),
		rnd: deps.Rand,
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	if a.reg == nil {
		a.reg = prometheus.NewRegistry()
	}
	if a.rnd == nil {
		a.rnd = crand.Reader
	}
	var seed [32]byte
	if _, err := io.ReadFull(a.rnd, seed[:]); err != nil {
		return nil, fmt.Errorf("agent: seeding random source: %w", err)
	}
	a.rng = &lockedRand{r: mrand.New(mrand.NewChaCha8(seed))}
	a.name = cfg.NodeName
	if a.name == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("agent: node_name is empty and the host name is unavailable: %w", err)
		}
		a.name = host
		if err := validateNodeName(a.name); err != nil {
			return nil, fmt.Errorf("agent: host name is not a usable node name, set node_name: %w", err)
		}
	}
	a.peers.Store(membership.NewTable(a.name, a.clk))
	a.cfg.Gossip.Join = append([]string(nil), cfg.Gossip.Join...)
	m, err := newMetrics(a.reg, a.memberCount, a.syncLag, a.clockSane)
	if err != nil {
		return nil, fmt.Errorf("agent: registering metrics: %w", err)
	}
	a.m = m
	if a.dbm, err = newDBMetrics(a.reg); err != nil {
		return nil, fmt.Errorf("agent: registering metrics: %w", err)
	}
	a.deps = deps
	return a, nil
}

// Name is the agent's node name and CRDT replica id. Before Start it is the
// configured name or the host name; Start may adopt the name recorded in
// DataDir when none is configured.
func (a *Agent) Name() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.name
}

// Store is the agent's CRDT store (nil before Start). Writes made directly
// on it are replicated by anti-entropy only; use the agent's write methods
// to broadcast them at once.
func (a *Agent) Store() *crdt.Store {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.store
}

// GossipAddr is the gossip address (host:port) advertised to peers; "" before Start.
func (a *Agent) GossipAddr() string {
	a.mu.Lock()
	c := a.cluster
	a.mu.Unlock()
	if c == nil {
		return ""
	}
	return c.Addr()
}

// APIAddr is the HTTP API's listen address; "" when disabled or not started.
func (a *Agent) APIAddr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.apiAddr
}

// Members lists the cluster members this agent knows, itself included,
// sorted by name. Members that failed or left are listed until
// gossip.reconnect_timeout has passed.
func (a *Agent) Members() []Member { return a.peers.Load().Members() }

// Stats returns a snapshot of the agent's counters.
func (a *Agent) Stats() Stats {
	st := a.m.stats()
	if r := a.repl.Load(); r != nil {
		st.BroadcastsQueued, st.RelayQueued = r.Queued()
	}
	return st
}

// Registry is the registry holding the agent's metrics.
func (a *Agent) Registry() *prometheus.Registry { return a.reg }

// Running reports whether the agent is started and not stopped.
func (a *Agent) Running() bool { return a.running.Load() }

func (a *Agent) memberCount(state string) float64 { return float64(a.peers.Load().Count(state)) }

func (a *Agent) syncLag() float64 {
	s := a.Store()
	if s == nil || !a.running.Load() {
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	vv, err := s.VersionVector(ctx)
	if err != nil {
		return 0
	}
	return float64(a.peers.Load().Lag(vv))
}

// clockSane is 1 while the store's clock judges drift against the local
// wall clock (crdt.Clock.Reference), 0 while that is known wrong.
func (a *Agent) clockSane() float64 {
	s := a.Store()
	if s == nil || s.Clock().Reference().Sane() {
		return 1
	}
	return 0
}

// minPlausibleWall: a wall clock reading before it is known wrong (a board
// without a real-time clock boots in 1970 until NTP sets it).
var minPlausibleWall = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// Start opens the store, starts memberlist, joins the seeds (unreachable
// seeds are retried in the background, never fatal), starts the sync loops
// and the API server, and returns once all are running. ctx bounds the
// start-up only.
func (a *Agent) Start(ctx context.Context) (err error) {
	a.lifeMu.Lock()
	defer a.lifeMu.Unlock()
	a.mu.Lock()
	if a.phase != 0 {
		a.mu.Unlock()
		return ErrAlreadyStarted
	}
	a.phase = 1
	a.mu.Unlock()

	var cleanup []func()
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
			a.mu.Lock()
			a.phase = 2
			a.mu.Unlock()
		}
	}()

	if err := os.MkdirAll(a.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("agent: data dir: %w", err)
	}
	if err := a.claimName(); err != nil {
		return err
	}
	name := a.Name()
	a.log = a.log.With("node", name)

	g := a.cfg.Gossip
	key, err := keys.LoadGossipKey(keys.BootstrapConfig{Encrypt: g.Encrypt, Key: g.Key, KeyFile: g.KeyFile,
		DataDir: a.cfg.DataDir, Rand: a.rnd, Logger: a.log})
	if err != nil {
		return err
	}

	store, err := a.openState(ctx, name)
	if err != nil {
		return err
	}
	cleanup = append(cleanup, func() { store.Close() })
	a.mu.Lock()
	a.store = store
	a.mu.Unlock()

	meta, err := membership.EncodeMeta(NodeMeta{ID: name, Version: Version, Labels: a.cfg.Labels})
	if err != nil {
		return err
	}
	var kr *memberlist.Keyring
	if key != nil {
		if kr, err = memberlist.NewKeyring(nil, key); err != nil {
			return fmt.Errorf("agent: gossip key: %w", err)
		}
		if a.gossipKeys, err = keys.NewRotator(a.gossipKeysConfig(kr, key)); err != nil {
			return err
		}
	}
	joinFailed := func(err error) error { return a.gossipKeys.JoinFailed(err) }
	cluster, err := membership.New(membership.Config{
		Name: name, Label: g.Cluster, Profile: g.Profile,
		BindAddr: g.BindAddr, BindPort: g.BindPort, AdvertiseAddr: g.AdvertiseAddr, AdvertisePort: g.AdvertisePort,
		Keyring: kr, Meta: meta, Seeds: g.Join,
		ReconnectInterval: g.ReconnectInterval, ReconnectTimeout: g.ReconnectTimeout, JoinRetryInterval: g.JoinRetryInterval,
		Table: a.peers.Load(), Transport: a.deps.Transport, WrapTransport: a.deps.WrapTransport,
		Traffic: &a.m.traffic, Counters: &a.m.members, Reject: a.m.reject, JoinFailed: joinFailed,
		Clock: a.clk, Rand: a.rng, Logger: a.log,
	})
	if err != nil {
		return err
	}
	cleanup = append(cleanup, cluster.Close)
	if err := a.startGreen(); err != nil {
		return err
	}
	repl, err := replication.New(replication.Config{
		Name: name, Store: store, Members: cluster,
		SyncInterval: g.SyncInterval, SyncTimeout: g.SyncTimeout, MaxChunkBytes: g.MaxChunkBytes,
		CompactionInterval: a.cfg.State.CompactionInterval, InboundQueue: g.InboundQueue,
		Seeded: len(g.Join) > 0, RecoveryTimeout: a.cfg.State.RecoveryTimeout, TombstoneTTL: a.cfg.State.TombstoneTTL,
		RetransmitMult: cluster.RetransmitMult(), MaxBroadcastBytes: cluster.MaxBroadcastBytes(), Relay: g.Relay,
		Clock: a.clk, Rand: a.rng, Logger: a.log, Counters: &a.m.repl, Reject: a.m.reject, Refused: a.m.refused,
		Defer: a.deferCompaction,
	})
	if err != nil {
		return err
	}
	if err := a.newRevocations(cluster); err != nil {
		return fmt.Errorf("agent: revocations: %w", err)
	}
	if err := cluster.Start(refusingData{Data: repl, cluster: cluster, reject: a.m.reject}); err != nil {
		return err
	}
	cleanup = append(cleanup, func() { cluster.Shutdown() })
	a.repl.Store(repl)
	a.mu.Lock()
	a.cluster = cluster
	a.mu.Unlock()

	bg, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	cleanup = append(cleanup, func() { cancel(); a.wg.Wait(); cluster.Wait() })
	a.goLoop(func() { repl.Run(bg) })
	a.goLoop(func() { cluster.Run(bg) })
	a.goLoop(func() { a.watchDBs(bg) })
	a.startedAt = a.clk.Now()

	if err := a.startEdge(ctx, name); err != nil {
		return err
	}
	cleanup = append(cleanup, func() { a.stopEdge(context.Background(), false) })
	if err := a.startTraining(); err != nil {
		return err
	}
	cleanup = append(cleanup, a.stopTraining)
	// The uplink has opened the dkms keyring of an enrolled agent by now:
	// the agent joins under the fleet's current gossip key.
	a.startGossipKeys(bg, a.gossipKeys)
	if err := a.startKeyRelay(bg); err != nil {
		return fmt.Errorf("agent: key relay: %w", err)
	}
	a.startRevocations(bg)
	a.startIdentityWatch(bg)

	if err := a.startAPI(); err != nil {
		return err
	}
	a.running.Store(true)
	a.log.Info("agent started", "gossip", a.GossipAddr(), "api", a.APIAddr(),
		"cluster", a.cfg.Gossip.Cluster, "encrypted", key != nil, "profile", a.cfg.Gossip.Profile,
		"mqtt", a.MQTTURL(), "control_plane", a.cfg.ControlPlane.URL)

	cluster.JoinSeeds(ctx, startJoinWait)
	a.awaitPeerReport(ctx, repl, cluster)
	return nil
}

// awaitPeerReport gives a new database a moment, once joined, to hear from
// a peer whether the fleet knows this node name (replication holds local
// writes until then), so Start does not return into a burst of 503s. It
// waits at most startReportWait (network time, on the system clock).
func (a *Agent) awaitPeerReport(ctx context.Context, repl *replication.Replicator, cluster *membership.Cluster) {
	if repl.Recovering() == "" || len(cluster.Alive()) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, startReportWait)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for repl.Recovering() != "" {
		select {
		case <-ctx.Done():
			a.log.Info("local writes held: awaiting state from peers", "reason", repl.Recovering())
			return
		case <-tick.C:
		}
	}
}

func (a *Agent) goLoop(f func()) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		f()
	}()
}

// claimName records the node name in DataDir on first start, and checks it
// on later ones: a store's replica id must never change.
func (a *Agent) claimName() error {
	path := filepath.Join(a.cfg.DataDir, nodeNameFile)
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		recorded := strings.TrimSpace(string(data))
		if a.cfg.NodeName == "" {
			if err := validateNodeName(recorded); err != nil {
				return fmt.Errorf("agent: %s: %w", path, err)
			}
			a.mu.Lock()
			a.name = recorded
			a.mu.Unlock()
			a.peers.Store(membership.NewTable(recorded, a.clk))
			return nil
		}
		if recorded != a.cfg.NodeName {
			return fmt.Errorf("%w: %s records %q, node_name is %q", ErrNodeNameMismatch, path, recorded, a.cfg.NodeName)
		}
		return nil
	case errors.Is(err, fs.ErrNotExist):
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(a.Name()+"\n"), 0o600); err != nil {
			return fmt.Errorf("agent: recording node name: %w", err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("agent: recording node name: %w", err)
		}
		return nil
	default:
		return fmt.Errorf("agent: reading node name: %w", err)
	}
}

// Run starts the agent, waits for ctx to end (or for a database to be
// found damaged in use, see Failed), then stops it gracefully.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.Start(ctx); err != nil {
		return err
	}
	if a.deps.Started != nil {
		a.deps.Started()
	}
	var failed error
	select {
	case <-ctx.Done():
	case failed = <-a.Failed():
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return errors.Join(failed, a.Stop(stopCtx))
}

// Stop leaves the cluster gracefully: it stops the API (letting requests in
// flight finish), stops ingestion (committing and acknowledging what was
// received), the uplink, the device registry (writing its pending records)
// and the embedded broker, broadcasts the leave, shuts memberlist down,
// and closes the stores.
func (a *Agent) Stop(ctx context.Context) error {
	return a.stop(ctx, true)
}

// Kill stops abruptly, as a crash looks to peers: memberlist shuts down
// without a leave, the API closes, ingestion, the uplink and the broker
// stop (device records not yet written are not), the stores close. Every
// acknowledged write and message is already durable.
func (a *Agent) Kill() error {
	return a.stop(context.Background(), false)
}

func (a *Agent) stop(ctx context.Context, graceful bool) error {
	a.lifeMu.Lock()
	defer a.lifeMu.Unlock()
	a.mu.Lock()
	if a.phase != 1 {
		a.mu.Unlock()
		return nil
	}
	a.phase = 2
	api, cluster, store := a.api, a.cluster, a.store
	a.mu.Unlock()
	a.running.Store(false)

	var errs []error
	if api != nil {
		if graceful {
			if err := api.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("agent: stopping API: %w", err))
			}
		} else {
			api.Close()
		}
	}
	a.stopTraining()
	errs = append(errs, a.stopEdge(ctx, graceful)...)
	if graceful {
		a.repl.Load().AnnounceLeave()
	}
	a.cancel()
	if graceful {
		timeout := leaveTimeout
		if dl, ok := ctx.Deadline(); ok {
			timeout = time.Until(dl)
		}
		if err := cluster.Leave(timeout); err != nil {
			errs = append(errs, fmt.Errorf("agent: leaving cluster: %w", err))
		}
	}
	if err := cluster.Shutdown(); err != nil {
		errs = append(errs, fmt.Errorf("agent: stopping memberlist: %w", err))
	}
	a.wg.Wait()
	cluster.Wait()
	if err := store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("agent: closing state: %w", err))
	}
	if graceful {
		a.log.Info("agent stopped")
	} else {
		a.log.Info("agent killed")
	}
	return errors.Join(errs...)
}

// running store access for writes and reads through the agent.
func (a *Agent) liveStore() (*crdt.Store, error) {
	if !a.running.Load() {
		return nil, ErrNotRunning
	}
	return a.Store(), nil
}

// local runs one local op and broadcasts its delta.
func (a *Agent) local(op func(s *crdt.Store) (crdt.Delta, error)) (crdt.Delta, error) {
	s, err := a.liveStore()
	if err != nil {
		return crdt.Delta{}, err
	}
	d, err := op(s)
	if err != nil {
		return crdt.Delta{}, err
	}
	a.broadcast(d)
	return d, nil
}

// Put sets key in LWW collection coll and replicates it.
func (a *Agent) Put(ctx context.Context, coll, key string, value []byte) error {
	_, err := a.local(func(s *crdt.Store) (crdt.Delta, error) { return s.Put(ctx, coll, key, value) })
	return err
}

// Delete deletes key from LWW collection coll and replicates it.
func (a *Agent) Delete(ctx context.Context, coll, key string) error {
	_, err := a.local(func(s *crdt.Store) (crdt.Delta, error) { return s.Delete(ctx, coll, key) })
	return err
}

// SetAdd adds elem to OR-set coll and replicates it.
func (a *Agent) SetAdd(ctx context.Context, coll, elem string) error {
	_, err := a.local(func(s *crdt.Store) (crdt.Delta, error) { return s.SetAdd(ctx, coll, elem) })
	return err
}

// SetRemove removes the observed elem from OR-set coll and replicates it.
func (a *Agent) SetRemove(ctx context.Context, coll, elem string) error {
	_, err := a.local(func(s *crdt.Store) (crdt.Delta, error) { return s.SetRemove(ctx, coll, elem) })
	return err
}

// CounterAdd adds n (may be negative) to counter key of coll and replicates it.
func (a *Agent) CounterAdd(ctx context.Context, coll, key string, n int64) error {
	_, err := a.local(func(s *crdt.Store) (crdt.Delta, error) { return s.CounterAdd(ctx, coll, key, n) })
	return err
}

// MVPut sets multi-value register key of coll, replacing the values seen,
// and replicates it.
func (a *Agent) MVPut(ctx context.Context, coll, key string, value []byte) error {
	_, err := a.local(func(s *crdt.Store) (crdt.Delta, error) { return s.MVPut(ctx, coll, key, value) })
	return err
}

// MVDelete clears the values seen of multi-value register key of coll and
// replicates it.
func (a *Agent) MVDelete(ctx context.Context, coll, key string) error {
	_, err := a.local(func(s *crdt.Store) (crdt.Delta, error) { return s.MVDelete(ctx, coll, key) })
	return err
}

// broadcast queues a local delta for gossip (replication.Broadcast).
func (a *Agent) broadcast(d crdt.Delta) {
	if r := a.repl.Load(); r != nil {
		r.Broadcast(d)
	}
}

// lockedRand is the agent's random source of peer choice and jitter,
// shared by its rooms.
type lockedRand struct {
	mu sync.Mutex
	r  *mrand.Rand
}

func (l *lockedRand) IntN(n int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.IntN(n)
}

func (l *lockedRand) Float64() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Float64()
}
