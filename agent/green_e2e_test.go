package agent_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/greensched/provider"
)

// TestModelUpdateWaitsForGreenerStart: with green.update_window, a model
// the control plane assigns is not fetched while the zone's trace says a
// greener start lies within the window (three hours on): the update waits
// in the deferrable-work scheduler and the model is not installed. (With
// no window the same deployment installs at once: TestDeployedModelServesReadings.)
func TestModelUpdateWaitsForGreenerStart(t *testing.T) {
	var b strings.Builder
	b.WriteString("Time,Carbon Intensity\n")
	start := time.Now().UTC().Truncate(30 * time.Minute).Add(-2 * time.Hour)
	for i := range 24 {
		v := 300
		if i == 10 { // three hours from now
			v = 100
		}
		fmt.Fprintf(&b, "%s,%d\n", start.Add(time.Duration(i)*30*time.Minute).Format(time.DateTime), v)
	}
	trace := filepath.Join(t.TempDir(), "de.csv")
	if err := os.WriteFile(trace, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	e := startEnrolled(t, "edge-g", "green-e2e", map[string]string{"site": "a"}, func(c *agent.Config) {
		c.Green.Zone = "DE"
		c.Green.Carbon = provider.Config{Kind: provider.KindTrace, TraceFile: trace}
		c.Green.UpdateWindow = 6 * time.Hour
	})
	if _, err := e.cp.PushModel(t.Context(), modelFile(t, "1", 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cp.DeployModel(t.Context(), "occupancy", "1", "site=a"); err != nil {
		t.Fatal(err)
	}
	waiting := func() float64 {
		mfs, err := e.a.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "edgefleet_green_waiting_jobs" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		return -1
	}
	waitUntil(t, 15*time.Second, "the model update waits for its start", func() (bool, string) {
		return waiting() == 1, fmt.Sprintf("waiting jobs %v, installed %v", waiting(), e.a.Models().Installed())
	})
	time.Sleep(2 * time.Second)
	if _, ok := e.a.Models().Get("occupancy"); ok || waiting() != 1 {
		t.Fatalf("installed during the deferral: %v (waiting %v)", e.a.Models().Installed(), waiting())
	}
}
