package replication

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/crdt"
	"github.com/edgefleet/edgefleet/internal/testutil"
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
	resp := encode(t, Message{Type: TypeSyncResp, From: "peer", VV: crdt.VersionVector{}, Last: true, Deltas: []crdt.Delta{puts("b", 2, now), ahead, puts("c", 4, now)}})
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
