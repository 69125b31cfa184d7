package flbench

import (
	"context"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn/strategy"
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

// The baselines of the fl suite under go test -bench, beside the
// strategies' own benchmarks in fedlearn/strategy (same sizes: 1,000
// updates of 10,000 values).
func benchFL(b *testing.B, f func(global []float64, us []strategy.Update) []float64) {
	g, us := flRound(1000, 10000, 1)
	b.ReportAllocs()
	b.SetBytes(int64(len(us) * len(g) * 4))
	for b.Loop() {
		f(g, us)
	}
}

func BenchmarkPlainFedAvg(b *testing.B) { benchFL(b, plainFedAvg) }
func BenchmarkPlainMedian(b *testing.B) {
	benchFL(b, func(g []float64, us []strategy.Update) []float64 { return plainTrimmed(g, us, -1) })
}
func BenchmarkPlainTrimmedMean(b *testing.B) {
	benchFL(b, func(g []float64, us []strategy.Update) []float64 { return plainTrimmed(g, us, 0.2) })
}
func BenchmarkPlainKrum(b *testing.B) {
	benchFL(b, func(g []float64, us []strategy.Update) []float64 { return plainKrum(g, us, 100) })
}
