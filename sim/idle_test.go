package sim

import (
	"context"
	"testing"
	"time"
)

// TestIdleWindowIsQuiet: after a partition heals and the devices stop, the
// idle window carries no writes and nothing of them: no own deltas, no
// relayed deltas, no anti-entropy chunks. The device registry writes a
// device's record at most every interval, so its last records are written
// after the devices stopped; they used to fall into the window and be
// relayed by every agent (5-10 KB/s per agent in 50-agent runs).
func TestIdleWindowIsQuiet(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a fleet: skipped with -short")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Options{
		Agents: 5, Partition: 3 * time.Second, WritesPerAgent: 10, PropagationWrites: 3,
		Idle: 3 * time.Second, Profile: "test", DataDir: t.TempDir(), Timeout: 30 * time.Second,
		NoControlPlane: true, DevicesPerAgent: 2, DataSets: dataSets(t),
		// Records due within the window unless flushed before it.
		DeviceRegistryInterval: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	g := rep.IdleGossip
	if g == nil {
		t.Fatal("no idle gossip breakdown")
	}
	t.Logf("idle gossip per agent: %+v", *g)
	if !rep.Converged {
		t.Fatalf("not converged: %+v", rep)
	}
	for _, kind := range []string{"deltas", "relay", "sync_data"} {
		if g.Replication[kind] != 0 {
			t.Errorf("idle window: %s sent %.0f B/s per agent, want 0", kind, g.Replication[kind])
		}
	}
	if g.Total <= 0 || g.Memberlist <= 0 {
		t.Errorf("idle window: total %.0f B/s, memberlist %.0f B/s: the counters measured nothing", g.Total, g.Memberlist)
	}
}
