package greensched

import (
	"math"
	"testing"
	"time"
)

// hourly returns a series of hourly points from t0 with the given values.
func hourly(vals ...float64) Series {
	s := Series{Zone: "Z", Step: time.Hour}
	for i, v := range vals {
		s.Points = append(s.Points, Point{Time: hour(i), Intensity: v})
	}
	return s
}

func TestPersistence(t *testing.T) {
	vals := make([]float64, 72)
	for i := range vals {
		vals[i] = float64(i)
	}
	truth := hourly(vals...)
	truth.Points = append(truth.Points[:5], truth.Points[6:]...) // 05:00 on day one missing
	f := Persistence{Truth: truth}
	// issued at 30:00, forecast 40:00..52:00 is the truth 24 h earlier,
	// except 48:00 and later which would need 24:00+ (not before 30:00):
	// those come from 48 h earlier
	got, err := f.Forecast(hour(30), hour(40), hour(56))
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]float64{}
	for h := 40; h < 56; h++ {
		src := h - 24
		if src > 30 {
			src -= 24
		}
		if src != 5 {
			want[h] = float64(src)
		}
	}
	if len(got.Points) != len(want) {
		t.Fatalf("%d points, want %d: %v", len(got.Points), len(want), got.Points)
	}
	for _, p := range got.Points {
		h := int(p.Time.Sub(t0) / time.Hour)
		if w, ok := want[h]; !ok || p.Intensity != w {
			t.Errorf("hour %d: %v, want %v (present %v)", h, p.Intensity, w, ok)
		}
	}
	if _, err := f.Forecast(hour(1), hour(2), hour(2)); err == nil {
		t.Error("empty span accepted")
	}
}

func TestNoisy(t *testing.T) {
	vals := make([]float64, 20000)
	for i := range vals {
		vals[i] = 100 + float64(i%48)
	}
	truth := hourly(vals...)
	n1, err := NewNoisy(truth, 0.05, 3)
	if err != nil {
		t.Fatal(err)
	}
	n2, _ := NewNoisy(truth, 0.05, 3)
	n3, _ := NewNoisy(truth, 0.05, 4)
	mean := truth.Mean()
	if math.Abs(n1.Sigma-0.05*mean) > 1e-9 {
		t.Fatalf("sigma %v, want %v", n1.Sigma, 0.05*mean)
	}
	var sum, sq float64
	same, differ := true, false
	for i, p := range n1.S.Points {
		e := p.Intensity - truth.Points[i].Intensity
		sum += e
		sq += e * e
		same = same && p == n2.S.Points[i]
		differ = differ || p.Intensity != n3.S.Points[i].Intensity
	}
	if !same || !differ {
		t.Fatalf("same seed same forecast %v, other seed differs %v", same, differ)
	}
	m := sum / float64(len(vals))
	sd := math.Sqrt(sq/float64(len(vals)) - m*m)
	// 20,000 draws: the mean within 4 standard errors, sd within 3 %
	if math.Abs(m) > 4*n1.Sigma/math.Sqrt(float64(len(vals))) || math.Abs(sd/n1.Sigma-1) > 0.03 {
		t.Fatalf("error mean %v sd %v, want 0 and %v", m, sd, n1.Sigma)
	}
	if _, err := NewNoisy(truth, -1, 1); err == nil {
		t.Error("negative error ratio accepted")
	}
	zero, _ := NewNoisy(truth, 0, 1)
	if zero.S.Points[7] != truth.Points[7] {
		t.Error("e = 0 is not the truth")
	}
}

func TestStatic(t *testing.T) {
	s := hourly(1, 2, 3, 4)
	got, err := Provided(s).Forecast(hour(0), hour(1), hour(3))
	if err != nil || len(got.Points) != 2 || got.Points[0].Intensity != 2 {
		t.Fatalf("%v %v", got.Points, err)
	}
}
