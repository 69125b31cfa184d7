package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/greensched/provider"
)

// writeTrace writes a half-hourly trace from 2 h before now to 10 h after,
// at 300 gCO2eq/kWh except 100 three hours from now.
func writeTrace(t *testing.T, now time.Time) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("Time,Carbon Intensity\n")
	start := now.UTC().Truncate(30 * time.Minute).Add(-2 * time.Hour)
	for i := 0; i < 24; i++ {
		v := 300.0
		if i == 10 {
			v = 100
		}
		fmt.Fprintf(&b, "%s,%v\n", start.Add(time.Duration(i)*30*time.Minute).Format(time.DateTime), v)
	}
	path := filepath.Join(t.TempDir(), "de.csv")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestGreenHeartbeatAndCompaction: an agent with a zone, a trace provider
// and a configured battery reports them in its heartbeat; a due compaction
// with a window waits for the greener slot, one without runs at once and is
// accounted.
func TestGreenHeartbeatAndCompaction(t *testing.T) {
	c := newCluster(t)
	trace := writeTrace(t, time.Now())
	a := c.start("green", nil, func(cfg *Config) {
		cfg.Green.Zone = "DE"
		cfg.Green.Carbon = provider.Config{Kind: provider.KindTrace, TraceFile: trace}
		cfg.Green.Battery = BatteryConfig{Present: true, Level: 0.6, Charging: true}
		cfg.Green.CompactionWindow = 6 * time.Hour
	})
	e := a.heartbeat().Resources.Energy
	if e == nil || e.Zone != "DE" || e.Intensity == nil || *e.Intensity != 300 || e.IntensityAt == nil ||
		e.Battery == nil || !e.Battery.Present || e.Battery.Level != 0.6 || !e.Battery.Charging {
		t.Fatalf("heartbeat energy: %+v", e)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := a.deferCompaction(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("compaction with a 6 h window ran at once: %v", err)
	}
	// A bulk upload with a window waits for the greener slot as well.
	a.cfg.Green.UploadWindow = 6 * time.Hour
	uctx, ucancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer ucancel()
	if _, err := a.deferUpload(uctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("upload with a 6 h window ran at once: %v", err)
	}
	a.cfg.Green.UploadWindow = time.Minute // the greener slot is 3 h away: now
	udone, err := a.deferUpload(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	udone()
	if st := a.Green().Stats()["upload"]; st.Jobs != 1 {
		t.Fatalf("upload stats %+v", st)
	}
	a.cfg.Green.CompactionWindow = 0
	done, err := a.deferCompaction(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	done()
	mfs, err := a.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, mf := range mfs {
		found[mf.GetName()] = true
	}
	for _, name := range []string{"edgefleet_green_jobs_total", "edgefleet_green_energy_wh_total", "edgefleet_carbon_provider_requests_total"} {
		if !found[name] {
			t.Errorf("%s not on the agent's registry", name)
		}
	}
	if st := a.Green().Stats()["compaction"]; st.Jobs != 1 {
		t.Fatalf("stats %+v", st)
	}
}
