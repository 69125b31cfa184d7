package replication

import (
	"sync"

	"github.com/edgefleet/edgefleet/crdt"
)

// Relay: memberlist gossips a broadcast only from the node that queued it
// (RetransmitMult × log10(N+1) sends), so without help a write reaches the
// rest of a fleet only by anti-entropy, one sync interval at a time. Like
// serf's user events, a delta received by gossip that was new to this agent
// is queued for gossip again: the broadcast queue sends it the same bounded
// number of times from here, and the recent set makes each agent relay a
// delta (origin, from, to) at most once while it is remembered. Deltas that
// came by anti-entropy are not relayed (anti-entropy is the repair path and
// its chunks are large); neither are deltas too large for a gossip packet.

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
			r.queueBroadcast(msg)
			r.c.Relayed.Add(1)
		}
	}
}
