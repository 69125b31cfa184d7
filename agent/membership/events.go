package membership

import "github.com/hashicorp/memberlist"

// delegate receives memberlist's callbacks: membership events here, the
// rest forwarded to the cluster's Data. memberlist calls them on its
// network goroutines, some with its node lock held: none of them blocks.
type delegate struct{ c *Cluster }

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
)

// NodeMeta returns the agent's metadata (id, version, labels). Config
// validation keeps it within memberlist's limit.
func (d *delegate) NodeMeta(limit int) []byte {
	if meta := d.c.cfg.Meta; len(meta) > limit {
		d.c.log.Error("node metadata exceeds memberlist limit; advertising none", "bytes", len(meta), "limit", limit)
		return nil
	}
	return d.c.cfg.Meta
}

func (d *delegate) NotifyMsg(b []byte) { d.c.data.NotifyMsg(b) }

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.c.data.GetBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(join bool) []byte { return d.c.data.LocalState(join) }

func (d *delegate) MergeRemoteState(buf []byte, join bool) { d.c.data.MergeRemoteState(buf, join) }

// NotifyJoin records a member that joined or came back (after a partition
// or a restart) and tells the data delegate, which schedules an
// anti-entropy exchange with it.
func (d *delegate) NotifyJoin(n *memberlist.Node) {
	c := d.c
	prev, _ := c.table.Upsert(n, StateAlive, c.peerMeta(n))
	if n.Name == c.cfg.Name {
		return
	}
	if prev == StateDead {
		c.lastRevival.Store(c.clock.Now().UnixNano())
		c.announceAlive()
	}
	c.log.Info("member joined", "member", n.Name, "addr", n.Address(), "previous", prev)
	c.data.Joined(n.Name)
}

// NotifyLeave records a member that failed (dead) or, after its leave
// intent, left.
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	c := d.c
	_, state := c.table.Upsert(n, StateDead, c.peerMeta(n))
	if n.Name != c.cfg.Name {
		c.log.Info("member down", "member", n.Name, "state", state)
	}
}

// NotifyUpdate records a member's new metadata or address.
func (d *delegate) NotifyUpdate(n *memberlist.Node) {
	c := d.c
	c.table.Upsert(n, StateAlive, c.peerMeta(n))
}

func (c *Cluster) peerMeta(n *memberlist.Node) NodeMeta {
	meta, err := DecodeMeta(n.Meta)
	if err != nil {
		c.log.Warn("ignoring bad node metadata", "member", n.Name, "err", err)
		return NodeMeta{}
	}
	return meta
}
