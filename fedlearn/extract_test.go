package fedlearn

import (
	"math"
	"testing"
	"time"
)

func TestExtract(t *testing.T) {
	sec := int64(time.Second)
	s := Schema{Features: []Feature{
		{Name: "t_now", Metric: "temp", Agg: AggLatest},
		{Name: "t_mean", Metric: "temp", Agg: AggMean, Window: Duration(3 * time.Second)},
		{Name: "t_std", Metric: "temp", Agg: AggStd, Window: Duration(3 * time.Second)},
		{Name: "t_min", Metric: "temp", Agg: AggMin, Window: Duration(3 * time.Second)},
		{Name: "t_max", Metric: "temp", Agg: AggMax, Window: Duration(3 * time.Second)},
		{Name: "h_recent", Metric: "hum", Agg: AggLatest, Window: Duration(time.Second)},
		{Name: "co2", Metric: "co2", Agg: AggLatest},
	}}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	data := map[string][]Point{
		// at = 10 s: the window (7 s, 10 s] holds 8, 9, 10 -> values 2, 4, 6; 11 s is after at.
		"temp": {{5 * sec, 100}, {7 * sec, 50}, {8 * sec, 2}, {9 * sec, 4}, {10 * sec, 6}, {11 * sec, 99}},
		"hum":  {{8 * sec, 40}}, // older than its 1 s window
	}
	got := make([]float64, len(s.Features))
	s.Extract(got, 10*sec, func(m string) []Point { return data[m] })
	want := []float64{6, 4, math.Sqrt(8.0 / 3), 2, 6, math.NaN(), math.NaN()}
	for i := range want {
		if math.IsNaN(want[i]) != math.IsNaN(got[i]) || (!math.IsNaN(want[i]) && math.Abs(got[i]-want[i]) > 1e-12) {
			t.Errorf("%s: got %v, want %v", s.Features[i].Name, got[i], want[i])
		}
	}
	s.Features[5].Impute, s.Features[5].Mean, s.Features[5].Std = 42, 40, 2
	s.Features[6].Impute = 400
	if err := s.Normalize(got, got); err != nil {
		t.Fatal(err)
	}
	if got[5] != 1 || got[6] != 400 {
		t.Errorf("imputed: h_recent %v (want (42-40)/2 = 1), co2 %v (want 400)", got[5], got[6])
	}
	if err := s.Normalize(got, []float64{1, 2, 3, 4, 5, math.Inf(1), 7}); err == nil {
		t.Error("infinite raw value accepted")
	}
}
