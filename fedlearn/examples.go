package fedlearn

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
)

// Training examples from a device's time series.
//
// An example is made at each reading time of an anchor series: the label
// metric's readings when the label is a metric (the reading's value is the
// class index), else the first feature's metric (the label then comes from
// elsewhere, see LabelFunc). Its features are Schema.Extract at that time
// over the readings seen so far, exactly as inference computes them on a
// reading. The series are walked once, oldest first, holding per metric only
// the readings its widest window needs (plus the last finite reading before
// it, for "latest"), so memory does not grow with the length of the range.

// PointSource yields one metric's readings in time order, oldest first.
// Next returns ok false at the end.
type PointSource interface {
	Next() (p Point, ok bool, err error)
}

// LabelFunc gives the class of the example anchored at reading p; ok false
// skips it (counted as unlabelled).
type LabelFunc func(p Point) (class int, ok bool)

// MetricLabel is the LabelFunc of a label metric: the reading's value is
// the class index, which must be a whole number in [0, classes).
func MetricLabel(classes int) LabelFunc {
	return func(p Point) (int, bool) {
		v := p.V
		if math.IsNaN(v) || v != math.Trunc(v) || v < 0 || v >= float64(classes) {
			return 0, false
		}
		return int(v), true
	}
}

// ConstLabel labels every example with class (a replicated-state label).
func ConstLabel(class int) LabelFunc {
	return func(Point) (int, bool) { return class, true }
}

// MaxWindowPoints bounds the readings of one metric held at once while
// building examples (a window that spans more is refused).
const MaxWindowPoints = 1 << 18

// ErrWindowTooLarge is returned when a feature's window holds more than
// MaxWindowPoints readings.
var ErrWindowTooLarge = errors.New("fedlearn: window holds too many readings")

// BuildStats counts what a build saw.
type BuildStats struct {
	// Anchors are the anchor readings walked.
	Anchors int64 `json:"anchors"`
	// Unlabelled anchors had no valid class (skipped).
	Unlabelled int64 `json:"unlabelled"`
	// Incomplete examples had a feature missing (emitted as NaN, for the
	// schema's imputation).
	Incomplete int64 `json:"incomplete"`
	// Emitted examples were handed to emit.
	Emitted int64 `json:"emitted"`
}

// AnchorMetric is the metric whose readings anchor the examples: the label
// metric, else the first feature's metric.
func (s Schema) AnchorMetric() string {
	if s.Label.Metric != "" {
		return s.Label.Metric
	}
	if len(s.Features) == 0 {
		return ""
	}
	return s.Features[0].Metric
}

// BuildExamples walks anchors and the feature metrics' sources in time
// order and calls emit with the raw features (NaN where missing, as
// Extract leaves them; the slice is reused, copy it to keep it) and the
// class of every labelled anchor. source is called once per distinct
// feature metric. Points must come in non-decreasing time order; a source
// going back in time is an error.
func BuildExamples(s Schema, anchors PointSource, source func(metric string) PointSource, label LabelFunc,
	emit func(at int64, raw []float64, class int) error) (BuildStats, error) {
	var st BuildStats
	if err := s.Validate(); err != nil {
		return st, err
	}
	type walk struct {
		src    PointSource
		buf    []Point
		next   Point
		ok     bool
		window int64 // the widest window of the metric's features; 0 for none
	}
	walks := map[string]*walk{}
	for _, m := range s.Metrics() {
		w := &walk{src: source(m)}
		var err error
		if w.next, w.ok, err = w.src.Next(); err != nil {
			return st, err
		}
		walks[m] = w
	}
	for _, f := range s.Features {
		w := walks[f.Metric]
		w.window = max(w.window, int64(f.Window))
	}
	raw := make([]float64, len(s.Features))
	series := func(m string) []Point { return walks[m].buf }
	lastAt := int64(math.MinInt64)
	for {
		a, ok, err := anchors.Next()
		if err != nil {
			return st, err
		}
		if !ok {
			return st, nil
		}
		if a.T < lastAt {
			return st, fmt.Errorf("fedlearn: anchor readings out of time order (%d after %d)", a.T, lastAt)
		}
		lastAt = a.T
		st.Anchors++
		for m, w := range walks {
			for w.ok && w.next.T <= a.T {
				if n := len(w.buf); n > 0 && w.next.T < w.buf[n-1].T {
					return st, fmt.Errorf("fedlearn: readings of %q out of time order", m)
				}
				w.buf = append(w.buf, w.next)
				if w.next, w.ok, err = w.src.Next(); err != nil {
					return st, err
				}
			}
			w.buf = trimWindow(w.buf, a.T-w.window)
			if len(w.buf) > MaxWindowPoints {
				return st, fmt.Errorf("%w: %q holds %d readings in its window (limit %d)", ErrWindowTooLarge, m, len(w.buf), MaxWindowPoints)
			}
		}
		class, ok := label(a)
		if !ok {
			st.Unlabelled++
			continue
		}
		s.Extract(raw, a.T, series)
		for _, v := range raw {
			if math.IsNaN(v) {
				st.Incomplete++
				break
			}
		}
		if err := emit(a.T, raw, class); err != nil {
			return st, err
		}
		st.Emitted++
	}
}

// trimWindow drops the readings at or before from, keeping the last finite
// one of them ("latest" without a window reads it). It reuses buf's array.
func trimWindow(buf []Point, from int64) []Point {
	cut := 0
	for cut < len(buf) && buf[cut].T <= from {
		cut++
	}
	keep := cut
	for k := cut - 1; k >= 0; k-- {
		if v := buf[k].V; !math.IsNaN(v) && !math.IsInf(v, 0) {
			keep = k
			break
		}
	}
	if keep == 0 {
		return buf
	}
	n := copy(buf, buf[keep:])
	return buf[:n]
}

// Reservoir keeps a uniform sample of at most Cap examples out of a stream
// (Vitter's algorithm R), in bounded memory, drawn from a seed: the same
// seed and stream give the same sample.
type Reservoir struct {
	inputs, capacity int
	seen             int64
	x                []float64
	y                []int
	rng              *rand.Rand
}

// NewReservoir returns a reservoir of capacity examples of inputs features.
func NewReservoir(inputs, capacity int, seed uint64) (*Reservoir, error) {
	if inputs < 1 || capacity < 1 {
		return nil, fmt.Errorf("fedlearn: reservoir of %d examples of %d features", capacity, inputs)
	}
	return &Reservoir{inputs: inputs, capacity: capacity, rng: rand.New(rand.NewPCG(seed, 0x7265736572766f69))}, nil
}

// Add offers one example (x is copied).
func (r *Reservoir) Add(x []float64, y int) error {
	if len(x) != r.inputs {
		return fmt.Errorf("fedlearn: example of %d features, reservoir takes %d", len(x), r.inputs)
	}
	r.seen++
	if len(r.y) < r.capacity {
		r.x = append(r.x, x...)
		r.y = append(r.y, y)
		return nil
	}
	if k := r.rng.Int64N(r.seen); k < int64(r.capacity) {
		copy(r.x[int(k)*r.inputs:], x)
		r.y[k] = y
	}
	return nil
}

// Seen is the number of examples offered.
func (r *Reservoir) Seen() int64 { return r.seen }

// Len is the number of examples kept.
func (r *Reservoir) Len() int { return len(r.y) }

// Rows returns the kept examples: features row-major (len Len()*inputs)
// and classes. They alias the reservoir.
func (r *Reservoir) Rows() (x []float64, y []int) { return r.x, r.y }

// SplitIndex shuffles the indices 0..n-1 with seed and returns the first
// ⌊n·frac⌋ as held out and the rest for training, each in ascending order
// (so the examples keep their time order). With frac > 0 and n ≥ 2 at least
// one example is held out and one kept for training.
func SplitIndex(n int, frac float64, seed uint64) (train, held []int) {
	perm := make([]int, n)
	for i := range perm {
		perm[i] = i
	}
	rng := rand.New(rand.NewPCG(seed, 0x73706c6974000000))
	rng.Shuffle(n, func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
	k := int(math.Floor(float64(n) * frac))
	if frac > 0 && n >= 2 {
		k = min(max(k, 1), n-1)
	}
	isHeld := make([]bool, n)
	for _, i := range perm[:k] {
		isHeld[i] = true
	}
	for i := 0; i < n; i++ {
		if isHeld[i] {
			held = append(held, i)
		} else {
			train = append(train, i)
		}
	}
	return train, held
}

// FeatureStats are per-feature sufficient statistics of raw values (count,
// sum, sum of squares of the finite ones): what a device shares so that
// normalisation can be computed across devices without their data.
type FeatureStats struct {
	Count []float64 `json:"count"`
	Sum   []float64 `json:"sum"`
	SumSq []float64 `json:"sum_sq"`
}

// NewFeatureStats returns empty statistics of n features.
func NewFeatureStats(n int) FeatureStats {
	return FeatureStats{Count: make([]float64, n), Sum: make([]float64, n), SumSq: make([]float64, n)}
}

// Add counts one row of raw features (NaN and Inf are skipped).
func (f FeatureStats) Add(row []float64) {
	for i, v := range row {
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			f.Count[i]++
			f.Sum[i] += v
			f.SumSq[i] += v * v
		}
	}
}

// Apply sets each feature's Impute and Mean to the mean and Std to the
// population standard deviation the statistics give (0 and 0 for a
// feature never seen).
func (f FeatureStats) Apply(s *Schema) error {
	if len(f.Count) != len(s.Features) || len(f.Sum) != len(s.Features) || len(f.SumSq) != len(s.Features) {
		return fmt.Errorf("%w: statistics of %d features, schema has %d", ErrSchema, len(f.Count), len(s.Features))
	}
	for i := range s.Features {
		mean, std := 0.0, 0.0
		if n := f.Count[i]; n > 0 {
			mean = f.Sum[i] / n
			std = math.Sqrt(max(0, f.SumSq[i]/n-mean*mean))
		}
		ft := &s.Features[i]
		ft.Impute, ft.Mean, ft.Std = mean, mean, std
	}
	return nil
}
