package replication

import (
	"context"
	"maps"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/crdt"
)

// shipJob ships to peer the deltas its version vector lacks; respond marks
// the answer to a sync request, which starts with this agent's own version
// vector and always ends with a message flagged last.
type shipJob struct {
	peer    string
	addr    string // where to send if peer is not (yet) a known member
	vv      crdt.VersionVector
	respond bool
}

// shipper queues ship jobs, one per peer: a newer job for a queued peer
// replaces the older one's version vector (the newer report is closer to
// what the peer holds). shipWorkers jobs run at once, never two for the
// same peer.
type shipper struct {
	mu     sync.Mutex
	order  []string
	jobs   map[string]shipJob
	active map[string]bool
	kick   chan struct{}
}

// shipWorkers is how many peers are shipped to at once.
const shipWorkers = 4

func newShipper() *shipper {
	return &shipper{jobs: map[string]shipJob{}, active: map[string]bool{}, kick: make(chan struct{}, shipWorkers)}
}

func (s *shipper) enqueue(j shipJob) {
	s.mu.Lock()
	if old, ok := s.jobs[j.peer]; ok {
		j.respond = j.respond || old.respond
		if j.addr == "" {
			j.addr = old.addr
		}
	} else {
		s.order = append(s.order, j.peer)
	}
	s.jobs[j.peer] = j
	s.mu.Unlock()
	s.wake()
}

func (s *shipper) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// next pops the oldest job whose peer is not being shipped to.
func (s *shipper) next() (shipJob, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range s.order {
		if s.active[p] {
			continue
		}
		s.order = append(s.order[:i:i], s.order[i+1:]...)
		j := s.jobs[p]
		delete(s.jobs, p)
		s.active[p] = true
		return j, true
	}
	return shipJob{}, false
}

func (s *shipper) finish(peer string) {
	s.mu.Lock()
	delete(s.active, peer)
	pending := len(s.order) > 0
	s.mu.Unlock()
	if pending {
		s.wake()
	}
}

func (r *Replicator) shipLoop(ctx context.Context) {
	var wg sync.WaitGroup
	for i := 0; i < shipWorkers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-r.shipper.kick:
				case <-ctx.Done():
					return
				}
				for ctx.Err() == nil {
					j, ok := r.shipper.next()
					if !ok {
						break
					}
					if err := r.ship(ctx, j); err != nil && ctx.Err() == nil {
						r.log.Debug("shipping deltas failed", "peer", j.peer, "err", err)
					}
					r.shipper.finish(j.peer)
				}
			}
		}()
	}
	wg.Wait()
}

// pushBackGate lets one requester at a time push back what this agent
// lacks. When a burst of peers asks at once (a partition heals, this agent
// restarts), all their requests are answered with the same stale version
// vector; if each of them pushed back, this agent would receive the same
// ops from every one. It asks the first; what remains missing afterwards
// comes with the next answer or its own requests.
type pushBackGate struct {
	mu    sync.Mutex
	peer  string
	until time.Time
}

// claim reserves the push-back for peer until now+ttl, unless another
// peer holds it.
func (g *pushBackGate) claim(peer string, now time.Time, ttl time.Duration) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.peer != "" && g.peer != peer && now.Before(g.until) {
		return false
	}
	g.peer, g.until = peer, now.Add(ttl)
	return true
}

// done releases the push-back held by peer (its last message arrived).
func (g *pushBackGate) done(peer string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.peer == peer {
		g.peer = ""
	}
}

// ship sends peer the deltas it lacks, in chunks of at most MaxChunkBytes,
// advancing a copy of its version vector after each chunk until nothing is
// missing. It never sends more than the difference.
func (r *Replicator) ship(ctx context.Context, j shipJob) error {
	s := r.store
	self := r.cfg.Name
	own, err := s.VersionVector(ctx)
	if err != nil {
		return err
	}
	horizon := s.Horizon()
	// Deltas must not reach a replica they cannot repair (recover.go):
	// it is answered with this agent's vector and horizon only. Nor may a
	// replica awaiting a state transfer ship what it holds.
	why := r.deltasCannotRepair(j.peer, j.vv, own, horizon)
	if why == "" && r.needsState() {
		why = "this agent awaits a state transfer"
	}
	if why != "" {
		r.log.Debug("no deltas shipped: a state transfer is needed", "peer", j.peer, "reason", why)
		if !j.respond {
			return nil
		}
		r.c.SyncRounds.Add(1)
		msg, err := Encode(Message{Type: TypeSyncResp, From: self, VV: own, Horizon: horizon, Last: true}, nil)
		if err != nil {
			return err
		}
		return r.sendTo(j.peer, j.addr, msg)
	}
	pushBack := false
	if j.respond {
		r.c.SyncRounds.Add(1)
		pushBack = holdsMore(j.vv, own) && r.pushBacks.claim(j.peer, r.clock.Now(), r.cfg.SyncTimeout)
	}
	vv := j.vv.Clone()
	if vv == nil {
		vv = crdt.VersionVector{}
	}
	chunk := r.cfg.MaxChunkBytes
	cur, err := s.DeltasSince(ctx, vv, chunk)
	if err != nil {
		return err
	}
	first := true
	for {
		var next []crdt.Delta
		last := true
		if len(cur) > 0 {
			before := maps.Clone(vv)
			vv.Advance(cur)
			if !maps.Equal(before, vv) { // guard: a range that does not advance would repeat forever
				if next, err = s.DeltasSince(ctx, vv, chunk); err != nil {
					return err
				}
				last = len(next) == 0
			}
		}
		if why := r.staleOwnOp(cur); why != "" {
			r.needState(j.peer, why)
			if !first || !j.respond {
				return nil
			}
			cur, last = nil, true // answer with the version vector only
		}
		var m Message
		switch {
		case first && j.respond:
			m = Message{Type: TypeSyncResp, From: self, Clock: r.clockSample(), VV: own, Horizon: horizon, Last: last, PushBack: pushBack, Deltas: cur}
		case len(cur) == 0:
			return nil // nothing to push
		default:
			m = Message{Type: TypeSyncData, From: self, Last: last, Deltas: cur}
		}
		msg, err := Encode(m, nil)
		if err != nil {
			return err
		}
		if err := r.sendTo(j.peer, j.addr, msg); err != nil {
			return err
		}
		if len(cur) > 0 {
			r.c.ChunksSent.Add(1)
		}
		if last {
			return nil
		}
		first = false
		cur = next
	}
}
