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
	"github.com/hashicorp/memberlist"
)

// gossiped returns what a's gossip would send now, decoded.
func gossiped(t *testing.T, a *testReplicator) (raw [][]byte, deltas []crdt.Delta) {
	t.Helper()
	raw = a.GetBroadcasts(0, 1<<20)
	for _, b := range raw {
		m, err := Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if m.Type == TypeDeltas {
			deltas = append(deltas, m.Deltas...)
		}
	}
	return raw, deltas
}

// TestGossipedDeltaIsRelayed: a delta that reaches an agent by gossip and
// is new there is gossiped on, so it reaches an agent its origin never sent
// to; once per delta, and not what came by anti-entropy.
func TestGossipedDeltaIsRelayed(t *testing.T) {
	ctx := context.Background()
	ds := sampleDeltas(t) // written on "src", which gossips them to b only
	b := newTestReplicator(t, slog.New(slog.DiscardHandler), func(c *Config) { c.Relay = true })
	c := newTestReplicator(t, slog.New(slog.DiscardHandler), func(c *Config) { c.Relay = true })
	for _, r := range []*testReplicator{b, c} {
		r.members.Upsert(&memberlist.Node{Name: "p", Addr: net.IPv4(127, 0, 0, 1), Port: 1}, membership.StateAlive, membership.NodeMeta{})
	}
	first := mustEncodeMsg(t, Message{Type: TypeDeltas, Deltas: ds[:1]})
	b.handleBatch(ctx, [][]byte{first, first}) // gossip delivers twice
	raw, relayed := gossiped(t, b)
	if len(relayed) != 1 || relayed[0].Origin != "src" || relayed[0].To != ds[0].To {
		t.Fatalf("b gossips %v, want the delta it received from src", relayed)
	}
	c.handleBatch(ctx, raw)
	if _, ok, err := c.store.Get(ctx, "kv", "k"); err != nil || !ok {
		t.Fatalf("c does not hold src's write after b's gossip (ok %v, err %v)", ok, err)
	}
	if got := b.c.Relayed.Load(); got != 1 {
		t.Fatalf("b relayed %d deltas, want 1", got)
	}

	// Received again (after the queue sent it out): not relayed twice.
	for len(b.GetBroadcasts(0, 1<<20)) > 0 { // memberlist drains the queue
	}
	b.handleBatch(ctx, [][]byte{first})
	if _, again := gossiped(t, b); len(again) != 0 {
		t.Fatalf("b relayed a delta it already held: %v", again)
	}
	// c relays what it got from b, and nothing of its own back to src.
	if _, fromC := gossiped(t, c); len(fromC) != 1 {
		t.Fatalf("c gossips %v, want the one delta it learnt", fromC)
	}

	// Deltas that came by anti-entropy are not relayed.
	data := mustEncodeMsg(t, Message{Type: TypeSyncData, From: "src", Last: true, Deltas: ds[1:2]})
	b.handleBatch(ctx, [][]byte{data})
	if _, got := gossiped(t, b); len(got) != 0 {
		t.Fatalf("b relayed an anti-entropy delta: %v", got)
	}

	// With relay off, a new gossiped delta stays put.
	off := newTestReplicator(t, slog.New(slog.DiscardHandler), nil)
	off.handleBatch(ctx, [][]byte{first})
	if _, got := gossiped(t, off); len(got) != 0 || off.c.Relayed.Load() != 0 {
		t.Fatalf("relay off, yet gossiped %v", got)
	}
}

func TestRelaySetForgetsOldest(t *testing.T) {
	var s relaySet
	for i := uint64(0); i < relaySeenCap+1; i++ {
		if !s.add(relayKey{"o", i, i + 1}) {
			t.Fatalf("key %d reported seen", i)
		}
	}
	if s.add(relayKey{"o", relaySeenCap, relaySeenCap + 1}) {
		t.Fatal("newest key forgotten")
	}
	if !s.add(relayKey{"o", 0, 1}) {
		t.Fatal("oldest key still remembered beyond the cap")
	}
	if len(s.seen) != relaySeenCap || len(s.ring) != relaySeenCap {
		t.Fatalf("set holds %d keys (ring %d), want %d", len(s.seen), len(s.ring), relaySeenCap)
	}
}

func mustEncodeMsg(t *testing.T, m Message) []byte {
	t.Helper()
	b, err := Encode(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRelayIsBoundedAndYieldsToOwnDeltas: a burst fills the relay queue
// only up to relayMaxQueued (the rest is left to anti-entropy), and this
// agent's own deltas go out before relayed ones.
func TestRelayIsBoundedAndYieldsToOwnDeltas(t *testing.T) {
	ctx := context.Background()
	src, err := crdt.Open(filepath.Join(t.TempDir(), "src.db"), crdt.Options{ReplicaID: "src"})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var burst [][]byte
	for i := 0; i < relayMaxQueued+5; i++ {
		d, err := src.Put(ctx, "kv", fmt.Sprintf("k%d", i), []byte("1"))
		if err != nil {
			t.Fatal(err)
		}
		burst = append(burst, mustEncodeMsg(t, Message{Type: TypeDeltas, Deltas: []crdt.Delta{d}}))
	}
	b := newTestReplicator(t, slog.New(slog.DiscardHandler), func(c *Config) { c.Relay = true })
	b.members.Upsert(&memberlist.Node{Name: "p", Addr: net.IPv4(127, 0, 0, 1), Port: 1}, membership.StateAlive, membership.NodeMeta{})
	b.handleBatch(ctx, burst)
	if got, skipped, queued := b.c.Relayed.Load(), b.c.RelaySkipped.Load(), b.relayQ.NumQueued(); got != uint64(len(burst)) || skipped != 5 || queued != relayMaxQueued {
		t.Fatalf("relayed %d, dropped %d, queued %d of a burst of %d; want %d, 5, %d", got, skipped, queued, len(burst), len(burst), relayMaxQueued)
	}

	own, err := b.store.Put(ctx, "kv", "mine", []byte("2"))
	if err != nil {
		t.Fatal(err)
	}
	b.Broadcast(own)
	first := b.GetBroadcasts(2, len(mustEncodeMsg(t, Message{Type: TypeDeltas, Deltas: []crdt.Delta{own}}))+2)
	if len(first) != 1 {
		t.Fatalf("a packet with room for one message carried %d", len(first))
	}
	if m, err := Decode(first[0]); err != nil || m.Deltas[0].Origin != "self" {
		t.Fatalf("relayed delta went out before this agent's own: %+v (%v)", m, err)
	}
}

// TestRefusedOriginNotRelayed: the ops of an origin whose clock is too far
// ahead are refused here; the relay passes on the other origins of the
// same gossip message and never the refused one's.
func TestRefusedOriginNotRelayed(t *testing.T) {
	ctx := context.Background()
	b := newTestReplicator(t, slog.New(slog.DiscardHandler), func(c *Config) { c.Relay = true })
	b.members.Upsert(&memberlist.Node{Name: "p", Addr: net.IPv4(127, 0, 0, 1), Port: 1}, membership.StateAlive, membership.NodeMeta{})
	now := time.Now()
	msg := mustEncodeMsg(t, Message{Type: TypeDeltas, Deltas: []crdt.Delta{puts("ahead", 2, now.Add(time.Hour)), puts("ok", 1, now)}})
	b.handleBatch(ctx, [][]byte{msg})
	_, relayed := gossiped(t, b)
	if len(relayed) != 1 || relayed[0].Origin != "ok" {
		t.Fatalf("relayed %v, want only origin ok's delta", relayed)
	}
}

// relayBurst returns n gossip messages of single deltas of origin "src",
// each with a value of size bytes.
func relayBurst(t *testing.T, n, size int) [][]byte {
	t.Helper()
	ctx := context.Background()
	src, err := crdt.Open(filepath.Join(t.TempDir(), "src.db"), crdt.Options{ReplicaID: "src"})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var out [][]byte
	for i := 0; i < n; i++ {
		d, err := src.Put(ctx, "kv", fmt.Sprintf("k%03d", i), []byte(fmt.Sprintf("%q", strings.Repeat("v", size))))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, mustEncodeMsg(t, Message{Type: TypeDeltas, Deltas: []crdt.Delta{d}}))
	}
	return out
}

// TestRelayKeepsTheFreshest: a delta that finds the relay queue full of
// deltas already sent is queued, and the most sent one leaves; it goes
// out first.
func TestRelayKeepsTheFreshest(t *testing.T) {
	ctx := context.Background()
	msgs := relayBurst(t, relayMaxQueued+1, 10)
	b := newTestReplicator(t, slog.New(slog.DiscardHandler), func(c *Config) { c.Relay = true })
	b.members.Upsert(&memberlist.Node{Name: "p", Addr: net.IPv4(127, 0, 0, 1), Port: 1}, membership.StateAlive, membership.NodeMeta{})
	b.handleBatch(ctx, msgs[:relayMaxQueued])
	if got := len(b.GetBroadcasts(0, 1<<20)); got != relayMaxQueued { // each sent once
		t.Fatalf("first round sent %d relayed deltas, want %d", got, relayMaxQueued)
	}
	b.handleBatch(ctx, msgs[relayMaxQueued:])
	if q, dropped := b.relayQ.NumQueued(), b.c.RelaySkipped.Load(); q != relayMaxQueued || dropped != 1 {
		t.Fatalf("queue holds %d, dropped %d; want %d and 1", q, dropped, relayMaxQueued)
	}
	one := b.GetBroadcasts(0, len(msgs[relayMaxQueued]))
	if len(one) != 1 || string(one[0]) != string(msgs[relayMaxQueued]) {
		t.Fatalf("a packet with room for one relayed delta did not carry the newest")
	}
}

// TestRelayByteBudget: relayed deltas go out at most relayBurstBytes at
// once and relayBytesPerSecond on average; this agent's own deltas are not
// held by it.
func TestRelayByteBudget(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewManual(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	b := newTestReplicator(t, slog.New(slog.DiscardHandler), func(c *Config) { c.Relay = true; c.Clock = clk })
	for i := 0; i < 40; i++ { // log10(41) rounds up to 2: 6 sends a delta
		b.members.Upsert(&memberlist.Node{Name: fmt.Sprintf("p%d", i), Addr: net.IPv4(127, 0, 0, 1), Port: uint16(1 + i)}, membership.StateAlive, membership.NodeMeta{})
	}
	b.handleBatch(ctx, relayBurst(t, relayMaxQueued, 900))
	sent := func() int {
		n := 0
		for {
			got := b.GetBroadcasts(2, 1400)
			if len(got) == 0 {
				return n
			}
			for _, m := range got {
				n += 2 + len(m)
			}
		}
	}
	n1 := sent()
	if n1 > relayBurstBytes || n1 < relayBurstBytes-1400 {
		t.Fatalf("sent %d relayed bytes at once, want about the burst, %d", n1, relayBurstBytes)
	}
	clk.Advance(time.Second)
	if n2 := sent(); n1+n2 > relayBurstBytes+relayBytesPerSecond || n2 < relayBytesPerSecond-1400 {
		t.Fatalf("sent %d relayed bytes at once and %d a second later, want about %d and %d", n1, n2, relayBurstBytes, relayBytesPerSecond)
	}
	own, err := b.store.Put(ctx, "kv", "mine", []byte("2"))
	if err != nil {
		t.Fatal(err)
	}
	b.Broadcast(own)
	if got := b.GetBroadcasts(2, 1400); len(got) != 1 {
		t.Fatalf("own delta held by the relay budget: %d messages", len(got))
	}
}
