package sim

import (
	"context"
	"testing"
	"time"
)

// TestRunRevoke: on a fleet of 5, the decommissioned agent is refused by
// every other agent within the bound, an op it injects afterwards reaches
// none of them, the op it wrote before stays everywhere, and the live
// cluster stays whole.
func TestRunRevoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a fleet: skipped with -short")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Options{
		Agents: 5, NoPartition: true, WritesPerAgent: 5, Idle: time.Second, Profile: "test",
		DataDir: t.TempDir(), Timeout: 60 * time.Second, NoDevices: true, Revoke: true, RotateGrace: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	r := rep.Revoke
	if r == nil {
		t.Fatal("no revocation phase in the report")
	}
	t.Logf("revocation: %+v", *r)
	if !r.WithinBound || r.RefusedSeconds > RevokeBound.Seconds() || r.LiveAgents != 4 {
		t.Fatalf("refused after %.1fs (bound %v) by %d agents", r.RefusedSeconds, RevokeBound, r.LiveAgents)
	}
	if r.InjectedReached != 0 {
		t.Fatalf("the op injected after the revocation reached %d agents", r.InjectedReached)
	}
	if r.EarlierKept != r.LiveAgents {
		t.Fatalf("the op written before the revocation is kept by %d of %d agents", r.EarlierKept, r.LiveAgents)
	}
	// The old gossip key left every live keyring long before its remove
	// grace (an hour).
	if r.OldGossipKeyRemovedSeconds == 0 || r.OldGossipKeyRemovedSeconds > r.GossipInstallGrace+30 || r.GossipVersion < 2 {
		t.Fatalf("old gossip key removed after %.1fs (install grace %.0fs), version %d", r.OldGossipKeyRemovedSeconds, r.GossipInstallGrace, r.GossipVersion)
	}
	if r.LiveMinAlive != r.LiveAgents {
		t.Fatalf("the live cluster split: some agent saw %d of %d alive", r.LiveMinAlive, r.LiveAgents)
	}
}
