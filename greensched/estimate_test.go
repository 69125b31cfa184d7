package greensched

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// synthetic is days of half-hourly truth from t0: a daily shape (low at
// night and midday), a slow drift and seeded noise.
func synthetic(days int, seed uint64) Series {
	rng := rand.New(rand.NewPCG(seed, 7))
	s := Series{Zone: "Z", Step: 30 * time.Minute}
	level := 200.0
	for i := 0; i < days*48; i++ {
		h := float64(i%48) / 2
		level += rng.NormFloat64() * 2
		v := level + 60*math.Cos(2*math.Pi*(h-19)/24) + 20*math.Cos(4*math.Pi*(h-13)/24) + rng.NormFloat64()*4
		s.Points = append(s.Points, Point{Time: t0.Add(time.Duration(i) * 30 * time.Minute), Intensity: max(v, 0)})
	}
	return s
}

// alterAfter returns s with every point at or after t changed (inverted
// around 1000), so that a scheduler reading the truth there would choose
// differently.
func alterAfter(s Series, t time.Time) Series {
	out := Series{Zone: s.Zone, Step: s.Step, Points: append([]Point(nil), s.Points...)}
	for i, p := range out.Points {
		if !p.Time.Before(t) {
			out.Points[i].Intensity = 1000 - p.Intensity
		}
	}
	return out
}

// TestReplayDoesNotPeek: the replay's scheduler decides as time passes,
// so each decision may use the forecast and the truth of the past only.
// For a job that starts at s, the truth is changed from a time τ on, for
// every mark τ from the earliest start to s: the job must still not start
// before τ (every decision before τ is unchanged), and with τ = s it must
// start at s.
func TestReplayDoesNotPeek(t *testing.T) {
	truth := synthetic(40, 3)
	fc, err := NewNoisy(truth, 0.05, 11)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for day := 10; day < 38; day++ {
		arr := t0.Add(time.Duration(day)*24*time.Hour + time.Hour)
		o := ReplayOptions{First: arr, Until: arr.Add(time.Second), Every: 24 * time.Hour, Duration: 30 * time.Minute, Window: 8 * time.Hour}
		base, err := Replay(truth, fc, o)
		if err != nil {
			t.Fatal(err)
		}
		s := base.Starts[0]
		for tau := arr.Add(-o.Window); !tau.After(s); tau = tau.Add(30 * time.Minute) {
			got, err := Replay(alterAfter(truth, tau), fc, o)
			if err != nil {
				t.Fatal(err)
			}
			switch g := got.Starts[0]; {
			case g.Before(tau):
				t.Errorf("day %d: with the truth changed from %s on, the job starts at %s (else %s): a decision before %s read the future",
					day, tau.Format(time.DateTime), g.Format(time.DateTime), s.Format(time.DateTime), tau.Format(time.DateTime))
			case tau.Equal(s) && !g.Equal(s):
				t.Errorf("day %d: with the truth changed from the start %s on, the job starts at %s", day, s.Format(time.DateTime), g.Format(time.DateTime))
			}
			checked++
		}
	}
	t.Logf("%d (job, τ) pairs checked", checked)
}

// TestEstimateUsesOnlyThePast: Estimate ignores past points at or after
// the issue time (a point at t covers [t, t+step): known only from
// t+step on).
func TestEstimateUsesOnlyThePast(t *testing.T) {
	truth := synthetic(12, 5)
	fc, _ := NewNoisy(truth, 0.05, 2)
	issued := t0.Add(9*24*time.Hour + 17*time.Hour)
	f := fc.S.Between(issued.Add(-4*time.Hour), issued.Add(21*time.Hour))
	a := Estimate(f, fc.Sigma, truth, issued)
	b := Estimate(f, fc.Sigma, alterAfter(truth, issued), issued)
	for i := range a.Points {
		if a.Points[i] != b.Points[i] {
			t.Fatalf("point %d (%s): %v with the true past, %v with the truth at or after the issue time changed",
				i, a.Points[i].Time.Format(time.DateTime), a.Points[i].Intensity, b.Points[i].Intensity)
		}
	}
	// and it is closer to the truth than the forecast
	var raw, est float64
	for i, p := range a.Points {
		tv, _ := truth.At(p.Time)
		raw += sq(f.Points[i].Intensity - tv)
		est += sq(p.Intensity - tv)
	}
	if est >= raw {
		t.Fatalf("estimate error %v not below the forecast's %v", est, raw)
	}
	if got := Estimate(f, 0, truth, issued); &got.Points[0] != &f.Points[0] {
		t.Fatal("sigma 0 changed the forecast")
	}
}

func sq(x float64) float64 { return x * x }
