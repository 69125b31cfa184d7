package uplink

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// TestKeyWatchDeliversARotationBeforeTheNextHeartbeat: with heartbeats an
// hour apart on a clock that does not move, only the key watch can bring
// the new version.
func TestKeyWatchDeliversARotationBeforeTheNextHeartbeat(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	cfg := cp.config(cp.token())
	cfg.HeartbeatInterval = time.Hour
	a := newAgent(t, clock, cfg, agentOpts{noStore: true})
	eventually(t, "gossip key v1", func() bool { return a.up.Status().KeyVersions[cpapi.GossipKeyName] == 1 })
	settle(t, clock, a.tr, 1) // the heartbeat loop waits an hour; the watch is held
	hb := a.up.Status().Heartbeats
	rotated := time.Now()
	if _, err := cp.admin.RotateKey(testCtx(t), cpapi.GossipKeyName); err != nil {
		t.Fatal(err)
	}
	eventually(t, "gossip key v2 through the watch", func() bool { return a.up.Status().KeyVersions[cpapi.GossipKeyName] == 2 })
	t.Logf("gossip key v2 in the agent's keyring %v after the rotation call began", time.Since(rotated))
	eventually(t, "KeysChanged", func() bool { return a.keyring.changed.Load() == 2 })
	if st := a.up.Status(); st.Heartbeats != hb {
		t.Fatalf("heartbeats %d -> %d: the version came with a heartbeat", hb, st.Heartbeats)
	}
	settle(t, clock, a.tr, 1) // watching again
	// Stop ends the held request at once.
	start := time.Now()
	a.up.Stop()
	t.Logf("Stop with a held key request took %v", time.Since(start))
}

// TestKeyWatchDeliveryLatencyFiftyAgents measures the time from a gossip
// key rotation to 50 agents holding the new version, each with its own
// uplink and key watch against one control plane. It logs p50, p99 and
// max; it asserts only that every agent gets the version.
func TestKeyWatchDeliveryLatencyFiftyAgents(t *testing.T) {
	if testing.Short() {
		t.Skip("enrolls 50 agents")
	}
	const n = 50
	clock := newClock()
	cp := newCP(t, clock)
	agents := make([]*testAgent, n)
	var wg sync.WaitGroup
	for i := range agents {
		cfg := cp.config(cp.token())
		cfg.HeartbeatInterval = time.Hour
		wg.Add(1)
		go func() {
			defer wg.Done()
			agents[i] = newAgent(t, clock, cfg, agentOpts{noStore: true})
		}()
	}
	wg.Wait()
	for _, a := range agents {
		eventually(t, "gossip key v1", func() bool { return a.up.Status().KeyVersions[cpapi.GossipKeyName] == 1 })
		eventually(t, "key watch held", func() bool { return a.tr.watching.Load() == 1 })
	}
	for round := 1; round <= 3; round++ {
		rotated := time.Now()
		if _, err := cp.admin.RotateKey(testCtx(t), cpapi.GossipKeyName); err != nil {
			t.Fatal(err)
		}
		want := uint32(round + 1)
		lat := make([]time.Duration, n)
		var lwg sync.WaitGroup
		for i, a := range agents {
			lwg.Add(1)
			go func() {
				defer lwg.Done()
				deadline := time.Now().Add(20 * time.Second)
				for a.up.Status().KeyVersions[cpapi.GossipKeyName] != want {
					if time.Now().After(deadline) {
						t.Errorf("agent %d: gossip key v%d not delivered", i, want)
						return
					}
					time.Sleep(time.Millisecond)
				}
				lat[i] = time.Since(rotated)
			}()
		}
		lwg.Wait()
		if t.Failed() {
			return
		}
		slices.Sort(lat)
		t.Logf("rotation %d: gossip key v%d at all %d agents: p50 %v, p99 %v, max %v",
			round, want, n, lat[n/2].Round(time.Millisecond), lat[n*99/100].Round(time.Millisecond), lat[n-1].Round(time.Millisecond))
		for _, a := range agents {
			eventually(t, "key watch held again", func() bool { return a.tr.watching.Load() == 1 })
		}
	}
}
