package sim

import (
	"context"
	"testing"
	"time"
)

// TestRunConverges plays the whole scenario on a small fleet with fast
// timers: writes, partition with writes on both sides, heal, kill and
// restart. It must end with one state hash equal to the oracle's.
func TestRunConverges(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a fleet: skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Options{
		Agents:         6,
		Partition:      3 * time.Second,
		WritesPerAgent: 15,
		Idle:           time.Second,
		Profile:        "test",
		DataDir:        t.TempDir(),
		Timeout:        60 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Converged || rep.DistinctStateHashes != 1 {
		t.Fatalf("not converged: %+v", rep)
	}
	if rep.Writes != 6*15+6*15+5*15 {
		t.Fatalf("writes = %d", rep.Writes)
	}
	if rep.GossipBytesPerAgentPerSecond <= 0 {
		t.Fatalf("no gossip traffic measured: %+v", rep)
	}
	t.Logf("report: %+v", rep)
}

func TestOptionsRejectNonsense(t *testing.T) {
	for _, o := range []Options{{Agents: 1}, {Agents: 1000}, {Agents: 3, Partition: -time.Second}} {
		if _, err := Run(context.Background(), o); err == nil {
			t.Errorf("Run(%+v) accepted", o)
		}
	}
}

func TestPercentiles(t *testing.T) {
	p := percentiles([]float64{5, 1, 3, 2, 4})
	if p.P50 != 3 || p.Max != 5 || p.P99 != 5 {
		t.Fatalf("%+v", p)
	}
	if (percentiles(nil) != Percentiles{}) {
		t.Fatal("empty input")
	}
}
