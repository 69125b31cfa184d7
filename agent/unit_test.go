package agent

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/replication"
	"github.com/edgefleet/edgefleet/crdt"
)

// TestLargeStateShipsInChunks: a newcomer catches up on state larger than
// a chunk, through several anti-entropy messages; values too large for a
// gossip packet are not broadcast.
func TestLargeStateShipsInChunks(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	small := func(cfg *Config) { cfg.Gossip.MaxChunkBytes = minChunkBytes }
	a0 := c.start("a0", nil, small)
	ctx := context.Background()
	value := []byte(strings.Repeat("v", 2000))
	for i := 0; i < 60; i++ {
		if err := a0.Put(ctx, "blobs", fmt.Sprintf("k%02d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	if b := a0.Stats().Broadcasts; b != 0 {
		t.Fatalf("%d oversized deltas queued for gossip", b)
	}
	a1 := c.start("a1", []string{a0.GossipAddr()}, small)
	agents := []*Agent{a0, a1}
	waitFor(t, 15*time.Second, "catch-up", func() (bool, string) { return sameState(agents) })
	if n := a0.Stats().SyncChunksSent; n < 20 {
		t.Fatalf("120 KB shipped in %d chunks of at most 4 KiB", n)
	}
	// Chunks travel on separate streams and may be applied out of order;
	// the version vector then catches up on the next exchange.
	waitFor(t, 10*time.Second, "sync lag zero", func() (bool, string) {
		lag := a1.syncLag()
		return lag == 0, fmt.Sprintf("lag %v", lag)
	})
}

func TestCompactionRunsWithEveryMemberReported(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	agents := c.startN(2)
	waitFor(t, 10*time.Second, "membership", func() (bool, string) { return allAlive(agents) })
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		if err := agents[0].Put(ctx, "kv", "k", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "convergence", func() (bool, string) { return sameState(agents) })
	waitFor(t, 10*time.Second, "version vectors reported", func() (bool, string) {
		_, ok := agents[0].peers.Load().StableVV(crdt.VersionVector{})
		return ok, "a1 has not reported"
	})
	before, err := agents[0].Store().Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := agents[0].repl.Load().Compact(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := agents[0].Store().Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Ops >= before.Ops {
		t.Fatalf("compaction removed nothing: %d -> %d ops", before.Ops, after.Ops)
	}
	if ok, d := sameState(agents); !ok {
		t.Fatalf("compaction changed the replicated state: %s", d)
	}
}

// TestDifferingMemberViewsReconcile: a sync request whose members digest
// differs from the receiver's makes the receiver push/pull with the sender,
// so members one of them never heard of are learned.
func TestDifferingMemberViewsReconcile(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.start("a", nil, nil)
	b := c.start("b", nil, nil) // not joined: neither knows the other
	req := mustEncodeTB(t, replication.Message{Type: replication.TypeSyncReq, From: "b", Addr: b.GossipAddr(),
		Digest: b.peers.Load().Digest(), VV: crdt.VersionVector{}})
	a.repl.Load().NotifyMsg(req)
	waitFor(t, 10*time.Second, "views reconciled", func() (bool, string) { return allAlive([]*Agent{a, b}) })
	if a.Stats().MemberSyncs != 1 {
		t.Fatalf("member syncs = %d", a.Stats().MemberSyncs)
	}
	// Equal views: no push/pull.
	req = mustEncodeTB(t, replication.Message{Type: replication.TypeSyncReq, From: "b", Addr: b.GossipAddr(),
		Digest: b.peers.Load().Digest(), VV: crdt.VersionVector{}})
	a.repl.Load().NotifyMsg(req)
	time.Sleep(100 * time.Millisecond)
	if a.Stats().MemberSyncs != 1 {
		t.Fatalf("push/pull although views agree: %d", a.Stats().MemberSyncs)
	}
}

func mustEncodeTB(t testing.TB, m replication.Message) []byte {
	t.Helper()
	b, err := replication.Encode(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestUnreachableSeedRetried: a seed that is down at start is not fatal;
// the agent joins it once it comes up.
func TestUnreachableSeedRetried(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	seedAddr := ln.Addr().String()
	ln.Close() // nothing listens there now

	c := newCluster(t)
	b := c.start("b", []string{seedAddr}, nil)
	if n := len(b.Members()); n != 1 {
		t.Fatalf("b has %d members before the seed exists", n)
	}

	cfg := testConfig(t, "seed")
	_, port, _ := net.SplitHostPort(seedAddr)
	cfg.Gossip.BindPort, _ = strconv.Atoi(port)
	seed, err := New(cfg, Deps{Logger: testLogger(t)}) // production transport on the fixed port
	if err != nil {
		t.Fatal(err)
	}
	if err := seed.Start(context.Background()); err != nil {
		t.Skipf("port %s taken meanwhile: %v", port, err)
	}
	t.Cleanup(func() { seed.Kill() })
	if seed.GossipAddr() != seedAddr {
		t.Fatalf("seed advertises %s, want %s", seed.GossipAddr(), seedAddr)
	}
	waitFor(t, 10*time.Second, "late seed joined", func() (bool, string) { return allAlive([]*Agent{b, seed}) })
}

func TestResourceHelpers(t *testing.T) {
	used, total, err := parseMeminfo([]byte("MemTotal:       16000 kB\nMemFree:  100 kB\nMemAvailable:    4000 kB\n"))
	if err != nil || total != 16000*1024 || used != 12000*1024 {
		t.Fatalf("meminfo: %d %d %v", used, total, err)
	}
	for _, bad := range []string{"", "MemTotal: 10 kB\n", "MemTotal: 10 kB\nMemAvailable: 20 kB\n", "garbage"} {
		if _, _, err := parseMeminfo([]byte(bad)); err == nil {
			t.Errorf("meminfo %q accepted", bad)
		}
	}
	if v := parseLoad1([]byte("0.52 0.40 0.33 1/234 5678\n")); v != 0.52 {
		t.Errorf("load1 %v", v)
	}
	for _, bad := range []string{"", "x y", "-1 0 0"} {
		if v := parseLoad1([]byte(bad)); v != 0 {
			t.Errorf("load1 of %q = %v", bad, v)
		}
	}
	var c cpuSampler
	t0 := time.Unix(1000, 0)
	if p := c.percent(t0, 5); p != 0 {
		t.Errorf("first sample %v", p)
	}
	if p := c.percent(t0.Add(2*time.Second), 6); p != 50 {
		t.Errorf("1 s of CPU in 2 s = %v%%, want 50", p)
	}
	if p := c.percent(t0.Add(2*time.Second), 7); p != 0 {
		t.Errorf("no wall time: %v", p)
	}
}
