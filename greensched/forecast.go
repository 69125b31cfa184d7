package greensched

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Static is a forecaster that answers from a fixed series: the truth (a
// perfect forecast, see Perfect) or a forecast that came from outside, such
// as a provider's (see Provided). It ignores the issue time.
type Static struct {
	S Series
}

// Perfect forecasts the truth itself: the offline optimum's oracle.
func Perfect(truth Series) Static { return Static{S: truth} }

// Provided wraps a forecast series obtained from elsewhere (a carbon
// provider's own forecast).
func Provided(forecast Series) Static { return Static{S: forecast} }

// Forecast returns the series' points in [from, to).
func (f Static) Forecast(issued, from, to time.Time) (Series, error) {
	if err := checkSpan(from, to); err != nil {
		return Series{}, err
	}
	return f.S.Between(from, to), nil
}

// day is a persistence forecast's lag.
const day = 24 * time.Hour

// Persistence forecasts that each time repeats the same time a day
// earlier: the intensity at t is the truth at t − 24h, or at t − 48h, ...
// the latest such time not after the issue time, so that the forecast only
// uses what was known when it was issued.
type Persistence struct {
	Truth Series
}

// Forecast returns a point at each t in [from, to) whose same time on the
// latest known day is in the truth.
func (f Persistence) Forecast(issued, from, to time.Time) (Series, error) {
	if err := checkSpan(from, to); err != nil {
		return Series{}, err
	}
	out := Series{Zone: f.Truth.Zone, Step: f.Truth.Step}
	for _, p := range f.Truth.Between(from.Add(-day), to.Add(-day)).Points {
		t := p.Time.Add(day)
		v := p.Intensity
		if p.Time.After(issued) {
			lag := (p.Time.Sub(issued) + day - 1) / day * day
			var ok bool
			if v, ok = f.Truth.At(p.Time.Add(-lag)); !ok {
				continue
			}
		}
		out.Points = append(out.Points, Point{Time: t, Intensity: v})
	}
	return out, nil
}

// Noisy is the truth plus seeded Gaussian error: every point gets an
// independent error drawn from N(0, σ) with σ = E × the mean of the truth,
// as in Wiesner et al., "Let's Wait Awhile" (Middleware 2021). The errors
// are drawn once, in time order, from a PCG generator seeded with Seed, so
// a forecast depends only on (truth, E, Seed). A forecast below zero is
// reported as zero (intensities are not negative).
type Noisy struct {
	S     Series
	E     float64
	Seed  uint64
	Sigma float64
}

// NewNoisy draws the noisy forecast of truth.
func NewNoisy(truth Series, e float64, seed uint64) (Noisy, error) {
	if math.IsNaN(e) || e < 0 || math.IsInf(e, 0) {
		return Noisy{}, fmt.Errorf("greensched: noisy forecast: error ratio %v must be a finite number >= 0", e)
	}
	sigma := e * truth.Mean()
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	n := Noisy{E: e, Seed: seed, Sigma: sigma, S: Series{Zone: truth.Zone, Step: truth.Step, Points: make([]Point, len(truth.Points))}}
	for i, p := range truth.Points {
		v := p.Intensity + rng.NormFloat64()*sigma
		n.S.Points[i] = Point{Time: p.Time, Intensity: max(v, 0)}
	}
	return n, nil
}

// Forecast returns the noisy points in [from, to).
func (f Noisy) Forecast(issued, from, to time.Time) (Series, error) {
	return Static{S: f.S}.Forecast(issued, from, to)
}

func checkSpan(from, to time.Time) error {
	if !to.After(from) {
		return fmt.Errorf("greensched: forecast span %s to %s is empty", from.Format(time.DateTime), to.Format(time.DateTime))
	}
	return nil
}
