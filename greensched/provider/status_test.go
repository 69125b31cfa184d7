package provider

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/greensched"
)

// TestStatus: intensity now and the greenest window by greensched's
// planner, on a hand-made trace whose best hour is 15:00-16:00.
func TestStatus(t *testing.T) {
	s := greensched.Series{Zone: "DE", Step: 30 * time.Minute}
	for k := range 48 {
		p := greensched.Point{Time: at("12:00").Add(time.Duration(k) * 30 * time.Minute), Intensity: 100}
		if k == 6 || k == 7 {
			p.Intensity = 40
		}
		s.Points = append(s.Points, p)
	}
	now := at("12:10")
	p, err := NewTrace(Options{Clock: clock.NewManual(now)}, 0, s)
	if err != nil {
		t.Fatal(err)
	}
	st := Status(context.Background(), p, "DE", now, time.Hour, 12*time.Hour)
	if st.Current == nil || st.Current.Point.Intensity != 100 || st.CurrentError != "" {
		t.Fatalf("current %+v %q", st.Current, st.CurrentError)
	}
	b := st.Best
	if b == nil || !b.Start.Equal(at("15:00")) || !b.End.Equal(at("16:00")) || b.Intensity != 40 || b.AtFirst != 100 ||
		math.Abs(b.SavingPercent-60) > 1e-9 || b.ForecastStep != "30m0s" || b.ForecastPoints != 24 {
		t.Fatalf("best %+v (err %q)", b, st.BestError)
	}
	// Within 3 h the green hour is out of reach.
	st = Status(context.Background(), p, "DE", now, time.Hour, 3*time.Hour)
	if st.Best == nil || st.Best.Intensity != 100 || st.Best.SavingPercent != 0 {
		t.Fatalf("within 3h: %+v %q", st.Best, st.BestError)
	}
	st = Status(context.Background(), p, "DE", now, 2*time.Hour, time.Hour)
	if st.Best != nil || !strings.Contains(st.BestError, "want 0 < duration <= within") {
		t.Fatalf("job longer than the window: %+v %q", st.Best, st.BestError)
	}
	st = Status(context.Background(), p, "FR", now, time.Hour, 12*time.Hour)
	if st.Current != nil || st.Best != nil || !strings.Contains(st.CurrentError, "unknown_zone") {
		t.Fatalf("unknown zone: %+v", st)
	}
}

func TestReadConfigs(t *testing.T) {
	in := `providers:
  - kind: trace
    zone: DE
    trace_file: de.csv
  - kind: electricitymaps
    zone: FR
    token_file: /etc/em.token
    cache_ttl: 10m
`
	cfgs, err := ReadConfigs(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfgs) != 2 || cfgs[1].CacheTTL != 10*time.Minute || cfgs[1].BaseURL != DefaultElectricityMapsURL || cfgs[0].Timeout != DefaultTimeout {
		t.Fatalf("configs %+v", cfgs)
	}
	for _, c := range []struct{ in, want string }{
		{"", "empty file"},
		{"providers: []\n", "no providers"},
		{"providers:\n  - kind: trace\n    zone: DE\n    trace_fil: x\n", "field trace_fil not found"},
		{"providers:\n  - kind: trace\n    zone: DE\n", "providers[0]: trace_file is required"},
		{"providers:\n  - kind: trace\n    zone: DE\n    trace_file: x\n    timeout: soon\n", "provider: config:"},
	} {
		_, err := ReadConfigs(strings.NewReader(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "provider: config: ") {
			t.Errorf("%q: %v, want %q", c.in, err, c.want)
		}
	}
}

// TestForecasterAdapter: a provider as a greensched.Forecaster.
func TestForecasterAdapter(t *testing.T) {
	p, err := New(Config{Kind: KindTrace, Zone: "DE", TraceFile: "testdata/trace.csv"}, Options{Clock: clock.NewManual(at("11:00"))})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Forecaster(context.Background(), p, "DE").Forecast(at("11:00"), at("12:00"), at("13:00"))
	if err != nil || len(s.Points) != 2 || s.Points[1].Intensity != 180.5 {
		t.Fatalf("%+v %v", s, err)
	}
	if _, err := Forecaster(context.Background(), p, "DE").Forecast(at("11:00"), at("20:00"), at("21:00")); err == nil {
		t.Fatal("forecast outside the trace without error")
	}
}
