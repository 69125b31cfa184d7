// Package deferred runs the agent's deferrable work — local training jobs,
// state compaction, and whatever else can wait — when greensched says: a
// piece of work declares how long it expects to run and by when it must
// start (its window), and Wait returns at the start greensched's planner
// picks as greenest on the zone's carbon forecast, once the battery allows
// it. Run.Done accounts the energy (device power profile × the time it
// ran), the emissions (energy × the forecast intensity of its start), and
// what running at arrival would have emitted, per kind of work and in
// total (Prometheus metrics and Stats).
//
// One clock (clock.Clock) drives every wait, so tests and the simulator
// move time by hand or fast. Without a carbon provider, or when it has
// nothing to say, work runs at arrival: the scheduler never holds work
// back on a guess.
package deferred

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/greensched"
	"github.com/edgefleet/edgefleet/greensched/provider"
)

// Defaults of Config.
const (
	DefaultBatteryRecheck = 5 * time.Minute
	DefaultReplan         = 30 * time.Minute
	// statusTimeout bounds the provider call of Status (network time).
	statusTimeout = 2 * time.Second
	// planTimeout bounds the forecast fetch of a plan (network time).
	planTimeout = 30 * time.Second
)

// Outcomes of a request (label of edgefleet_green_jobs_total).
const (
	OutcomeNow           = "now"            // no window, or the greenest start is now
	OutcomeDeferred      = "deferred"       // started later than its arrival, at the planned start
	OutcomeNoForecast    = "no_forecast"    // no usable forecast: run at arrival
	OutcomeBatteryForced = "battery_forced" // the battery stayed low until the latest start: run anyway
)

// Config configures a Scheduler.
type Config struct {
	// Zone is the grid zone the device draws from, as the provider names
	// it; empty with no provider.
	Zone string
	// Provider gives the zone's intensity and forecast; nil: none (work
	// runs at arrival; energy is still accounted, emissions are not).
	Provider provider.Provider
	// Profile is the device's power model.
	Profile greensched.Profile
	// Battery reads the battery state; nil: mains powered.
	Battery func() (greensched.Battery, error)
	// MinBattery (0..1): a job waits while it would leave the battery
	// below this level and the device is not charging, until its latest
	// start.
	MinBattery float64
	// BatteryRecheck is how often a job held by the battery looks again.
	// Default 5m.
	BatteryRecheck time.Duration
	// Replan is how often work waiting for its start decides again on a
	// fresh forecast (it starts when now has become the greenest start
	// left; the trace replay's figures come from deciding this way at
	// every mark); negative keeps the first plan. Default 30m.
	Replan   time.Duration
	Clock    clock.Clock           // nil: clock.Real()
	Logger   *slog.Logger          // nil: slog.Default()
	Registry prometheus.Registerer // nil: metrics registered nowhere
}

// Request is a piece of deferrable work.
type Request struct {
	// Kind names the work ("training", "compaction"): the metrics' label.
	Kind string
	// ID names this piece of work in logs.
	ID string
	// Duration is how long it is expected to run (the window it must fit
	// and the energy estimate before it ran). Must be positive.
	Duration time.Duration
	// Utilisation is the device's load while it runs (0..1).
	Utilisation float64
	// Latest is the latest start; zero, or not after now, runs it now.
	Latest time.Time
}

// Scheduler decides when deferrable work runs. Safe for concurrent use.
type Scheduler struct {
	cfg Config
	clk clock.Clock
	log *slog.Logger
	m   *metrics

	mu    sync.Mutex
	stats map[string]KindStats
}

// New validates cfg and returns a scheduler.
func New(cfg Config) (*Scheduler, error) {
	if err := cfg.Profile.Validate(); err != nil {
		return nil, fmt.Errorf("deferred: %w", err)
	}
	if math.IsNaN(cfg.MinBattery) || cfg.MinBattery < 0 || cfg.MinBattery > 1 {
		return nil, fmt.Errorf("deferred: minimum battery %v outside [0, 1]", cfg.MinBattery)
	}
	if cfg.Provider != nil && cfg.Zone == "" {
		return nil, errors.New("deferred: a carbon provider needs a zone")
	}
	if cfg.BatteryRecheck == 0 {
		cfg.BatteryRecheck = DefaultBatteryRecheck
	}
	if cfg.Replan == 0 {
		cfg.Replan = DefaultReplan
	}
	if cfg.BatteryRecheck < 0 {
		return nil, fmt.Errorf("deferred: battery recheck %v is negative", cfg.BatteryRecheck)
	}
	s := &Scheduler{cfg: cfg, clk: clock.Or(cfg.Clock), log: cfg.Logger, stats: map[string]KindStats{}}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("component", "deferred")
	var err error
	if s.m, err = newMetrics(cfg.Registry); err != nil {
		return nil, err
	}
	return s, nil
}

// Run is work that Wait let start; call Done when it has finished.
type Run struct {
	s       *Scheduler
	req     Request
	Arrival time.Time
	Start   time.Time
	Outcome string
	// Intensity is the forecast intensity of the start's slots and
	// AtArrival that of the same work started at arrival (gCO2eq/kWh);
	// Known is false when there was no carbon data.
	Intensity, AtArrival float64
	Known                bool
	once                 sync.Once
}

// Wait blocks until req may start: at once without a window, else at the
// greenest start of the zone's forecast between now and req.Latest (ties
// to the earliest), deciding again every Config.Replan on a fresh
// forecast, then while the battery is too low and not charging, until
// req.Latest. It returns ctx.Err() if ctx ends first.
func (s *Scheduler) Wait(ctx context.Context, req Request) (*Run, error) {
	if req.Duration <= 0 {
		return nil, fmt.Errorf("deferred: %s %s: expected duration %v must be positive", req.Kind, req.ID, req.Duration)
	}
	if math.IsNaN(req.Utilisation) || req.Utilisation < 0 || req.Utilisation > 1 {
		return nil, fmt.Errorf("deferred: %s %s: utilisation %v outside [0, 1]", req.Kind, req.ID, req.Utilisation)
	}
	now := s.clk.Now()
	r := &Run{s: s, req: req, Arrival: now, Start: now, Outcome: OutcomeNow}
	s.m.waiting.Inc()
	defer s.m.waiting.Dec()
	s.plan(ctx, r)
	logged := false
	for t := now; r.Start.After(t); t = s.clk.Now() {
		if !logged {
			s.log.Info("deferring work to a greener start", "kind", req.Kind, "id", req.ID, "start", r.Start,
				"intensity", r.Intensity, "at_arrival", r.AtArrival)
			logged = true
		}
		wait := r.Start.Sub(t)
		if s.cfg.Replan > 0 {
			wait = min(wait, s.cfg.Replan)
		}
		if err := clock.Sleep(ctx, s.clk, wait); err != nil {
			return nil, err
		}
		if now := s.clk.Now(); now.Before(r.Start) {
			s.replan(ctx, r, now)
		}
	}
	if err := s.waitBattery(ctx, r); err != nil {
		return nil, err
	}
	r.Start = s.clk.Now()
	s.m.jobs.WithLabelValues(req.Kind, r.Outcome).Inc()
	return r, nil
}

// plan sets r's start and intensities from the forecast at its arrival.
func (s *Scheduler) plan(ctx context.Context, r *Run) {
	if s.cfg.Provider == nil {
		return
	}
	best, atNow, err := s.best(ctx, r.req, r.Arrival)
	if err == nil {
		r.Intensity, r.AtArrival, r.Known = best.Intensity, atNow, true
		if best.Start.After(r.Arrival) {
			r.Start, r.Outcome = best.Start, OutcomeDeferred
		}
		return
	}
	r.Outcome = OutcomeNoForecast
	s.log.Warn("no usable carbon forecast: running work at arrival", "kind", r.req.Kind, "id", r.req.ID, "zone", s.cfg.Zone, "err", err)
	// the intensity now, if any, still prices the run
	pctx, cancel := context.WithTimeout(ctx, planTimeout)
	defer cancel()
	if rd, err := s.cfg.Provider.Current(pctx, s.cfg.Zone); err == nil {
		r.Intensity, r.AtArrival, r.Known = rd.Point.Intensity, rd.Point.Intensity, true
	}
}

// replan decides again at now, on the forecast of now, while r waits for
// its start (Config.Replan): it starts now when now has become the
// greenest start left. Without a usable forecast the plan stands.
func (s *Scheduler) replan(ctx context.Context, r *Run, now time.Time) {
	best, _, err := s.best(ctx, r.req, now)
	if err != nil {
		s.log.Debug("replanning deferred work: keeping the plan", "kind", r.req.Kind, "id", r.req.ID, "err", err)
		return
	}
	r.Intensity = best.Intensity
	r.Start = maxTime(best.Start, now)
}

// best is the greenest placement of req from now to its latest start, and
// the intensity of starting now.
func (s *Scheduler) best(ctx context.Context, req Request, now time.Time) (greensched.Placement, float64, error) {
	latest := req.Latest
	if latest.Before(now) {
		latest = now
	}
	pctx, cancel := context.WithTimeout(ctx, planTimeout)
	defer cancel()
	fc, err := s.cfg.Provider.Forecast(pctx, s.cfg.Zone, now.Add(-2*time.Hour), latest.Add(req.Duration+time.Hour))
	if err != nil {
		return greensched.Placement{}, 0, err
	}
	g, err := grid(fc.Series, now, latest.Add(req.Duration))
	if err != nil {
		return greensched.Placement{}, 0, err
	}
	p, err := greensched.NewPlanner(g, 1)
	if err != nil {
		return greensched.Placement{}, 0, err
	}
	job := greensched.Job{ID: req.ID, Arrival: g.Start, Earliest: g.Start, Latest: latest, Duration: req.Duration}
	best, err := p.Best(job)
	if err != nil {
		return best, 0, err
	}
	job.Latest = g.Start
	first, err := p.Best(job)
	if err != nil {
		return best, 0, err
	}
	return best, first.Intensity, nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// grid samples the forecast from the slot holding now to end; a slot
// without a forecast point is unknown, except the first, which takes the
// point in force (the latest one before it).
func grid(s greensched.Series, now, end time.Time) (greensched.Grid, error) {
	if s.Step <= 0 || len(s.Points) == 0 {
		return greensched.Grid{}, fmt.Errorf("deferred: forecast of zone %q has no points or no step", s.Zone)
	}
	// the slot holding now: the latest point at or before now, else the first point
	i := sort.Search(len(s.Points), func(i int) bool { return s.Points[i].Time.After(now) }) - 1
	if i < 0 {
		i = 0
	}
	start := s.Points[i].Time
	if now.Sub(start) >= s.Step {
		// the last point is old: slots start at now, priced by it
		start = now.Truncate(s.Step)
	}
	n := int((end.Sub(start) + s.Step - 1) / s.Step)
	if n < 1 {
		n = 1
	}
	g := s.Grid(start, s.Step, n)
	if math.IsNaN(g.Values[0]) && s.Points[i].Time.Before(start.Add(s.Step)) {
		g.Values[0] = s.Points[i].Intensity
	}
	return g, nil
}

// waitBattery holds r while the battery cannot run it, until r's latest
// start.
func (s *Scheduler) waitBattery(ctx context.Context, r *Run) error {
	if s.cfg.Battery == nil {
		return nil
	}
	energy, _ := s.cfg.Profile.EnergyWh(r.req.Utilisation, r.req.Duration)
	logged := false
	for {
		b, err := s.cfg.Battery()
		if err != nil {
			s.log.Warn("cannot read the battery: running work regardless", "kind", r.req.Kind, "id", r.req.ID, "err", err)
			return nil
		}
		if b.CanRun(s.cfg.Profile, energy, s.cfg.MinBattery) {
			return nil
		}
		now := s.clk.Now()
		if !now.Before(r.req.Latest) {
			r.Outcome = OutcomeBatteryForced
			s.log.Warn("battery low at the work's latest start: running it anyway", "kind", r.req.Kind, "id", r.req.ID,
				"level", b.Level, "min", s.cfg.MinBattery)
			return nil
		}
		if !logged {
			s.log.Info("battery low and not charging: holding work", "kind", r.req.Kind, "id", r.req.ID, "level", b.Level, "min", s.cfg.MinBattery)
			logged = true
		}
		if err := clock.Sleep(ctx, s.clk, min(s.cfg.BatteryRecheck, r.req.Latest.Sub(now))); err != nil {
			return err
		}
		r.Outcome = OutcomeDeferred
	}
}

// Done accounts the run: energy from the device profile over the time it
// ran (on the clock), emissions at the planned intensity, and what the
// same energy would have emitted at arrival. Calling it again does nothing.
func (r *Run) Done() {
	r.once.Do(func() {
		d := r.s.clk.Now().Sub(r.Start)
		if d < 0 {
			d = 0
		}
		wh, _ := r.s.cfg.Profile.EnergyWh(r.req.Utilisation, d)
		grams, atArrival := wh/1000*r.Intensity, wh/1000*r.AtArrival
		r.s.account(r.req.Kind, r.Outcome == OutcomeDeferred, wh, r.Known, grams, atArrival)
		if r.Known {
			tot := r.s.Stats()["total"]
			r.s.log.Debug("deferred work done", "kind", r.req.Kind, "id", r.req.ID, "outcome", r.Outcome, "energy_wh", wh,
				"grams", grams, "grams_at_arrival", atArrival, "total_saved_grams", tot.Saved)
		}
	})
}

// KindStats are the accounted totals of one kind of work (or all).
type KindStats struct {
	Jobs     int     `json:"jobs"`
	Deferred int     `json:"deferred"`
	EnergyWh float64 `json:"energy_wh"`
	// Grams and GramsAtArrival cover the runs with carbon data; Saved =
	// GramsAtArrival − Grams.
	Grams          float64 `json:"grams"`
	GramsAtArrival float64 `json:"grams_at_arrival"`
	Saved          float64 `json:"saved_grams"`
}

func (s *Scheduler) account(kind string, deferred bool, wh float64, known bool, grams, atArrival float64) {
	s.m.energy.WithLabelValues(kind).Add(wh)
	if known {
		s.m.grams.WithLabelValues(kind).Add(grams)
		s.m.gramsArrival.WithLabelValues(kind).Add(atArrival)
		s.m.saved.WithLabelValues(kind).Add(atArrival - grams)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats[kind]
	st.Jobs++
	if deferred {
		st.Deferred++
	}
	st.EnergyWh += wh
	if known {
		st.Grams += grams
		st.GramsAtArrival += atArrival
		st.Saved = st.GramsAtArrival - st.Grams
	}
	s.stats[kind] = st
}

// Stats returns the totals per kind of work and, under "total", of all.
func (s *Scheduler) Stats() map[string]KindStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]KindStats, len(s.stats)+1)
	var tot KindStats
	for k, v := range s.stats {
		out[k] = v
		tot.Jobs += v.Jobs
		tot.Deferred += v.Deferred
		tot.EnergyWh += v.EnergyWh
		tot.Grams += v.Grams
		tot.GramsAtArrival += v.GramsAtArrival
	}
	tot.Saved = tot.GramsAtArrival - tot.Grams
	out["total"] = tot
	return out
}

// Status is what the agent reports of its energy situation.
type Status struct {
	Zone string
	// Intensity is the zone's intensity now (gCO2eq/kWh) when known; At
	// its time; Stale when it came from the provider's fallback.
	Intensity *float64
	At        time.Time
	Stale     bool
	Battery   *greensched.Battery
}

// Status reads the zone's intensity now and the battery. Parts that cannot
// be had are left out (and logged at debug level).
func (s *Scheduler) Status(ctx context.Context) Status {
	st := Status{Zone: s.cfg.Zone}
	if s.cfg.Provider != nil {
		ctx, cancel := context.WithTimeout(ctx, statusTimeout)
		rd, err := s.cfg.Provider.Current(ctx, s.cfg.Zone)
		cancel()
		if err != nil {
			s.log.Debug("no current carbon intensity", "zone", s.cfg.Zone, "err", err)
		} else {
			v := rd.Point.Intensity
			st.Intensity, st.At, st.Stale = &v, rd.Point.Time, rd.Stale
			s.m.intensity.Set(v)
		}
	}
	if s.cfg.Battery != nil {
		if b, err := s.cfg.Battery(); err != nil {
			s.log.Debug("no battery state", "err", err)
		} else {
			st.Battery = &b
			s.m.battery.Set(b.Level)
			if b.Charging {
				s.m.charging.Set(1)
			} else {
				s.m.charging.Set(0)
			}
		}
	}
	return st
}

type metrics struct {
	jobs                         *prometheus.CounterVec
	energy, grams                *prometheus.CounterVec
	gramsArrival                 *prometheus.CounterVec
	saved                        *prometheus.GaugeVec
	waiting                      prometheus.Gauge
	intensity, battery, charging prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgefleet_green_jobs_total",
			Help: "Deferrable work started, by kind and outcome (now, deferred, no_forecast, battery_forced)."}, []string{"kind", "outcome"}),
		energy: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgefleet_green_energy_wh_total",
			Help: "Estimated energy of finished deferrable work (device power profile x run time), watt-hours, by kind."}, []string{"kind"}),
		grams: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgefleet_green_emissions_grams_total",
			Help: "Estimated emissions of finished deferrable work, gCO2eq, by kind (runs with carbon data)."}, []string{"kind"}),
		gramsArrival: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgefleet_green_emissions_at_arrival_grams_total",
			Help: "Estimated emissions the same work would have had if run at arrival, gCO2eq, by kind."}, []string{"kind"}),
		saved: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "edgefleet_green_saved_grams",
			Help: "Emissions saved against running at arrival (at arrival minus as run), gCO2eq, by kind; negative if worse."}, []string{"kind"}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgefleet_green_waiting_jobs",
			Help: "Deferrable work waiting for its start."}),
		intensity: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgefleet_green_intensity_grams_per_kwh",
			Help: "The zone's carbon intensity last read, gCO2eq/kWh."}),
		battery: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgefleet_green_battery_level",
			Help: "Battery level last read, 0..1 (1 without a battery)."}),
		charging: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgefleet_green_battery_charging",
			Help: "1 when the device was on external power at the last read."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.jobs, m.energy, m.grams, m.gramsArrival, m.saved, m.waiting, m.intensity, m.battery, m.charging} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("deferred: metrics: %w", err)
			}
		}
	}
	return m, nil
}
