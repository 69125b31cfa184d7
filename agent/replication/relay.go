package replication

import (
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/crdt"
)

// Relay: memberlist gossips a broadcast only from the node that queued it
// (RetransmitMult × log10(N+1) sends), so without help a write reaches the
// rest of a fleet only by anti-entropy, one sync interval at a time. Like
// serf's user events, a delta received by gossip that was new to this agent
// is queued for gossip again: a queue of its own sends it the same bounded
// number of times from here, and the recent set makes each agent relay a
// delta (origin, from, to) at most once while it is remembered.
//
// Relaying costs every delta RetransmitMult × log10(N+1) sends per agent
// instead of per fleet, so it is bounded: the relay queue is served after
// this agent's own deltas (and memberlist's own messages), holds at most
// relayMaxQueued deltas, and sends at most relayBytesPerSecond of them on
// average (relayBurstBytes at once). When a new delta finds the queue
// full, the deltas already sent most often leave it (memberlist's Prune),
// not the new one: under a steady write load (a fleet's device records)
// the relay spends its budget on the freshest writes, so a new write still
// spreads in well under a second, and what is cut short is left to
// anti-entropy, as without the relay. Deltas that came by anti-entropy are
// not relayed (anti-entropy is the repair path and its chunks are large);
// neither are deltas too large for a gossip packet.

// relayMaxQueued bounds the relayed deltas waiting in the relay queue:
// about a second of gossip at the LAN profile's pace, so single writes
// are always relayed and a burst does not fill gossip for minutes.
const relayMaxQueued = 16

// relayBytesPerSecond and relayBurstBytes are the relay's byte budget (a
// token bucket): a single write at 50 agents costs a relaying agent about
// 1-4 KB (8 sends of a 130-500 byte delta), so single writes are relayed
// in full, while a steady stream of writes (50 agents each writing three
// ~450-byte device records every 30 s made the relay send 13.7 KB/s per
// agent) is held to this rate.
const (
	relayBytesPerSecond = 4 << 10
	relayBurstBytes     = 8 << 10
)

// relaySeenCap bounds the deltas remembered as relayed; a delta forgotten
// and received again is relayed again only if it is still new to the store
// (mergeMessages drops deltas the version vector covers).
const relaySeenCap = 8192

// relayKey names one delta.
type relayKey struct {
	origin   string
	from, to uint64
}

// relaySet remembers the last relaySeenCap deltas relayed (a ring).
type relaySet struct {
	mu   sync.Mutex
	seen map[relayKey]struct{}
	ring []relayKey
	next int
}

// add records k; false when it was already recorded.
func (s *relaySet) add(k relayKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[k]; ok {
		return false
	}
	if s.seen == nil {
		s.seen = make(map[relayKey]struct{}, relaySeenCap)
	}
	if len(s.ring) < relaySeenCap {
		s.ring = append(s.ring, k)
	} else {
		delete(s.seen, s.ring[s.next])
		s.ring[s.next] = k
		s.next = (s.next + 1) % relaySeenCap
	}
	s.seen[k] = struct{}{}
	return true
}

// relay queues for gossip the deltas of gossip messages that were just
// merged and were new (mergeMessages left only those in msgs). It runs
// after a successful merge.
func (r *Replicator) relay(msgs []Message) {
	if !r.cfg.Relay {
		return
	}
	for _, m := range msgs {
		if m.Type != TypeDeltas {
			continue
		}
		for _, d := range m.Deltas {
			if d.Origin == r.cfg.Name || !r.relayed.add(relayKey{d.Origin, d.From, d.To}) {
				continue
			}
			msg, err := Encode(Message{Type: TypeDeltas, Deltas: []crdt.Delta{d}}, nil)
			if err != nil || len(msg) > r.cfg.MaxBroadcastBytes {
				continue // anti-entropy carries it
			}
			r.relayQ.QueueBroadcast(deltaBroadcast(msg))
			r.c.Relayed.Add(1)
			if r.relayQ.NumQueued() > relayMaxQueued {
				r.relayQ.Prune(relayMaxQueued) // the most sent leave; anti-entropy carries the rest of them
				r.c.RelaySkipped.Add(1)
			}
		}
	}
}

// relayBroadcasts fills what room a gossip packet has left after this
// agent's own broadcasts with relayed deltas, within the relay's budget.
func (r *Replicator) relayBroadcasts(own [][]byte, overhead, limit int) [][]byte {
	for _, b := range own {
		limit -= overhead + len(b)
	}
	if limit <= overhead || r.relayQ.NumQueued() == 0 {
		return own
	}
	r.relayBudget.Lock()
	defer r.relayBudget.Unlock()
	limit = min(limit, r.relayBudget.available(r.clock.Now()))
	if limit <= overhead {
		return own
	}
	relayed := r.relayQ.GetBroadcasts(overhead, limit)
	for _, b := range relayed {
		r.c.Sent.add(b, true)
		r.relayBudget.tokens -= float64(overhead + len(b))
	}
	return append(own, relayed...)
}

// tokenBucket is the relay's byte budget; the caller holds its lock.
type tokenBucket struct {
	sync.Mutex
	tokens float64
	at     time.Time
}

// available refills the bucket up to now and returns the bytes it holds.
func (b *tokenBucket) available(now time.Time) int {
	if b.at.IsZero() {
		b.tokens = relayBurstBytes
	} else if el := now.Sub(b.at).Seconds(); el > 0 {
		b.tokens = min(relayBurstBytes, b.tokens+el*relayBytesPerSecond)
	}
	b.at = now
	return int(b.tokens)
}

// Queued returns how many broadcasts wait in this agent's own gossip queue
// and in its relay queue.
func (r *Replicator) Queued() (own, relay int) {
	return r.bcast.NumQueued(), r.relayQ.NumQueued()
}
