package replication

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/edgefleet/edgefleet/internal/testutil"
	"github.com/hashicorp/memberlist"
)

// stamp is the HLC reading of t.
func stamp(t time.Time) crdt.Timestamp { return crdt.Timestamp(uint64(t.UnixMilli()) << 16) }

// puts is a delta of n LWW puts of origin, stamped from at on.
func puts(origin string, n int, at time.Time) crdt.Delta {
	d := crdt.Delta{Origin: origin, To: uint64(n)}
	for i := 1; i <= n; i++ {
		d.Ops = append(d.Ops, crdt.Op{Dot: crdt.Dot{Origin: origin, Seq: uint64(i)}, HLC: stamp(at.Add(time.Duration(i) * time.Millisecond)),
			Type: crdt.TypeLWW, Collection: "kv", Key: fmt.Sprintf("%s-%d", origin, i), Kind: crdt.KindPut, Value: []byte("v")})
	}
	return d
}

func encode(t *testing.T, m Message) []byte {
	t.Helper()
	b, err := Encode(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestOriginAheadRefusedAlone: an origin an hour ahead, relayed in the
// same messages as other origins, is refused alone; the other origins
// apply, the refusal is counted by origin and warned about once.
func TestOriginAheadRefusedAlone(t *testing.T) {
	var logs testutil.SyncBuffer
	a := newTestReplicator(t, slog.New(slog.NewTextHandler(&logs, nil)), nil)
	ctx := context.Background()
	now := time.Now()
	ahead := puts("ahead", 3, now.Add(time.Hour))
	resp := encode(t, Message{Type: TypeSyncResp, From: "peer", Clock: ClockSample{UnixMilli: now.UnixMilli(), Sane: true},
		VV: crdt.VersionVector{}, Last: true, Deltas: []crdt.Delta{puts("b", 2, now), ahead, puts("c", 4, now)}})
	gossip := encode(t, Message{Type: TypeDeltas, Deltas: []crdt.Delta{ahead, puts("d", 1, now)}})
	a.handleBatch(ctx, [][]byte{resp, gossip})
	vv, err := a.store.VersionVector(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if vv["b"] != 2 || vv["c"] != 4 || vv["d"] != 1 || vv["ahead"] != 0 {
		t.Fatalf("version vector %v: want b:2 c:4 d:1 and nothing of ahead", vv)
	}
	if a.c.DeltasApplied.Load() != 7 {
		t.Errorf("applied %d ops, want 7", a.c.DeltasApplied.Load())
	}
	if got := a.refusedOps("ahead"); got != 6 {
		t.Errorf("refused ops of ahead = %d, want 6 (3 in each message)", got)
	}
	if a.c.RefusedOps.Load() != 6 || len(a.refused) != 1 {
		t.Errorf("refused %d ops: %v", a.c.RefusedOps.Load(), a.refused)
	}
	if n := a.rejected(ReasonClockDrift) + a.rejected(ReasonInvalidDelta); n != 0 {
		t.Errorf("%d messages rejected", n)
	}
	// Each message was merged as one call; the warning is logged once per
	// origin per minute.
	a.handleBatch(ctx, [][]byte{gossip})
	if n := strings.Count(logs.String(), "origin=ahead"); n != 1 {
		t.Errorf("%d warnings about the origin ahead:\n%s", n, logs.String())
	}
}

// TestRefusedOriginLabelsBounded: a peer making up origins cannot grow the
// metric's label set beyond MaxRefusedOrigins (+ RefusedOther).
func TestRefusedOriginLabelsBounded(t *testing.T) {
	var f refusals
	f.warned = map[string]time.Time{}
	now := time.Unix(1e9, 0)
	labels := map[string]bool{}
	for i := 0; i < MaxRefusedOrigins+50; i++ {
		l, _ := f.note(fmt.Sprint("o", i), now)
		labels[l] = true
	}
	if len(labels) != MaxRefusedOrigins+1 || !labels[RefusedOther] {
		t.Fatalf("%d labels", len(labels))
	}
	if l, warn := f.note("o1", now.Add(time.Second)); l != "o1" || warn {
		t.Fatalf("known origin: %q %v", l, warn)
	}
	if _, warn := f.note("o1", now.Add(2*time.Minute)); !warn {
		t.Fatal("no warning after the interval")
	}
}

// TestClocklessBootMergesByFleetClock: a board switched off for three
// weeks boots with its wall clock in 1970. Its peers' ops, stamped now, are
// judged against the clocks they report in the same messages: all apply,
// except those of an origin an hour ahead of the fleet.
func TestClocklessBootMergesByFleetClock(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	path := filepath.Join(t.TempDir(), "state.db")
	// Three weeks ago the board ran with a good clock.
	then := clock.NewManual(now.Add(-21 * 24 * time.Hour))
	s, err := crdt.Open(path, crdt.Options{ReplicaID: "self", Wall: then.Now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "kv", "old", []byte("x")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	var logs testutil.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	wall := clock.NewManual(time.Unix(0, 0)) // no RTC, no NTP yet
	table := membership.NewTable("self", wall)
	a := newTestReplicator(t, log, func(c *Config) {
		c.Store.Close()
		c.Store, err = crdt.Open(path, crdt.Options{ReplicaID: "self", Wall: wall.Now, Fleet: table.FleetClocks, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Store.Close() })
		c.Members = &testMembers{Table: table, sent: map[string]int{}}
		c.Clock = wall
	})
	for i, p := range []string{"p1", "p2", "p3"} {
		table.Upsert(&memberlist.Node{Name: p, Addr: net.IPv4(127, 0, 0, byte(i+1)), Port: 1}, membership.StateAlive, membership.NodeMeta{})
	}
	// Gossip before any peer's clock is known: judged against the last
	// timestamp, three weeks old, the ops are deferred (not the origin's
	// fault, so not counted against it).
	a.handleBatch(ctx, [][]byte{encode(t, Message{Type: TypeDeltas, Deltas: []crdt.Delta{puts("p1", 5, now.Add(-time.Minute))}})})
	if vv, _ := a.store.VersionVector(ctx); vv["p1"] != 0 || a.c.DeferredOps.Load() != 5 || a.c.RefusedOps.Load() != 0 || len(a.refused) != 0 {
		t.Fatalf("before any peer clock: vv %v, deferred %d, refused %v", vv, a.c.DeferredOps.Load(), a.refused)
	}
	sample := func(d time.Duration) ClockSample {
		return ClockSample{UnixMilli: now.Add(d).UnixMilli(), Sane: true}
	}
	// The first answer to its sync request carries p1's clock and the ops
	// of p1, p2 and of an origin an hour ahead; p2 asks it for a sync
	// (carrying its clock) and p3 reports an hour-ahead clock in push/pull.
	ahead := puts("ahead", 2, now.Add(time.Hour))
	msgs := [][]byte{
		encode(t, Message{Type: TypeSyncResp, From: "p1", Clock: sample(0), VV: crdt.VersionVector{}, Last: true,
			Deltas: []crdt.Delta{puts("p1", 5, now.Add(-time.Minute)), ahead, puts("p2", 3, now.Add(-2*time.Second))}}),
		encode(t, Message{Type: TypeSyncReq, From: "p2", Addr: "127.0.0.2:1", Clock: sample(time.Second), VV: crdt.VersionVector{}}),
		encode(t, Message{Type: TypeState, From: "p3", Clock: sample(time.Hour), VV: crdt.VersionVector{}}),
	}
	a.handleBatch(ctx, msgs)
	vv, err := a.store.VersionVector(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if vv["p1"] != 5 || vv["p2"] != 3 || vv["ahead"] != 0 {
		t.Fatalf("version vector %v: want p1:5 p2:3 and nothing of ahead", vv)
	}
	if got := a.refusedOps("ahead"); got != 2 || a.c.RefusedOps.Load() != 2 {
		t.Errorf("refused ops of ahead = %d (total %d), want 2", got, a.c.RefusedOps.Load())
	}
	ref := a.store.Clock().Reference()
	if ref.Source != crdt.SourceFleet || ref.Sane() || ref.Time.Sub(now).Abs() > 2*time.Second {
		t.Errorf("reference %+v", ref)
	}
	if !strings.Contains(logs.String(), "local wall clock is wrong") {
		t.Errorf("no warning about the wall clock:\n%s", logs.String())
	}
	// It tells its peers its clock is not to be trusted.
	if c := a.clockSample(); c.Sane {
		t.Errorf("clock sample %+v claims a sane clock", c)
	}
	// Its own writes are stamped with the fleet's time, after the peers'.
	d, err := a.store.Put(ctx, "kv", "p1-1", []byte("mine"))
	if err != nil {
		t.Fatal(err)
	}
	if d.Ops[0].HLC < stamp(now) {
		t.Errorf("local op stamped %s, before the fleet's time %s", d.Ops[0].HLC, stamp(now))
	}
	// NTP sets the wall clock: it is the reference again.
	wall.Set(now.Add(2 * time.Second))
	if ref := a.store.Clock().Reference(); !ref.Sane() {
		t.Errorf("reference %+v after the clock was set", ref)
	}
}
