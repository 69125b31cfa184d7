package sim

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn/coord"
	"github.com/edgefleet/edgefleet/fedlearn/datasets"
	"github.com/edgefleet/edgefleet/greensched"
	"github.com/edgefleet/edgefleet/greensched/provider"
)

// TestRunFLCarbon runs the occupancy job on six agents, two per zone
// (DE, GB, FR; fewer agents would hold more examples each than the
// broker's message-rate burst admits), one client per round for 5 rounds,
// unscheduled and with carbon. The scheduled job rotates its clients
// (participation credit) and prefers clean zones: every round must train
// one agent that has not trained yet, in the cleanest zone (computed here
// from the traces at the round's opening) among the zones that still have
// such an agent; the unscheduled draw does that every round with
// probability about 1/3 × 1/3 × 1/2 × 2/3 × 1/2. The mean of its rounds'
// intensities must not be above the mean of the three zones' intensities
// at the rounds' openings (what a draw that does not look at carbon gets
// on average at the same times). Both means weigh the rounds equally: the
// job's energy-weighted intensity follows each client's training time on
// this machine. The accuracies are logged: with one client of a
// contiguous slice per round they depend on which slices train.
func TestRunFLCarbon(t *testing.T) {
	sets := carbonFLSets(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Date(2020, 3, 1, 0, 0, 0, 0, time.UTC)
	rep, err := RunFL(ctx, FLOptions{
		Dataset: datasets.Occupancy, Agents: 6, Rounds: 5, Seed: 1, Fraction: 0.16,
		Reference: map[string]float64{"datatest": 0.979, "datatest2": 0.992},
		DataSets:  sets, DataDir: t.TempDir(), Timeout: 2 * time.Minute,
		Carbon: &FLCarbon{Start: start, Window: time.Hour},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := rep.Carbon
	for _, run := range []FLCarbonRun{c.Unscheduled, c.Scheduled} {
		for _, r := range run.Rounds {
			t.Logf("%s round %d/%d %s opened %s, by zone %v, %.6f Wh, %.6f g, %.1f g/kWh", run.Job, r.Round, r.Attempt, r.Phase, r.Opened, r.ByZone, r.Wh, r.Grams, r.Intensity)
		}
		t.Logf("%s: %d rounds, %.6f g/round, %.1f g/kWh, accuracy %v", run.Job, run.Aggregated, run.GramsPerRound, run.Intensity, run.FinalAccuracy)
	}
	t.Logf("comparison %+v", c.Comparison)
	if c.Unscheduled.Status != coord.JobDone || c.Scheduled.Status != coord.JobDone || c.Scheduled.Aggregated != 5 || c.Unscheduled.Aggregated != 5 {
		t.Fatalf("jobs %s and %s, %d and %d rounds aggregated, want both done after 5", c.Unscheduled.Status, c.Scheduled.Status, c.Unscheduled.Aggregated, c.Scheduled.Aggregated)
	}
	var series []greensched.Series
	for _, z := range CarbonZones {
		s, err := provider.ReadTraceFile(filepath.Join(sets, "carbon", z.File), z.Zone)
		if err != nil {
			t.Fatal(err)
		}
		series = append(series, s)
	}
	tz, err := greensched.NewTraceZones(greensched.TimeMap{SimStart: start, TraceStart: start, Scale: 1}, series...)
	if err != nil {
		t.Fatal(err)
	}
	left := map[string]int{} // agents per zone that have not trained
	for i := range 6 {
		left[zoneOf(i)]++
	}
	var zonesMean, schedMean float64
	for _, r := range c.Scheduled.Rounds {
		schedMean += r.Intensity / float64(len(c.Scheduled.Rounds))
		at, err := time.Parse(time.DateTime, r.Opened)
		if err != nil {
			t.Fatal(err)
		}
		best, bestV := "", 0.0
		for _, z := range tz.Zones() {
			p, err := tz.Now(z, at)
			if err != nil {
				t.Fatal(err)
			}
			zonesMean += p.Intensity / float64(len(tz.Zones())*len(c.Scheduled.Rounds))
			if left[z] > 0 && (best == "" || p.Intensity < bestV) {
				best, bestV = z, p.Intensity
			}
		}
		if r.ByZone[best] != 1 || len(r.ByZone) != 1 {
			t.Errorf("scheduled round %d opened at %s trained in %v, want one client in %s (cleanest with an agent yet to train, %.1f g/kWh; yet to train %v)", r.Round, r.Opened, r.ByZone, best, bestV, left)
		}
		for z, n := range r.ByZone {
			left[z] -= n
		}
	}
	if schedMean > zonesMean {
		t.Errorf("scheduled rounds' mean %.1f g/kWh (energy-weighted %.1f); the zones' mean at the same openings %.1f g/kWh: want scheduled not above",
			schedMean, c.Scheduled.Intensity, zonesMean)
	}
	if c.Scheduled.ClientTrainingsMax != 1 {
		t.Errorf("an agent trained %d times in the scheduled job, want each at most once (5 rounds, 6 agents)", c.Scheduled.ClientTrainingsMax)
	}
}

// TestRunFLCarbonDeadline: with a deadline, the scheduled job's rounds
// take the greenest slots before it and the job is done in time, though
// its window would let a round wait for the greener night of 2020-03-02
// (the plan without the deadline goes there and ends after it); every
// agent trains every round, so only the time differs.
func TestRunFLCarbonDeadline(t *testing.T) {
	sets := carbonFLSets(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Date(2020, 3, 2, 12, 0, 0, 0, time.UTC)
	rep, err := RunFL(ctx, FLOptions{
		Dataset: datasets.Occupancy, Agents: 6, Rounds: 5, Seed: 1,
		Reference: map[string]float64{"datatest": 0.979, "datatest2": 0.992},
		DataSets:  sets, DataDir: t.TempDir(), Timeout: 2 * time.Minute,
		Carbon: &FLCarbon{Start: start, Window: 24 * time.Hour, Deadline: 6 * time.Hour},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := rep.Carbon
	for _, run := range []FLCarbonRun{c.Unscheduled, c.Scheduled} {
		for _, r := range run.Rounds {
			t.Logf("%s round %d/%d %s opened %s, %.1f g/kWh", run.Job, r.Round, r.Attempt, r.Phase, r.Opened, r.Intensity)
		}
		t.Logf("%s: %s, %d rounds, %.1f g/kWh, trace %s to %s", run.Job, run.Status, run.Aggregated, run.Intensity, run.TraceFrom, run.TraceTo)
	}
	if c.Unscheduled.Status != coord.JobDone || c.Scheduled.Status != coord.JobDone || c.Scheduled.Aggregated != 5 {
		t.Fatalf("jobs %s (%s) and %s (%s), %d rounds aggregated by the scheduled one, want both done, 5", c.Unscheduled.Status, c.Unscheduled.Reason, c.Scheduled.Status, c.Scheduled.Reason, c.Scheduled.Aggregated)
	}
	if c.Deadline != "6h0m0s" {
		t.Errorf("report's deadline %q", c.Deadline)
	}
	end, err := time.Parse(time.DateTime, c.Scheduled.TraceTo)
	if err != nil {
		t.Fatal(err)
	}
	if end.After(start.Add(6 * time.Hour)) {
		t.Errorf("the scheduled job ended at %s, after its deadline", end)
	}
	// the afternoon is nearly flat (253-258 g/kWh): the rounds' actual
	// times and lengths move the energy-weighted mean by a few tenths
	if c.Comparison.IntensitySavedPercent < -2 {
		t.Errorf("saved %.1f %% of the intensity, want the greenest slots before the deadline (not 2 %% dirtier)", c.Comparison.IntensitySavedPercent)
	}
}

// carbonFLSets is the data sets directory of a carbon FL run (occupancy
// and the zones' traces); it skips with -short or without them.
func carbonFLSets(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a fleet and trains twice: skipped with -short")
	}
	sets := flDataSets(t, datasets.OccupancyTrainFile)
	flDataSets(t, filepath.Join("carbon", CarbonZones[0].File))
	return sets
}
