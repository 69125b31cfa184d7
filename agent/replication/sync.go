package replication

import (
	"context"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/crdt"
)

// syncer runs this agent's anti-entropy requests one at a time: it sends
// its version vector to the next queued peer and waits until that peer has
// sent everything it lacks before asking the next, so that a burst of joins
// (a partition healing, a restart) fetches each missing op about once
// instead of once per peer. It gives up on a peer that stays silent for
// SyncTimeout (a large answer keeps the round alive chunk by chunk).
type syncer struct {
	clock    clock.Clock
	mu       sync.Mutex
	queue    []string
	queued   map[string]time.Time // when each queued peer was queued
	waiting  string
	kick     chan struct{}
	doneCh   chan struct{}
	activity chan struct{}
}

func newSyncer(c clock.Clock) *syncer {
	return &syncer{
		clock:    c,
		queued:   map[string]time.Time{},
		kick:     make(chan struct{}, 1),
		doneCh:   make(chan struct{}, 1),
		activity: make(chan struct{}, 1),
	}
}

// enqueue schedules a request to peer (once, however often it is asked).
func (s *syncer) enqueue(peer string) {
	s.mu.Lock()
	if _, ok := s.queued[peer]; !ok {
		s.queued[peer] = s.clock.Now()
		s.queue = append(s.queue, peer)
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// next pops the next peer to ask and when it was queued.
func (s *syncer) next() (string, time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return "", time.Time{}, false
	}
	p := s.queue[0]
	s.queue = s.queue[1:]
	at := s.queued[p]
	delete(s.queued, p)
	s.waiting = p
	for _, ch := range []chan struct{}{s.doneCh, s.activity} {
		select { // discard signals left over from an earlier round
		case <-ch:
		default:
		}
	}
	return p, at, true
}

// heard reports an answer from peer; last marks its final message.
func (s *syncer) heard(peer string, last bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.waiting != peer {
		return
	}
	ch := s.activity
	if last {
		s.waiting = ""
		ch = s.doneCh
	}
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (r *Replicator) syncLoop(ctx context.Context) {
	for {
		select {
		case <-r.syncer.kick:
		case <-ctx.Done():
			return
		}
		for {
			peer, queuedAt, ok := r.syncer.next()
			if !ok {
				break
			}
			if r.peerHasNothingNew(ctx, peer, queuedAt) {
				r.c.SyncSkipped.Add(1)
				continue
			}
			if err := r.requestSync(ctx, peer); err != nil {
				r.log.Debug("sync request failed", "peer", peer, "err", err)
				continue
			}
			if !r.awaitRound(ctx, peer) {
				return
			}
		}
	}
}

// awaitRound waits for peer to finish answering, or to stay silent for
// SyncTimeout; it returns false when ctx ends.
func (r *Replicator) awaitRound(ctx context.Context, peer string) bool {
	timer := r.clock.NewTimer(r.cfg.SyncTimeout)
	defer func() { timer.Stop() }()
	for {
		select {
		case <-r.syncer.doneCh:
			r.c.SyncRounds.Add(1)
			return true
		case <-r.syncer.activity:
			timer.Stop()
			timer = r.clock.NewTimer(r.cfg.SyncTimeout)
		case <-timer.C():
			r.log.Debug("sync round timed out", "peer", peer)
			return true
		case <-ctx.Done():
			return false
		}
	}
}

// peerHasNothingNew reports whether peer reported its version vector
// after since and this agent already holds everything in it: asking it
// would fetch nothing. This is what keeps a healed partition from costing
// one exchange per pair of agents: the peers that ask this agent first
// have told it what they hold.
func (r *Replicator) peerHasNothingNew(ctx context.Context, peer string, since time.Time) bool {
	theirs, at, ok := r.members.ReportedVV(peer)
	if !ok || at.Before(since) {
		return false
	}
	ours, err := r.store.VersionVector(ctx)
	return err == nil && !holdsMore(theirs, ours)
}

func (r *Replicator) requestSync(ctx context.Context, peer string) error {
	vv, err := r.store.VersionVector(ctx)
	if err != nil {
		return err
	}
	msg, err := Encode(Message{Type: TypeSyncReq, From: r.cfg.Name, Addr: r.members.Addr(),
		Digest: r.members.Digest(), Clock: r.clockSample(), VV: vv}, nil)
	if err != nil {
		return err
	}
	return r.sendTo(peer, "", msg)
}

// periodicSyncLoop asks one random live peer every sync interval (±20%).
func (r *Replicator) periodicSyncLoop(ctx context.Context) {
	for r.sleep(ctx, r.jitter(r.cfg.SyncInterval, 0.2)) {
		alive := r.members.Alive()
		if len(alive) == 0 {
			continue
		}
		r.syncer.enqueue(alive[r.rnd.IntN(len(alive))].Name)
	}
}

// holdsMore reports whether a holder of vv has ops a holder of own lacks.
func holdsMore(vv, own crdt.VersionVector) bool {
	for origin, seq := range vv {
		if seq > own[origin] {
			return true
		}
	}
	return false
}
