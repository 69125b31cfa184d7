package bench

import (
	"context"
	"testing"
	"time"
)

func TestRunFL(t *testing.T) {
	rep, err := RunFL(context.Background(), FLOptions{Clients: 23, Params: 301, Rounds: 2, MinTime: time.Millisecond, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"fedavg", "fedmedian", "fedtrimmedavg", "krum"}
	if rep.Suite != "fl" || len(rep.Results) != len(want) {
		t.Fatalf("report %+v", rep)
	}
	for i, r := range rep.Results {
		if r.Name != want[i] || r.Unit != "updates/s" || r.Value <= 0 || r.Baseline == nil || r.Baseline.Value <= 0 || r.Ratio <= 0 {
			t.Fatalf("result %d: %+v", i, r)
		}
	}
	if _, err := RunFL(context.Background(), FLOptions{Clients: -1}); err == nil {
		t.Fatal("negative clients accepted")
	}
}
