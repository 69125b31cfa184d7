package greensched

import (
	"testing"
	"time"
)

func TestTraceZones(t *testing.T) {
	sim := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m := TimeMap{SimStart: sim, TraceStart: t0, Scale: 3600} // a simulated second plays an hour
	de := hourly(10, 20, 30, 40)
	de.Zone = "DE"
	tz, err := NewTraceZones(m, de)
	if err != nil {
		t.Fatal(err)
	}
	p, err := tz.Now("DE", sim.Add(1500*time.Millisecond)) // trace 01:30: the 01:00 point
	if err != nil || p.Intensity != 20 || !p.Time.Equal(sim.Add(time.Second)) {
		t.Fatalf("now: %+v %v", p, err)
	}
	f, err := tz.Forecast("DE", sim.Add(time.Second), sim.Add(3*time.Second))
	if err != nil || len(f.Points) != 2 || f.Points[1].Intensity != 30 || f.Step != time.Second || !f.Points[0].Time.Equal(sim.Add(time.Second)) {
		t.Fatalf("forecast: %+v %v", f, err)
	}
	if _, err := tz.Now("DE", sim.Add(-time.Second)); err == nil {
		t.Error("before the trace accepted")
	}
	if _, err := tz.Now("DE", sim.Add(10*time.Second)); err == nil {
		t.Error("long after the trace accepted")
	}
	if _, err := tz.Now("FR", sim); err == nil {
		t.Error("unknown zone accepted")
	}
	if _, err := tz.Forecast("DE", sim.Add(20*time.Second), sim.Add(30*time.Second)); err == nil {
		t.Error("empty forecast accepted")
	}
	for _, bad := range []TimeMap{{Scale: 0}, {Scale: -1}} {
		if _, err := NewTraceZones(bad, de); err == nil {
			t.Errorf("scale %v accepted", bad.Scale)
		}
	}
	if _, err := NewTraceZones(m, de, de); err == nil {
		t.Error("two series of one zone accepted")
	}
	if got := tz.Zones(); len(got) != 1 || got[0] != "DE" {
		t.Errorf("zones %v", got)
	}
}
