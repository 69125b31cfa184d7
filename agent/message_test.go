package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/crdt"
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
	enc := func(m message) []byte {
		b, err := encodeMessage(m, nil)
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
		"deltas":      enc(message{Type: msgDeltas, Deltas: ds[:1]}),
		"deltas-all":  enc(message{Type: msgDeltas, Deltas: ds}),
		"syncreq":     enc(message{Type: msgSyncReq, From: "peer", Addr: "127.0.0.1:7946", Digest: 0x0102030405060708, VV: vv}),
		"syncreq-0":   enc(message{Type: msgSyncReq, From: "peer", Addr: "[::1]:1", VV: crdt.VersionVector{}}),
		"syncresp":    enc(message{Type: msgSyncResp, From: "peer", VV: vv, Last: true, PushBack: true, Deltas: ds[2:4]}),
		"syncresp-0":  enc(message{Type: msgSyncResp, From: "peer", VV: vv, Last: true}),
		"syncdata":    enc(message{Type: msgSyncData, From: "peer", Deltas: ds[4:]}),
		"state":       enc(message{Type: msgState, From: "peer", VV: vv}),
		"leave":       enc(message{Type: msgLeave, From: "peer"}),
		"clock-drift": enc(message{Type: msgDeltas, Deltas: []crdt.Delta{future}}),
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for name, b := range sampleMessages(t) {
		m, err := decodeMessage(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		again, err := encodeMessage(m, nil)
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
		{"unknown type", []byte{42}, reasonUnknownType},
		{"oversized", make([]byte, maxMessageBytes+1), membership.ReasonOversized},
		{"deltas missing", []byte{msgDeltas}, membership.ReasonMalformed},
		{"deltas garbage", []byte{msgDeltas, 9, 9, 9}, reasonInvalidDelta},
		{"name too long", append([]byte{msgSyncReq, 100}, make([]byte, 100)...), membership.ReasonMalformed},
		{"name truncated", []byte{msgSyncReq, 10, 'a'}, membership.ReasonMalformed},
		{"empty name", []byte{msgSyncReq, 0}, membership.ReasonMalformed},
		{"bad utf8 name", []byte{msgSyncReq, 2, 0xff, 0xfe}, membership.ReasonMalformed},
		{"vv garbage", append([]byte{msgSyncReq, 1, 'p', 9}, append([]byte("1.2.3.4:5"), 0, 0, 0, 0, 0, 0, 0, 0, 77, 1, 2)...), membership.ReasonMalformed},
		{"digest truncated", append([]byte{msgSyncReq, 1, 'p', 9}, append([]byte("1.2.3.4:5"), 0, 0, 0)...), membership.ReasonMalformed},
		{"bad addr", append([]byte{msgSyncReq, 1, 'p', 3}, []byte("x:1")...), membership.ReasonMalformed},
		{"bad port", append([]byte{msgSyncReq, 1, 'p', 9}, []byte("1.2.3.4:0")...), membership.ReasonMalformed},
		{"unknown flag", []byte{msgSyncData, 0x80, 1, 'p', 1}, membership.ReasonMalformed},
		{"push-back on data", []byte{msgSyncData, 3, 1, 'p', 1}, membership.ReasonMalformed},
		{"data without deltas", []byte{msgSyncData, 1, 1, 'p'}, membership.ReasonMalformed},
		{"resp vv length beyond end", []byte{msgSyncResp, 1, 1, 'p', 50, 1}, membership.ReasonMalformed},
		{"leave trailing", append(append([]byte(nil), msgs["leave"]...), 0), membership.ReasonMalformed},
		{"truncated deltas", msgs["deltas-all"][:len(msgs["deltas-all"])-3], reasonInvalidDelta},
	}
	for _, c := range cases {
		_, err := decodeMessage(c.b)
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if got := rejectReason(err); got != c.reason {
			t.Errorf("%s: reason %q, want %q (%v)", c.name, got, c.reason, err)
		}
	}
}

// newHandlerAgent is an agent with an open store and no network, to drive
// handleBatch directly.
func newHandlerAgent(t testing.TB, logger *slog.Logger) *Agent {
	t.Helper()
	cfg := testConfig(t, "self")
	a, err := New(cfg, Deps{Logger: logger, Rand: seededRand("fuzz")})
	if err != nil {
		t.Fatal(err)
	}
	s, err := crdt.Open(filepath.Join(cfg.DataDir, stateDBFile), crdt.Options{ReplicaID: "self"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	a.store = s
	return a
}

func TestHandleBatchIsolatesBadMessages(t *testing.T) {
	a := newHandlerAgent(t, testLogger(t))
	msgs := sampleMessages(t)
	ctx := context.Background()
	a.handleBatch(ctx, [][]byte{msgs["clock-drift"], msgs["deltas-all"], {msgDeltas, 1, 2}, msgs["syncreq"]})
	if got := rejectedCount(a, reasonClockDrift); got != 1 {
		t.Errorf("clock drift rejections = %v", got)
	}
	if got := rejectedCount(a, reasonInvalidDelta); got != 1 {
		t.Errorf("invalid delta rejections = %v", got)
	}
	if _, ok, _ := a.Store().Get(ctx, "kv", "future"); ok {
		t.Error("delta from the future applied")
	}
	vv, err := a.Store().VersionVector(ctx)
	if err != nil || vv["src"] != 6 {
		t.Fatalf("good deltas of the batch not applied: %v %v", vv, err)
	}
	if a.m.deltasApplied.Load() != 6 {
		t.Errorf("deltas applied = %d", a.m.deltasApplied.Load())
	}
	// Duplicates are skipped before reaching the store.
	a.handleBatch(ctx, [][]byte{msgs["deltas-all"]})
	if a.m.deltasApplied.Load() != 6 {
		t.Errorf("duplicates applied: %d", a.m.deltasApplied.Load())
	}
	// A sync request schedules an answer to its sender.
	if j, ok := a.shipper.next(); !ok || j.peer != "peer" || !j.respond {
		t.Errorf("ship job = %+v %v", j, ok)
	} else {
		a.shipper.finish(j.peer)
	}
	// Own name is refused.
	own, _ := encodeMessage(message{Type: msgSyncReq, From: "self", Addr: "127.0.0.1:1", VV: crdt.VersionVector{}}, nil)
	a.handleBatch(ctx, [][]byte{own})
	if rejectedCount(a, reasonOwnName) != 1 {
		t.Error("own name accepted")
	}
}

func TestRejectReasonOfStoreErrors(t *testing.T) {
	if r := rejectReason(errors.Join(errors.New("x"), crdt.ErrClockDrift)); r != reasonClockDrift {
		t.Error(r)
	}
	if r := rejectReason(crdt.ErrInvalidDelta); r != reasonInvalidDelta {
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
	f.Add([]byte{msgSyncResp, 1, 1, 'p', 0})
	f.Add([]byte{msgLeave, 1, 'p'})
	f.Add([]byte{msgDeltas, 1, 0, 0, 0})
	// The fuzz function may not log through f.
	a := newHandlerAgent(f, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMessage(b)
		if err == nil {
			again, err := encodeMessage(m, nil)
			if err != nil {
				t.Fatalf("decoded message does not re-encode: %v", err)
			}
			m2, err := decodeMessage(again)
			if err != nil {
				t.Fatalf("re-encoded message does not decode: %v", err)
			}
			if m2.Type != m.Type || m2.From != m.From || m2.Addr != m.Addr || m2.Digest != m.Digest || m2.Last != m.Last || m2.PushBack != m.PushBack || len(m2.Deltas) != len(m.Deltas) || len(m2.VV) != len(m.VV) {
				t.Fatalf("round trip changed the message: %+v vs %+v", m, m2)
			}
		} else if rejectReason(err) == "" {
			t.Fatal("error without reason")
		}
		a.handleBatch(ctx, [][]byte{b})
		if _, err := a.Store().StateHash(ctx); err != nil {
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
