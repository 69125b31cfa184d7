package replication

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/crdt"
	"math/rand/v2"
	"sync"
)

// sampleDeltas makes real deltas from a scratch store.
func sampleDeltas(t testing.TB) []crdt.Delta {
	t.Helper()
	s, err := crdt.Open(filepath.Join(t.TempDir(), "src.db"), crdt.Options{ReplicaID: "src"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	var out []crdt.Delta
	for _, op := range []func() (crdt.Delta, error){
		func() (crdt.Delta, error) { return s.Put(ctx, "kv", "k", []byte(`{"a":1}`)) },
		func() (crdt.Delta, error) { return s.SetAdd(ctx, "tags", "x") },
		func() (crdt.Delta, error) { return s.SetRemove(ctx, "tags", "x") },
		func() (crdt.Delta, error) { return s.CounterAdd(ctx, "n", "c", -3) },
		func() (crdt.Delta, error) { return s.MVPut(ctx, "mv", "m", []byte("v")) },
		func() (crdt.Delta, error) { return s.Delete(ctx, "kv", "k") },
	} {
		d, err := op()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

func sampleMessages(t testing.TB) map[string][]byte {
	ds := sampleDeltas(t)
	vv := crdt.VersionVector{"src": 6, "other": 2}
	enc := func(m Message) []byte {
		b, err := Encode(m, nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	future := crdt.Delta{Origin: "clockless", From: 0, To: 1, Ops: []crdt.Op{{
		Dot:  crdt.Dot{Origin: "clockless", Seq: 1},
		HLC:  crdt.Timestamp(uint64(time.Now().Add(24*time.Hour).UnixMilli()) << 16),
		Type: crdt.TypeLWW, Collection: "kv", Key: "future", Kind: crdt.KindPut, Value: []byte("x"),
	}}}
	return map[string][]byte{
		"deltas":      enc(Message{Type: TypeDeltas, Deltas: ds[:1]}),
		"deltas-all":  enc(Message{Type: TypeDeltas, Deltas: ds}),
		"syncreq":     enc(Message{Type: TypeSyncReq, From: "peer", Addr: "127.0.0.1:7946", Digest: 0x0102030405060708, Clock: ClockSample{UnixMilli: time.Now().UnixMilli(), Sane: true}, VV: vv}),
		"syncreq-0":   enc(Message{Type: TypeSyncReq, From: "peer", Addr: "[::1]:1", VV: crdt.VersionVector{}}),
		"syncresp":    enc(Message{Type: TypeSyncResp, From: "peer", Clock: ClockSample{UnixMilli: -1}, VV: vv, Last: true, PushBack: true, Deltas: ds[2:4]}),
		"syncresp-0":  enc(Message{Type: TypeSyncResp, From: "peer", VV: vv, Last: true}),
		"syncdata":    enc(Message{Type: TypeSyncData, From: "peer", Deltas: ds[4:]}),
		"state":       enc(Message{Type: TypeState, From: "peer", Clock: ClockSample{UnixMilli: 1, Sane: true}, VV: vv}),
		"syncresp-h":  enc(Message{Type: TypeSyncResp, From: "peer", VV: vv, Horizon: crdt.VersionVector{"src": 9}, Last: true}),
		"snapreq":     enc(Message{Type: TypeSnapReq, From: "peer"}),
		"snapdata":    enc(Message{Type: TypeSnapData, From: "peer", Xfer: 7, Total: 5, Offset: 2, Chunk: []byte("abc"), Last: true}),
		"leave":       enc(Message{Type: TypeLeave, From: "peer"}),
		"clock-drift": enc(Message{Type: TypeDeltas, Deltas: []crdt.Delta{future}}),
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for name, b := range sampleMessages(t) {
		m, err := Decode(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		again, err := Encode(m, nil)
		if err != nil {
			t.Fatalf("%s: re-encode: %v", name, err)
		}
		if !reflect.DeepEqual(again, b) {
			t.Fatalf("%s: re-encoding differs", name)
		}
	}
}

func TestDecodeMessageRejects(t *testing.T) {
	msgs := sampleMessages(t)
	cases := []struct {
		name   string
		b      []byte
		reason string
	}{
		{"empty", nil, membership.ReasonMalformed},
		{"unknown type", []byte{42}, ReasonUnknownType},
		{"oversized", make([]byte, MaxMessageBytes+1), membership.ReasonOversized},
		{"deltas missing", []byte{TypeDeltas}, membership.ReasonMalformed},
		{"deltas garbage", []byte{TypeDeltas, 9, 9, 9}, ReasonInvalidDelta},
		{"name too long", append([]byte{TypeSyncReq, 100}, make([]byte, 100)...), membership.ReasonMalformed},
		{"name truncated", []byte{TypeSyncReq, 10, 'a'}, membership.ReasonMalformed},
		{"empty name", []byte{TypeSyncReq, 0}, membership.ReasonMalformed},
		{"bad utf8 name", []byte{TypeSyncReq, 2, 0xff, 0xfe}, membership.ReasonMalformed},
		{"vv garbage", append([]byte{TypeSyncReq, 1, 'p', 9}, append([]byte("1.2.3.4:5"), 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 77, 1, 2)...), membership.ReasonMalformed},
		{"clock truncated", append([]byte{TypeSyncReq, 1, 'p', 9}, append([]byte("1.2.3.4:5"), 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0)...), membership.ReasonMalformed},
		{"unknown clock flag", []byte{TypeState, 1, 'p', 2, 0, 0, 0, 0, 0, 0, 0, 0, 0}, membership.ReasonMalformed},
		{"digest truncated", append([]byte{TypeSyncReq, 1, 'p', 9}, append([]byte("1.2.3.4:5"), 0, 0, 0)...), membership.ReasonMalformed},
		{"bad addr", append([]byte{TypeSyncReq, 1, 'p', 3}, []byte("x:1")...), membership.ReasonMalformed},
		{"bad port", append([]byte{TypeSyncReq, 1, 'p', 9}, []byte("1.2.3.4:0")...), membership.ReasonMalformed},
		{"unknown flag", []byte{TypeSyncData, 0x80, 1, 'p', 1}, membership.ReasonMalformed},
		{"push-back on data", []byte{TypeSyncData, 3, 1, 'p', 1}, membership.ReasonMalformed},
		{"data without deltas", []byte{TypeSyncData, 1, 1, 'p'}, membership.ReasonMalformed},
		{"resp vv length beyond end", []byte{TypeSyncResp, 1, 1, 'p', 50, 1}, membership.ReasonMalformed},
		{"leave trailing", append(append([]byte(nil), msgs["leave"]...), 0), membership.ReasonMalformed},
		{"truncated deltas", msgs["deltas-all"][:len(msgs["deltas-all"])-3], ReasonInvalidDelta},
	}
	for _, c := range cases {
		_, err := Decode(c.b)
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if got := RejectReason(err); got != c.reason {
			t.Errorf("%s: reason %q, want %q (%v)", c.name, got, c.reason, err)
		}
	}
}

// testMembers is Members over a real member table, recording what is
// sent and reconciled instead of reaching a network.
type testMembers struct {
	*membership.Table
	mu         sync.Mutex
	sent       map[string]int
	msgs       []sentMsg
	reconciled []string
}

func (m *testMembers) Addr() string             { return "127.0.0.1:7946" }
func (m *testMembers) Alive() []membership.Peer { return m.WithState(membership.StateAlive) }
func (m *testMembers) NumMembers() int          { return m.Count(membership.StateAlive) }

func (m *testMembers) SendTo(name, addr string, msg []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sent[name]++
	m.msgs = append(m.msgs, sentMsg{name, msg})
	return nil
}

type sentMsg struct {
	to  string
	msg []byte
}

func (m *testMembers) Reconcile(peer, addr string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reconciled = append(m.reconciled, peer)
}

// testRand is a Rand for tests.
type testRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

func (t *testRand) IntN(n int) int   { t.mu.Lock(); defer t.mu.Unlock(); return t.r.IntN(n) }
func (t *testRand) Float64() float64 { t.mu.Lock(); defer t.mu.Unlock(); return t.r.Float64() }

// testReplicator is a replicator named "self" with an open store, a
// member table and no network, to drive handleBatch directly.
type testReplicator struct {
	*Replicator
	members *testMembers
	mu      sync.Mutex
	rejects map[string]int
	refused map[string]int // ops, by origin label
}

func (tr *testReplicator) refusedOps(origin string) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.refused[origin]
}

func (tr *testReplicator) rejected(reason string) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.rejects[reason]
}

func newTestReplicator(t testing.TB, logger *slog.Logger, mod func(*Config)) *testReplicator {
	t.Helper()
	s, err := crdt.Open(filepath.Join(t.TempDir(), "state.db"), crdt.Options{ReplicaID: "self"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	tr := &testReplicator{rejects: map[string]int{}, refused: map[string]int{},
		members: &testMembers{Table: membership.NewTable("self", nil), sent: map[string]int{}}}
	cfg := Config{
		Name: "self", Store: s, Members: tr.members,
		SyncInterval: time.Second, SyncTimeout: time.Second, MaxChunkBytes: 64 << 10, InboundQueue: 64,
		RetransmitMult: 3, MaxBroadcastBytes: 1400,
		Rand: &testRand{r: rand.New(rand.NewPCG(1, 2))}, Logger: logger, Counters: &Counters{},
		Reject: func(reason string) {
			tr.mu.Lock()
			defer tr.mu.Unlock()
			tr.rejects[reason]++
		},
		Refused: func(origin string, n int) {
			tr.mu.Lock()
			defer tr.mu.Unlock()
			tr.refused[origin] += n
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	if tr.Replicator, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestHandleBatchIsolatesBadMessages(t *testing.T) {
	a := newTestReplicator(t, slog.New(slog.DiscardHandler), nil)
	msgs := sampleMessages(t)
	ctx := context.Background()
	a.handleBatch(ctx, [][]byte{msgs["clock-drift"], msgs["deltas-all"], {TypeDeltas, 1, 2}, msgs["syncreq"]})
	// The op from a clock a day ahead is refused for its origin, not
	// rejected as a message.
	if got := a.rejected(ReasonClockDrift); got != 0 {
		t.Errorf("clock drift rejections = %v", got)
	}
	if got := a.refusedOps("clockless"); got != 1 {
		t.Errorf("refused ops of clockless = %v", got)
	}
	if got := a.rejected(ReasonInvalidDelta); got != 1 {
		t.Errorf("invalid delta rejections = %v", got)
	}
	if _, ok, _ := a.store.Get(ctx, "kv", "future"); ok {
		t.Error("delta from the future applied")
	}
	vv, err := a.store.VersionVector(ctx)
	if err != nil || vv["src"] != 6 {
		t.Fatalf("good deltas of the batch not applied: %v %v", vv, err)
	}
	if a.c.DeltasApplied.Load() != 6 {
		t.Errorf("deltas applied = %d", a.c.DeltasApplied.Load())
	}
	// Duplicates are skipped before reaching the store.
	a.handleBatch(ctx, [][]byte{msgs["deltas-all"]})
	if a.c.DeltasApplied.Load() != 6 {
		t.Errorf("duplicates applied: %d", a.c.DeltasApplied.Load())
	}
	// A sync request schedules an answer to its sender.
	if j, ok := a.shipper.next(); !ok || j.peer != "peer" || !j.respond {
		t.Errorf("ship job = %+v %v", j, ok)
	} else {
		a.shipper.finish(j.peer)
	}
	// Own name is refused.
	own, _ := Encode(Message{Type: TypeSyncReq, From: "self", Addr: "127.0.0.1:1", VV: crdt.VersionVector{}}, nil)
	a.handleBatch(ctx, [][]byte{own})
	if a.rejected(ReasonOwnName) != 1 {
		t.Error("own name accepted")
	}
}

func TestRejectReasonOfStoreErrors(t *testing.T) {
	if r := RejectReason(errors.Join(errors.New("x"), crdt.ErrClockDrift)); r != ReasonClockDrift {
		t.Error(r)
	}
	if r := RejectReason(crdt.ErrInvalidDelta); r != ReasonInvalidDelta {
		t.Error(r)
	}
}

// FuzzHandleMessage feeds arbitrary bytes to the agent's message decoder
// and handler: never a panic, decoded messages re-encode to the same bytes,
// and the store stays readable.
func FuzzHandleMessage(f *testing.F) {
	msgs := sampleMessages(f)
	names := make([]string, 0, len(msgs))
	for name := range msgs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		f.Add(msgs[name])
		f.Add(msgs[name][:len(msgs[name])/2])
	}
	f.Add([]byte{})
	f.Add([]byte{TypeSyncResp, 1, 1, 'p', 0})
	f.Add([]byte{TypeLeave, 1, 'p'})
	f.Add([]byte{TypeDeltas, 1, 0, 0, 0})
	// The fuzz function may not log through f.
	a := newTestReplicator(f, slog.New(slog.DiscardHandler), nil)
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err == nil {
			again, err := Encode(m, nil)
			if err != nil {
				t.Fatalf("decoded message does not re-encode: %v", err)
			}
			m2, err := Decode(again)
			if err != nil {
				t.Fatalf("re-encoded message does not decode: %v", err)
			}
			if m2.Type != m.Type || m2.From != m.From || m2.Addr != m.Addr || m2.Digest != m.Digest || m2.Last != m.Last || m2.PushBack != m.PushBack || len(m2.Deltas) != len(m.Deltas) || len(m2.VV) != len(m.VV) {
				t.Fatalf("round trip changed the message: %+v vs %+v", m, m2)
			}
		} else if RejectReason(err) == "" {
			t.Fatal("error without reason")
		}
		a.handleBatch(ctx, [][]byte{b})
		if _, err := a.store.StateHash(ctx); err != nil {
			t.Fatalf("store unreadable after message: %v", err)
		}
		for { // drain scheduled work so it does not pile up
			j, ok := a.shipper.next()
			if !ok {
				break
			}
			a.shipper.finish(j.peer)
		}
	})
}
