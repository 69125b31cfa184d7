package agentapi

import (
	"testing"
	"time"
)

func TestIngestRate(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration, received int64) Status {
		return Status{StartedAt: start, At: start.Add(d), Ingest: IngestStatus{Enabled: true, Stats: &IngestStats{Received: received}}}
	}
	if r, ok := IngestRate(at(10*time.Second, 100), at(12*time.Second, 350)); !ok || r != 125 {
		t.Fatalf("rate = %v, %v; want 125", r, ok)
	}
	restarted := at(12*time.Second, 5)
	restarted.StartedAt = start.Add(11 * time.Second)
	for name, c := range map[string][2]Status{
		"restart":      {at(10*time.Second, 100), restarted},
		"no time":      {at(10*time.Second, 100), at(10*time.Second, 100)},
		"backwards":    {at(12*time.Second, 100), at(10*time.Second, 200)},
		"no ingestion": {{StartedAt: start}, {StartedAt: start, At: start.Add(time.Second)}},
	} {
		if r, ok := IngestRate(c[0], c[1]); ok {
			t.Errorf("%s: rate %v, want none", name, r)
		}
	}
}
