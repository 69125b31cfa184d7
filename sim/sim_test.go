package sim

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
)

// dataSets is the shared data directory, or "" (devices are skipped) when
// it is absent, as in a fresh clone.
func dataSets(t *testing.T) string {
	d := os.Getenv("EDGEFLEET_DATA")
	if d == "" {
		d = filepath.Join("..", "..", "shared", "data")
	}
	if _, err := ingest.OccupancyFiles(d); err != nil {
		t.Logf("occupancy data set not found under %s: the fleet runs without simulated devices", d)
		return ""
	}
	return d
}

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
		// A 10-minute control plane outage, 60 times faster than real time.
		Outage:          10 * time.Minute,
		TimeScale:       60,
		DevicesPerAgent: 2,
		DataSets:        dataSets(t),
		// Both keys rotated every 5 s for 10 s while agents write and ingest.
		Rotate:      5 * time.Second,
		RotateFor:   10 * time.Second,
		RotateGrace: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if cp := rep.ControlPlane; cp == nil || cp.Enrolled != 6 || cp.Online != 6 {
		t.Fatalf("control plane: %+v", rep.ControlPlane)
	}
	if o := rep.Outage; o == nil || o.SimSeconds < 600 || o.OfflineAtEnd != 6 || o.ResumeSeconds.Max <= 0 {
		t.Fatalf("outage: %+v", rep.Outage)
	}
	if k := rep.Rotation; k == nil || k.Rotations < 2 || k.SplitSamples != 0 || k.GossipDecryptFailures != 0 || k.UploadsRefused != 0 || k.AgentsOnGossipPrimary != 6 {
		t.Fatalf("rotation under load: %+v", rep.Rotation)
	}
	if d := rep.Devices; d == nil {
		t.Fatal("no devices report")
	} else if d.Skipped != "" {
		t.Logf("devices skipped: %s", d.Skipped)
	} else if err := d.Delivery.Err(); err != nil || d.StoredAtAgents == 0 || d.Duplicates != 0 || d.Missing != 0 || d.AtControlPlane != d.StoredAtAgents || d.Delivery.Sent != d.StoredAtAgents {
		t.Fatalf("device telemetry not delivered exactly once: %v: %+v %+v", err, d, d.Delivery)
	}
	if !rep.Converged || rep.DistinctStateHashes != 1 {
		t.Fatalf("not converged: %+v", rep)
	}
	if rep.Writes != 6*15+6*15+5*15+rep.Rotation.Writes {
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
