package fedlearn

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// sliceSource is a PointSource over a slice.
type sliceSource struct {
	pts []Point
	i   int
}

func (s *sliceSource) Next() (Point, bool, error) {
	if s.i >= len(s.pts) {
		return Point{}, false, nil
	}
	s.i++
	return s.pts[s.i-1], true, nil
}

// TestBuildExamplesMatchesExtract: streaming through the series with
// trimmed windows gives, at every anchor, the features Extract computes over
// the whole series, with gaps, NaN readings and irregular times.
func TestBuildExamplesMatchesExtract(t *testing.T) {
	sec := int64(time.Second)
	s := Schema{
		Features: []Feature{
			{Name: "a", Metric: "a", Agg: AggLatest},
			{Name: "a_mean", Metric: "a", Agg: AggMean, Window: Duration(5 * time.Second)},
			{Name: "b_std", Metric: "b", Agg: AggStd, Window: Duration(20 * time.Second)},
			{Name: "b_last", Metric: "b", Agg: AggLatest, Window: Duration(2 * time.Second)},
			{Name: "c_max", Metric: "c", Agg: AggMax, Window: Duration(3 * time.Second)},
			{Name: "c", Metric: "c", Agg: AggLatest},
		},
		Label: Label{Metric: "y"},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	data := map[string][]Point{}
	for _, m := range []string{"a", "b", "c", "y"} {
		t0 := int64(0)
		for i := 0; i < 400; i++ {
			t0 += 1 + rng.Int64N(4*sec)
			v := rng.NormFloat64()
			if m == "y" {
				v = float64(rng.IntN(4)) // class 3 is out of range below
			} else if rng.IntN(10) == 0 {
				v = math.NaN()
			}
			data[m] = append(data[m], Point{t0, v})
		}
	}
	src := func(m string) PointSource { return &sliceSource{pts: data[m]} }
	want := make([]float64, len(s.Features))
	var n int
	st, err := BuildExamples(s, src("y"), src, MetricLabel(3), func(at int64, raw []float64, class int) error {
		s.Extract(want, at, func(m string) []Point { return data[m] })
		for i := range want {
			if math.IsNaN(want[i]) != math.IsNaN(raw[i]) || (!math.IsNaN(want[i]) && want[i] != raw[i]) {
				t.Fatalf("at %d feature %s: streamed %v, whole series %v", at, s.Features[i].Name, raw[i], want[i])
			}
		}
		if class < 0 || class > 2 {
			t.Fatalf("class %d", class)
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.Anchors != 400 || st.Emitted != int64(n) || st.Emitted+st.Unlabelled != 400 || st.Unlabelled == 0 || st.Incomplete == 0 {
		t.Fatalf("stats %+v, %d emitted", st, n)
	}
}

func TestBuildExamplesErrors(t *testing.T) {
	s := Schema{Features: []Feature{{Name: "a", Metric: "a", Agg: AggMean, Window: Duration(time.Hour)}}, Label: Label{Metric: "y"}}
	emit := func(int64, []float64, int) error { return nil }
	back := &sliceSource{pts: []Point{{5, 1}, {3, 1}}}
	if _, err := BuildExamples(s, back, func(string) PointSource { return &sliceSource{} }, MetricLabel(2), emit); err == nil {
		t.Fatal("anchors going back in time accepted")
	}
	// A window spanning more readings than the bound.
	many := make([]Point, MaxWindowPoints+2)
	for i := range many {
		many[i] = Point{int64(i), 1}
	}
	anchors := &sliceSource{pts: []Point{{int64(len(many)), 1}}}
	_, err := BuildExamples(s, anchors, func(string) PointSource { return &sliceSource{pts: many} }, MetricLabel(2), emit)
	if !errors.Is(err, ErrWindowTooLarge) {
		t.Fatalf("oversized window: %v", err)
	}
}

func TestTrimWindowKeepsLastFinite(t *testing.T) {
	buf := []Point{{1, 1}, {2, 7}, {3, math.NaN()}, {10, 4}}
	got := trimWindow(buf, 5)
	if len(got) != 3 || got[0].T != 2 || got[2].T != 10 {
		t.Fatalf("got %v", got)
	}
	if got := trimWindow([]Point{{1, math.NaN()}}, 5); len(got) != 0 {
		t.Fatalf("non-finite old reading kept: %v", got)
	}
}

func TestReservoir(t *testing.T) {
	fill := func(seed uint64) *Reservoir {
		r, err := NewReservoir(2, 100, seed)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 10000; i++ {
			if err := r.Add([]float64{float64(i), -float64(i)}, i%3); err != nil {
				t.Fatal(err)
			}
		}
		return r
	}
	r1, r2, r3 := fill(7), fill(7), fill(8)
	x1, y1 := r1.Rows()
	x2, y2 := r2.Rows()
	x3, _ := r3.Rows()
	if r1.Len() != 100 || r1.Seen() != 10000 || !slices.Equal(x1, x2) || !slices.Equal(y1, y2) || slices.Equal(x1, x3) {
		t.Fatal("reservoir not deterministic per seed")
	}
	// Uniform: about half the sample from the second half of the stream,
	// and each row intact.
	late := 0
	for i := 0; i < 100; i++ {
		if x1[2*i] != -x1[2*i+1] || y1[i] != int(x1[2*i])%3 {
			t.Fatalf("row %d torn: %v %v", i, x1[2*i:2*i+2], y1[i])
		}
		if x1[2*i] >= 5000 {
			late++
		}
	}
	if late < 30 || late > 70 {
		t.Fatalf("%d of 100 kept from the second half of the stream", late)
	}
	if err := r1.Add([]float64{1}, 0); err == nil {
		t.Fatal("wrong width accepted")
	}
}

func TestSplitIndex(t *testing.T) {
	tr, he := SplitIndex(100, 0.2, 3)
	tr2, he2 := SplitIndex(100, 0.2, 3)
	_, he3 := SplitIndex(100, 0.2, 4)
	if len(he) != 20 || len(tr) != 80 || !slices.Equal(he, he2) || !slices.Equal(tr, tr2) || slices.Equal(he, he3) {
		t.Fatalf("split %d/%d", len(tr), len(he))
	}
	if !slices.IsSorted(tr) || !slices.IsSorted(he) {
		t.Fatal("indices not in order")
	}
	all := append(append([]int{}, tr...), he...)
	slices.Sort(all)
	for i, v := range all {
		if v != i {
			t.Fatal("not a partition")
		}
	}
	if tr, he := SplitIndex(3, 0.01, 1); len(he) != 1 || len(tr) != 2 {
		t.Fatalf("tiny split %v %v", tr, he)
	}
	if tr, he := SplitIndex(3, 0, 1); len(he) != 0 || len(tr) != 3 {
		t.Fatalf("no hold-out %v %v", tr, he)
	}
}

// TestFeatureStatsMatchStandardize: the sufficient statistics give the
// schema Standardize computes from the rows themselves.
func TestFeatureStatsMatchStandardize(t *testing.T) {
	rows := [][]float64{{1, 10}, {2, math.NaN()}, {4, 30}, {7, 20}}
	s1 := Schema{Features: []Feature{{Name: "a", Metric: "a", Agg: AggLatest}, {Name: "b", Metric: "b", Agg: AggLatest}}}
	s2 := Schema{Features: slices.Clone(s1.Features)}
	s1.Standardize(rows)
	fs := NewFeatureStats(2)
	for _, r := range rows {
		fs.Add(r)
	}
	if err := fs.Apply(&s2); err != nil {
		t.Fatal(err)
	}
	for i := range s1.Features {
		a, b := s1.Features[i], s2.Features[i]
		if math.Abs(a.Mean-b.Mean) > 1e-12 || math.Abs(a.Std-b.Std) > 1e-12 || a.Impute != b.Impute {
			t.Fatalf("feature %d: standardize %+v, stats %+v", i, a, b)
		}
	}
	if err := NewFeatureStats(3).Apply(&s2); !errors.Is(err, ErrSchema) {
		t.Fatalf("mismatched stats: %v", err)
	}
}
