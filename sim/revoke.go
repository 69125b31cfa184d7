package sim

import (
	"context"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// RevokeBound is the time within which every live agent must refuse a
// revoked agent's gossip (issue 11's "revocation takes effect within a
// bound").
const RevokeBound = 60 * time.Second

// RevokeReport describes the revocation phase: one agent is
// decommissioned at the control plane while the others gossip.
type RevokeReport struct {
	// Agent is the revoked agent's node name; LiveAgents the agents that
	// must refuse it.
	Agent      string `json:"agent"`
	LiveAgents int    `json:"live_agents"`
	// RefusedSeconds is the time from the decommission call until every
	// live agent enforces the signed revocation list and no longer holds
	// the revoked node alive; BoundSeconds the bound it must stay within,
	// WithinBound whether it did.
	RefusedSeconds float64 `json:"refused_seconds"`
	BoundSeconds   float64 `json:"bound_seconds"`
	WithinBound    bool    `json:"within_bound"`
	// ListSeconds is, per live agent, the time until it adopted the list;
	// FromPeers counts the agents that adopted it from peers (replicated
	// state) rather than from the control plane.
	ListSeconds Percentiles `json:"list_seconds"`
	FromPeers   int         `json:"agents_adopted_from_peers"`
	// InjectedReached counts the live agents holding the op the revoked
	// agent wrote once it was refused everywhere, InjectWaitSeconds
	// after (must be 0). EarlierKept counts those holding the op it wrote
	// before its revocation (must be LiveAgents: nothing stored is lost).
	InjectedReached   int     `json:"injected_op_reached"`
	InjectWaitSeconds float64 `json:"inject_wait_seconds"`
	EarlierKept       int     `json:"earlier_op_kept"`
	// LiveMinAlive is the fewest live agents some live agent saw alive
	// at the end (must be LiveAgents: the live cluster did not split).
	LiveMinAlive int `json:"live_min_alive"`
	// The revocation rotates the gossip key. GossipInstallGrace is the
	// key's install grace in this phase (the new version becomes primary
	// that long after its creation); GossipRemoveGrace its remove grace,
	// which no longer applies: the control plane retires the older
	// versions once every live agent confirmed the new one.
	// OldGossipKeyRemovedSeconds is the time from the decommission until
	// every live agent's keyring holds GossipVersion alone: neither an
	// older version nor the shared bootstrap key, so the revoked agent's
	// keys open nothing of theirs any more.
	GossipInstallGrace         float64 `json:"gossip_install_grace_seconds"`
	GossipRemoveGrace          float64 `json:"gossip_remove_grace_seconds"`
	GossipVersion              uint32  `json:"gossip_key_version"`
	OldGossipKeyRemovedSeconds float64 `json:"old_gossip_key_removed_seconds"`
}

// runRevoke decommissions the last agent and measures how fast the
// others refuse it, then whether an op it injects afterwards reaches
// anyone.
func (f *Fleet) runRevoke(ctx context.Context) (*RevokeReport, error) {
	log := f.opts.Logger
	revoked := f.nodes[len(f.nodes)-1]
	live := f.nodes[:len(f.nodes)-1]
	rep := &RevokeReport{Agent: revoked.name, LiveAgents: len(live), BoundSeconds: RevokeBound.Seconds()}
	wait := max(f.opts.Timeout, 2*RevokeBound)

	// An op written before the revocation reaches everyone and stays.
	if err := revoked.ag.Put(ctx, collKV, "revoke-before", []byte(`{"phase":"before"}`)); err != nil {
		return nil, fmt.Errorf("sim: revoke: write before: %w", err)
	}
	if err := f.waitHolding(ctx, live, "revoke-before", wait); err != nil {
		return nil, err
	}
	id := revoked.ag.Uplink().Status().AgentID
	if id == "" {
		return nil, fmt.Errorf("sim: revoke: %s is not enrolled", revoked.name)
	}
	// The gossip key's install grace as in the rotation phase; a remove
	// grace of an hour shows that retirement does not wait for it.
	scaled := func(d time.Duration) string { return time.Duration(float64(d) * f.opts.TimeScale).String() }
	pol := cpapi.KeyPolicy{AllAgents: true, InstallGrace: scaled(f.opts.RotateGrace), RemoveGrace: scaled(time.Hour), RotationPeriod: "off"}
	if _, err := f.cp.client.SetKeyPolicy(ctx, cpapi.GossipKeyName, pol); err != nil {
		return nil, fmt.Errorf("sim: revoke: gossip key policy: %w", err)
	}
	rep.GossipInstallGrace, rep.GossipRemoveGrace = f.opts.RotateGrace.Seconds(), time.Hour.Seconds()
	fromPeers0 := f.adoptedFromPeers(live)
	start := time.Now()
	if _, err := f.cp.client.Decommission(ctx, id); err != nil {
		return nil, fmt.Errorf("sim: revoke: decommission %s: %w", revoked.name, err)
	}
	log.Info("agent decommissioned; waiting until every live agent refuses it", "agent", revoked.name)
	ks, err := f.cp.client.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("sim: revoke: listing keys: %w", err)
	}
	for _, k := range ks.Keys {
		if k.Name == cpapi.GossipKeyName {
			rep.GossipVersion = k.LatestVersion
		}
	}
	keyGone := make(chan keyGoneResult, 1)
	go func() {
		keyGone <- waitGossipKeyAlone(ctx, live, rep.GossipVersion, start, f.opts.RotateGrace+wait)
	}()
	adopted := make([]float64, len(live))
	for time.Since(start) < wait {
		done := 0
		for i, n := range live {
			if adopted[i] == 0 {
				if r := n.ag.Revocations(); r != nil && r.Revoked(revoked.name) {
					adopted[i] = time.Since(start).Seconds()
				}
			}
			if adopted[i] > 0 && !holdsAlive(n, revoked.name) {
				done++
			}
		}
		if done == len(live) {
			rep.RefusedSeconds = round(time.Since(start).Seconds())
			break
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return nil, err
		}
	}
	if rep.RefusedSeconds == 0 {
		return nil, fmt.Errorf("sim: revoke: %s not refused by every live agent within %v", revoked.name, wait)
	}
	rep.WithinBound = rep.RefusedSeconds <= RevokeBound.Seconds()
	rep.ListSeconds = percentiles(adopted)
	rep.FromPeers = int(f.adoptedFromPeers(live) - fromPeers0)
	log.Info("revoked agent refused everywhere", "seconds", rep.RefusedSeconds, "from_peers", rep.FromPeers)

	// An op the revoked agent writes now reaches no one.
	if err := revoked.ag.Put(ctx, collKV, "revoke-after", []byte(`{"phase":"after"}`)); err != nil {
		return nil, fmt.Errorf("sim: revoke: write after: %w", err)
	}
	injectWait := max(10*time.Second, 5*agent.DefaultConfig().Gossip.SyncInterval)
	if err := sleep(ctx, injectWait); err != nil {
		return nil, err
	}
	rep.InjectWaitSeconds = injectWait.Seconds()
	rep.LiveMinAlive = len(live)
	for _, n := range live {
		if _, ok, err := n.ag.Store().Get(ctx, collKV, "revoke-after"); err == nil && ok {
			rep.InjectedReached++
		}
		if _, ok, err := n.ag.Store().Get(ctx, collKV, "revoke-before"); err == nil && ok {
			rep.EarlierKept++
		}
		alive := 1 // itself
		for _, m := range n.ag.Members() {
			if m.State == "alive" && m.Name != n.name && m.Name != revoked.name {
				alive++
			}
		}
		rep.LiveMinAlive = min(rep.LiveMinAlive, alive)
	}
	// The old gossip key leaves every live keyring (timed from the
	// decommission, in the background meanwhile).
	gone := <-keyGone
	if gone.err != nil {
		return nil, gone.err
	}
	rep.OldGossipKeyRemovedSeconds = gone.seconds
	log.Info("revocation phase", "refused_seconds", rep.RefusedSeconds, "injected_op_reached", rep.InjectedReached,
		"earlier_op_kept", rep.EarlierKept, "live_min_alive", rep.LiveMinAlive, "old_gossip_key_removed_seconds", rep.OldGossipKeyRemovedSeconds)
	return rep, nil
}

type keyGoneResult struct {
	seconds float64
	err     error
}

// waitGossipKeyAlone waits until every node's gossip keyring holds version
// alone (no older version, no bootstrap key) and returns the time since
// start.
func waitGossipKeyAlone(ctx context.Context, nodes []*node, version uint32, start time.Time, limit time.Duration) keyGoneResult {
	for {
		done := 0
		for _, n := range nodes {
			if st := n.ag.GossipKeyring(); st.Primary == version && !st.Bootstrap && len(st.Versions) == 1 {
				done++
			}
		}
		if done == len(nodes) {
			return keyGoneResult{seconds: round(time.Since(start).Seconds())}
		}
		if time.Since(start) > limit {
			st := nodes[0].ag.GossipKeyring()
			return keyGoneResult{err: fmt.Errorf("sim: revoke: the old gossip key is still installed on %d of %d live agents %v after the revocation (%s: primary v%d, versions %v, bootstrap %v; want v%d alone)",
				len(nodes)-done, len(nodes), time.Since(start).Round(time.Second), nodes[0].name, st.Primary, st.Versions, st.Bootstrap, version)}
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return keyGoneResult{err: err}
		}
	}
}

// holdsAlive reports whether n's member table holds name alive.
func holdsAlive(n *node, name string) bool {
	for _, m := range n.ag.Members() {
		if m.Name == name && m.State == "alive" {
			return true
		}
	}
	return false
}

// adoptedFromPeers sums the revocation lists the agents adopted from
// peers.
func (f *Fleet) adoptedFromPeers(nodes []*node) float64 {
	var t float64
	for _, n := range nodes {
		t += counterValue(n.ag.Registry(), "agent_revocation_lists_adopted_total", "source", "peers")
	}
	return t
}

// waitHolding waits until every node holds key in the sim collection.
func (f *Fleet) waitHolding(ctx context.Context, nodes []*node, key string, wait time.Duration) error {
	start := time.Now()
	for {
		missing := 0
		for _, n := range nodes {
			if _, ok, err := n.ag.Store().Get(ctx, collKV, key); err != nil || !ok {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		if time.Since(start) > wait {
			return fmt.Errorf("sim: revoke: %d agents lack %q after %v", missing, key, wait)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}
