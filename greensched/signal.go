// Package greensched places deferrable work in time (and across agents) by
// grid carbon intensity and device energy: carbon signals and forecasts, a
// device power and battery model, the scheduler, and trace replay.
//
// It is pure logic: no network, no wall clock (callers pass times or a
// clock.Clock), randomness only from injected seeds. Carbon providers that
// fetch signals from outside live in greensched/provider.
package greensched

import (
	"fmt"
	"math"
	"sort"
	"time"
)

// Point is one carbon-intensity sample: gCO2eq/kWh from Time on.
type Point struct {
	Time      time.Time
	Intensity float64
}

// Series is a carbon-intensity time series of one zone, points in strictly
// increasing time order. Step is the usual spacing of the points (the most
// frequent difference between neighbours); points may be missing (gaps) and
// a series may change its spacing (the GB trace goes from 30 to 15 minutes).
type Series struct {
	Zone   string
	Step   time.Duration
	Points []Point
}

// Validate checks that the points are strictly increasing in time and that
// every intensity is finite and not negative.
func (s Series) Validate() error {
	for i, p := range s.Points {
		if math.IsNaN(p.Intensity) || math.IsInf(p.Intensity, 0) || p.Intensity < 0 {
			return fmt.Errorf("greensched: series %q point %d (%s): intensity %v is not a finite non-negative number", s.Zone, i, p.Time.Format(time.DateTime), p.Intensity)
		}
		if i > 0 && !p.Time.After(s.Points[i-1].Time) {
			return fmt.Errorf("greensched: series %q point %d (%s): not after the previous point (%s)", s.Zone, i, p.Time.Format(time.DateTime), s.Points[i-1].Time.Format(time.DateTime))
		}
	}
	return nil
}

// index returns the position of the point at exactly t, or -1.
func (s Series) index(t time.Time) int {
	i := sort.Search(len(s.Points), func(i int) bool { return !s.Points[i].Time.Before(t) })
	if i < len(s.Points) && s.Points[i].Time.Equal(t) {
		return i
	}
	return -1
}

// At returns the intensity of the point at exactly t.
func (s Series) At(t time.Time) (float64, bool) {
	if i := s.index(t); i >= 0 {
		return s.Points[i].Intensity, true
	}
	return 0, false
}

// Between returns the points with from <= Time < to (sharing s's array).
func (s Series) Between(from, to time.Time) Series {
	lo := sort.Search(len(s.Points), func(i int) bool { return !s.Points[i].Time.Before(from) })
	hi := sort.Search(len(s.Points), func(i int) bool { return !s.Points[i].Time.Before(to) })
	if hi < lo {
		hi = lo
	}
	return Series{Zone: s.Zone, Step: s.Step, Points: s.Points[lo:hi]}
}

// Mean is the mean intensity of the points (0 for none).
func (s Series) Mean() float64 {
	if len(s.Points) == 0 {
		return 0
	}
	var sum float64
	for _, p := range s.Points {
		sum += p.Intensity
	}
	return sum / float64(len(s.Points))
}

// Marks returns the points that fall on a multiple of every (counted from
// midnight: every=30m keeps minute 0 and 30 and drops 15 and 45), with Step
// set to every. every must divide a day.
func (s Series) Marks(every time.Duration) (Series, error) {
	if every <= 0 || (24*time.Hour)%every != 0 {
		return Series{}, fmt.Errorf("greensched: marks every %v: must be positive and divide a day", every)
	}
	out := Series{Zone: s.Zone, Step: every}
	for _, p := range s.Points {
		if sinceMidnight(p.Time)%every == 0 {
			out.Points = append(out.Points, p)
		}
	}
	return out, nil
}

// sinceMidnight is the wall-clock time of day of t in its location.
func sinceMidnight(t time.Time) time.Duration {
	h, m, sec := t.Clock()
	return time.Duration(h)*time.Hour + time.Duration(m)*time.Minute + time.Duration(sec)*time.Second + time.Duration(t.Nanosecond())
}

// Grid samples s on a regular grid: n slots of step from start; a slot
// without a point at exactly its time is NaN (unknown).
func (s Series) Grid(start time.Time, step time.Duration, n int) Grid {
	g := Grid{Start: start, Step: step, Values: make([]float64, n)}
	i := sort.Search(len(s.Points), func(i int) bool { return !s.Points[i].Time.Before(start) })
	for k := range g.Values {
		t := start.Add(time.Duration(k) * step)
		for i < len(s.Points) && s.Points[i].Time.Before(t) {
			i++
		}
		if i < len(s.Points) && s.Points[i].Time.Equal(t) {
			g.Values[k] = s.Points[i].Intensity
		} else {
			g.Values[k] = math.NaN()
		}
	}
	return g
}

// Grid is a carbon-intensity signal on regular slots: slot k starts at
// Start + k·Step and has intensity Values[k] (gCO2eq/kWh); NaN marks a slot
// whose intensity is unknown, where no job is placed.
type Grid struct {
	Start  time.Time
	Step   time.Duration
	Values []float64
}

// Slot returns the index of the slot starting at t and whether t lies
// exactly on a slot boundary (the index may be out of range).
func (g Grid) Slot(t time.Time) (int, bool) {
	d := t.Sub(g.Start)
	k := d / g.Step
	if d < 0 && d%g.Step != 0 {
		k--
	}
	return int(k), d%g.Step == 0
}

// Time returns the start of slot k.
func (g Grid) Time(k int) time.Time { return g.Start.Add(time.Duration(k) * g.Step) }

// Forecaster predicts the carbon intensity of a zone.
type Forecaster interface {
	// Forecast returns the intensity expected for [from, to), as known at
	// time issued. Points the forecaster cannot predict are left out.
	Forecast(issued, from, to time.Time) (Series, error)
}
