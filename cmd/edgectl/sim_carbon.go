package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/edgefleet/edgefleet/fedlearn/coord"
	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/sim"
)

// simCarbonFlags are the flags of a carbon-aware FL run (edgectl sim --fl
// ... --carbon).
type simCarbonFlags struct {
	on     bool
	start  string
	traces string
	slack  float64
	c      sim.FLCarbon
}

const simCarbonHelp = `

With --carbon (and --fl) the agents sit in the zones DE, GB and FR (round
robin, label zone=..), each replaying its zone's trace (--carbon-traces,
default the data sets' carbon/) on the sim's clock: each job's creation is the
trace instant --carbon-start and every real second plays --time-scale trace
seconds (default 1200). The control plane's forecasts are the same traces
(perfect). The same job runs twice on the same fleet, seed and data: first
unscheduled (rounds open when ready, seeded random draw of --fraction of the
clients), then with carbon: {window: --carbon-window of trace time,
min_battery, slack: --carbon-slack} (clients rotate by participation credit,
cleaner zones first within the slack). --carbon-deadline gives both jobs a
deadline (trace time after their creation): the scheduled job's rounds then
take the greenest round slots before it, not one block. The report gives each job's grams CO2eq
and Wh per round (power of the agents' default profile at full utilisation ×
each accepted training's wall time × its zone's intensity at the training's
midpoint), the saving in percent, the fewest and most trainings of a client,
and the final accuracies (and their mean over the last 10 rounds) and their
difference in points. The round timeout defaults to 10s (the control plane
plans a job's first round over its timeout, later ones over the median of its
rounds).`

func (s *simCarbonFlags) register(f *pflag.FlagSet) {
	f.BoolVar(&s.on, "carbon", false, "--fl: run the job unscheduled and scheduled by carbon over agents in zones DE, GB, FR and compare the emissions")
	f.StringVar(&s.start, "carbon-start", "2020-03-01 00:00", "--carbon: the trace instant each job starts at, YYYY-MM-DD HH:MM (trace wall-clock time)")
	f.StringVar(&s.traces, "carbon-traces", "", "--carbon: directory of the zones' traces (default DATASETS/carbon)")
	f.DurationVar(&s.c.Window, "carbon-window", sim.DefaultCarbonWindow, "--carbon: how long a ready round may wait for a greener start, in trace time")
	f.DurationVar(&s.c.Deadline, "carbon-deadline", 0, "--carbon: give both jobs a deadline this long after their creation, in trace time; the scheduled job's rounds then take the greenest round slots before it (0: none)")
	f.Float64Var(&s.slack, "carbon-slack", coord.DefaultCarbonSlack, "--carbon: the job's carbon.slack (0-1): the part of its turns a client may give up to clients in cleaner zones (0: strict rotation)")
	f.Float64Var(&s.c.MinBattery, "carbon-min-battery", 0.2, "--carbon: the job's carbon.min_battery (the simulated agents are mains powered)")
}

// options returns the carbon options, nil without --carbon; scale is
// --time-scale when given.
func (s *simCarbonFlags) options(fs *pflag.FlagSet, scale float64) (*sim.FLCarbon, error) {
	if !s.on {
		for _, n := range []string{"carbon-start", "carbon-traces", "carbon-window", "carbon-deadline", "carbon-min-battery", "carbon-slack"} {
			if fs.Changed(n) {
				return nil, cli.Usagef("--%s needs --carbon", n)
			}
		}
		return nil, nil
	}
	c := s.c
	t, err := time.Parse("2006-01-02 15:04", strings.TrimSpace(s.start))
	if err != nil {
		return nil, cli.Usagef("--carbon-start %q: want YYYY-MM-DD HH:MM", s.start)
	}
	c.Start, c.Traces = t, s.traces
	if fs.Changed("carbon-slack") {
		c.Slack = &s.slack
	}
	if fs.Changed("time-scale") {
		if !(scale > 0) {
			return nil, cli.Usagef("--time-scale %v: want trace seconds per sim second > 0", scale)
		}
		c.Scale = scale
	}
	return &c, nil
}

func printSimCarbon(w io.Writer, r *sim.FLCarbonReport) {
	fmt.Fprintf(w, "\ncarbon: zones %v from %s, ×%g (window %s = %.1f s), forecast %s, %g W per training client, fraction %g, slack %g\n",
		r.Zones, r.TraceStart, r.TimeScale, r.Window, r.WindowSeconds, r.Forecast, r.PowerW, r.Fraction, r.Slack)
	if r.Deadline != "" {
		fmt.Fprintf(w, "deadline: %s of trace time after each job's creation\n", r.Deadline)
	}
	parts := []string{}
	for p := range r.Comparison.AccuracyDiffPoints {
		parts = append(parts, p)
	}
	sort.Strings(parts)
	for _, x := range []struct {
		name string
		run  sim.FLCarbonRun
	}{{"unscheduled", r.Unscheduled}, {"scheduled", r.Scheduled}} {
		fmt.Fprintf(w, "  %-11s %s %s, trace %s to %s, %d rounds, %.6f g/round, %.6f Wh/round (measured %.6f g, %.6f Wh), %.1f g/kWh mean, by zone %v, trainings per client %d-%d, accuracy %v (last %d rounds' mean %v)\n",
			x.name, x.run.Job, x.run.Status, x.run.TraceFrom, x.run.TraceTo, x.run.Aggregated, x.run.GramsPerRound, x.run.WhPerRound, x.run.GramsPerRoundMeasured, x.run.WhPerRoundMeasured,
			x.run.Intensity, x.run.ByZone, x.run.ClientTrainingsMin, x.run.ClientTrainingsMax, x.run.FinalAccuracy, sim.LastRounds, x.run.LastAccuracy)
	}
	fmt.Fprintf(w, "  saved: %.2f %% grams per round (%.2f %% measured), %.2f %% intensity; measured energy per round ×%.3f; accuracy difference (points) %v (last rounds' mean %v)\n",
		r.Comparison.GramsPerRoundSavedPercent, r.Comparison.GramsPerRoundMeasuredSavedPercent, r.Comparison.IntensitySavedPercent, r.Comparison.EnergyPerRoundRatio, r.Comparison.AccuracyDiffPoints, r.Comparison.LastAccuracyDiffPoints)
}
