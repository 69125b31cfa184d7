package provider

import (
	"context"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/greensched"
)

func TestTraceZonesProvider(t *testing.T) {
	t0 := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	sim := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := greensched.Series{Zone: "FR", Step: 30 * time.Minute}
	for i, v := range []float64{50, 40, 30, 45} {
		s.Points = append(s.Points, greensched.Point{Time: t0.Add(time.Duration(i) * 30 * time.Minute), Intensity: v})
	}
	tz, err := greensched.NewTraceZones(greensched.TimeMap{SimStart: sim, TraceStart: t0, Scale: 1800}, s)
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.NewManual(sim.Add(1500 * time.Millisecond)) // trace 00:45: the 00:30 point
	p, err := NewTraceZones(Options{Clock: clk}, 0, tz)
	if err != nil {
		t.Fatal(err)
	}
	r, err := p.Current(context.Background(), "FR")
	if err != nil || r.Point.Intensity != 40 || !r.Point.Time.Equal(sim.Add(time.Second)) {
		t.Fatalf("current %+v %v", r, err)
	}
	f, err := p.Forecast(context.Background(), "FR", sim.Add(time.Second), sim.Add(4*time.Second))
	if err != nil || len(f.Series.Points) != 3 || f.Series.Points[1].Intensity != 30 || f.Series.Step != time.Second {
		t.Fatalf("forecast %+v %v", f, err)
	}
	clk.Set(sim.Add(time.Hour)) // far past the trace, nothing good before: an error, not a zero
	if r, err := p.Current(context.Background(), "DE"); err == nil {
		t.Fatalf("unknown zone answered %+v", r)
	}
}
