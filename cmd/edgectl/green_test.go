package main

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/cli"
)

func runEdgectl(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := cli.Run(context.Background(), newRootFor(newApp()), args, &out, &errb)
	return out.String(), errb.String(), code
}

func TestGreenReplay(t *testing.T) {
	// three days of 30-minute marks with 15-minute samples between; the
	// 15-minute samples are huge and must be ignored
	var b strings.Builder
	b.WriteString("Time,Carbon Intensity\n")
	start := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 3*96; i++ {
		t := start.Add(time.Duration(i) * 15 * time.Minute)
		v := 100.0
		switch {
		case i%2 == 1:
			v = 1e6
		case t.Hour() == 4 && t.Minute() == 0:
			v = 50 // the green mark, 3 h after the 01:00 arrival
		}
		fmt.Fprintf(&b, "%s,%g\n", t.Format("2006-01-02 15:04:05"), v)
	}
	trace := filepath.Join(t.TempDir(), "x.csv")
	if err := os.WriteFile(trace, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errs, code := runEdgectl(t, "green", "replay", "--trace", trace, "--first", "2020-01-01 01:00", "--until", "2020-01-04 00:00",
		"--window", "4h", "--forecast", "perfect", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	got := decodeJSON[greenReplayOutput](t, out)
	if got.Report.Jobs != 3 || got.Report.MeanAtArrival != 100 || got.Report.MeanScheduled != 50 || math.Abs(got.Report.SavingsPercent-50) > 1e-9 {
		t.Fatalf("%+v", got.Report)
	}
	// window 2h: 04:00 out of reach
	out, _, _ = runEdgectl(t, "green", "replay", "--trace", trace, "--until", "2020-01-04", "--window", "2h", "--json")
	if got := decodeJSON[greenReplayOutput](t, out); got.Report.SavingsPercent != 0 {
		t.Fatalf("window 2h: %+v", got.Report)
	}
	out, _, code = runEdgectl(t, "green", "replay", "--trace", trace, "--until", "2020-01-04", "--forecast", "noisy:0.05", "--seeds", "3")
	if code != 0 || !strings.Contains(out, "noisy:0.05 (seeds 3)") || !strings.Contains(out, "savings") {
		t.Fatalf("table (exit %d):\n%s", code, out)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--forecast", "oracle"}, 2, "--forecast"},
		{[]string{"--first", "yesterday"}, 2, "--first"},
		{[]string{"--seeds", "0"}, 2, "--seeds"},
		{[]string{"--trace", trace + ".missing"}, 1, "no such file"},
		{[]string{"--window", "45m"}, 1, "not a multiple"},
	} {
		args := append([]string{"green", "replay", "--trace", trace, "--until", "2020-01-04"}, c.args...)
		_, errs, code := runEdgectl(t, args...)
		if code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", c.args, code, errs, c.code, c.want)
		}
	}
	bad := filepath.Join(t.TempDir(), "bad.csv")
	os.WriteFile(bad, []byte("Time,Carbon Intensity\n2020-01-01 00:00:00,1\n2020-01-01 00:30:00,-4\n"), 0o600)
	if _, errs, code := runEdgectl(t, "green", "replay", "--trace", bad); code != 1 || !strings.Contains(errs, "line 3: intensity -4 is negative") {
		t.Errorf("bad trace: exit %d, %q", code, errs)
	}
}
