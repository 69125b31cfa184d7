package fedlearn

import (
	"math"
	"sort"
)

// Point is one reading of a metric: Unix nanoseconds and value.
type Point struct {
	T int64
	V float64
}

// Extract computes the raw features (before imputation and
// standardisation; NaN where missing) of one example at time at (Unix
// nanoseconds) into dst, which must have one slot per feature. series
// returns a metric's readings sorted by time, oldest first; it may return
// readings after at, which are ignored, and readings older than any window,
// which are skipped. The same function serves training (over a device's
// stored time series) and inference (over the readings held for it), so a
// model sees the same features in both.
//
// A feature's window is the half-open interval (at-Window, at]. AggLatest
// takes the last reading at or before at, within the window when one is set.
// AggStd is the population standard deviation.
func (s Schema) Extract(dst []float64, at int64, series func(metric string) []Point) {
	for i, f := range s.Features {
		pts := series(f.Metric)
		// end: first index after at.
		end := sort.Search(len(pts), func(k int) bool { return pts[k].T > at })
		start := 0
		if f.Window > 0 {
			from := at - int64(f.Window)
			start = sort.Search(end, func(k int) bool { return pts[k].T > from })
		}
		dst[i] = aggregate(f.Agg, pts[start:end])
	}
}

// aggregate summarises the finite values of pts (NaN when there are none).
func aggregate(agg Agg, pts []Point) float64 {
	if agg == AggLatest {
		for k := len(pts) - 1; k >= 0; k-- {
			if v := pts[k].V; !math.IsNaN(v) && !math.IsInf(v, 0) {
				return v
			}
		}
		return math.NaN()
	}
	var n, sum float64
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, p := range pts {
		if math.IsNaN(p.V) || math.IsInf(p.V, 0) {
			continue
		}
		n++
		sum += p.V
		lo, hi = math.Min(lo, p.V), math.Max(hi, p.V)
	}
	if n == 0 {
		return math.NaN()
	}
	mean := sum / n
	switch agg {
	case AggMean:
		return mean
	case AggMin:
		return lo
	case AggMax:
		return hi
	case AggStd:
		var sq float64
		for _, p := range pts {
			if !math.IsNaN(p.V) && !math.IsInf(p.V, 0) {
				sq += (p.V - mean) * (p.V - mean)
			}
		}
		return math.Sqrt(sq / n)
	}
	return math.NaN()
}
