package agent

import (
	"crypto/sha256"
	"encoding/binary"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/crdt"
	"github.com/hashicorp/memberlist"
)

// Member states reported by Members and edgefleet_members. memberlist
// exposes no safe hook for suspicion, so a suspect member is reported alive
// until it is declared dead.
const (
	StateAlive = "alive"
	StateDead  = "dead" // failed: declared dead by the failure detector; retried by the reconnect loop
	StateLeft  = "left" // left gracefully
)

var memberStates = []string{StateAlive, StateDead, StateLeft}

// Member is a cluster member as this agent knows it.
type Member struct {
	Name  string   `json:"name"`
	Addr  string   `json:"addr"` // gossip address host:port
	State string   `json:"state"`
	Meta  NodeMeta `json:"meta"`
}

// peer is the agent's record of one member.
type peer struct {
	name  string
	ip    net.IP
	port  uint16
	state string
	meta  NodeMeta
	since time.Time          // when state last changed
	vv    crdt.VersionVector // last version vector the peer reported; nil if none
	vvAt  time.Time          // when it was reported
	// leavingUntil is set by the peer's leave intent: if it goes down
	// before then, it left rather than failed.
	leavingUntil time.Time
}

// leaveIntentTTL is how long a leave intent marks a live peer as leaving.
const leaveIntentTTL = 15 * time.Second

func (p *peer) addr() string { return net.JoinHostPort(p.ip.String(), strconv.Itoa(int(p.port))) }

func (p *peer) node() *memberlist.Node {
	return &memberlist.Node{Name: p.name, Addr: p.ip, Port: p.port}
}

// peerTable tracks members from memberlist's events (which memberlist
// delivers one at a time, in order) and the version vectors peers report.
type peerTable struct {
	self string
	now  func() time.Time

	mu    sync.Mutex
	peers map[string]*peer
}

func newPeerTable(self string, now func() time.Time) *peerTable {
	return &peerTable{self: self, now: now, peers: make(map[string]*peer)}
}

// upsert records n in state, returning the previous state ("" if new) and
// the state recorded. memberlist does not tell failed members from members
// that left (its Node.State is not maintained in events), so a member going
// down is recorded as left only after its leave intent (markLeaving).
func (t *peerTable) upsert(n *memberlist.Node, state string, meta NodeMeta) (prev, now string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[n.Name]
	if !ok {
		p = &peer{name: n.Name}
		t.peers[n.Name] = p
	}
	prev = p.state
	switch state {
	case StateAlive:
		p.leavingUntil = time.Time{}
	case StateDead:
		if t.now().Before(p.leavingUntil) {
			state = StateLeft
		}
	}
	p.ip = append(net.IP(nil), n.Addr...)
	p.port = n.Port
	p.meta = meta
	if prev != state {
		p.state = state
		p.since = t.now()
	}
	return prev, state
}

// markLeaving records a member's leave intent and reports whether it was
// news (then it is worth passing on).
func (t *peerTable) markLeaving(name string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[name]
	if !ok || name == t.self {
		return false
	}
	now := t.now()
	switch p.state {
	case StateDead:
		p.state = StateLeft
		p.since = now
		return true
	case StateAlive:
		if now.Before(p.leavingUntil) {
			return false
		}
		p.leavingUntil = now.Add(leaveIntentTTL)
		return true
	}
	return false
}

// setVV records a version vector reported by a peer. Reports can arrive out
// of order and a peer's state only grows, so they are merged.
func (t *peerTable) setVV(name string, vv crdt.VersionVector) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[name]
	if !ok {
		return // not a member (yet): its VV is learned again on the next exchange
	}
	p.vvAt = t.now()
	if p.vv == nil {
		p.vv = vv.Clone()
		return
	}
	p.vv.Merge(vv)
}

// reportedVV returns a copy of the version vector the named peer last
// reported and when.
func (t *peerTable) reportedVV(name string) (crdt.VersionVector, time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[name]
	if !ok || p.vv == nil {
		return nil, time.Time{}, false
	}
	return p.vv.Clone(), p.vvAt, true
}

// lookup returns a copy of the named peer's address record.
func (t *peerTable) lookup(name string) (*memberlist.Node, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[name]
	if !ok || name == t.self {
		return nil, false
	}
	return p.node(), true
}

// withState returns the names and addresses of the other members in state.
func (t *peerTable) withState(state string) []*peer {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*peer
	for _, p := range t.peers {
		if p.name != t.self && p.state == state {
			out = append(out, &peer{name: p.name, ip: p.ip, port: p.port, state: p.state, since: p.since})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// membersDigest summarizes the set of members seen alive (this agent
// included). Agents exchange it in sync requests; when two disagree they
// run a memberlist push/pull, so a member whose join announcement one of
// them missed is learned within a sync interval instead of waiting for
// memberlist's own push/pull (30-60 s at fleet sizes).
func (t *peerTable) membersDigest() uint64 {
	t.mu.Lock()
	names := make([]string, 0, len(t.peers))
	for name, p := range t.peers {
		if p.state == StateAlive {
			names = append(names, name)
		}
	}
	t.mu.Unlock()
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		h.Write([]byte(n))
		h.Write([]byte{0})
	}
	return binary.BigEndian.Uint64(h.Sum(nil))
}

// stateOf returns the named member's state, "" if unknown.
func (t *peerTable) stateOf(name string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.peers[name]; ok {
		return p.state
	}
	return ""
}

func (t *peerTable) count(state string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, p := range t.peers {
		if p.state == state {
			n++
		}
	}
	return n
}

// reap forgets members that failed or left longer than timeout ago.
func (t *peerTable) reap(timeout time.Duration) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	var gone []string
	for name, p := range t.peers {
		if name != t.self && p.state != StateAlive && now.Sub(p.since) > timeout {
			delete(t.peers, name)
			gone = append(gone, name)
		}
	}
	return gone
}

// stableVV returns the pointwise minimum of self and the version vectors
// of every member that has not left, and whether it is usable: every such
// member, alive or failed, must have reported one (a failed member may come
// back holding no more than what it last reported).
func (t *peerTable) stableVV(self crdt.VersionVector) (crdt.VersionVector, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	vvs := []crdt.VersionVector{self}
	for name, p := range t.peers {
		if name == t.self || p.state == StateLeft {
			continue
		}
		if p.vv == nil {
			return nil, false
		}
		vvs = append(vvs, p.vv)
	}
	return crdt.MinVersionVector(vvs...), true
}

// lag sums, over alive peers' reported version vectors, the ops they hold
// that self lacks.
func (t *peerTable) lag(self crdt.VersionVector) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var total uint64
	for name, p := range t.peers {
		if name == t.self || p.state != StateAlive {
			continue
		}
		for origin, seq := range p.vv {
			if have := self[origin]; seq > have {
				total += seq - have
			}
		}
	}
	return total
}

func (t *peerTable) members() []Member {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Member, 0, len(t.peers))
	for _, p := range t.peers {
		meta := p.meta
		if meta.Labels != nil {
			labels := make(map[string]string, len(meta.Labels))
			for k, v := range meta.Labels {
				labels[k] = v
			}
			meta.Labels = labels
		}
		out = append(out, Member{Name: p.name, Addr: p.addr(), State: p.state, Meta: meta})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
