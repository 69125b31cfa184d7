package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/greensched"
	"gopkg.in/yaml.v3"
)

// ZoneStatus is a zone's intensity now and its next best window, as
// 'edgectl green status' prints it. A part that could not be had carries
// its error instead.
type ZoneStatus struct {
	Zone     string    `json:"zone"`
	Provider string    `json:"provider"`
	Now      time.Time `json:"now"`
	// Current is the intensity now (CurrentError when there is none).
	Current      *Reading `json:"current,omitempty"`
	CurrentError string   `json:"current_error,omitempty"`
	// Best is the greenest window for the job (BestError when none).
	Best      *BestWindow `json:"best_window,omitempty"`
	BestError string      `json:"best_window_error,omitempty"`
}

// BestWindow is the greenest start of a job of Duration that ends by
// Deadline, chosen by greensched's planner on the provider's forecast.
type BestWindow struct {
	Duration string    `json:"duration"` // time.Duration text, "30m0s"
	Deadline time.Time `json:"deadline"`
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	// Intensity is the mean forecast intensity of the window; AtFirst
	// that of the same job started at the forecast's first slot (the
	// earliest start); SavingPercent = 100 × (1 − Intensity / AtFirst).
	Intensity     float64 `json:"intensity"`
	AtFirst       float64 `json:"intensity_at_first_slot"`
	SavingPercent float64 `json:"saving_percent"`
	// Forecast describes the forecast used.
	ForecastPoints int    `json:"forecast_points"`
	ForecastStep   string `json:"forecast_step"` // time.Duration text
	ForecastStale  bool   `json:"forecast_stale,omitempty"`
	ForecastReason string `json:"forecast_reason,omitempty"`
}

// Status asks p for zone's intensity at now and its forecast up to
// now + within, and places a job of duration that must end by then.
func Status(ctx context.Context, p Provider, zone string, now time.Time, duration, within time.Duration) ZoneStatus {
	st := ZoneStatus{Zone: zone, Provider: p.Name(), Now: now}
	if r, err := p.Current(ctx, zone); err != nil {
		st.CurrentError = err.Error()
	} else {
		st.Current = &r
	}
	if b, err := bestWindow(ctx, p, zone, now, duration, within); err != nil {
		st.BestError = err.Error()
	} else {
		st.Best = &b
	}
	return st
}

func bestWindow(ctx context.Context, p Provider, zone string, now time.Time, duration, within time.Duration) (BestWindow, error) {
	if duration <= 0 || within < duration {
		return BestWindow{}, fmt.Errorf("provider: status: job of %v within %v: want 0 < duration <= within", duration, within)
	}
	deadline := now.Add(within)
	fc, err := p.Forecast(ctx, zone, now, deadline)
	if err != nil {
		return BestWindow{}, err
	}
	s := fc.Series
	if s.Step <= 0 {
		return BestWindow{}, fmt.Errorf("provider: status of zone %q: the forecast has no step (%d points)", zone, len(s.Points))
	}
	first := s.Points[0].Time
	n := int(deadline.Sub(first) / s.Step)
	g := s.Grid(first, s.Step, n)
	pl, err := greensched.NewPlanner(g, 1)
	if err != nil {
		return BestWindow{}, err
	}
	job := greensched.Job{ID: "status", Arrival: first, Duration: duration, Deadline: deadline}
	best, err := pl.Best(job)
	if err != nil {
		return BestWindow{}, fmt.Errorf("provider: status of zone %q: %w", zone, err)
	}
	b := BestWindow{Duration: duration.String(), Deadline: deadline, Start: best.Start,
		End:       best.Start.Add(time.Duration(len(best.Slots)) * s.Step),
		Intensity: best.Intensity, ForecastPoints: len(s.Points), ForecastStep: s.Step.String(),
		ForecastStale: fc.Stale, ForecastReason: fc.Reason}
	job.Latest = first
	if atFirst, err := pl.Best(job); err == nil {
		b.AtFirst = atFirst.Intensity
		if atFirst.Intensity > 0 {
			b.SavingPercent = 100 * (1 - best.Intensity/atFirst.Intensity)
		}
	}
	return b, nil
}

// ReadConfigs reads a YAML list of provider configs,
//
//	providers:
//	  - kind: trace
//	    zone: DE
//	    trace_file: ../shared/data/carbon/ger_ci_2020.csv
//
// rejecting unknown fields, and returns them with defaults applied and
// validated (an error names the entry).
func ReadConfigs(r io.Reader) ([]Config, error) {
	var file struct {
		Providers []Config `yaml:"providers"`
	}
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("provider: config: empty file (want a providers: list)")
		}
		return nil, fmt.Errorf("provider: config: %w", err)
	}
	if len(file.Providers) == 0 {
		return nil, errors.New("provider: config: no providers listed")
	}
	out := make([]Config, len(file.Providers))
	for i, c := range file.Providers {
		c = c.WithDefaults()
		if err := c.Validate(); err != nil {
			return nil, fmt.Errorf("provider: config: providers[%d]: %s", i, strings.TrimPrefix(err.Error(), "provider: config: "))
		}
		out[i] = c
	}
	return out, nil
}
