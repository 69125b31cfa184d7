package greensched

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ForecastSpec names a forecast for a replay: "perfect", "persistence" or
// "noisy:E" (E the error ratio, σ = E × the trace mean).
type ForecastSpec struct {
	Kind string  `json:"kind"`
	E    float64 `json:"e,omitempty"`
}

// ParseForecastSpec parses "perfect", "persistence" or "noisy:E".
func ParseForecastSpec(s string) (ForecastSpec, error) {
	switch {
	case s == "perfect" || s == "persistence":
		return ForecastSpec{Kind: s}, nil
	case strings.HasPrefix(s, "noisy:"):
		e, err := strconv.ParseFloat(strings.TrimPrefix(s, "noisy:"), 64)
		if err != nil || math.IsNaN(e) || math.IsInf(e, 0) || e < 0 {
			return ForecastSpec{}, fmt.Errorf("greensched: forecast %q: the error ratio after noisy: must be a number >= 0", s)
		}
		return ForecastSpec{Kind: "noisy", E: e}, nil
	}
	return ForecastSpec{}, fmt.Errorf("greensched: forecast %q: want perfect, persistence or noisy:E (e.g. noisy:0.05)", s)
}

func (f ForecastSpec) String() string {
	if f.Kind == "noisy" {
		return "noisy:" + strconv.FormatFloat(f.E, 'g', -1, 64)
	}
	return f.Kind
}

// Seeded reports whether the forecast depends on a seed.
func (f ForecastSpec) Seeded() bool { return f.Kind == "noisy" }

// New makes the forecaster over truth (the seed matters only for noisy).
func (f ForecastSpec) New(truth Series, seed uint64) (Forecaster, error) {
	switch f.Kind {
	case "perfect":
		return Perfect(truth), nil
	case "persistence":
		return Persistence{Truth: truth}, nil
	case "noisy":
		return NewNoisy(truth, f.E, seed)
	}
	return nil, fmt.Errorf("greensched: unknown forecast kind %q", f.Kind)
}

// SeededReplay is a replay's result for one seed.
type SeededReplay struct {
	Seed uint64 `json:"seed"`
	ReplayResult
}

// ReplayReport sums up a replay over seeds 0..Seeds−1 (one run for an
// unseeded forecast): means of the per-seed figures, and the runs.
type ReplayReport struct {
	Zone           string         `json:"zone"`
	Forecast       string         `json:"forecast"`
	Seeds          int            `json:"seeds"`
	Jobs           int            `json:"jobs"`
	Skipped        int            `json:"skipped"`
	MeanAtArrival  float64        `json:"mean_intensity_at_arrival"`
	MeanScheduled  float64        `json:"mean_intensity_scheduled"`
	SavingsPercent float64        `json:"savings_percent"`
	Runs           []SeededReplay `json:"runs"`
}

// ReplaySeeds replays marks under the forecast spec for each seed
// 0..seeds−1 (once, seed 0, if the forecast takes no seed).
func ReplaySeeds(marks Series, spec ForecastSpec, seeds int, o ReplayOptions) (ReplayReport, error) {
	if seeds < 1 {
		return ReplayReport{}, fmt.Errorf("greensched: replay: seeds %d must be at least 1", seeds)
	}
	if !spec.Seeded() {
		seeds = 1
	}
	rep := ReplayReport{Zone: marks.Zone, Forecast: spec.String(), Seeds: seeds}
	for seed := range uint64(seeds) {
		fc, err := spec.New(marks, seed)
		if err != nil {
			return ReplayReport{}, err
		}
		r, err := Replay(marks, fc, o)
		if err != nil {
			return ReplayReport{}, err
		}
		rep.Runs = append(rep.Runs, SeededReplay{Seed: seed, ReplayResult: r})
		rep.Jobs, rep.Skipped = r.Jobs, r.Skipped
		rep.MeanAtArrival += r.MeanAtArrival / float64(seeds)
		rep.MeanScheduled += r.MeanScheduled / float64(seeds)
		rep.SavingsPercent += r.SavingsPercent / float64(seeds)
	}
	return rep, nil
}

// wallClockLayouts are the accepted forms of ParseWallClock.
var wallClockLayouts = []string{"2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02"}

// ParseWallClock parses a wall-clock time as the traces write it
// ("2020-01-01 01:00[:00]", or a date for midnight), in loc (nil: UTC).
func ParseWallClock(s string, loc *time.Location) (time.Time, error) {
	if loc == nil {
		loc = time.UTC
	}
	for _, l := range wallClockLayouts {
		if t, err := time.ParseInLocation(l, s, loc); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("greensched: time %q: want YYYY-MM-DD HH:MM[:SS] or YYYY-MM-DD", clip(s))
}
