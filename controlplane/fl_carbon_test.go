package controlplane

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/coord"
	"github.com/edgefleet/edgefleet/fedlearn/strategy"
	"github.com/edgefleet/edgefleet/greensched"
)

// fixedForecasts are zones' forecasts: a constant, and a greener value in
// [greenFrom, greenTo).
type fixedForecasts struct {
	base               map[string]float64
	green              map[string]float64
	greenFrom, greenTo time.Time
}

func (f fixedForecasts) Forecast(ctx context.Context, zone string, from, to time.Time) (greensched.Series, error) {
	return stepForecasts(func(zone string, t time.Time) float64 {
		if !t.Before(f.greenFrom) && t.Before(f.greenTo) {
			return f.green[zone]
		}
		return f.base[zone]
	}).Forecast(ctx, zone, from, to)
}

// TestFLCarbonRound: a job with a carbon option waits for the greener hour
// the forecasts show (within its window) and then selects the agents in
// the cleanest zones whose battery allows, from their heartbeats.
func TestFLCarbonRound(t *testing.T) {
	var fc fixedForecasts
	e := newKeyEnv(t, func(c *Config) {
		c.Keys.DevUnseal = true
		c.FL.Tick = time.Hour
		c.FL.Carbon = &fc
	})
	ctx := e.ctx()
	// start on a forecast step, so that the candidate starts are the
	// forecast's points
	e.clock.Set(e.clock.Now().Truncate(30 * time.Minute).Add(30 * time.Minute))
	now := e.clock.Now()
	fc = fixedForecasts{base: map[string]float64{"DE": 300, "FR": 60, "GB": 150}, green: map[string]float64{"DE": 250, "FR": 20, "GB": 90},
		greenFrom: now.Add(90 * time.Minute), greenTo: now.Add(150 * time.Minute)}
	f := func(v float64) *float64 { return &v }
	type spec struct {
		zone    string
		battery *cpapi.Battery
	}
	specs := map[string]spec{
		"de":     {"DE", nil},
		"fr-low": {"FR", &cpapi.Battery{Present: true, Level: 0.1}},
		"fr-chg": {"FR", &cpapi.Battery{Present: true, Level: 0.1, Charging: true}},
		"gb":     {"GB", &cpapi.Battery{Present: true, Level: 0.8}},
	}
	agents := map[string]*enrolledAgent{}
	ids := map[string]string{}
	beat := func() {
		for name, sp := range specs {
			hb := cpapi.Heartbeat{Resources: &cpapi.Resources{Energy: &cpapi.Energy{Zone: sp.zone, Intensity: f(fc.base[sp.zone]), Battery: sp.battery}}}
			if _, err := agents[name].client.Heartbeat(ctx, hb); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name := range specs {
		agents[name] = e.enroll(name, map[string]string{"fl": "yes"})
		ids[agents[name].id] = name
	}
	beat()
	arch := fedlearn.Arch{Kind: fedlearn.KindLR, Inputs: 1, Classes: 2}
	job, err := e.admin.CreateFLJob(ctx, coord.Spec{Model: "fl-carbon", Arch: arch, Labels: []string{"a", "b"},
		Schema:   fedlearn.Schema{Features: []fedlearn.Feature{{Name: "t", Metric: "t", Agg: fedlearn.AggLatest}}, Label: fedlearn.Label{Metric: "y"}},
		Strategy: strategy.Config{Name: "fedavg"}, Rounds: 1, MinAvailable: 2, MinFit: 2, Fraction: 0.5,
		RoundTimeout: fedlearn.Duration(10 * time.Minute), Selector: "fl=yes", Seed: 3,
		Carbon: &coord.Carbon{Window: fedlearn.Duration(3 * time.Hour), MinBattery: 0.3}})
	if err != nil {
		t.Fatal(err)
	}
	e.srv.FLTick()
	if j, _ := e.admin.GetFLJob(ctx, job.ID); j.Current != nil {
		t.Fatalf("round opened now, before the greener hour: %+v", j.Current)
	}
	for _, step := range []time.Duration{30 * time.Minute, 30 * time.Minute, 30 * time.Minute} {
		e.clock.Advance(step)
		beat()
		e.srv.FLTick()
	}
	j, err := e.admin.GetFLJob(ctx, job.ID)
	if err != nil || j.Current == nil {
		t.Fatalf("no round open in the greener hour: %+v %v", j, err)
	}
	var got []string
	for _, id := range j.Current.Selected {
		got = append(got, ids[id])
	}
	slices.Sort(got)
	// 3 eligible (fr-low is below 30 % and not charging), fraction 0.5 -> 2: FR and GB
	if want := []string{"fr-chg", "gb"}; !slices.Equal(got, want) {
		t.Fatalf("selected %v, want %v", got, want)
	}
	if opened := j.Current.Opened; !opened.Equal(fc.greenFrom) {
		t.Fatalf("opened at %s, not at the start of the greener hour %s", opened, fc.greenFrom)
	}
}

// TestFLCarbonRotationSurvivesRestart: a carbon job with half the agents
// per round rotates them (the participation credit in the coordinator's
// state), and a control plane restart between rounds keeps the credit:
// the round after it takes the agents the round before it left out.
func TestFLCarbonRotationSurvivesRestart(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true; c.FL.Tick = time.Hour })
	ctx := e.ctx()
	agents := flTestAgents(t, e, "flrot", 4, 60)
	byID := map[string]*pqAgent{}
	for _, a := range agents {
		byID[a.id] = a
	}
	slack := 0.0
	sp := flTestSpec("fl-rotate", 1)
	sp.Schema.Features[0].Std = 1
	sp.Rounds, sp.MinAvailable, sp.MinFit, sp.Fraction = 3, 4, 1, 0.5
	sp.Carbon = &coord.Carbon{Slack: &slack}
	job, err := e.admin.CreateFLJob(ctx, sp)
	if err != nil {
		t.Fatal(err)
	}
	round := func() []string {
		t.Helper()
		e.srv.FLTick()
		j, err := e.admin.GetFLJob(ctx, job.ID)
		if err != nil || j.Current == nil || len(j.Current.Selected) != 2 {
			t.Fatalf("no round of 2 open: %+v %v", j.Current, err)
		}
		for _, id := range j.Current.Selected {
			r, err := byID[id].client.WatchFLTask(ctx, "", 0)
			if err != nil || r.Task == nil {
				t.Fatalf("task of %s: %+v %v", id, r, err)
			}
			if err := sendFLUpdate(t, byID[id], *r.Task, []float32{1, 2, 3, 4}); err != nil {
				t.Fatal(err)
			}
		}
		return slices.Sorted(slices.Values(j.Current.Selected))
	}
	credit := func() map[string]float64 {
		e.srv.fl.mu.Lock()
		defer e.srv.fl.mu.Unlock()
		return e.srv.fl.jobs[job.ID].c.Credit()
	}
	first := round()
	before := credit()
	for _, id := range first {
		if before[id] != -0.5 {
			t.Fatalf("credit %v after round 1 with %v", before, first)
		}
	}
	e.restart()
	reconnect(t, e, agents)
	if after := credit(); !maps.Equal(after, before) {
		t.Fatalf("credit %v after the restart, %v before", after, before)
	}
	second := round()
	for _, id := range second {
		if slices.Contains(first, id) {
			t.Fatalf("round 2 took %v again (round 1: %v)", second, first)
		}
	}
}

// stepForecasts are zones' half-hourly forecasts from a function of the
// zone and the time.
type stepForecasts func(zone string, t time.Time) float64

func (f stepForecasts) Forecast(_ context.Context, zone string, from, to time.Time) (greensched.Series, error) {
	s := greensched.Series{Zone: zone, Step: 30 * time.Minute}
	for t := from.Truncate(30 * time.Minute); t.Before(to); t = t.Add(30 * time.Minute) {
		s.Points = append(s.Points, greensched.Point{Time: t, Intensity: f(zone, t)})
	}
	return s, nil
}

// TestFLCarbonWindowSurvivesRestart: a carbon job's round waits, within
// its 3-hour window from the job's creation, for the greener half hour
// 2 h on; a control plane restart while it waits does not give the round
// a new window, in which the still greener half hour 4 h on would win:
// the round opens at 2 h.
func TestFLCarbonWindowSurvivesRestart(t *testing.T) {
	var t0 time.Time
	fc := stepForecasts(func(_ string, t time.Time) float64 {
		switch d := t.Sub(t0); {
		case d >= 2*time.Hour && d < 150*time.Minute:
			return 50
		case d >= 4*time.Hour && d < 270*time.Minute:
			return 10
		}
		return 100
	})
	f := newCarbonFixture(t, fc, "flwin", 80, "FR", "FR")
	e, agents, ctx := f.e, f.agents, f.e.ctx()
	t0 = f.t0
	beat := f.beat
	beat()
	sp := f.spec("fl-window")
	job, err := e.admin.CreateFLJob(ctx, sp)
	if err != nil {
		t.Fatal(err)
	}
	open := func() *cpapi.FLRoundState {
		t.Helper()
		beat()
		e.srv.FLTick()
		j, err := e.admin.GetFLJob(ctx, job.ID)
		if err != nil {
			t.Fatal(err)
		}
		return j.Current
	}
	for range 3 { // 0, 30, 60 min
		if r := open(); r != nil {
			t.Fatalf("round opened at %s, before the greener half hour", r.Opened.Sub(t0))
		}
		e.clock.Advance(30 * time.Minute)
	}
	e.restart()
	reconnect(t, e, agents)
	ctx = e.ctx()
	for e.clock.Now().Sub(t0) < 5*time.Hour { // 90 min on
		if r := open(); r != nil {
			if got := r.Opened.Sub(t0); got != 2*time.Hour {
				t.Fatalf("round opened at %s, want 2h0m0s (the window's greenest start)", got)
			}
			return
		}
		e.clock.Advance(30 * time.Minute)
	}
	t.Fatal("no round opened")
}

// TestFLCarbonShortForecastWarned: a zone whose forecast ends before the
// job's deadline is said once per job and zone (the later rounds are
// priced by the forecast a day earlier); a zone whose forecast reaches the
// deadline is not.
func TestFLCarbonShortForecastWarned(t *testing.T) {
	var t0 time.Time
	full := stepForecasts(func(string, time.Time) float64 { return 100 })
	fc := forecastFunc(func(ctx context.Context, zone string, from, to time.Time) (greensched.Series, error) {
		if end := t0.Add(20 * time.Hour); zone == "FR" && to.After(end) {
			to = end // a provider's day ahead
		}
		return full.Forecast(ctx, zone, from, to)
	})
	f := newCarbonFixture(t, fc, "flshort", 90, "FR", "GB")
	e, ctx := f.e, f.e.ctx()
	t0 = f.t0
	sp := f.spec("fl-short")
	sp.Rounds = 40
	sp.Deadline = t0.Add(30 * time.Hour)
	f.beat()
	if _, err := e.admin.CreateFLJob(ctx, sp); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		f.beat()
		e.srv.FLTick()
		e.clock.Advance(30 * time.Minute)
	}
	const msg = "the zone's forecast ends before the job's deadline"
	var warned []string
	for _, line := range strings.Split(e.logs.String(), "\n") {
		if strings.Contains(line, msg) {
			warned = append(warned, line)
		}
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "zone=FR") {
		t.Fatalf("warned %q, want once for FR (its forecast ends 20 h on, the deadline is 30 h on; GB's reaches it)", warned)
	}
}

// forecastFunc is a CarbonForecaster from a function.
type forecastFunc func(ctx context.Context, zone string, from, to time.Time) (greensched.Series, error)

func (f forecastFunc) Forecast(ctx context.Context, zone string, from, to time.Time) (greensched.Series, error) {
	return f(ctx, zone, from, to)
}

// carbonFixture is a control plane whose FL driver reads a forecaster,
// its clock on a half-hour mark t0, and FL agents in given zones.
type carbonFixture struct {
	t      *testing.T
	e      *keyEnv
	t0     time.Time
	agents []*pqAgent
	zones  []string
}

func newCarbonFixture(t *testing.T, fc CarbonForecaster, prefix string, seed byte, zones ...string) *carbonFixture {
	e := newKeyEnv(t, func(c *Config) {
		c.Keys.DevUnseal = true
		c.FL.Tick = time.Hour
		c.FL.Carbon = fc
	})
	e.clock.Set(e.clock.Now().Truncate(30 * time.Minute).Add(30 * time.Minute))
	return &carbonFixture{t: t, e: e, t0: e.clock.Now(), agents: flTestAgents(t, e, prefix, len(zones), seed), zones: zones}
}

// beat sends every agent's heartbeat: its zone at 100 g/kWh.
func (f *carbonFixture) beat() {
	f.t.Helper()
	v := 100.0
	for i, a := range f.agents {
		hb := cpapi.Heartbeat{Resources: &cpapi.Resources{Energy: &cpapi.Energy{Zone: f.zones[i], Intensity: &v}}}
		if _, err := a.client.Heartbeat(f.e.ctx(), hb); err != nil {
			f.t.Fatal(err)
		}
	}
}

// spec is a one-round job of one feature over every agent, with a 3-hour
// carbon window.
func (f *carbonFixture) spec(model string) coord.Spec {
	sp := flTestSpec(model, 1)
	sp.Schema.Features[0].Std = 1
	sp.MinAvailable, sp.MinFit = len(f.agents), len(f.agents)
	sp.RoundTimeout = fedlearn.Duration(10 * time.Minute)
	sp.Carbon = &coord.Carbon{Window: fedlearn.Duration(3 * time.Hour)}
	return sp
}
