package membership

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// Refusing revoked members. The agent hands the cluster the node names on
// the control plane's revocation list (SetRefused); from then on:
//
//   - memberlist's alive delegate refuses them: an alive message (a join,
//     a refutation, a rejoin) for a refused name is dropped, so the node
//     never becomes, or becomes again, a member;
//   - memberlist's merge delegate cancels a push/pull whose peer lists a
//     refused node alive: the refused node's own push/pull (which would
//     carry its state) among them;
//   - the transport drops packets from and to a refused member's gossip
//     address and refuses to dial it, so probes of it fail, memberlist
//     declares it dead, and nothing is sent to it any more;
//   - Alive leaves refused members out, so replication picks none of them.
//
// Streams a refused node opens to this agent carry no sender name at the
// transport; the agent's data filter refuses their replication messages by
// their sender (package agent).

// ReasonRevoked labels traffic refused because it comes from, or is about,
// a revoked node.
const ReasonRevoked = "revoked"

// refusal is the set of refused names and their known gossip addresses.
type refusal struct {
	names map[string]bool
	addrs map[string]bool // CanonicalAddr form
}

func (r *refusal) has(name string) bool { return r != nil && r.names[name] }

func (r *refusal) hasAddr(addr string) bool { return r != nil && r.addrs[CanonicalAddr(addr)] }

// SetRefused replaces the set of refused node names (this agent's own
// name is never refused). Members already known get their addresses
// blocked at once.
func (c *Cluster) SetRefused(names map[string]bool) {
	next := &refusal{names: map[string]bool{}, addrs: map[string]bool{}}
	for n := range names {
		if n != c.cfg.Name {
			next.names[n] = true
		}
	}
	if prev := c.tr.refused.Load(); prev != nil {
		for a := range prev.addrs {
			next.addrs[a] = true // addresses learned from refused alive messages
		}
	}
	var added []string
	for n := range next.names {
		if node, ok := c.table.Lookup(n); ok {
			next.addrs[CanonicalAddr(node.Address())] = true
		}
		if !c.tr.refused.Load().has(n) {
			added = append(added, n)
		}
	}
	c.tr.refused.Store(next)
	if len(added) > 0 {
		slices.Sort(added)
		c.log.Warn("refusing revoked members", "members", added, "refused", len(next.names))
	}
}

// Refused reports whether name is refused.
func (c *Cluster) Refused(name string) bool { return c.tr.refused.Load().has(name) }

// RefusesAny reports whether any name is refused.
func (c *Cluster) RefusesAny() bool {
	r := c.tr.refused.Load()
	return r != nil && len(r.names) > 0
}

// refuseAddr blocks the gossip address of a refused node seen in an alive
// message.
func (c *Cluster) refuseAddr(addr string) {
	for {
		cur := c.tr.refused.Load()
		if cur == nil || cur.addrs[CanonicalAddr(addr)] {
			return
		}
		next := &refusal{names: cur.names, addrs: maps.Clone(cur.addrs)}
		next.addrs[CanonicalAddr(addr)] = true
		if c.tr.refused.CompareAndSwap(cur, next) {
			return
		}
	}
}

var (
	_ memberlist.AliveDelegate = (*delegate)(nil)
	_ memberlist.MergeDelegate = (*delegate)(nil)
)

// NotifyAlive refuses an alive message about a refused node.
func (d *delegate) NotifyAlive(n *memberlist.Node) error {
	c := d.c
	if !c.Refused(n.Name) {
		return nil
	}
	c.refuseAddr(net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))))
	c.cfg.Reject(ReasonRevoked)
	return fmt.Errorf("membership: node %s is revoked", n.Name)
}

// NotifyMerge cancels a push/pull whose peer lists a refused node alive.
func (d *delegate) NotifyMerge(peers []*memberlist.Node) error {
	c := d.c
	for _, n := range peers {
		if n.State == memberlist.StateAlive && c.Refused(n.Name) {
			c.cfg.Reject(ReasonRevoked)
			return fmt.Errorf("membership: push/pull lists revoked node %s alive", n.Name)
		}
	}
	return nil
}

// refusedPacket reports whether an incoming packet comes from a refused
// member's address.
func (t *countingTransport) refusedPacket(p *memberlist.Packet) bool {
	r := t.refused.Load()
	if r == nil || p.From == nil || !r.hasAddr(p.From.String()) {
		return false
	}
	t.reject(ReasonRevoked, fmt.Sprintf("packet from revoked member at %v", p.From))
	return true
}

// refusedTo reports whether traffic to a is refused.
func (t *countingTransport) refusedTo(a memberlist.Address) bool {
	r := t.refused.Load()
	return r != nil && (r.has(a.Name) || r.hasAddr(a.Addr))
}

// errRefusedDial is the dial error to a refused member.
func errRefusedDial(a memberlist.Address) error {
	return fmt.Errorf("membership: %s (%s) is revoked: %w", a.Name, a.Addr, errRevoked)
}

var errRevoked = errors.New("membership: revoked node")

// droppedWrite is what a write to a refused member returns: success, so
// memberlist does not log it, and nothing sent.
func droppedWrite() (time.Time, error) { return time.Now(), nil }
