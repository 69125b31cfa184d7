package replication

import (
	"sync"

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
// this agent's own deltas (and memberlist's own messages), and holds at
// most relayMaxQueued deltas; beyond that, during a burst of writes,
// deltas are not relayed and anti-entropy carries them, as before. Deltas
// that came by anti-entropy are not relayed (anti-entropy is the repair
// path and its chunks are large); neither are deltas too large for a
// gossip packet.

// relayMaxQueued bounds the relayed deltas waiting in the relay queue:
// about a second of gossip at the LAN profile's pace, so single writes
// are always relayed and a burst does not fill gossip for minutes.
const relayMaxQueued = 16

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
			if r.relayQ.NumQueued() >= relayMaxQueued {
				r.c.RelaySkipped.Add(1) // anti-entropy carries it
				continue
			}
			msg, err := Encode(Message{Type: TypeDeltas, Deltas: []crdt.Delta{d}}, nil)
			if err != nil || len(msg) > r.cfg.MaxBroadcastBytes {
				continue // anti-entropy carries it
			}
			r.relayQ.QueueBroadcast(deltaBroadcast(msg))
			r.c.Relayed.Add(1)
		}
	}
}

// relayBroadcasts fills what room a gossip packet has left after this
// agent's own broadcasts with relayed deltas.
func (r *Replicator) relayBroadcasts(own [][]byte, overhead, limit int) [][]byte {
	for _, b := range own {
		limit -= overhead + len(b)
	}
	if limit <= overhead {
		return own
	}
	relayed := r.relayQ.GetBroadcasts(overhead, limit)
	for _, b := range relayed {
		r.c.Sent.add(b, true)
	}
	return append(own, relayed...)
}

// Queued returns how many broadcasts wait in this agent's own gossip queue
// and in its relay queue.
func (r *Replicator) Queued() (own, relay int) {
	return r.bcast.NumQueued(), r.relayQ.NumQueued()
}
