package replication

import (
	"context"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/hashicorp/memberlist"
)

func TestNotifyMsgDropsWhenQueueFull(t *testing.T) {
	a := newTestReplicator(t, slog.New(slog.DiscardHandler), func(c *Config) { c.InboundQueue = 2 })
	buf := []byte{TypeLeave, 1, 'p'}
	for i := 0; i < 5; i++ {
		a.NotifyMsg(buf)
	}
	buf[0] = 0 // memberlist reuses its buffer: the queued copies must not change
	if got := a.c.Dropped.Load(); got != 3 {
		t.Fatalf("dropped %d, want 3", got)
	}
	if q := <-a.inbound; q[0] != TypeLeave {
		t.Fatal("queued message aliases memberlist's buffer")
	}
	a.NotifyMsg(make([]byte, MaxMessageBytes+1))
	if a.rejected(membership.ReasonOversized) != 1 {
		t.Fatal("oversized message not rejected")
	}
}

func TestPushBackGateAdmitsOnePeerAtATime(t *testing.T) {
	var g pushBackGate
	now := time.Unix(100, 0)
	if !g.claim("a", now, time.Second) {
		t.Fatal("free gate refused")
	}
	if g.claim("b", now.Add(500*time.Millisecond), time.Second) {
		t.Fatal("second peer admitted while the first pushes back")
	}
	if !g.claim("a", now, time.Second) {
		t.Fatal("holder refused again")
	}
	g.done("b") // not the holder: no effect
	if g.claim("b", now, time.Second) {
		t.Fatal("released by a non-holder")
	}
	g.done("a")
	if !g.claim("b", now, time.Second) {
		t.Fatal("gate not released")
	}
	if !g.claim("c", now.Add(2*time.Second), time.Second) {
		t.Fatal("expired claim still blocks")
	}
	if !holdsMore(crdt.VersionVector{"x": 2}, crdt.VersionVector{"x": 1}) || holdsMore(crdt.VersionVector{"x": 1}, crdt.VersionVector{"x": 1, "y": 3}) {
		t.Fatal("holdsMore")
	}
}

func TestSyncSkippedWhenPeerJustReportedNothingNew(t *testing.T) {
	a := newTestReplicator(t, slog.New(slog.DiscardHandler), nil)
	ctx := context.Background()
	if _, err := a.store.Put(ctx, "kv", "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	peers := a.members
	peers.Upsert(&memberlist.Node{Name: "p", Addr: net.IPv4(127, 0, 0, 1), Port: 1}, membership.StateAlive, membership.NodeMeta{})
	before := time.Now().Add(-time.Second)
	if a.peerHasNothingNew(ctx, "p", before) {
		t.Fatal("skipped a peer that never reported")
	}
	peers.SetVV("p", crdt.VersionVector{"self": 1})
	if !a.peerHasNothingNew(ctx, "p", before) {
		t.Fatal("asked a peer that just reported holding nothing new")
	}
	if a.peerHasNothingNew(ctx, "p", time.Now().Add(time.Second)) {
		t.Fatal("skipped on a report older than the reason to ask")
	}
	peers.SetVV("p", crdt.VersionVector{"self": 1, "p": 4})
	if a.peerHasNothingNew(ctx, "p", before) {
		t.Fatal("skipped a peer holding ops this agent lacks")
	}
}

// TestLoopsRunOnTheClock: the periodic sync request and compaction wait on
// the injected clock, not the system's: with hour-long intervals on a
// manual clock nothing happens until the clock is advanced.
func TestLoopsRunOnTheClock(t *testing.T) {
	clk := clock.NewManual(time.Unix(1e9, 0))
	a := newTestReplicator(t, slog.New(slog.DiscardHandler), func(c *Config) {
		c.Clock, c.SyncInterval, c.CompactionInterval = clk, time.Hour, 2*time.Hour
	})
	a.members.Upsert(&memberlist.Node{Name: "p", Addr: net.IPv4(127, 0, 0, 1), Port: 1}, membership.StateAlive, membership.NodeMeta{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Run(ctx)
	}()
	sent := func() int {
		a.members.mu.Lock()
		defer a.members.mu.Unlock()
		return a.members.sent["p"]
	}
	waitWaiters := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); clk.Waiters() < n; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d timers pending, want %d", clk.Waiters(), n)
			}
		}
	}
	waitWaiters(2) // the sync and compaction loops sleep
	time.Sleep(50 * time.Millisecond)
	if n := sent(); n != 0 {
		t.Fatalf("%d requests before the interval passed", n)
	}
	clk.Advance(72 * time.Minute) // past the sync interval's +20%
	for deadline := time.Now().Add(5 * time.Second); sent() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no sync request after the interval passed on the clock")
		}
	}
	cancel()
	<-done
}

// TestCompactionWaitsForDefer: a due compaction asks Config.Defer and runs
// only once it returns, then reports its end.
func TestCompactionWaitsForDefer(t *testing.T) {
	clk := clock.NewManual(time.Unix(1e9, 0))
	asked := make(chan struct{}, 1)
	release := make(chan struct{})
	var ended atomic.Int32
	a := newTestReplicator(t, slog.New(slog.DiscardHandler), func(c *Config) {
		c.Clock, c.SyncInterval, c.CompactionInterval = clk, time.Hour, time.Hour
		c.Defer = func(ctx context.Context) (func(), error) {
			asked <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return func() { ended.Add(1) }, nil
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		a.Run(ctx)
	}()
	for deadline := time.Now().Add(5 * time.Second); clk.Waiters() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("loops did not start")
		}
	}
	clk.Advance(67 * time.Minute) // past the compaction interval's +10%
	select {
	case <-asked:
	case <-time.After(5 * time.Second):
		t.Fatal("the due compaction did not ask its scheduler")
	}
	time.Sleep(20 * time.Millisecond)
	if ended.Load() != 0 {
		t.Fatal("compaction ran before its scheduler let it")
	}
	close(release)
	for deadline := time.Now().Add(5 * time.Second); ended.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("compaction did not run once released")
		}
	}
	cancel()
	<-stopped
}
