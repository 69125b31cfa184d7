package membership

import (
	"crypto/sha256"
	"encoding/binary"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/clock"
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

// States lists the member states.
var States = []string{StateAlive, StateDead, StateLeft}

// Member is a cluster member as this agent knows it.
type Member struct {
	Name  string   `json:"name"`
	Addr  string   `json:"addr"` // gossip address host:port
	State string   `json:"state"`
	Meta  NodeMeta `json:"meta"`
}

// Peer is a snapshot of another member (Table.WithState).
type Peer struct {
	Name  string
	Addr  string // gossip address host:port
	State string
	Since time.Time // when State last changed
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
	// clock is the peer's clock as last reported while its wall clock was
	// sane (zero if never), clockAt when that was on the local clock.
	clock, clockAt time.Time
}

// ClockSampleTTL is how long a peer's reported clock counts in FleetClocks.
const ClockSampleTTL = 10 * time.Minute

// leaveIntentTTL is how long a leave intent marks a live peer as leaving.
const leaveIntentTTL = 15 * time.Second

func (p *peer) addr() string { return net.JoinHostPort(p.ip.String(), strconv.Itoa(int(p.port))) }

func (p *peer) node() *memberlist.Node {
	return &memberlist.Node{Name: p.name, Addr: p.ip, Port: p.port}
}

// Table tracks members from memberlist's events (which memberlist
// delivers one at a time, in order) and the version vectors peers report.
type Table struct {
	self  string
	clock clock.Clock

	mu    sync.Mutex
	peers map[string]*peer
}

// NewTable returns the table of the agent named self; nil clk means
// clock.Real().
func NewTable(self string, clk clock.Clock) *Table {
	return &Table{self: self, clock: clock.Or(clk), peers: make(map[string]*peer)}
}

// Upsert records n in state, returning the previous state ("" if new) and
// the state recorded. memberlist does not tell failed members from members
// that left (its Node.State is not maintained in events), so a member going
// down is recorded as left only after its leave intent (MarkLeaving).
func (t *Table) Upsert(n *memberlist.Node, state string, meta NodeMeta) (prev, now string) {
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
		if t.clock.Now().Before(p.leavingUntil) {
			state = StateLeft
		}
	}
	p.ip = append(net.IP(nil), n.Addr...)
	p.port = n.Port
	p.meta = meta
	if prev != state {
		p.state = state
		p.since = t.clock.Now()
	}
	return prev, state
}

// MarkLeaving records a member's leave intent and reports whether it was
// news (then it is worth passing on).
func (t *Table) MarkLeaving(name string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[name]
	if !ok || name == t.self {
		return false
	}
	now := t.clock.Now()
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

// SetVV records a version vector reported by a peer. Reports can arrive out
// of order and a peer's state only grows, so they are merged.
func (t *Table) SetVV(name string, vv crdt.VersionVector) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[name]
	if !ok {
		return // not a member (yet): its VV is learned again on the next exchange
	}
	p.vvAt = t.clock.Now()
	if p.vv == nil {
		p.vv = vv.Clone()
		return
	}
	p.vv.Merge(vv)
}

// SetClock records a peer's clock reading, received now; sane is whether
// the peer judged its own wall clock sane. A reading of a peer whose wall
// clock is wrong is forgotten: it says nothing about the fleet's time.
func (t *Table) SetClock(name string, at time.Time, sane bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[name]
	if !ok || name == t.self {
		return
	}
	if !sane {
		p.clock, p.clockAt = time.Time{}, time.Time{}
		return
	}
	p.clock, p.clockAt = at, t.clock.Now()
}

// FleetClocks returns the clocks of the alive peers that reported a sane
// one within ClockSampleTTL, each aged on the local clock to now (the local
// clock's monotonic reading, so a wall clock being set does not move
// them).
func (t *Table) FleetClocks() []time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.clock.Now()
	var out []time.Time
	for name, p := range t.peers {
		if name == t.self || p.state != StateAlive || p.clockAt.IsZero() {
			continue
		}
		if age := now.Sub(p.clockAt); age >= 0 && age <= ClockSampleTTL {
			out = append(out, p.clock.Add(age))
		}
	}
	return out
}

// ReportedVV returns a copy of the version vector the named peer last
// reported and when.
func (t *Table) ReportedVV(name string) (crdt.VersionVector, time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[name]
	if !ok || p.vv == nil {
		return nil, time.Time{}, false
	}
	return p.vv.Clone(), p.vvAt, true
}

// Lookup returns a copy of the named peer's address record.
func (t *Table) Lookup(name string) (*memberlist.Node, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[name]
	if !ok || name == t.self {
		return nil, false
	}
	return p.node(), true
}

// WithState returns the other members in state, sorted by name.
func (t *Table) WithState(state string) []Peer {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Peer
	for _, p := range t.peers {
		if p.name != t.self && p.state == state {
			out = append(out, Peer{Name: p.name, Addr: p.addr(), State: p.state, Since: p.since})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Digest summarizes the set of members seen alive (this agent
// included). Agents exchange it in sync requests; when two disagree they
// run a memberlist push/pull, so a member whose join announcement one of
// them missed is learned within a sync interval instead of waiting for
// memberlist's own push/pull (30-60 s at fleet sizes).
func (t *Table) Digest() uint64 {
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

// StateOf returns the named member's state, "" if unknown.
func (t *Table) StateOf(name string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.peers[name]; ok {
		return p.state
	}
	return ""
}

// Count returns how many members (this agent included) are in state.
func (t *Table) Count(state string) int {
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

// Reap forgets members that failed or left longer than timeout ago.
func (t *Table) Reap(timeout time.Duration) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.clock.Now()
	var gone []string
	for name, p := range t.peers {
		if name != t.self && p.state != StateAlive && now.Sub(p.since) > timeout {
			delete(t.peers, name)
			gone = append(gone, name)
		}
	}
	return gone
}

// StableVV returns the pointwise minimum of self and the version vectors
// of every member that has not left, and whether it is usable: every such
// member, alive or failed, must have reported one (a failed member may come
// back holding no more than what it last reported).
func (t *Table) StableVV(self crdt.VersionVector) (crdt.VersionVector, bool) {
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

// Lag sums, over alive peers' reported version vectors, the ops they hold
// that self lacks.
func (t *Table) Lag(self crdt.VersionVector) uint64 {
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

// Members lists every member, this agent included, sorted by name.
func (t *Table) Members() []Member {
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
