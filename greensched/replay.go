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
	// Raw turns off the estimation of the truth from forecasts that
	// declare their error (see Uncertain, Estimate): the scheduler then
	// ranks by the forecast as it is.
	Raw bool
	// OneShot plans each job once, on a forecast issued at its earliest
	// start, instead of deciding at each mark (see replayJob).
	OneShot bool
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
	// Starts are the jobs' starts (the first slot's), in arrival order.
	Starts []time.Time `json:"-"`
}

// estimateContext widens the forecast asked for after a job's span so
// that the estimate has neighbours at the window's end (the past before
// the issue time is the truth itself).
const estimateContext = 4 * time.Hour

// Replay runs the scheduler over a trace. marks is the truth read at the
// replay's marks (see Series.Marks; its Step is the slot length); fc is the
// forecast the scheduler sees, issued at each mark where it decides (see
// replayJob: at each mark from the job's earliest start, starting when
// now is the greenest start left; OneShot: once, at the earliest start).
//
// Definitions: a job covers the marks from its start for Duration (a
// 30-minute job on 30-minute marks covers one); its intensity is the mean
// true intensity of the marks it covers; a start (or, interruptible, a
// mark) is a candidate only if the truth has all its marks; among the
// candidates the scheduler picks by the forecast. Savings = 1 − Σ intensity
// as scheduled / Σ intensity at arrival, over all jobs.
//
// A forecaster that declares its error (Uncertain, as Noisy does) is
// turned into an estimate of the truth before the scheduler sees it
// (Estimate, with the truth known at the issue time); Raw skips this.
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
	w := int(o.Window / step)
	var r ReplayResult
	var sumArrival, sumScheduled float64
	for arr := o.First; arr.Before(o.Until); arr = arr.Add(o.Every) {
		start := arr.Add(-o.Window)
		truth := marks.Grid(start, step, slots)
		atArrival, ok := meanOf(truth.Values[w : w+n])
		if !ok {
			r.Skipped++
			continue
		}
		job := Job{ID: arr.Format(time.DateTime), Arrival: arr, Duration: o.Duration, Interruptible: o.Interruptible}.Window(o.Window, o.Window)
		run, err := replayJob(marks, fc, o, job, truth)
		if err != nil {
			return ReplayResult{}, fmt.Errorf("greensched: replay: job at %s: %w", arr.Format(time.DateTime), err)
		}
		scheduled := atArrival
		if run == nil {
			r.AtArrival++
			r.Starts = append(r.Starts, arr)
		} else {
			var sum float64
			for _, k := range run {
				sum += truth.Values[k]
			}
			scheduled = sum / float64(len(run))
			r.Starts = append(r.Starts, truth.Time(run[0]))
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

// replayJob decides where job runs; truth is the true grid of its span
// (NaN: a mark missing, never a candidate). It returns the slots of
// truth it runs in, nil when no start was a candidate (run at arrival).
//
// By default the scheduler decides as it goes: at each mark from the
// earliest start it asks the forecaster for a forecast issued then,
// estimates the truth from it and the truth known by then (Estimate, for
// forecasts that declare their error), and starts now if now is the
// greenest start left (interruptible: runs this slot if it is among the
// greenest left), else waits for the next mark; at the latest start it
// starts. OneShot plans once, at the earliest start.
func replayJob(marks Series, fc Forecaster, o ReplayOptions, job Job, truth Grid) ([]int, error) {
	step := truth.Step
	n := int((o.Duration + step - 1) / step)
	var run []int
	for k0 := 0; k0 < len(truth.Values); k0++ {
		issued := truth.Time(k0)
		rest := len(truth.Values) - k0
		f, err := fc.Forecast(issued, issued, truth.Time(len(truth.Values)).Add(estimateContext))
		if err != nil {
			return nil, err
		}
		if u, ok := fc.(Uncertain); ok && !o.Raw {
			f = Estimate(f, u.ErrorSigma(), marks.Between(time.Time{}, issued), issued)
		}
		g := f.Grid(issued, step, rest)
		for k := range g.Values {
			if math.IsNaN(truth.Values[k0+k]) {
				g.Values[k] = math.NaN()
			}
		}
		p, err := NewPlanner(g, 1)
		if err != nil {
			return nil, err
		}
		j := job
		j.Earliest = issued
		if j.Interruptible {
			// the slots still to run, before the same end
			j.Duration = time.Duration(n-len(run)) * step
			j.Latest, j.Deadline = time.Time{}, truth.Time(len(truth.Values))
		}
		pl, err := p.Best(j)
		if errors.Is(err, ErrNoSlot) {
			if len(run) > 0 {
				return run, nil // interruptible: no more candidates
			}
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		switch {
		case o.OneShot:
			for _, k := range pl.Slots {
				run = append(run, k0+k)
			}
			return run, nil
		case !j.Interruptible && pl.Slots[0] == 0:
			for _, k := range pl.Slots {
				run = append(run, k0+k)
			}
			return run, nil
		case j.Interruptible && pl.Slots[0] == 0:
			run = append(run, k0)
			if len(run) == n {
				return run, nil
			}
		}
	}
	if len(run) > 0 {
		return run, nil
	}
	return nil, nil
}
