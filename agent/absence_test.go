package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/crdt"
)

// pacedClock is a manual clock that follows real time (the agents' loops
// keep running) and that a test can jump forward (time compression).
func pacedClock(t *testing.T) *clock.Manual {
	clk := clock.NewManual(time.Date(2026, 6, 1, 8, 0, 0, 0, time.UTC))
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				clk.Advance(10 * time.Millisecond)
			}
		}
	}()
	t.Cleanup(func() { close(done); <-stopped })
	return clk
}

// absenceConfig is the cluster config of the absence tests: members are
// forgotten after an hour, removals compacted after two (clock time).
func absenceConfig(cfg *Config) {
	cfg.Gossip.ReconnectTimeout = time.Hour
	cfg.State.TombstoneTTL = 2 * time.Hour
	cfg.State.CompactionInterval = 0 // the test compacts
}

// forgotten reports whether every agent of agents has forgotten name.
func forgotten(agents []*Agent, name string) (bool, string) {
	for _, a := range agents {
		for _, m := range a.Members() {
			if m.Name == name {
				return false, fmt.Sprintf("%s still lists %s as %s", a.Name(), name, m.State)
			}
		}
	}
	return true, ""
}

// TestLongAbsenceConverges: an agent killed past reconnect_timeout while
// the others delete keys and compact them past tombstone_ttl comes back
// and, within 30 s, holds the same state as the others, with no deleted key
// back anywhere (it recovers by a state transfer: deltas cannot carry the
// compacted deletes), not even one it wrote itself before the deletes but
// never shipped.
func TestLongAbsenceConverges(t *testing.T) {
	t.Parallel()
	clk := pacedClock(t)
	c := newCluster(t)
	c.clk = clk
	var agents []*Agent
	for i := 0; i < 3; i++ {
		var seeds []string
		if i > 0 {
			seeds = []string{agents[0].GossipAddr()}
		}
		agents = append(agents, c.start(fmt.Sprintf("a%d", i), seeds, absenceConfig))
	}
	waitFor(t, 15*time.Second, "membership", func() (bool, string) { return allAlive(agents) })
	ctx := context.Background()
	for k := 0; k < 12; k++ {
		if err := agents[k%3].Put(ctx, "kv", fmt.Sprintf("k%d", k), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	if err := agents[2].SetAdd(ctx, "tags", "gone"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "first convergence", func() (bool, string) { return sameState(agents) })

	// a2 is cut off, writes k0 (which the others will delete), and dies
	// before that write reaches anyone.
	away := agents[2]
	c.part.Split([]string{agents[0].GossipAddr(), agents[1].GossipAddr()}, []string{away.GossipAddr()})
	if err := away.Put(ctx, "kv", "k0", []byte("unshipped")); err != nil {
		t.Fatal(err)
	}
	if err := away.Kill(); err != nil {
		t.Fatal(err)
	}
	c.part.Heal()
	stay := agents[:2]
	waitFor(t, 20*time.Second, "a2 declared dead", func() (bool, string) {
		for _, a := range stay {
			for _, m := range a.Members() {
				if m.Name == "a2" && m.State == StateAlive {
					return false, a.Name() + " still sees a2 alive"
				}
			}
		}
		return true, ""
	})
	clk.Advance(time.Hour + time.Minute) // past reconnect_timeout
	waitFor(t, 15*time.Second, "a2 forgotten", func() (bool, string) { return forgotten(stay, "a2") })

	deleted := []string{"k0", "k2", "k4", "k5", "k7"} // written by all three
	for i, k := range deleted {
		if err := stay[i%2].Delete(ctx, "kv", k); err != nil {
			t.Fatal(err)
		}
	}
	if err := stay[0].SetRemove(ctx, "tags", "gone"); err != nil {
		t.Fatal(err)
	}
	if err := stay[1].Put(ctx, "kv", "while-away", []byte("v")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "deletes replicated", func() (bool, string) { return sameState(stay) })
	clk.Advance(2*time.Hour + time.Minute) // past tombstone_ttl
	for _, a := range stay {
		waitFor(t, 10*time.Second, "version vectors reported", func() (bool, string) {
			vv, _ := a.Store().VersionVector(ctx)
			stable, ok := a.peers.Load().StableVV(vv)
			return ok && stable["a0"] == vv["a0"] && stable["a1"] == vv["a1"], fmt.Sprintf("%s: stable %v, own %v", a.Name(), stable, vv)
		})
		if err := a.repl.Load().Compact(ctx); err != nil {
			t.Fatal(err)
		}
		if len(a.Store().Horizon()) == 0 {
			t.Fatalf("%s compacted no removal", a.Name())
		}
	}

	back := c.start("a2", []string{agents[0].GossipAddr()}, absenceConfig)
	now := []*Agent{agents[0], agents[1], back}
	start := time.Now()
	waitFor(t, 30*time.Second, "convergence after the long absence", func() (bool, string) { return sameState(now) })
	t.Logf("converged %v after the absent agent restarted", time.Since(start).Round(time.Millisecond))
	for _, a := range now {
		for _, k := range deleted {
			if _, ok, err := a.Store().Get(ctx, "kv", k); err != nil || ok {
				t.Fatalf("%s: deleted key %s is back (%v)", a.Name(), k, err)
			}
		}
		if ok, _ := a.Store().SetContains(ctx, "tags", "gone"); ok {
			t.Fatalf("%s: removed element is back", a.Name())
		}
		if _, ok, _ := a.Store().Get(ctx, "kv", "while-away"); !ok {
			t.Fatalf("%s lacks the write made while a2 was away", a.Name())
		}
	}
	// Replication goes on: a write of the returned agent reaches the rest.
	if err := back.Put(ctx, "kv", "after", []byte("v")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "write after recovery", func() (bool, string) { return sameState(now) })
}

// TestFreshDatabaseKnownNameRecovers: an agent whose state.db is lost
// (quarantined, or a re-flashed board) restarts empty under a node name the
// fleet knows: it holds writes (503) until a peer's snapshot gives it back
// the sequence numbers the fleet has for it, and then its new writes reach
// everyone instead of being taken for ops the fleet already holds.
func TestFreshDatabaseKnownNameRecovers(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	agents := c.startN(3)
	waitFor(t, 15*time.Second, "membership", func() (bool, string) { return allAlive(agents) })
	ctx := context.Background()
	victim := agents[2]
	for k := 0; k < 10; k++ {
		if err := victim.Put(ctx, "kv", fmt.Sprintf("old-%d", k), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 15*time.Second, "convergence", func() (bool, string) { return sameState(agents) })
	seq := victim.Store().Seq()
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(filepath.Join(c.dirs["a2"], stateDBFile+suffix)); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	back := c.start("a2", []string{agents[0].GossipAddr()}, nil)
	now := []*Agent{agents[0], agents[1], back}
	waitFor(t, 15*time.Second, "own sequence recovered", func() (bool, string) {
		got := back.Store().Seq()
		return got >= seq && back.Store().LocalOpsHeld() == "", fmt.Sprintf("seq %d of %d, held %q", got, seq, back.Store().LocalOpsHeld())
	})
	if err := back.Put(ctx, "kv", "new", []byte("after")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "new write everywhere", func() (bool, string) {
		for _, a := range now {
			if e, ok, _ := a.Store().Get(ctx, "kv", "new"); !ok || string(e.Value) != "after" {
				return false, a.Name() + " lacks the recovered agent's new write"
			}
		}
		return sameState(now)
	})
}

// TestHeldWritesAnswer503: while local writes are held for a state
// transfer, the API answers 503 and the agent's writes fail with
// crdt.ErrAwaitingState.
func TestHeldWritesAnswer503(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.start("solo", nil, nil)
	a.Store().HoldLocalOps("test")
	if err := a.Put(context.Background(), "kv", "k", []byte("v")); !errors.Is(err, crdt.ErrAwaitingState) {
		t.Fatalf("held put: %v", err)
	}
	api := apiClient{t: t, base: "http://" + a.APIAddr()}
	api.expect("PUT", "/v1/state/kv/k", "v", 503)
	a.Store().ReleaseLocalOps()
	api.expect("PUT", "/v1/state/kv/k", "v", 200)
}
