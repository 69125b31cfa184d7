package agent

import (
	"context"
	"time"

	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/hashicorp/memberlist"
)

// delegate receives memberlist's callbacks. memberlist calls them on its
// network goroutines, some with its node lock held: none of them blocks.
type delegate struct{ a *Agent }

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
)

// NodeMeta returns the agent's metadata (id, version, labels). Config
// validation keeps it within memberlist's limit.
func (d *delegate) NodeMeta(limit int) []byte {
	if len(d.a.meta) > limit {
		d.a.log.Error("node metadata exceeds memberlist limit; advertising none", "bytes", len(d.a.meta), "limit", limit)
		return nil
	}
	return d.a.meta
}

// NotifyMsg hands a received user message to the apply worker without
// blocking: the bytes are copied (memberlist reuses its buffer) and queued;
// when the queue is full the message is dropped and counted.
func (d *delegate) NotifyMsg(b []byte) { d.a.enqueueInbound(b) }

// GetBroadcasts serves queued local deltas to memberlist's gossip.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.a.bcast.GetBroadcasts(overhead, limit)
}

// LocalState is this agent's part of a push/pull exchange: its name and
// version vector, so the peer can ship what this agent lacks.
func (d *delegate) LocalState(join bool) []byte {
	a := d.a
	s := a.Store()
	if s == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	vv, err := s.VersionVector(ctx)
	if err != nil {
		a.log.Debug("push/pull without version vector", "err", err)
		return nil
	}
	msg, err := encodeMessage(message{Type: msgState, From: a.Name(), VV: vv}, nil)
	if err != nil {
		a.log.Error("encoding push/pull state", "err", err)
		return nil
	}
	return msg
}

// MergeRemoteState receives a peer's LocalState; the apply worker records
// its version vector and ships what it lacks.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	if len(buf) == 0 {
		return
	}
	d.a.enqueueInbound(buf)
}

// NotifyJoin records a member that joined or came back (after a partition
// or a restart) and schedules an anti-entropy exchange with it.
func (d *delegate) NotifyJoin(n *memberlist.Node) {
	a := d.a
	meta := a.peerMeta(n)
	prev, _ := a.peers.Load().Upsert(n, StateAlive, meta)
	if n.Name == a.Name() {
		return
	}
	if prev == StateDead {
		a.lastRevival.Store(a.clk.Now().UnixNano())
		a.announceAlive()
	}
	a.log.Info("member joined", "member", n.Name, "addr", n.Address(), "previous", prev)
	a.syncer.enqueue(n.Name)
}

// NotifyLeave records a member that failed (dead) or, after its leave
// intent, left.
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	a := d.a
	_, state := a.peers.Load().Upsert(n, StateDead, a.peerMeta(n))
	if n.Name != a.Name() {
		a.log.Info("member down", "member", n.Name, "state", state)
	}
}

// NotifyUpdate records a member's new metadata or address.
func (d *delegate) NotifyUpdate(n *memberlist.Node) {
	a := d.a
	a.peers.Load().Upsert(n, StateAlive, a.peerMeta(n))
}

func (a *Agent) peerMeta(n *memberlist.Node) NodeMeta {
	meta, err := membership.DecodeMeta(n.Meta)
	if err != nil {
		a.log.Warn("ignoring bad node metadata", "member", n.Name, "err", err)
		return NodeMeta{}
	}
	return meta
}

// enqueueInbound copies b onto the inbound queue, or drops it.
func (a *Agent) enqueueInbound(b []byte) {
	if len(b) > maxMessageBytes {
		a.m.reject(membership.ReasonOversized)
		a.log.Warn("gossip rejected", "reason", membership.ReasonOversized, "bytes", len(b), "limit", maxMessageBytes)
		return
	}
	if a.inBytes.Load()+int64(len(b)) > inboundBudget {
		a.drop(len(b))
		return
	}
	buf := make([]byte, len(b))
	copy(buf, b)
	a.inBytes.Add(int64(len(buf)))
	select {
	case a.inbound <- buf:
	default:
		a.inBytes.Add(-int64(len(buf)))
		a.drop(len(b))
	}
}

func (a *Agent) drop(n int) {
	if a.m.dropped.Add(1)%100 == 1 {
		a.log.Warn("inbound replication queue full; dropping messages (anti-entropy repairs them)", "bytes", n, "dropped_total", a.m.dropped.Load())
	}
}
