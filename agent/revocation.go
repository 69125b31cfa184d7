package agent

import (
	"context"
	"encoding/binary"

	"github.com/edgefleet/edgefleet/agent/keys"
	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/agent/replication"
)

// Wiring of revocation: the control plane's signed revocation list
// arrives with key answers (uplink Deps.Revocations) or from peers in the
// replicated collection keys.revocations (package agent/keys); the
// cluster refuses the listed nodes (membership.Cluster.SetRefused), and
// the data filter below refuses the replication messages they send over
// streams, where the transport cannot tell who sent them.

// RevocationCollection is the replicated LWW collection of the revocation
// list (package agent/keys).
const RevocationCollection = keys.RevocationCollection

// Revocations is the agent's revocation list holder; nil without a
// control plane and before Start.
func (a *Agent) Revocations() *keys.Revocations { return a.revocations.Load() }

// offerRevocations is the uplink's Deps.Revocations.
func (a *Agent) offerRevocations(ctx context.Context, raw []byte) {
	if r := a.revocations.Load(); r != nil {
		r.Offer(ctx, raw, "control_plane") //nolint:errcheck // refusals are logged and counted
	}
}

// newRevocations prepares the holder before the uplink starts, so the
// first key answer already reaches it; startRevocations runs it.
func (a *Agent) newRevocations(cluster *membership.Cluster) error {
	if a.cfg.ControlPlane.URL == "" {
		return nil
	}
	r, err := keys.NewRevocations(keys.RevocationsConfig{
		State: replicated{a}, Keys: a.Keys, Changed: func(names map[string]bool) { a.refuse(cluster, names) },
		Interval: a.cfg.Gossip.SyncInterval, Clock: a.clk,
		Logger: a.log.With("component", "revocations"), Registry: a.reg,
	})
	if err != nil {
		return err
	}
	a.revocations.Store(r)
	return nil
}

// refuse enforces a newer revocation list: the cluster refuses the
// revoked nodes, and the bootstrap gossip key, which they know, leaves
// the keyring now rather than at the end of its grace period.
func (a *Agent) refuse(cluster *membership.Cluster, names map[string]bool) {
	cluster.SetRefused(names)
	if a.gossipKeys != nil && len(names) > 0 {
		a.gossipKeys.EndGrace()
		a.keysChanged.Fire() // the rotator re-plans its next step
	}
}

// startRevocations reads the replicated list now and every sync interval.
func (a *Agent) startRevocations(ctx context.Context) {
	if r := a.revocations.Load(); r != nil {
		a.goLoop(func() { r.Run(ctx) })
	}
}

// refusingData is the cluster's data delegate: replication, minus the
// messages of refused (revoked) nodes: a message whose sender is refused,
// and a gossip broadcast of ops one of them originated. Ops they made
// before the revocation still arrive by anti-entropy from other agents:
// nothing stored is lost.
type refusingData struct {
	membership.Data
	cluster *membership.Cluster
	reject  func(reason string)
}

func (d refusingData) NotifyMsg(b []byte) {
	if d.fromRefused(b) {
		d.reject(membership.ReasonRevoked)
		return
	}
	d.Data.NotifyMsg(b)
}

func (d refusingData) MergeRemoteState(buf []byte, join bool) {
	if d.fromRefused(buf) {
		d.reject(membership.ReasonRevoked)
		return
	}
	d.Data.MergeRemoteState(buf, join)
}

// fromRefused reads the sender of a replication message (see package
// replication's message layout) or, for a broadcast of ops, their
// origins. Malformed messages are left to replication.
func (d refusingData) fromRefused(b []byte) bool {
	if len(b) == 0 || !d.cluster.RefusesAny() {
		return false // the common case: no decoding twice
	}
	switch b[0] {
	case replication.TypeDeltas:
		m, err := replication.Decode(b)
		if err != nil {
			return false
		}
		for _, dl := range m.Deltas {
			if d.cluster.Refused(dl.Origin) {
				return true
			}
		}
		return false
	case replication.TypeSyncReq, replication.TypeState, replication.TypeLeave:
		return d.cluster.Refused(senderName(b[1:]))
	case replication.TypeSyncResp, replication.TypeSyncData:
		if len(b) < 2 {
			return false
		}
		return d.cluster.Refused(senderName(b[2:]))
	}
	return false
}

// senderName reads a uvarint-length-prefixed name; "" when malformed.
func senderName(b []byte) string {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > replication.MaxNodeNameLen || uint64(len(b)-k) < n {
		return ""
	}
	return string(b[k : k+int(n)])
}
