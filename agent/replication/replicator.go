// Package replication replicates the crdt store between agents (see the
// agent package documentation for the protocol): local deltas gossiped on
// memberlist's broadcast queue, anti-entropy requests answered with the
// deltas the requester lacks in chunks, push-back of what the responder
// lacks, relay of gossiped deltas that were new (relay.go), the bounded
// inbound queue with its apply worker, the leave intent, and compaction. It reaches other agents only through Members
// (package membership implements it) and rides on memberlist as its data
// delegate (NotifyMsg, GetBroadcasts, LocalState, MergeRemoteState,
// Joined).
package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/hashicorp/memberlist"
)

// Members is what replication needs of membership: whom to sync with,
// what they reported holding, and a way to reach them.
type Members interface {
	// Addr is this agent's advertised gossip address ("ip:port").
	Addr() string
	// Alive lists the other members alive now, sorted by name.
	Alive() []membership.Peer
	// NumMembers counts the members memberlist knows (for the broadcast
	// queue's retransmissions).
	NumMembers() int
	// SendTo sends msg reliably to the named member, or to addr ("ip:port")
	// when it is not a known member yet ("" for none).
	SendTo(name, addr string, msg []byte) error
	// SetVV and ReportedVV record and return the version vector a member
	// reported; StableVV is the pointwise minimum over members that have
	// not left, once all reported one.
	SetVV(name string, vv crdt.VersionVector)
	// SetClock records a member's clock reading, received now, and whether
	// the member judged its wall clock sane (the fleet clock the store's
	// clock falls back on: membership.Table.FleetClocks).
	SetClock(name string, at time.Time, sane bool)
	ReportedVV(name string) (crdt.VersionVector, time.Time, bool)
	StableVV(own crdt.VersionVector) (crdt.VersionVector, bool)
	// Digest summarizes the members seen alive; Reconcile runs a member
	// push/pull with a peer whose digest differs.
	Digest() uint64
	Reconcile(peer, addr string)
	// MarkLeaving records a member's leave intent; true when it was news.
	MarkLeaving(name string) bool
}

// Rand is the random source of peer choice and jitter; safe for
// concurrent use.
type Rand interface {
	IntN(n int) int
	Float64() float64
}

// Counters are replication's totals, read by the agent's metrics.
type Counters struct {
	DeltasApplied atomic.Uint64 // ops applied from peers
	SyncRounds    atomic.Uint64 // anti-entropy exchanges this agent answered or completed
	Dropped       atomic.Uint64 // messages dropped: inbound queue full
	Broadcasts    atomic.Uint64 // local deltas queued for gossip
	Relayed       atomic.Uint64 // deltas received by gossip, new here, queued for gossip again
	RelaySkipped  atomic.Uint64 // relayed deltas dropped from the full relay queue before all their sends (the most sent ones)
	ChunksSent    atomic.Uint64 // anti-entropy messages carrying deltas
	SyncSkipped   atomic.Uint64 // sync requests not sent: the peer had just reported nothing new
	RefusedOps    atomic.Uint64 // ops refused: their origin's clock is too far ahead
	DeferredOps   atomic.Uint64 // ops refused while this agent's wall clock is wrong and no peer's clock is known (not the origin's fault)
	Sent          Sent          // what was sent, by kind
}

// Config configures a Replicator. Store, Members, Rand, Counters, Reject
// and Refused are required.
type Config struct {
	// Name is this agent's node name (the store's replica id).
	Name    string
	Store   *crdt.Store
	Members Members
	// SyncInterval spaces the requests to a random live peer (±20%);
	// SyncTimeout ends a round whose peer stays silent; MaxChunkBytes
	// bounds a chunk of deltas (config gossip.*).
	SyncInterval  time.Duration
	SyncTimeout   time.Duration
	MaxChunkBytes int
	// CompactionInterval spaces compactions (±10%); 0 turns them off.
	CompactionInterval time.Duration
	// Defer, when set, is asked before each due compaction: it returns
	// when the compaction may start (the agent's deferrable-work
	// scheduler, by carbon and battery) and a func to call once it has
	// run. nil compacts when due.
	Defer func(ctx context.Context) (done func(), err error)
	// Seeded: there are seeds to join, so a store that starts empty holds
	// local writes until a peer reports what it holds of this replica, or
	// RecoveryTimeout passes (see recover.go).
	Seeded          bool
	RecoveryTimeout time.Duration
	// TombstoneTTL is the store's (0 means crdt.DefaultTombstoneTTL): an
	// own op older than it that a peer lacks is not shipped (recover.go).
	TombstoneTTL time.Duration
	// InboundQueue bounds the received messages waiting to be applied.
	InboundQueue int
	// RetransmitMult and MaxBroadcastBytes size gossip broadcasts
	// (memberlist's configuration).
	RetransmitMult    int
	MaxBroadcastBytes int
	// Relay queues deltas received by gossip that were new to this agent
	// for gossip again (see relay.go; config gossip.relay).
	Relay    bool
	Clock    clock.Clock // nil means clock.Real()
	Rand     Rand
	Logger   *slog.Logger // nil means slog.Default()
	Counters *Counters
	// Reject counts a message refused as bad input, by reason.
	Reject func(reason string)
	// Refused counts ops refused because their origin's clock is too far
	// ahead, by origin: the origin's name for the first MaxRefusedOrigins
	// origins refused, RefusedOther for the rest.
	Refused func(origin string, ops int)
}

const (
	maxQueuedBcst   = 4096     // local deltas retained for gossip; older ones are left to anti-entropy
	inboundBudget   = 64 << 20 // bytes of received messages waiting to be applied
	applyBatchMsgs  = 64       // received messages merged in one store transaction
	applyBatchBytes = 4 << 20  // and at most this many of their bytes
)

// Replicator is one agent's replication.
type Replicator struct {
	cfg     Config
	store   *crdt.Store
	members Members
	clock   clock.Clock
	ttl     time.Duration
	rnd     Rand
	log     *slog.Logger
	c       *Counters

	bcast   *memberlist.TransmitLimitedQueue
	relayQ  *memberlist.TransmitLimitedQueue // relayed deltas (relay.go)
	inbound chan []byte
	inBytes atomic.Int64
	syncer  *syncer
	shipper *shipper
	// pushBacks admits one peer at a time to push back what this agent lacks.
	pushBacks pushBackGate
	refusals  refusals
	// rec is the state transfer (recover.go); recKick wakes its loop,
	// serve queues peers' snapshot requests, install assembled snapshots.
	rec     recovery
	recKick chan struct{}
	serve   chan serveReq
	install chan installReq
	// relayed remembers the deltas this agent relayed; relayBudget bounds
	// the bytes it relays.
	relayed     relaySet
	relayBudget tokenBucket
}

// New validates cfg and returns a replicator; it sends nothing until Run
// (and memberlist calls it as its data delegate).
func New(cfg Config) (*Replicator, error) {
	if cfg.Store == nil || cfg.Members == nil || cfg.Rand == nil || cfg.Counters == nil || cfg.Reject == nil || cfg.Refused == nil {
		return nil, errors.New("replication: Store, Members, Rand, Counters, Reject and Refused are required")
	}
	if cfg.SyncInterval <= 0 || cfg.SyncTimeout <= 0 || cfg.MaxChunkBytes <= 0 || cfg.InboundQueue <= 0 || cfg.CompactionInterval < 0 || cfg.RecoveryTimeout < 0 {
		return nil, fmt.Errorf("replication: sync interval %v, sync timeout %v, chunk %d, inbound queue %d, compaction interval %v, recovery timeout %v: out of range",
			cfg.SyncInterval, cfg.SyncTimeout, cfg.MaxChunkBytes, cfg.InboundQueue, cfg.CompactionInterval, cfg.RecoveryTimeout)
	}
	r := &Replicator{
		cfg: cfg, store: cfg.Store, members: cfg.Members, clock: clock.Or(cfg.Clock), rnd: cfg.Rand,
		log: cfg.Logger, c: cfg.Counters,
		inbound:  make(chan []byte, cfg.InboundQueue),
		shipper:  newShipper(),
		refusals: refusals{warned: map[string]time.Time{}},
		recKick:  make(chan struct{}, 1),
		serve:    make(chan serveReq, 4),
		install:  make(chan installReq, 1),
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.ttl = cfg.TombstoneTTL; r.ttl <= 0 {
		r.ttl = crdt.DefaultTombstoneTTL
	}
	r.syncer = newSyncer(r.clock)
	r.startRecovery()
	r.bcast = &memberlist.TransmitLimitedQueue{NumNodes: r.members.NumMembers, RetransmitMult: cfg.RetransmitMult}
	r.relayQ = &memberlist.TransmitLimitedQueue{NumNodes: r.members.NumMembers, RetransmitMult: cfg.RetransmitMult}
	return r, nil
}

// Run runs the apply worker and the sync, ship and compaction loops until
// ctx ends.
func (r *Replicator) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){r.applyLoop, r.syncLoop, r.shipLoop, r.periodicSyncLoop, r.compactLoop, r.recoverLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx)
		}()
	}
	wg.Wait()
}

// Broadcast queues a local delta for gossip. Deltas too large for one
// gossip packet are left to anti-entropy.
func (r *Replicator) Broadcast(d crdt.Delta) {
	msg, err := Encode(Message{Type: TypeDeltas, Deltas: []crdt.Delta{d}}, nil)
	if err != nil {
		r.log.Error("encoding local delta for broadcast", "err", err)
		return
	}
	if len(msg) > r.cfg.MaxBroadcastBytes {
		r.log.Debug("delta too large for a gossip packet; anti-entropy carries it", "bytes", len(msg), "limit", r.cfg.MaxBroadcastBytes)
		return
	}
	r.queueBroadcast(msg)
	r.c.Broadcasts.Add(1)
}

// queueBroadcast queues msg for gossip, keeping the queue bounded.
func (r *Replicator) queueBroadcast(msg []byte) {
	r.bcast.QueueBroadcast(deltaBroadcast(msg))
	if r.bcast.NumQueued() > maxQueuedBcst {
		r.bcast.Prune(maxQueuedBcst)
	}
}

// deltaBroadcast is one queued gossip message.
type deltaBroadcast []byte

func (b deltaBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b deltaBroadcast) Message() []byte                       { return b }
func (b deltaBroadcast) Finished()                             {}

var _ memberlist.Broadcast = deltaBroadcast(nil)

// clockSample is this agent's clock for its peers (crdt.Clock.Reference).
func (r *Replicator) clockSample() ClockSample {
	ref := r.store.Clock().Reference()
	return ClockSample{UnixMilli: ref.Time.UnixMilli(), Sane: ref.Sane()}
}

// jitter returns d randomized by ±frac.
func (r *Replicator) jitter(d time.Duration, frac float64) time.Duration {
	return time.Duration(float64(d) * (1 + frac*(2*r.rnd.Float64()-1)))
}

// sleep waits d on the replicator's clock; false when ctx ended first.
func (r *Replicator) sleep(ctx context.Context, d time.Duration) bool {
	return clock.Sleep(ctx, r.clock, d) == nil
}

// The memberlist data delegate (membership.Data). memberlist calls these
// on its network goroutines, some with its node lock held: none blocks.

// NotifyMsg hands a received user message to the apply worker without
// blocking: the bytes are copied (memberlist reuses its buffer) and queued;
// when the queue is full the message is dropped and counted.
func (r *Replicator) NotifyMsg(b []byte) { r.enqueueInbound(b) }

// GetBroadcasts serves queued local deltas, then relayed ones, to
// memberlist's gossip.
func (r *Replicator) GetBroadcasts(overhead, limit int) [][]byte {
	own := r.bcast.GetBroadcasts(overhead, limit)
	for _, b := range own {
		r.c.Sent.add(b, false)
	}
	return r.relayBroadcasts(own, overhead, limit)
}

// sendTo sends msg to peer (Members.SendTo), counting it.
func (r *Replicator) sendTo(peer, addr string, msg []byte) error {
	r.c.Sent.add(msg, false)
	return r.members.SendTo(peer, addr, msg)
}

// LocalState is this agent's part of a push/pull exchange: its name and
// version vector, so the peer can ship what this agent lacks.
func (r *Replicator) LocalState(join bool) []byte {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	vv, err := r.store.VersionVector(ctx)
	if err != nil {
		r.log.Debug("push/pull without version vector", "err", err)
		return nil
	}
	msg, err := Encode(Message{Type: TypeState, From: r.cfg.Name, Clock: r.clockSample(), VV: vv}, nil)
	if err != nil {
		r.log.Error("encoding push/pull state", "err", err)
		return nil
	}
	r.c.Sent.add(msg, false)
	return msg
}

// MergeRemoteState receives a peer's LocalState; the apply worker records
// its version vector and ships what it lacks.
func (r *Replicator) MergeRemoteState(buf []byte, join bool) {
	if len(buf) == 0 {
		return
	}
	r.enqueueInbound(buf)
}

// Joined schedules an anti-entropy exchange with a member that joined or
// came back (after a partition or a restart).
func (r *Replicator) Joined(name string) { r.syncer.enqueue(name) }
