package sim

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestPropagationPhase times a few single writes on a small fleet: one
// figure per write, and every agent holds every write afterwards.
func TestPropagationPhase(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a fleet: skipped with -short")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f, err := StartFleet(ctx, Options{Agents: 4, NoPartition: true, Profile: "test", DataDir: t.TempDir(),
		NoControlPlane: true, NoDevices: true, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const writes = 6
	took, err := f.propagation(ctx, writes)
	if err != nil {
		t.Fatal(err)
	}
	if len(took) != writes {
		t.Fatalf("%d figures for %d writes", len(took), writes)
	}
	for i, n := range f.nodes {
		for w := 0; w < writes; w++ {
			if _, ok, err := n.ag.Store().Get(ctx, collPropagation, fmt.Sprintf("w-%04d", w)); err != nil || !ok {
				t.Fatalf("agent %d lacks write %d (err %v)", i, w, err)
			}
		}
	}
	q := quantiles(took)
	if q.Max <= 0 || q.P50 > q.P95 || q.P95 > q.P99 || q.P99 > q.Max {
		t.Fatalf("quantiles %+v of %v", q, took)
	}
	t.Logf("propagation over %d writes: %+v", writes, q)
}

func TestQuantiles(t *testing.T) {
	var xs []float64
	for i := 100; i >= 1; i-- {
		xs = append(xs, float64(i))
	}
	if q := quantiles(xs); q != (Quantiles{P50: 50, P95: 95, P99: 99, Max: 100}) {
		t.Fatalf("%+v", q)
	}
	if (quantiles(nil) != Quantiles{}) {
		t.Fatal("empty input")
	}
}
