package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cptest"
)

// TestLostIngestionDatabase: an enrolled agent is stopped, its ingestion
// database deleted (its identity kept) and started again; the readings
// devices publish afterwards must all reach the control plane, once, and
// no upload may be answered "duplicate" (the new database's outbox starts
// again at sequence 1, under a new epoch).
func TestLostIngestionDatabase(t *testing.T) {
	if testing.Short() {
		t.Skip("scenario test: skipped with -short")
	}
	srv, cp := cptest.Start(t, cptest.Config(t.TempDir()))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p := newEnrolledProc(ctx, t, srv, cp, "edge-lostdb")
	p.start()
	broker := p.waitBroker()

	// Readings i = 0.. of device d1 (telemetryLines).
	start := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
	lines := func(from, n int) []string { return telemetryLines(start, from, n) }
	want := func(n int) []string {
		var out []string
		for i := 0; i < n; i++ {
			ts := start.Add(time.Duration(i) * 10 * time.Millisecond).UTC()
			out = append(out, fmt.Sprintf("d1/temp/%s/%d", ts.Format(time.RFC3339Nano), i),
				fmt.Sprintf("d1/hum/%s/%d", ts.Format(time.RFC3339Nano), i%100))
		}
		sort.Strings(out)
		return out
	}
	var agentID string
	eventually(t, 30*time.Second, "agent enrolled", func() error {
		var up struct {
			AgentID string `json:"agent_id"`
		}
		if err := p.getJSON("/v1/uplink", &up); err != nil {
			return err
		}
		if up.AgentID == "" {
			return fmt.Errorf("not enrolled yet")
		}
		agentID = up.AgentID
		return nil
	})
	// held returns every reading the control plane holds for the agent,
	// as "device/metric/time/value", sorted.
	held := func() ([]string, error) {
		res, err := cp.QueryTelemetry(ctx, cpapi.TelemetryQuery{Agent: agentID, From: start.Add(-time.Hour), To: time.Now().Add(time.Hour), Limit: 100000})
		if err != nil {
			return nil, err
		}
		var out []string
		for _, s := range res.Series {
			for _, pt := range s.Points {
				out = append(out, fmt.Sprintf("%s/%s/%s/%g", s.Device, s.Metric, pt.TS.UTC().Format(time.RFC3339Nano), pt.Value))
			}
		}
		sort.Strings(out)
		return out, nil
	}
	waitHeld := func(n int) {
		t.Helper()
		w := want(n)
		eventually(t, 30*time.Second, fmt.Sprintf("the control plane holds readings 0..%d", n-1), func() error {
			got, err := held()
			if err != nil {
				return err
			}
			if fmt.Sprint(got) != fmt.Sprint(w) {
				return fmt.Errorf("holds %d readings, want %d", len(got), len(w))
			}
			return nil
		})
	}
	const first, second = 200, 150
	publishLines(t, broker, "devices/d1/telemetry", lines(0, first))
	waitHeld(first)

	// Stop the agent, lose its ingestion database (identity kept), start
	// it again and publish new readings.
	p.stop()
	for _, f := range []string{"ingest.db", "ingest.db-wal", "ingest.db-shm"} {
		if err := os.Remove(filepath.Join(p.dataDir, f)); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(p.dataDir, "ingest.db")); !os.IsNotExist(err) {
		t.Fatalf("ingest.db still there: %v", err)
	}
	p.start()
	broker = p.waitBroker()
	publishLines(t, broker, "devices/d1/telemetry", lines(first, second))
	waitHeld(first + second)

	var up struct {
		AgentID          string `json:"agent_id"`
		UploadedReadings int64  `json:"uploaded_readings"`
		DuplicateBatches int64  `json:"duplicate_batches"`
	}
	// Let a few more upload rounds pass: nothing more arrives.
	time.Sleep(1500 * time.Millisecond)
	waitHeld(first + second)
	if err := p.getJSON("/v1/uplink", &up); err != nil {
		t.Fatal(err)
	}
	if up.AgentID != agentID || up.DuplicateBatches != 0 || up.UploadedReadings != 2*second {
		t.Fatalf("uplink after the lost database: %+v (agent %s, want %d readings uploaded, no duplicate)", up, agentID, 2*second)
	}
}
