package provider

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/greensched"
)

// TestTraceProvider: the trace is served at the clock's time; outside it,
// the last good data with a warning, else an error.
func TestTraceProvider(t *testing.T) {
	e := newEnv(t, Config{Kind: KindTrace, Zone: "DE", TraceFile: filepath.Join("testdata", "trace.csv"), CacheTTL: -1})
	ctx := context.Background()
	e.clk.Set(at("12:10"))
	r, err := e.p.Current(ctx, "DE")
	if err != nil || r.Stale || r.Point != (greensched.Point{Time: at("12:00"), Intensity: 198}) {
		t.Fatalf("current at 12:10: %+v %v", r, err)
	}
	f, err := e.p.Forecast(ctx, "DE", at("12:00"), at("13:30"))
	if err != nil {
		t.Fatal(err)
	}
	samePoints(t, "forecast", f.Series.Points, []greensched.Point{{Time: at("12:00"), Intensity: 198},
		{Time: at("12:30"), Intensity: 180.5}, {Time: at("13:00"), Intensity: 176}})
	if f.Series.Step != 30*time.Minute || f.Series.Zone != "DE" {
		t.Fatalf("series step %v zone %q", f.Series.Step, f.Series.Zone)
	}
	// 13:59 is still in force of the 13:30 point; 14:00 is past the trace.
	e.clk.Set(at("13:59"))
	if r, err := e.p.Current(ctx, "DE"); err != nil || r.Stale || r.Point.Intensity != 190.75 {
		t.Fatalf("current at 13:59: %+v %v", r, err)
	}
	e.clk.Set(at("14:00"))
	r, err = e.p.Current(ctx, "DE")
	if err != nil || !r.Stale || r.Reason != ReasonOutsideTrace || r.Point.Intensity != 190.75 {
		t.Fatalf("current past the trace: %+v %v, want the last reading, stale", r, err)
	}
	if e.failures(ReasonOutsideTrace) != 1 || e.fallbacks(ReasonOutsideTrace) != 1 {
		t.Fatal("outside the trace not counted")
	}

	fresh := newEnvAt(t, Config{Kind: KindTrace, Zone: "DE", TraceFile: filepath.Join("testdata", "trace.csv")}, at("10:59"))
	if _, err := fresh.p.Current(ctx, "DE"); !errors.Is(err, ErrNoData) || !strings.Contains(err.Error(), "outside the trace") {
		t.Fatalf("before the trace: %v", err)
	}
	var fe *FetchError
	if _, err := fresh.p.Current(ctx, "GB"); !errors.As(err, &fe) || fe.Reason != ReasonUnknownZone {
		t.Fatalf("unknown zone: %v", err)
	}
	if _, err := fresh.p.Forecast(ctx, "DE", at("15:00"), at("16:00")); !errors.As(err, &fe) || fe.Reason != ReasonOutsideTrace {
		t.Fatalf("forecast outside the trace: %v", err)
	}
}

// TestTraceRefused: a bad trace file stops New with the line named.
func TestTraceRefused(t *testing.T) {
	p := secretFile(t, "bad.csv", "Time,Carbon Intensity\n2024-06-01 11:00:00,1\n2024-06-01 11:30:00,-3\n")
	_, err := New(Config{Kind: KindTrace, Zone: "DE", TraceFile: p}, Options{})
	if err == nil || !strings.Contains(err.Error(), "line 3") || !strings.HasPrefix(err.Error(), "provider: trace ") {
		t.Fatalf("bad trace: %v", err)
	}
	_, err = New(Config{Kind: KindTrace, Zone: "DE", TraceFile: filepath.Join(t.TempDir(), "absent.csv")}, Options{})
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing trace: %v", err)
	}
	good := greensched.Series{Zone: "DE", Points: []greensched.Point{{Time: at("12:00"), Intensity: 1}}}
	if _, err := NewTrace(Options{}, 0, good, good); err == nil {
		t.Fatal("two series for one zone accepted")
	}
	bad := greensched.Series{Zone: "FR", Points: []greensched.Point{{Time: at("12:00"), Intensity: 1}, {Time: at("11:00"), Intensity: 1}}}
	if _, err := NewTrace(Options{}, 0, bad); err == nil {
		t.Fatal("unordered series accepted")
	}
}

// TestSharedTrace serves the German 2020 trace and checks it against the
// file's own lines, read here independently.
func TestSharedTrace(t *testing.T) {
	dir := os.Getenv("EDGEFLEET_DATA")
	if dir == "" {
		dir = filepath.Join("..", "..", "..", "shared", "data")
	}
	path := filepath.Join(dir, "carbon", "ger_ci_2020.csv")
	if _, err := os.Stat(path); err != nil {
		t.Skipf("SKIP: %s not found (set EDGEFLEET_DATA to the shared data directory): %v", path, err)
	}
	want := map[string]float64{}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		ts, v, _ := strings.Cut(sc.Text(), ",")
		if strings.HasPrefix(ts, "2020-06-01 ") || strings.HasPrefix(ts, "2020-06-02 ") {
			x, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			want[ts] = x
		}
	}
	e := newEnvAt(t, Config{Kind: KindTrace, Zone: "DE", TraceFile: path}, time.Date(2020, 6, 1, 12, 10, 0, 0, time.UTC))
	r, err := e.p.Current(context.Background(), "DE")
	if err != nil || r.Point.Intensity != want["2020-06-01 12:00:00"] {
		t.Fatalf("current %+v %v, want %v", r, err, want["2020-06-01 12:00:00"])
	}
	from := time.Date(2020, 6, 1, 12, 0, 0, 0, time.UTC)
	fc, err := e.p.Forecast(context.Background(), "DE", from, from.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for ts := range want {
		if ts >= "2020-06-01 12:00:00" && ts < "2020-06-02 12:00:00" {
			n++
		}
	}
	if len(fc.Series.Points) != n || n == 0 {
		t.Fatalf("forecast %d points, the file has %d in the day", len(fc.Series.Points), n)
	}
	for _, p := range fc.Series.Points {
		if w := want[p.Time.Format(greensched.TraceTimeLayout)]; w != p.Intensity {
			t.Fatalf("%v: %v, file %v", p.Time, p.Intensity, w)
		}
	}
}
