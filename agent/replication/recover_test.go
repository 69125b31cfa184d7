package replication

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/hashicorp/memberlist"
)

// compactedPeer returns a store "peer" that wrote k1 and k2, of which the
// returned delta (k1) was also given to the caller, then deleted k1 and
// compacted the delete away.
func compactedPeer(t *testing.T, self *crdt.Store) *crdt.Store {
	t.Helper()
	ctx := context.Background()
	p, err := crdt.Open(filepath.Join(t.TempDir(), "peer.db"), crdt.Options{ReplicaID: "peer"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	put, err := p.Put(ctx, "kv", "k1", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	if self != nil {
		if _, err := self.Merge(ctx, []crdt.Delta{put}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Delete(ctx, "kv", "k1"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Put(ctx, "kv", "k2", []byte("v")); err != nil {
		t.Fatal(err)
	}
	vv, _ := p.VersionVector(ctx)
	if _, err := p.Compact(ctx, vv, time.Now().Add(crdt.DefaultTombstoneTTL+time.Hour)); err != nil {
		t.Fatal(err)
	}
	if len(p.Horizon()) == 0 {
		t.Fatal("peer compacted no removal")
	}
	return p
}

func sentOf(t *testing.T, m *testMembers, typ byte) []Message {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Message
	for _, s := range m.msgs {
		if s.msg[0] != typ {
			continue
		}
		d, err := Decode(s.msg)
		if err != nil {
			t.Fatalf("sent an undecodable message: %v", err)
		}
		out = append(out, d)
	}
	return out
}

// TestNoDeltasBehindHorizon: a requester behind this agent's compaction
// horizon gets its version vector and horizon, and no deltas (they would
// advance it over the compacted delete without carrying it).
func TestNoDeltasBehindHorizon(t *testing.T) {
	ctx := context.Background()
	a := newTestReplicator(t, slog.New(slog.DiscardHandler), nil)
	// Make the replicator's own store the compacted one.
	if _, err := a.store.Put(ctx, "kv", "k1", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.store.Delete(ctx, "kv", "k1"); err != nil {
		t.Fatal(err)
	}
	vv, _ := a.store.VersionVector(ctx)
	if _, err := a.store.Compact(ctx, vv, time.Now().Add(crdt.DefaultTombstoneTTL+time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := a.ship(ctx, shipJob{peer: "back", vv: crdt.VersionVector{"self": 1}, respond: true}); err != nil {
		t.Fatal(err)
	}
	resp := sentOf(t, a.members, TypeSyncResp)
	if len(resp) != 1 || len(resp[0].Deltas) != 0 || resp[0].Horizon["self"] != 2 || !resp[0].Last {
		t.Fatalf("answer to a requester behind the horizon: %+v", resp)
	}
	// A requester that covers the horizon gets deltas as before.
	if _, err := a.store.Put(ctx, "kv", "k2", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := a.ship(ctx, shipJob{peer: "current", vv: crdt.VersionVector{"self": 2}, respond: true}); err != nil {
		t.Fatal(err)
	}
	if resp = sentOf(t, a.members, TypeSyncResp); len(resp) != 2 || len(resp[1].Deltas) != 1 {
		t.Fatalf("answer to a current requester: %+v", resp[1:])
	}
}

// TestStateTransferRefusesBadHash drives the recovery protocol: a sync
// response whose horizon the store is behind holds local writes and asks
// that peer for a snapshot; a snapshot whose rows do not match its hash is
// refused with a counted reason and changes nothing; the next, good one is
// installed and releases the writes.
func TestStateTransferRefusesBadHash(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewManual(time.Now())
	a := newTestReplicator(t, slog.New(slog.DiscardHandler), func(c *Config) { c.Clock = clk; c.MaxChunkBytes = 256 })
	a.members.Upsert(&memberlist.Node{Name: "peer", Addr: net.IPv4(127, 0, 0, 1), Port: 1}, membership.StateAlive, membership.NodeMeta{})
	peer := compactedPeer(t, a.store)
	if _, err := a.store.Put(ctx, "kv", "mine", []byte("x")); err != nil {
		t.Fatal(err)
	}
	pvv, _ := peer.VersionVector(ctx)
	resp, err := Encode(Message{Type: TypeSyncResp, From: "peer", VV: pvv, Horizon: peer.Horizon(), Last: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a.handleBatch(ctx, [][]byte{resp})
	if !a.needsState() || a.Recovering() == "" {
		t.Fatal("a store behind the peer's horizon does not ask for a state transfer")
	}
	if _, err := a.store.Put(ctx, "kv", "held", []byte("x")); err == nil {
		t.Fatal("local write accepted while awaiting state")
	}
	a.recoverStep(ctx)
	if reqs := sentOf(t, a.members, TypeSnapReq); len(reqs) != 1 {
		t.Fatalf("snapshot requests sent: %d", len(reqs))
	}

	snap, _, err := peer.ExportSnapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	chunks := func(b []byte, xfer uint64) [][]byte {
		t.Helper()
		var raw [][]byte
		for off := 0; off < len(b); off += 256 {
			end := min(off+256, len(b))
			msg, err := Encode(Message{Type: TypeSnapData, From: "peer", Xfer: xfer, Total: uint64(len(b)), Offset: uint64(off), Chunk: b[off:end], Last: end == len(b)}, nil)
			if err != nil {
				t.Fatal(err)
			}
			raw = append(raw, msg)
		}
		if len(raw) < 3 {
			t.Fatalf("snapshot of %d bytes is not several chunks", len(b))
		}
		return raw
	}
	feed := func(raw [][]byte) {
		t.Helper()
		a.handleBatch(ctx, raw)
		select {
		case req := <-a.install:
			a.installSnapshot(ctx, req.peer, req.snap)
		default:
			t.Fatal("assembled snapshot not queued for installing")
		}
	}
	before, _ := a.store.StateHash(ctx)
	bad := bytes.Replace(snap, []byte(`"key":"k2"`), []byte(`"key":"k3"`), 1)
	feed(chunks(bad, 1))
	if a.rejected(ReasonSnapshotHash) != 1 {
		t.Fatalf("bad snapshot not counted as %s: %v", ReasonSnapshotHash, a.rejects)
	}
	if after, _ := a.store.StateHash(ctx); after != before || !a.needsState() {
		t.Fatal("refused snapshot changed the store or ended the recovery")
	}
	clk.Advance(2 * time.Second) // past SyncTimeout: ask again
	a.recoverStep(ctx)
	if reqs := sentOf(t, a.members, TypeSnapReq); len(reqs) != 2 {
		t.Fatalf("snapshot requests after a refusal: %d", len(reqs))
	}
	// Chunks travel on separate connections: they arrive in any order,
	// some twice, mixed with those of an earlier transfer still being sent.
	raw := chunks(snap, 2)
	slices.Reverse(raw)
	raw = slices.Insert(raw, 1, raw[0], chunks(snap, 3)[1])
	feed(raw)
	if a.needsState() || a.Recovering() != "" {
		t.Fatal("good snapshot did not end the recovery")
	}
	if _, ok, _ := a.store.Get(ctx, "kv", "k1"); ok {
		t.Fatal("deleted key back after the state transfer")
	}
	if _, ok, _ := a.store.Get(ctx, "kv", "mine"); !ok {
		t.Fatal("own write lost by the state transfer")
	}
	if _, err := a.store.Put(ctx, "kv", "after", []byte("x")); err != nil {
		t.Fatalf("local write after recovery: %v", err)
	}
}

// TestStaleOwnOpsNotShipped: own ops older than the tombstone TTL that a
// peer lacks are not shipped (a delete they predate may be compacted away
// there); the agent answers with its vector only and asks that peer for a
// state transfer.
func TestStaleOwnOpsNotShipped(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewManual(time.Now())
	a := newTestReplicator(t, slog.New(slog.DiscardHandler), func(c *Config) { c.Clock = clk; c.TombstoneTTL = time.Hour })
	if _, err := a.store.Put(ctx, "kv", "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := a.ship(ctx, shipJob{peer: "p", vv: crdt.VersionVector{}, respond: true}); err != nil {
		t.Fatal(err)
	}
	if resp := sentOf(t, a.members, TypeSyncResp); len(resp) != 1 || len(resp[0].Deltas) != 1 || a.needsState() {
		t.Fatalf("young own op not shipped: %+v", resp)
	}
	clk.Advance(time.Hour + time.Minute)
	if err := a.ship(ctx, shipJob{peer: "p", vv: crdt.VersionVector{}, respond: true}); err != nil {
		t.Fatal(err)
	}
	resp := sentOf(t, a.members, TypeSyncResp)
	if len(resp) != 2 || len(resp[1].Deltas) != 0 || !resp[1].Last {
		t.Fatalf("stale own op shipped: %+v", resp[1:])
	}
	if !a.needsState() || a.Recovering() == "" {
		t.Fatal("stale own op did not start a state transfer")
	}
}
