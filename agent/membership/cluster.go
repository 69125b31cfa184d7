// Package membership is the agent's membership and gossip transport:
// memberlist with its profiles (Profile), the member table (Table: states,
// metadata, the version vectors members report), the counting transport
// that checks cluster labels, partition injection for tests and the
// simulator (Partition), memberlist's logger adapter, and Cluster, which
// runs memberlist, retries failed members and seeds, and hands everything
// that is not membership to a Data delegate (package replication).
package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/hashicorp/memberlist"
)

// ErrNotStarted: the cluster's memberlist is not running (yet).
var ErrNotStarted = errors.New("membership: not started")

// Data is what rides on memberlist besides membership (package
// replication): user messages, broadcasts and push/pull state, and the
// news that a member joined or came back. memberlist calls it on its
// network goroutines, some with its node lock held: none of it may block.
type Data interface {
	NotifyMsg([]byte)
	GetBroadcasts(overhead, limit int) [][]byte
	LocalState(join bool) []byte
	MergeRemoteState(buf []byte, join bool)
	// Joined is called when another member joins or comes back.
	Joined(name string)
}

// Rand is the random source of jitter and member choice; safe for
// concurrent use.
type Rand interface {
	IntN(n int) int
	Float64() float64
}

// Counters are membership's totals, read by the agent's metrics.
type Counters struct {
	Reconnects  atomic.Uint64 // failed members rejoined by the reconnect loop
	MemberSyncs atomic.Uint64 // push/pulls run because a peer saw other members alive
}

// Config configures a Cluster. Name, Table, Rand, Traffic, Counters and
// Reject are required.
type Config struct {
	// Name is this agent's node name; Label its cluster name (memberlist's
	// label); Profile names memberlist's timers (Profile).
	Name, Label, Profile string
	// Bind and advertise addresses (config gossip.*); BindPort 0 binds any
	// free port.
	BindAddr      string
	BindPort      int
	AdvertiseAddr string
	AdvertisePort int
	// Keyring encrypts gossip; nil sends it in the clear.
	Keyring *memberlist.Keyring
	// Meta is the node metadata advertised (EncodeMeta).
	Meta []byte
	// Seeds are the addresses joined at start and retried while no peer is
	// alive (this agent's own address is skipped).
	Seeds []string
	// ReconnectInterval spaces the retries of failed members, which are
	// forgotten after ReconnectTimeout; JoinRetryInterval spaces the seed
	// retries.
	ReconnectInterval, ReconnectTimeout, JoinRetryInterval time.Duration
	// Table is the member table (the agent lists it before Start).
	Table *Table
	// Transport carries memberlist traffic; nil means a NetTransport on
	// BindAddr:BindPort, wrapped by WrapTransport when set (addr: its bound
	// "host:port").
	Transport     memberlist.Transport
	WrapTransport func(t memberlist.Transport, addr string) memberlist.Transport
	Traffic       *Traffic
	Counters      *Counters
	// Reject counts traffic refused as bad input, by reason.
	Reject func(reason string)
	// JoinFailed describes a failed join (the gossip key rotator's
	// diagnosis); nil leaves errors as they are.
	JoinFailed func(error) error
	Clock      clock.Clock // nil means clock.Real()
	Rand       Rand
	Logger     *slog.Logger // nil means slog.Default()
}

const (
	// recoveryWindow: see reconnectLoop.
	recoveryWindow  = 2 * time.Minute
	healBoostWindow = 10 * time.Second
	// reconcileMinInterval spaces member-view push/pulls (see Reconcile).
	reconcileMinInterval = 2 * time.Second
)

// Cluster is one agent's membership: its memberlist, member table and the
// loops that find failed members and seeds again.
type Cluster struct {
	cfg   Config
	table *Table
	clock clock.Clock
	rnd   Rand
	log   *slog.Logger
	conf  *memberlist.Config
	tr    *countingTransport
	data  Data

	ml      atomic.Pointer[memberlist.Memberlist]
	addr    string
	active  atomic.Bool   // Run is running
	rejoins chan struct{} // bounds concurrent reconnect attempts
	wg      sync.WaitGroup
	// lastRevival is when (Unix ns) a failed member last came back.
	lastRevival atomic.Int64
	// lastReconcile is when (Unix ns) a member-view push/pull last started.
	lastReconcile atomic.Int64
	// lastAnnounce is when (Unix ns) this agent last re-advertised itself.
	lastAnnounce atomic.Int64
}

// New binds the gossip transport (unless one is given) and prepares
// memberlist's configuration; Start creates memberlist. On error nothing
// stays bound.
func New(cfg Config) (*Cluster, error) {
	if cfg.Name == "" || cfg.Table == nil || cfg.Rand == nil || cfg.Traffic == nil || cfg.Counters == nil || cfg.Reject == nil {
		return nil, errors.New("membership: Name, Table, Rand, Traffic, Counters and Reject are required")
	}
	c := &Cluster{cfg: cfg, table: cfg.Table, clock: clock.Or(cfg.Clock), rnd: cfg.Rand, log: cfg.Logger, rejoins: make(chan struct{}, 3)}
	if c.log == nil {
		c.log = slog.Default()
	}
	if c.cfg.JoinFailed == nil {
		c.cfg.JoinFailed = func(err error) error { return err }
	}
	mlLog := Logger(c.log, cfg.Reject)
	conf := Profile(cfg.Profile)
	conf.Name = cfg.Name
	conf.Label = cfg.Label
	conf.Logger = mlLog
	conf.BindAddr = cfg.BindAddr
	conf.BindPort = cfg.BindPort
	conf.AdvertiseAddr = cfg.AdvertiseAddr
	conf.AdvertisePort = cfg.AdvertisePort
	if cfg.Keyring != nil {
		conf.Keyring = cfg.Keyring
		conf.GossipVerifyIncoming = true
		conf.GossipVerifyOutgoing = true
	}
	inner := cfg.Transport
	if inner == nil {
		nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{cfg.BindAddr},
			BindPort:  cfg.BindPort,
			Logger:    mlLog,
		})
		if err != nil {
			return nil, fmt.Errorf("membership: gossip transport on %s: %w",
				net.JoinHostPort(cfg.BindAddr, strconv.Itoa(cfg.BindPort)), err)
		}
		conf.BindPort = nt.GetAutoBindPort()
		inner = nt
		if cfg.WrapTransport != nil {
			inner = cfg.WrapTransport(nt, net.JoinHostPort(cfg.BindAddr, strconv.Itoa(conf.BindPort)))
		}
	}
	if conf.AdvertiseAddr != "" && conf.AdvertisePort == 0 {
		conf.AdvertisePort = conf.BindPort
	}
	tr, err := newCountingTransport(inner, cfg.Traffic, conf.Label, func(reason, detail string) {
		cfg.Reject(reason)
		c.log.Warn("gossip rejected", "reason", reason, "detail", detail)
	})
	if err != nil {
		inner.Shutdown()
		return nil, err
	}
	conf.Transport = tr
	c.conf, c.tr = conf, tr
	return c, nil
}

// RetransmitMult is how many times memberlist retransmits a broadcast
// (scaled by log N).
func (c *Cluster) RetransmitMult() int { return c.conf.RetransmitMult }

// MaxBroadcastBytes is the largest user broadcast that fits a gossip
// packet.
func (c *Cluster) MaxBroadcastBytes() int { return c.conf.UDPBufferSize - 64 - len(c.conf.Label) }

// Start creates memberlist with data as its data delegate. After a failed
// Start, or instead of Start, call Close to release the transport.
func (c *Cluster) Start(data Data) error {
	c.data = data
	d := &delegate{c: c}
	c.conf.Delegate = d
	c.conf.Events = d
	c.conf.Alive = d
	c.conf.Merge = d
	ml, err := memberlist.Create(c.conf)
	if err != nil {
		return fmt.Errorf("membership: starting memberlist: %w", err)
	}
	local := ml.LocalNode()
	c.addr = net.JoinHostPort(local.Addr.String(), strconv.Itoa(int(local.Port)))
	c.ml.Store(ml)
	return nil
}

// Close releases the transport of a cluster whose memberlist never
// started; memberlist shuts it down otherwise.
func (c *Cluster) Close() {
	if c.ml.Load() == nil {
		c.tr.Shutdown()
	}
}

// Addr is the gossip address (host:port) advertised to peers; "" before
// Start.
func (c *Cluster) Addr() string {
	if c.ml.Load() == nil {
		return ""
	}
	return c.addr
}

// Seeds returns the configured seeds other than this agent's own address.
func (c *Cluster) Seeds() []string {
	self := CanonicalAddr(c.Addr())
	var out []string
	for _, s := range c.cfg.Seeds {
		if CanonicalAddr(s) != self {
			out = append(out, s)
		}
	}
	return out
}

// JoinSeeds joins the seeds, waiting at most wait (on the system clock:
// a bound on network time) or until ctx ends; a slow or unreachable seed
// finishes joining in the background, and seedLoop retries them.
func (c *Cluster) JoinSeeds(ctx context.Context, wait time.Duration) {
	seeds := c.Seeds()
	ml := c.ml.Load()
	if len(seeds) == 0 || ml == nil {
		return
	}
	joinDone := make(chan struct{})
	go func() {
		defer close(joinDone)
		if n, err := ml.Join(seeds); err != nil {
			c.log.Warn("joining seeds failed; retrying in the background", "seeds", seeds, "err", c.cfg.JoinFailed(err))
		} else {
			c.log.Info("joined cluster", "seeds_reached", n)
		}
	}()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-joinDone:
	case <-ctx.Done():
	case <-t.C:
	}
}

// Run runs the reconnect and seed loops until ctx ends (Wait waits for the
// reconnect attempts they started).
func (c *Cluster) Run(ctx context.Context) {
	c.active.Store(true)
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){c.reconnectLoop, c.seedLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx)
		}()
	}
	wg.Wait()
	c.active.Store(false)
}

// Leave broadcasts this agent's leave and waits up to timeout (at least
// minLeaveWait) for it to spread.
func (c *Cluster) Leave(timeout time.Duration) error {
	ml := c.ml.Load()
	if ml == nil {
		return ErrNotStarted
	}
	// memberlist waits for the leave broadcast without any bound when the
	// timeout is not positive (a stop whose budget ran out under load):
	// seen hanging a 50-agent simulation's shutdown for 13 minutes.
	return ml.Leave(max(timeout, minLeaveWait))
}

// minLeaveWait is the least Leave waits for its broadcast to go out.
const minLeaveWait = 100 * time.Millisecond

// Shutdown stops memberlist and its transport; reconnect attempts in
// flight then fail at once.
func (c *Cluster) Shutdown() error {
	ml := c.ml.Load()
	if ml == nil {
		return ErrNotStarted
	}
	return ml.Shutdown()
}

// Wait waits for the reconnect and reconciliation attempts in flight. Call
// it once Run has returned and nothing calls Reconcile any more.
func (c *Cluster) Wait() { c.wg.Wait() }

// Memberlist is the running memberlist; nil before Start.
func (c *Cluster) Memberlist() *memberlist.Memberlist { return c.ml.Load() }

// NumMembers counts the members memberlist knows; 1 before Start.
func (c *Cluster) NumMembers() int {
	if ml := c.ml.Load(); ml != nil {
		return ml.NumMembers()
	}
	return 1
}

// Alive lists the other members alive now, sorted by name.
func (c *Cluster) Alive() []Peer {
	peers := c.table.WithState(StateAlive)
	r := c.tr.refused.Load()
	if r == nil {
		return peers
	}
	return slices.DeleteFunc(peers, func(p Peer) bool { return r.has(p.Name) })
}

// SendTo sends one message reliably (a memberlist stream) to a member,
// or to addr ("ip:port") when the sender is not known yet (its join has
// not reached this agent); addr "" means none.
func (c *Cluster) SendTo(name, addr string, msg []byte) error {
	node, ok := c.table.Lookup(name)
	if !ok {
		host, port, err := net.SplitHostPort(addr)
		p, perr := strconv.Atoi(port)
		if addr == "" || err != nil || perr != nil || net.ParseIP(host) == nil {
			return fmt.Errorf("membership: unknown member %q", name)
		}
		node = &memberlist.Node{Name: name, Addr: net.ParseIP(host), Port: uint16(p)}
	}
	ml := c.ml.Load()
	if ml == nil {
		return ErrNotStarted
	}
	return ml.SendReliable(node, msg)
}

// SetVV records the version vector a member reported (Table.SetVV).
func (c *Cluster) SetVV(name string, vv crdt.VersionVector) { c.table.SetVV(name, vv) }

// SetClock records a member's clock reading (Table.SetClock).
func (c *Cluster) SetClock(name string, at time.Time, sane bool) { c.table.SetClock(name, at, sane) }

// ReportedVV returns the version vector a member last reported and when
// (Table.ReportedVV).
func (c *Cluster) ReportedVV(name string) (crdt.VersionVector, time.Time, bool) {
	return c.table.ReportedVV(name)
}

// StableVV is the pointwise minimum of own and the version vectors of the
// members that have not left (Table.StableVV).
func (c *Cluster) StableVV(own crdt.VersionVector) (crdt.VersionVector, bool) {
	return c.table.StableVV(own)
}

// Digest summarizes the members seen alive (Table.Digest).
func (c *Cluster) Digest() uint64 { return c.table.Digest() }

// MarkLeaving records a member's leave intent (Table.MarkLeaving).
func (c *Cluster) MarkLeaving(name string) bool { return c.table.MarkLeaving(name) }
