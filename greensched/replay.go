package greensched

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// ReplayOptions describe a trace replay: one job of Duration arriving at
// First, First+Every, ... before Until, each free to start at any mark
// from arrival − Window to arrival + Window.
type ReplayOptions struct {
	First, Until  time.Time
	Every         time.Duration
	Duration      time.Duration
	Window        time.Duration
	Interruptible bool
	// Raw turns off the denoising of forecasts that declare their error
	// (see Uncertain, Denoise): the scheduler then ranks by the forecast as
	// it is.
	Raw bool
}

// ReplayResult sums a replay up. Intensities are gCO2eq/kWh.
type ReplayResult struct {
	// Jobs replayed; Skipped arrivals whose own marks are missing from
	// the trace (no baseline); AtArrival jobs run at arrival because the
	// forecast offered no candidate.
	Jobs      int `json:"jobs"`
	Skipped   int `json:"skipped"`
	AtArrival int `json:"at_arrival"`
	// MeanAtArrival and MeanScheduled are the mean true intensity of the
	// jobs run at arrival and as scheduled.
	MeanAtArrival float64 `json:"mean_intensity_at_arrival"`
	MeanScheduled float64 `json:"mean_intensity_scheduled"`
	// SavingsPercent = 100 × (1 − Σ scheduled / Σ at arrival).
	SavingsPercent float64 `json:"savings_percent"`
}

// denoiseContext widens the forecast asked for on both sides of a job's
// window so that the smoother has neighbours at the window's edges (4 h
// measured best of 0, 4 h, 12 h and 24 h on the 2020 traces).
const denoiseContext = 4 * time.Hour

// Replay runs the scheduler over a trace. marks is the truth read at the
// replay's marks (see Series.Marks; its Step is the slot length); fc is the
// forecast the scheduler sees, issued at each job's earliest start
// (arrival − Window, the last moment it can still choose that start).
//
// Definitions: a job covers the marks from its start for Duration (a
// 30-minute job on 30-minute marks covers one); its intensity is the mean
// true intensity of the marks it covers; a start (or, interruptible, a
// mark) is a candidate only if the truth has all its marks; among the
// candidates the scheduler picks by the forecast. Savings = 1 − Σ intensity
// as scheduled / Σ intensity at arrival, over all jobs.
//
// A forecaster that declares its error (Uncertain, as Noisy does) is
// denoised before the scheduler sees it (Denoise), with the zone's
// step variance learnt from the marks before the first window; Raw skips
// this.
func Replay(marks Series, fc Forecaster, o ReplayOptions) (ReplayResult, error) {
	step := marks.Step
	switch {
	case step <= 0:
		return ReplayResult{}, fmt.Errorf("greensched: replay: marks step %v must be positive", step)
	case o.Every <= 0 || o.Duration <= 0 || o.Window < 0:
		return ReplayResult{}, fmt.Errorf("greensched: replay: every and duration must be positive and window not negative")
	case o.Window%step != 0:
		return ReplayResult{}, fmt.Errorf("greensched: replay: window %v is not a multiple of the marks' step %v", o.Window, step)
	case !o.Until.After(o.First):
		return ReplayResult{}, fmt.Errorf("greensched: replay: until %s is not after first %s", o.Until.Format(time.DateTime), o.First.Format(time.DateTime))
	}
	n := int((o.Duration + step - 1) / step)
	slots := int(2*o.Window/step) + n
	// the zone's volatility, learnt from the history before the first
	// job (0: none, Denoise estimates it from each forecast)
	q := 0.0
	if hist := marks.Between(time.Time{}, o.First.Add(-o.Window)); len(hist.Points) >= 48 {
		q = StepVariance(hist)
	}
	var r ReplayResult
	var sumArrival, sumScheduled float64
	for arr := o.First; arr.Before(o.Until); arr = arr.Add(o.Every) {
		start := arr.Add(-o.Window)
		truth := marks.Grid(start, step, slots)
		w := int(o.Window / step)
		atArrival, ok := meanOf(truth.Values[w : w+n])
		if !ok {
			r.Skipped++
			continue
		}
		f, err := fc.Forecast(start, start.Add(-denoiseContext), start.Add(time.Duration(slots)*step+denoiseContext))
		if err != nil {
			return ReplayResult{}, fmt.Errorf("greensched: replay: job at %s: %w", arr.Format(time.DateTime), err)
		}
		if u, ok := fc.(Uncertain); ok && !o.Raw {
			f = Denoise(f, u.ErrorSigma(), q)
		}
		g := f.Grid(start, step, slots)
		for k, v := range truth.Values {
			if math.IsNaN(v) {
				g.Values[k] = math.NaN()
			}
		}
		p, err := NewPlanner(g, 1)
		if err != nil {
			return ReplayResult{}, err
		}
		job := Job{ID: arr.Format(time.DateTime), Arrival: arr, Duration: o.Duration, Interruptible: o.Interruptible}.Window(o.Window, o.Window)
		scheduled := atArrival
		pl, err := p.Best(job)
		switch {
		case errors.Is(err, ErrNoSlot):
			r.AtArrival++
		case err != nil:
			return ReplayResult{}, err
		default:
			var sum float64
			for _, k := range pl.Slots {
				sum += truth.Values[k]
			}
			scheduled = sum / float64(len(pl.Slots))
		}
		r.Jobs++
		sumArrival += atArrival
		sumScheduled += scheduled
	}
	if r.Jobs == 0 {
		return r, fmt.Errorf("greensched: replay: no job between %s and %s has its marks in the trace", o.First.Format(time.DateTime), o.Until.Format(time.DateTime))
	}
	r.MeanAtArrival = sumArrival / float64(r.Jobs)
	r.MeanScheduled = sumScheduled / float64(r.Jobs)
	if sumArrival > 0 {
		r.SavingsPercent = 100 * (1 - sumScheduled/sumArrival)
	}
	return r, nil
}

// meanOf is the mean of vs, false if any is NaN or there are none.
func meanOf(vs []float64) (float64, bool) {
	if len(vs) == 0 {
		return 0, false
	}
	var s float64
	for _, v := range vs {
		if math.IsNaN(v) {
			return 0, false
		}
		s += v
	}
	return s / float64(len(vs)), true
}
