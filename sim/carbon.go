package sim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/coord"
	"github.com/edgefleet/edgefleet/greensched"
	"github.com/edgefleet/edgefleet/greensched/provider"
)

// Carbon-aware federated learning on the simulated fleet (FLOptions.Carbon,
// edgectl sim --fl ... --carbon):
//
//   - The agents sit in the zones DE, GB and FR, round robin by index
//     (label zone=.., green.zone), mains powered. Each agent's carbon
//     provider replays its zone's trace (../shared/data/carbon) on the
//     sim's clock: the fleet runs on the real clock and a job's creation
//     is the trace instant Start; every real second after it plays Scale
//     seconds of trace (greensched.TimeMap). The control plane gets the
//     same zones' forecasts from the same traces (a perfect forecast).
//   - The same job runs twice on the same fleet, seed, data and clock
//     mapping (each job's creation mapped to Start): first unscheduled
//     (no carbon option: rounds open when ready, a seeded random draw of
//     clients), then with carbon: {window, min_battery, slack} (rounds
//     wait up to Window of trace time, Window/Scale of sim time, for a
//     start at least 5 % greener over the remaining rounds; clients
//     rotate by participation credit, cleaner zones first within the
//     slack: greensched.PlanRound).
//   - Emissions: for every training a selected client finished (from the
//     task handed to its trainer to its Δ), energy = the agents' power
//     model at full utilisation (green.profile max_w, default 6 W;
//     training keeps a core busy) × the client's median training wall
//     time over both jobs, in Wh; grams = Wh × the intensity of the
//     client's zone at the training's midpoint (trace time) / 1000. A
//     round's grams are its clients' sum; grams per round are a job's
//     grams over its aggregated training rounds (the statistics round 0
//     trains nothing and is the same in both jobs).
//
// The wall time of a training depends on the machine's load, which
// differs between the two jobs run one after the other (a 2-core VM shared
// with other work): the per-client median over both jobs applies the same
// energy to the same client's training in either job, so the comparison
// measures the scheduling. The report also gives the figures with each
// training's own wall time (_measured) and the energy-weighted mean
// intensities.

// CarbonZones are the zones agents are spread over, round robin, and their
// trace files under the carbon trace directory.
var CarbonZones = []struct{ Zone, File string }{
	{"DE", "ger_ci_2020.csv"}, {"GB", "gb_ci_2020.csv"}, {"FR", "fr_ci_2020.csv"},
}

// FLCarbon configures carbon-aware FL (FLOptions.Carbon).
type FLCarbon struct {
	// Traces is the directory of the zones' traces; default
	// DataSets/carbon.
	Traces string
	// Start is the trace instant each job's creation is mapped to
	// (required; the traces' wall-clock times read as UTC).
	Start time.Time
	// Scale is trace seconds per sim second; default 1200 (a real
	// second plays 20 trace minutes).
	Scale float64
	// Window is how long a ready round may wait for a greener start, in
	// trace time; default 6h.
	Window time.Duration
	// Deadline, when positive, gives both jobs a deadline this long after
	// their creation, in trace time: the scheduled job's rounds then take
	// the greenest round slots before it (greensched.PlanRound).
	Deadline time.Duration
	// Slack is the job's carbon.slack (nil: coord.DefaultCarbonSlack).
	Slack *float64
	// MinBattery is the job's carbon.min_battery (the simulated agents
	// are mains powered, so it excludes none); default 0.2.
	MinBattery float64
}

// DefaultCarbonScale and DefaultCarbonWindow are FLCarbon's defaults;
// DefaultCarbonRoundTimeout is the round timeout of a carbon run when none
// is given: the control plane plans a job's first round over its timeout
// (later ones over the median of the aggregated rounds), and 2m would be
// 40 trace hours.
const (
	DefaultCarbonScale        = 1200
	DefaultCarbonWindow       = 6 * time.Hour
	DefaultCarbonRoundTimeout = 10 * time.Second
)

func (c *FLCarbon) setDefaults(dataSets string) error {
	if c.Traces == "" {
		c.Traces = filepath.Join(dataSets, "carbon")
	}
	if c.Scale == 0 {
		c.Scale = DefaultCarbonScale
	}
	if c.Window == 0 {
		c.Window = DefaultCarbonWindow
	}
	switch {
	case c.Start.IsZero():
		return errors.New("sim: carbon: a start instant in the traces is required")
	case !(c.Scale > 0) || math.IsInf(c.Scale, 0):
		return fmt.Errorf("sim: carbon: time scale %v must be a finite number > 0", c.Scale)
	case c.Window < 0 || c.Window > coord.MaxCarbonWindow:
		return fmt.Errorf("sim: carbon: window %s (want 0-%s of trace time)", c.Window, coord.MaxCarbonWindow)
	case c.Deadline < 0:
		return fmt.Errorf("sim: carbon: deadline %s must not be negative", c.Deadline)
	case math.IsNaN(c.MinBattery) || c.MinBattery < 0 || c.MinBattery > 1:
		return fmt.Errorf("sim: carbon: minimum battery %v (want 0-1)", c.MinBattery)
	case c.Slack != nil && !(*c.Slack >= 0 && *c.Slack <= 1):
		return fmt.Errorf("sim: carbon: slack %v (want 0-1)", *c.Slack)
	}
	return nil
}

// FLCarbonReport compares the same job unscheduled and scheduled by
// carbon.
type FLCarbonReport struct {
	Zones      []string `json:"zones"`
	TraceStart string   `json:"trace_start"`
	// TimeScale is trace seconds per sim second; Window the carbon window
	// in trace time and WindowSeconds in sim time.
	TimeScale     float64 `json:"time_scale"`
	Window        string  `json:"window"`
	WindowSeconds float64 `json:"window_sim_seconds"`
	MinBattery    float64 `json:"min_battery"`
	// Deadline is each job's deadline after its creation, in trace time
	// ("" for none).
	Deadline string `json:"deadline,omitempty"`
	// Slack is the scheduled job's carbon.slack.
	Slack    float64 `json:"slack"`
	Forecast string  `json:"forecast"`
	// PowerW is the power of a training client (green.profile max_w).
	PowerW      float64        `json:"power_w"`
	Fraction    float64        `json:"fraction"`
	Unscheduled FLCarbonRun    `json:"unscheduled"`
	Scheduled   FLCarbonRun    `json:"scheduled"`
	Comparison  FLCarbonSaving `json:"comparison"`
}

// FLCarbonSaving is the scheduled job against the unscheduled one.
type FLCarbonSaving struct {
	// GramsPerRoundSavedPercent is 1 − scheduled/unscheduled grams per
	// round, in percent (each client's training energy from its median
	// wall time over both jobs); GramsPerRoundMeasuredSavedPercent the
	// same with each training's own wall time, which carries the machine's
	// load; IntensitySavedPercent the same of the energy-weighted mean
	// intensities; EnergyPerRoundRatio scheduled/unscheduled measured Wh
	// per round.
	GramsPerRoundSavedPercent         float64 `json:"grams_per_round_saved_percent"`
	GramsPerRoundMeasuredSavedPercent float64 `json:"grams_per_round_measured_saved_percent"`
	IntensitySavedPercent             float64 `json:"intensity_saved_percent"`
	EnergyPerRoundRatio               float64 `json:"energy_per_round_measured_ratio"`
	// AccuracyDiffPoints is scheduled − unscheduled final accuracy per
	// test part, in percentage points.
	AccuracyDiffPoints map[string]float64 `json:"accuracy_diff_points"`
	// LastAccuracyDiffPoints is the same of LastAccuracy.
	LastAccuracyDiffPoints map[string]float64 `json:"last_rounds_accuracy_diff_points"`
}

// FLCarbonRun is one of the two jobs.
type FLCarbonRun struct {
	Job    string `json:"job"`
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
	// TraceFrom and TraceTo are the trace times of the job's creation and
	// end.
	TraceFrom  string          `json:"trace_from"`
	TraceTo    string          `json:"trace_to"`
	JobSeconds float64         `json:"job_seconds"`
	Rounds     []FLCarbonRound `json:"rounds"`
	Aggregated int             `json:"aggregated_rounds"`
	Trainings  int             `json:"trainings"`
	// OutsideTrace counts trainings past the trace's end (not counted; the
	// run then fails).
	OutsideTrace  int     `json:"trainings_outside_trace,omitempty"`
	Wh            float64 `json:"wh"`
	Grams         float64 `json:"grams"`
	GramsPerRound float64 `json:"grams_per_round"`
	WhPerRound    float64 `json:"wh_per_round"`
	// The same with each training's own wall time.
	WhMeasured            float64        `json:"wh_measured"`
	GramsMeasured         float64        `json:"grams_measured"`
	GramsPerRoundMeasured float64        `json:"grams_per_round_measured"`
	WhPerRoundMeasured    float64        `json:"wh_per_round_measured"`
	Intensity             float64        `json:"mean_intensity"`
	ByZone                map[string]int `json:"trainings_by_zone"`
	// ClientTrainingsMin and Max are the fewest and most trainings of one
	// agent of the fleet (0: an agent that never trained).
	ClientTrainingsMin int                `json:"client_trainings_min"`
	ClientTrainingsMax int                `json:"client_trainings_max"`
	FinalAccuracy      map[string]float64 `json:"final_accuracy"`
	// LastAccuracy is the mean accuracy per test part over the last
	// LastRounds aggregated rounds: with a fraction below 1 the accuracy
	// moves by points from one round to the next with the clients drawn.
	LastAccuracy map[string]float64 `json:"last_rounds_mean_accuracy"`
}

// LastRounds is how many aggregated rounds FLCarbonRun.LastAccuracy
// averages.
const LastRounds = 10

// FLCarbonRound is one training round attempt of a job.
type FLCarbonRound struct {
	Round   int    `json:"round"`
	Attempt int    `json:"attempt"`
	Phase   string `json:"phase"`
	// Opened is the trace time the round opened at; WaitedSeconds how
	// long (sim) after the previous round's close.
	Opened        string             `json:"opened"`
	WaitedSeconds float64            `json:"waited_seconds"`
	Clients       int                `json:"clients"`
	ByZone        map[string]int     `json:"clients_by_zone"`
	Wh            float64            `json:"wh"`
	Grams         float64            `json:"grams"`
	GramsMeasured float64            `json:"grams_measured"`
	Intensity     float64            `json:"intensity"`
	Accuracy      map[string]float64 `json:"accuracy,omitempty"`
}

// simCarbon replays the zones' traces on the sim's clock: the carbon
// provider of every agent and the control plane's forecaster. The time
// map is reset at each job's creation.
type simCarbon struct {
	o      FLCarbon
	series []greensched.Series
	tz     atomic.Pointer[greensched.TraceZones]

	mu     sync.Mutex
	trains map[string]*carbonTraining // "agent job/round/attempt"
}

type carbonTraining struct {
	zone       string
	start, end time.Time
}

func newSimCarbon(o FLCarbon) (*simCarbon, error) {
	c := &simCarbon{o: o, trains: map[string]*carbonTraining{}}
	for _, z := range CarbonZones {
		s, err := provider.ReadTraceFile(filepath.Join(o.Traces, z.File), z.Zone)
		if err != nil {
			return nil, fmt.Errorf("sim: carbon: %w", err)
		}
		c.series = append(c.series, s)
	}
	if err := c.reset(time.Now()); err != nil {
		return nil, err
	}
	for _, z := range CarbonZones {
		if _, err := c.tz.Load().Now(z.Zone, c.tz.Load().Map().SimStart); err != nil {
			return nil, fmt.Errorf("sim: carbon: start %s: %w", o.Start.Format(time.DateTime), err)
		}
	}
	return c, nil
}

// reset maps sim time simStart to the trace's Start.
func (c *simCarbon) reset(simStart time.Time) error {
	tz, err := greensched.NewTraceZones(greensched.TimeMap{SimStart: simStart, TraceStart: c.o.Start, Scale: c.o.Scale}, c.series...)
	if err != nil {
		return fmt.Errorf("sim: carbon: %w", err)
	}
	c.tz.Store(tz)
	return nil
}

// zone is agent idx's zone.
func zoneOf(idx int) string { return CarbonZones[idx%len(CarbonZones)].Zone }

// Forecast implements controlplane.CarbonForecaster.
func (c *simCarbon) Forecast(_ context.Context, zone string, from, to time.Time) (greensched.Series, error) {
	return c.tz.Load().Forecast(zone, from, to)
}

// provider is an agent's carbon provider (greensched/provider.Provider).
type carbonProvider struct{ c *simCarbon }

func (carbonProvider) Name() string { return provider.KindTrace }

func (p carbonProvider) Current(_ context.Context, zone string) (provider.Reading, error) {
	pt, err := p.c.tz.Load().Now(zone, time.Now())
	if err != nil {
		return provider.Reading{}, err
	}
	return provider.Reading{Zone: zone, Source: provider.KindTrace, Point: pt}, nil
}

func (p carbonProvider) Forecast(_ context.Context, zone string, from, to time.Time) (provider.Forecast, error) {
	s, err := p.c.tz.Load().Forecast(zone, from, to)
	if err != nil {
		return provider.Forecast{}, err
	}
	return provider.Forecast{Zone: zone, Source: provider.KindTrace, Series: s}, nil
}

// wrapFaults records each training's start and end around agent name's
// fault hooks (a training skipped by them is not recorded).
func (c *simCarbon) wrapFaults(name, zone string, f agent.FLFaults) agent.FLFaults {
	skip, tamper := f.Skip, f.Tamper
	f.Skip = func(t cpapi.FLTask) bool {
		if skip != nil && skip(t) {
			return true
		}
		c.mu.Lock()
		c.trains[name+" "+t.Key()] = &carbonTraining{zone: zone, start: time.Now()}
		c.mu.Unlock()
		return false
	}
	f.Tamper = func(t cpapi.FLTask, d []float32) {
		c.mu.Lock()
		if tr := c.trains[name+" "+t.Key()]; tr != nil {
			tr.end = time.Now()
		}
		c.mu.Unlock()
		if tamper != nil {
			tamper(t, d)
		}
	}
	return f
}

// runCarbon runs spec unscheduled, then with the carbon option, and
// reports both in rep (rep.Carbon; the job fields are the scheduled
// job's).
func (f *Fleet) runCarbon(ctx context.Context, o FLOptions, spec coord.Spec, rep *FLReport) error {
	c, tap := f.opts.fl.carbon, f.opts.fl.tap
	reg, err := f.cp.agents(ctx)
	if err != nil {
		return err
	}
	names := map[string]string{} // registry id -> node name
	for _, n := range f.nodes {
		if a, ok := reg[n.name]; ok {
			names[a.ID] = n.name
		}
	}
	cr := &FLCarbonReport{TraceStart: c.o.Start.Format(time.DateTime), TimeScale: c.o.Scale, Window: c.o.Window.String(),
		WindowSeconds: round(c.o.Window.Seconds() / c.o.Scale), MinBattery: c.o.MinBattery,
		Forecast: "perfect: the zones' traces on the sim's clock", PowerW: carbonPowerW, Fraction: spec.Fraction}
	if c.o.Deadline > 0 {
		cr.Deadline = c.o.Deadline.String()
	}
	cr.Slack = coord.DefaultCarbonSlack
	if c.o.Slack != nil {
		cr.Slack = *c.o.Slack
	}
	for _, z := range CarbonZones {
		cr.Zones = append(cr.Zones, z.Zone)
	}
	ts := map[bool][]trained{}
	for _, carbon := range []bool{false, true} {
		sp := spec
		run := &cr.Unscheduled
		if carbon {
			run = &cr.Scheduled
			sp.Carbon = &coord.Carbon{Window: fedlearn.Duration(time.Duration(float64(c.o.Window) / c.o.Scale)), MinBattery: c.o.MinBattery, Slack: c.o.Slack}
		}
		t0 := time.Now()
		if err := c.reset(t0); err != nil {
			return err
		}
		if c.o.Deadline > 0 {
			sp.Deadline = t0.Add(time.Duration(float64(c.o.Deadline) / c.o.Scale))
		}
		job, err := f.cp.client.CreateFLJob(ctx, sp)
		if err != nil {
			return fmt.Errorf("sim: creating the fl job: %w", err)
		}
		f.opts.Logger.Info("fl job created", "job", job.ID, "carbon", carbon, "rounds", o.Rounds)
		if job, err = f.driveFL(ctx, o, job.ID, &rep.Faults, tap); err != nil {
			return err
		}
		end := time.Now()
		rounds, err := f.cp.client.FLRounds(ctx, job.ID)
		if err != nil {
			return fmt.Errorf("sim: fl rounds: %w", err)
		}
		*run, ts[carbon] = c.collect(job, rounds.Rounds, names)
		m := c.tz.Load().Map()
		run.TraceFrom, run.TraceTo = m.Trace(t0).Format(time.DateTime), m.Trace(end).Format(time.DateTime)
		run.JobSeconds = round(end.Sub(t0).Seconds())
		rep.Job, rep.Status, rep.Reason, rep.FinalAccuracy, rep.JobSeconds = run.Job, run.Status, run.Reason, run.FinalAccuracy, run.JobSeconds
		rep.Privacy = job.Privacy
		if n := run.OutsideTrace; n > 0 {
			rep.Carbon = cr
			return fmt.Errorf("sim: carbon: %d trainings of job %s ran past the end of the traces (%s): lower --time-scale or start earlier", n, job.ID, run.TraceTo)
		}
		if job.Status != coord.JobDone {
			rep.Carbon = cr
			return fmt.Errorf("sim: carbon: fl job %s (carbon %v) %s: %s", job.ID, carbon, job.Status, job.Reason)
		}
	}
	median := clientDurations(ts[false], ts[true])
	cr.Unscheduled.sum(ts[false], median)
	cr.Scheduled.sum(ts[true], median)
	u, s := cr.Unscheduled, cr.Scheduled
	cr.Comparison = FLCarbonSaving{
		GramsPerRoundSavedPercent:         round(100 * (1 - s.GramsPerRound/u.GramsPerRound)),
		GramsPerRoundMeasuredSavedPercent: round(100 * (1 - s.GramsPerRoundMeasured/u.GramsPerRoundMeasured)),
		IntensitySavedPercent:             round(100 * (1 - s.Intensity/u.Intensity)),
		EnergyPerRoundRatio:               round(s.WhPerRoundMeasured / u.WhPerRoundMeasured),
		AccuracyDiffPoints:                map[string]float64{},
		LastAccuracyDiffPoints:            map[string]float64{},
	}
	for p, a := range s.LastAccuracy {
		if b, ok := u.LastAccuracy[p]; ok {
			cr.Comparison.LastAccuracyDiffPoints[p] = round(100 * (a - b))
		}
	}
	for p, a := range s.FinalAccuracy {
		if b, ok := u.FinalAccuracy[p]; ok {
			cr.Comparison.AccuracyDiffPoints[p] = round(100 * (a - b))
		}
	}
	rep.Carbon = cr
	return nil
}

// carbonPowerW is a training client's power: the agents' default profile
// (green.profile) at full utilisation.
var carbonPowerW = func() float64 {
	w, _ := agent.DefaultConfig().Green.Profile.Power(1)
	return w
}()

// trained is one finished training of a job: its round (index in
// FLCarbonRun.Rounds), client, zone, wall time and the zone's intensity
// at its midpoint.
type trained struct {
	round      int
	name, zone string
	d          time.Duration
	intensity  float64
}

// collect lists a job's training round attempts and the trainings their
// selected clients finished (whether or not the update then arrived in
// time: the energy was spent).
func (c *simCarbon) collect(job cpapi.FLJob, rounds []cpapi.FLRound, names map[string]string) (FLCarbonRun, []trained) {
	tz := c.tz.Load()
	run := FLCarbonRun{Job: job.ID, Status: job.Status, Reason: job.Reason, ByZone: map[string]int{}}
	sort.Slice(rounds, func(i, j int) bool {
		a, b := rounds[i], rounds[j]
		return a.Round < b.Round || a.Round == b.Round && a.Attempt < b.Attempt
	})
	var ts []trained
	var prevClose time.Time
	var accs []map[string]float64
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range rounds {
		if r.Kind == cpapi.FLTaskStats {
			if r.Closed != nil {
				prevClose = *r.Closed
			}
			continue
		}
		rr := FLCarbonRound{Round: r.Round, Attempt: r.Attempt, Phase: r.Phase, Opened: tz.Map().Trace(r.Opened).Format(time.DateTime),
			Clients: len(r.Selected), ByZone: map[string]int{}, Accuracy: r.Accuracy}
		if !prevClose.IsZero() {
			rr.WaitedSeconds = round(r.Opened.Sub(prevClose).Seconds())
		}
		if r.Closed != nil {
			prevClose = *r.Closed
		}
		key := fmt.Sprintf("%s/%d/%d", job.ID, r.Round, r.Attempt)
		for _, id := range r.Selected {
			name := names[id]
			tr := c.trains[name+" "+key]
			if tr == nil || tr.end.IsZero() {
				continue
			}
			pt, err := tz.Now(tr.zone, tr.start.Add(tr.end.Sub(tr.start)/2))
			if err != nil {
				run.OutsideTrace++
				continue
			}
			rr.ByZone[tr.zone]++
			run.ByZone[tr.zone]++
			run.Trainings++
			ts = append(ts, trained{round: len(run.Rounds), name: name, zone: tr.zone, d: tr.end.Sub(tr.start), intensity: pt.Intensity})
		}
		if r.Phase == coord.RoundAggregated {
			run.Aggregated++
			run.FinalAccuracy = r.Accuracy
			accs = append(accs, r.Accuracy)
		}
		run.Rounds = append(run.Rounds, rr)
	}
	if len(accs) > 0 {
		run.LastAccuracy = map[string]float64{}
		last := accs[max(0, len(accs)-LastRounds):]
		for p := range last[len(last)-1] {
			var sum float64
			for _, a := range last {
				sum += a[p]
			}
			run.LastAccuracy[p] = sum / float64(len(last))
		}
	}
	per := map[string]int{}
	for _, t := range ts {
		per[t.name]++
	}
	for _, name := range names {
		n := per[name]
		if run.ClientTrainingsMax == 0 || n < run.ClientTrainingsMin {
			run.ClientTrainingsMin = n
		}
		run.ClientTrainingsMax = max(run.ClientTrainingsMax, n)
	}
	return run, ts
}

// clientDurations is each client's median training wall time over the
// given trainings (both jobs').
func clientDurations(tss ...[]trained) map[string]time.Duration {
	by := map[string][]time.Duration{}
	for _, ts := range tss {
		for _, t := range ts {
			by[t.name] = append(by[t.name], t.d)
		}
	}
	out := make(map[string]time.Duration, len(by))
	for name, ds := range by {
		slices.Sort(ds)
		out[name] = ds[len(ds)/2]
	}
	return out
}

// sum sets the run's energy and emissions: the headline figures with each
// client's median training time over both jobs (median), the _measured
// ones with each training's own.
func (run *FLCarbonRun) sum(ts []trained, median map[string]time.Duration) {
	var wi, wiM float64 // Σ Wh × intensity
	for _, t := range ts {
		wh, whM := carbonPowerW*median[t.name].Hours(), carbonPowerW*t.d.Hours()
		rr := &run.Rounds[t.round]
		rr.Wh += wh
		rr.Grams += wh * t.intensity / 1000
		rr.GramsMeasured += whM * t.intensity / 1000
		run.Wh += wh
		run.WhMeasured += whM
		wi += wh * t.intensity
		wiM += whM * t.intensity
	}
	for i := range run.Rounds {
		rr := &run.Rounds[i]
		if rr.Wh > 0 {
			rr.Intensity = round(1000 * rr.Grams / rr.Wh)
		}
		rr.Wh, rr.Grams, rr.GramsMeasured = round6(rr.Wh), round6(rr.Grams), round6(rr.GramsMeasured)
	}
	run.Grams, run.GramsMeasured = wi/1000, wiM/1000
	if run.Wh > 0 {
		run.Intensity = round(wi / run.Wh)
	}
	if n := float64(run.Aggregated); n > 0 {
		run.GramsPerRound, run.WhPerRound = round6(run.Grams/n), round6(run.Wh/n)
		run.GramsPerRoundMeasured, run.WhPerRoundMeasured = round6(run.GramsMeasured/n), round6(run.WhMeasured/n)
	}
	run.Wh, run.Grams, run.WhMeasured, run.GramsMeasured = round6(run.Wh), round6(run.Grams), round6(run.WhMeasured), round6(run.GramsMeasured)
}

func round6(x float64) float64 { return math.Round(x*1e6) / 1e6 }
