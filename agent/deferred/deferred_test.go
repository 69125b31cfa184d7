package deferred

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/greensched"
	"github.com/edgefleet/edgefleet/greensched/provider"
)

var t0 = time.Date(2020, 3, 1, 12, 0, 0, 0, time.UTC)

// halfHourly is a zone's trace: 30-minute points from t0 with vals.
func halfHourly(zone string, vals ...float64) greensched.Series {
	s := greensched.Series{Zone: zone, Step: 30 * time.Minute}
	for i, v := range vals {
		s.Points = append(s.Points, greensched.Point{Time: t0.Add(time.Duration(i) * 30 * time.Minute), Intensity: v})
	}
	return s
}

type fixture struct {
	clk   *clock.Manual
	s     *Scheduler
	reg   *prometheus.Registry
	mu    sync.Mutex
	bat   greensched.Battery
	batOK bool
}

func newFixture(t *testing.T, withProvider bool, vals ...float64) *fixture {
	t.Helper()
	f := &fixture{clk: clock.NewManual(t0), reg: prometheus.NewRegistry()}
	cfg := Config{Profile: greensched.Profile{IdleW: 2, MaxW: 10, BatteryWh: 20}, MinBattery: 0.3,
		BatteryRecheck: 10 * time.Minute, Clock: f.clk, Registry: f.reg}
	if withProvider {
		p, err := provider.NewTrace(provider.Options{Clock: f.clk}, 0, halfHourly("DE", vals...))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Provider, cfg.Zone = p, "DE"
	}
	cfg.Battery = func() (greensched.Battery, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if !f.batOK {
			return greensched.Battery{Present: false, Level: 1}, nil
		}
		return f.bat, nil
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.s = s
	return f
}

func (f *fixture) setBattery(b greensched.Battery) {
	f.mu.Lock()
	f.bat, f.batOK = b, true
	f.mu.Unlock()
}

// wait runs Wait in the background and returns its result channel.
func (f *fixture) wait(ctx context.Context, req Request) <-chan *Run {
	ch := make(chan *Run, 1)
	go func() {
		r, err := f.s.Wait(ctx, req)
		if err != nil {
			r = nil
		}
		ch <- r
	}()
	return ch
}

// waitTimer waits (5 s at most) until a waiter sleeps on the clock.
func (f *fixture) waitTimer(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); f.clk.Waiters() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("nothing waits on the clock")
		}
	}
}

// advanceUntil moves the clock in small steps until the run starts.
func (f *fixture) advanceUntil(t *testing.T, ch <-chan *Run, limit time.Duration) *Run {
	t.Helper()
	for moved := time.Duration(0); ; moved += time.Minute {
		// let the waiter reach its timer before moving the clock
		for i := 0; i < 200 && f.clk.Waiters() == 0; i++ {
			select {
			case r := <-ch:
				return r
			default:
			}
			time.Sleep(time.Millisecond)
		}
		select {
		case r := <-ch:
			return r
		default:
		}
		if moved > limit {
			t.Fatalf("work did not start within %v", limit)
		}
		f.clk.Advance(time.Minute)
	}
}

func TestWaitPicksGreenestStart(t *testing.T) {
	// 12:00 300, 12:30 280, 13:00 100, 13:30 120, 14:00 250 ...
	f := newFixture(t, true, 300, 280, 100, 120, 250, 260, 270, 280, 290, 300)
	ch := f.wait(context.Background(), Request{Kind: "training", ID: "j1", Duration: 30 * time.Minute, Utilisation: 1, Latest: t0.Add(3 * time.Hour)})
	r := f.advanceUntil(t, ch, 4*time.Hour)
	if r == nil || !r.Start.Equal(t0.Add(time.Hour)) || r.Outcome != OutcomeDeferred {
		t.Fatalf("run %+v, want start 13:00 deferred", r)
	}
	if r.Intensity != 100 || r.AtArrival != 300 || !r.Known {
		t.Fatalf("intensities %v at arrival %v", r.Intensity, r.AtArrival)
	}
	f.clk.Advance(30 * time.Minute)
	r.Done()
	r.Done() // once only
	// 10 W for 30 min = 5 Wh; 5 Wh × 100 g/kWh = 0.5 g; at arrival 1.5 g
	st := f.s.Stats()
	want := KindStats{Jobs: 1, Deferred: 1, EnergyWh: 5, Grams: 0.5, GramsAtArrival: 1.5, Saved: 1}
	for _, k := range []string{"training", "total"} {
		if g := st[k]; g.Jobs != want.Jobs || g.Deferred != 1 || !near(g.EnergyWh, 5) || !near(g.Grams, 0.5) || !near(g.GramsAtArrival, 1.5) || !near(g.Saved, 1) {
			t.Errorf("%s stats %+v, want %+v", k, g, want)
		}
	}
	if v := metricValue(t, f.reg, "edgefleet_green_saved_grams", "training"); !near(v, 1) {
		t.Errorf("saved metric %v", v)
	}
	if v := metricValue(t, f.reg, "edgefleet_green_jobs_total", "training", OutcomeDeferred); v != 1 {
		t.Errorf("jobs metric %v", v)
	}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestWaitWithoutWindowRunsNow(t *testing.T) {
	f := newFixture(t, true, 300, 100, 100)
	r, err := f.s.Wait(context.Background(), Request{Kind: "compaction", ID: "state", Duration: time.Minute, Utilisation: 0.5})
	if err != nil || !r.Start.Equal(t0) || r.Outcome != OutcomeNow || r.Intensity != 300 {
		t.Fatalf("%+v %v", r, err)
	}
	// no provider: now, energy only
	f = newFixture(t, false)
	r, err = f.s.Wait(context.Background(), Request{Kind: "training", ID: "x", Duration: time.Hour, Latest: t0.Add(5 * time.Hour)})
	if err != nil || !r.Start.Equal(t0) || r.Known {
		t.Fatalf("no provider: %+v %v", r, err)
	}
	f.clk.Advance(time.Hour)
	r.Done()
	if st := f.s.Stats()["training"]; !near(st.EnergyWh, 2) || st.Grams != 0 {
		t.Fatalf("no provider stats %+v", st)
	}
}

func TestWaitOutsideTraceRunsAtArrival(t *testing.T) {
	f := newFixture(t, true, 300, 100)
	f.clk.Set(t0.Add(48 * time.Hour)) // past the trace
	r, err := f.s.Wait(context.Background(), Request{Kind: "training", ID: "x", Duration: time.Minute, Latest: f.clk.Now().Add(time.Hour)})
	if err != nil || r.Outcome != OutcomeNoForecast || !r.Start.Equal(f.clk.Now()) {
		t.Fatalf("%+v %v", r, err)
	}
}

func TestBatteryHoldsWorkUntilChargingOrLatest(t *testing.T) {
	f := newFixture(t, false)
	// 10 W × 1 h = 10 Wh of a 20 Wh battery at 50 %: would leave 0 < 0.3
	f.setBattery(greensched.Battery{Present: true, Level: 0.5})
	ch := f.wait(context.Background(), Request{Kind: "training", ID: "b", Duration: time.Hour, Utilisation: 1, Latest: t0.Add(2 * time.Hour)})
	f.waitTimer(t)
	f.clk.Advance(10 * time.Minute)
	select {
	case r := <-ch:
		t.Fatalf("ran on a low battery: %+v", r)
	case <-time.After(20 * time.Millisecond):
	}
	f.setBattery(greensched.Battery{Present: true, Level: 0.5, Charging: true})
	r := f.advanceUntil(t, ch, time.Hour)
	if r == nil || !r.Start.Equal(t0.Add(20*time.Minute)) || r.Outcome != OutcomeDeferred {
		t.Fatalf("charging: %+v", r)
	}
	// never charging: runs at the latest start anyway
	f.setBattery(greensched.Battery{Present: true, Level: 0.1})
	start := f.clk.Now()
	ch = f.wait(context.Background(), Request{Kind: "training", ID: "c", Duration: time.Hour, Utilisation: 1, Latest: start.Add(time.Hour)})
	r = f.advanceUntil(t, ch, 2*time.Hour)
	if r == nil || r.Outcome != OutcomeBatteryForced || r.Start.Before(start.Add(time.Hour)) {
		t.Fatalf("forced: %+v", r)
	}
}

func TestWaitCanceled(t *testing.T) {
	f := newFixture(t, true, 300, 280, 100, 120)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := f.s.Wait(ctx, Request{Kind: "training", ID: "x", Duration: 30 * time.Minute, Latest: t0.Add(time.Hour)})
		errc <- err
	}()
	f.waitTimer(t)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	if v := metricValue(t, f.reg, "edgefleet_green_waiting_jobs"); v != 0 {
		t.Fatalf("waiting gauge %v", v)
	}
}

func TestBadRequestsAndConfig(t *testing.T) {
	f := newFixture(t, false)
	for _, r := range []Request{{Kind: "k", Duration: 0}, {Kind: "k", Duration: time.Minute, Utilisation: 2}, {Kind: "k", Duration: time.Minute, Utilisation: math.NaN()}} {
		if _, err := f.s.Wait(context.Background(), r); err == nil || !strings.HasPrefix(err.Error(), "deferred: ") {
			t.Errorf("%+v: %v", r, err)
		}
	}
	for _, c := range []Config{
		{Profile: greensched.Profile{IdleW: 5, MaxW: 1}},
		{MinBattery: 2},
		{MinBattery: math.NaN()},
		{BatteryRecheck: -time.Second},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	p, _ := provider.NewTrace(provider.Options{}, 0, halfHourly("DE", 1, 2))
	if _, err := New(Config{Provider: p}); err == nil {
		t.Error("provider without zone accepted")
	}
}

func TestStatus(t *testing.T) {
	f := newFixture(t, true, 300, 100)
	f.setBattery(greensched.Battery{Present: true, Level: 0.4, Charging: true})
	st := f.s.Status(context.Background())
	if st.Zone != "DE" || st.Intensity == nil || *st.Intensity != 300 || st.Battery == nil || st.Battery.Level != 0.4 || !st.Battery.Charging {
		t.Fatalf("%+v", st)
	}
	if v := metricValue(t, f.reg, "edgefleet_green_intensity_grams_per_kwh"); v != 300 {
		t.Fatalf("intensity gauge %v", v)
	}
}

// metricValue reads a counter or gauge from reg whose label values are
// labels (in the order declared), -1 when absent.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			lp := m.GetLabel()
			if len(lp) != len(labels) {
				continue
			}
			for i, l := range lp {
				if l.GetValue() != labels[i] {
					continue metrics
				}
			}
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return -1
}

// changingForecast is a provider whose forecast of zone DE changes at
// switchAt: before, the trace a; from then on, the trace b.
type changingForecast struct {
	clk      clock.Clock
	switchAt time.Time
	a, b     greensched.Series
}

func (c changingForecast) Name() string { return "test" }

func (c changingForecast) series() greensched.Series {
	if c.clk.Now().Before(c.switchAt) {
		return c.a
	}
	return c.b
}

func (c changingForecast) Current(_ context.Context, zone string) (provider.Reading, error) {
	s := c.series()
	return provider.Reading{Zone: zone, Point: s.Points[0]}, nil
}

func (c changingForecast) Forecast(_ context.Context, zone string, from, to time.Time) (provider.Forecast, error) {
	return provider.Forecast{Zone: zone, Series: c.series().Between(from, to)}, nil
}

// TestWaitReplans: work waiting for its start decides again every
// Replan on a fresh forecast, and starts when now has become the greenest.
func TestWaitReplans(t *testing.T) {
	clk := clock.NewManual(t0)
	p := changingForecast{clk: clk, switchAt: t0.Add(30 * time.Minute),
		a: halfHourly("DE", 300, 280, 100, 250, 260, 270),
		b: halfHourly("DE", 300, 90, 200, 250, 260, 270)}
	s, err := New(Config{Zone: "DE", Provider: p, Profile: greensched.Profile{IdleW: 1, MaxW: 2}, Clock: clk, Replan: 30 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{clk: clk, s: s}
	ch := f.wait(context.Background(), Request{Kind: "training", ID: "r", Duration: 30 * time.Minute, Latest: t0.Add(2 * time.Hour)})
	r := f.advanceUntil(t, ch, 3*time.Hour)
	if r == nil || !r.Start.Equal(t0.Add(30*time.Minute)) || r.Intensity != 90 || r.AtArrival != 300 {
		t.Fatalf("run %+v, want a start at 12:30 (the new forecast's greenest) at 90", r)
	}
	// without replanning it keeps the first plan (13:00)
	clk = clock.NewManual(t0)
	p.clk = clk
	s, _ = New(Config{Zone: "DE", Provider: p, Profile: greensched.Profile{IdleW: 1, MaxW: 2}, Clock: clk, Replan: -1})
	f = &fixture{clk: clk, s: s}
	ch = f.wait(context.Background(), Request{Kind: "training", ID: "r", Duration: 30 * time.Minute, Latest: t0.Add(2 * time.Hour)})
	if r = f.advanceUntil(t, ch, 3*time.Hour); r == nil || !r.Start.Equal(t0.Add(time.Hour)) {
		t.Fatalf("without replanning: %+v", r)
	}
}
