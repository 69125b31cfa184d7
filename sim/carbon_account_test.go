package sim

import (
	"math"
	"testing"
	"time"
)

// TestCarbonSum: a run's Wh and grams use each client's median training
// time over both jobs (so a slower machine in one job does not count as
// energy), the _measured figures each training's own, and per round and
// per job figures add up.
func TestCarbonSum(t *testing.T) {
	u := []trained{
		{round: 0, name: "a", zone: "DE", d: 2 * time.Second, intensity: 300},
		{round: 0, name: "b", zone: "FR", d: 4 * time.Second, intensity: 50},
		{round: 1, name: "a", zone: "DE", d: 2 * time.Second, intensity: 200},
	}
	s := []trained{
		{round: 0, name: "a", zone: "DE", d: 6 * time.Second, intensity: 100},
		{round: 0, name: "b", zone: "FR", d: 4 * time.Second, intensity: 50},
		{round: 1, name: "a", zone: "DE", d: 6 * time.Second, intensity: 100},
	}
	median := clientDurations(u, s)
	// a: 2, 2, 6, 6 s -> element 2 of the sorted list, 6 s; b: 4 s
	if median["a"] != 6*time.Second || median["b"] != 4*time.Second {
		t.Fatalf("medians %v, want a 6s, b 4s", median)
	}
	mk := func() FLCarbonRun { return FLCarbonRun{Aggregated: 2, Rounds: make([]FLCarbonRound, 2)} }
	ru, rs := mk(), mk()
	ru.sum(u, median)
	rs.sum(s, median)
	wh := func(d time.Duration) float64 { return carbonPowerW * d.Hours() }
	near := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-6*math.Max(1, math.Abs(want)) {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	// unscheduled: a 6 s at 300 and 200, b 4 s at 50
	gu := (wh(6*time.Second)*300 + wh(4*time.Second)*50 + wh(6*time.Second)*200) / 1000
	near("unscheduled grams", ru.Grams, round6(gu))
	near("unscheduled grams per round", ru.GramsPerRound, round6(gu/2))
	near("unscheduled Wh", ru.Wh, round6(2*wh(6*time.Second)+wh(4*time.Second)))
	near("unscheduled measured Wh", ru.WhMeasured, round6(2*wh(2*time.Second)+wh(4*time.Second)))
	near("unscheduled round 0 grams", ru.Rounds[0].Grams, round6((wh(6*time.Second)*300+wh(4*time.Second)*50)/1000))
	near("unscheduled intensity", ru.Intensity, round(1000*gu/(2*wh(6*time.Second)+wh(4*time.Second))))
	// scheduled: the same energy per client, lower intensity
	if !(rs.Wh == ru.Wh && rs.Grams < ru.Grams && rs.Intensity < ru.Intensity) {
		t.Errorf("scheduled %v Wh %v g %v g/kWh; unscheduled %v Wh %v g %v g/kWh: want the same energy and fewer grams", rs.Wh, rs.Grams, rs.Intensity, ru.Wh, ru.Grams, ru.Intensity)
	}
	if rs.WhMeasured <= ru.WhMeasured {
		t.Errorf("measured Wh %v scheduled, %v unscheduled: want the slower trainings to count more", rs.WhMeasured, ru.WhMeasured)
	}
}
