package greenbench

import (
	"context"
	"strings"
	"testing"
)

func TestRunGreen(t *testing.T) {
	rep, err := RunGreen(context.Background(), GreenOptions{Jobs: 2000, Rounds: 1, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Suite != "green" || len(rep.Results) != 3 {
		t.Fatalf("report %+v", rep)
	}
	r := rep.Results[2]
	if r.Name != "place" || r.Value <= 0 || r.Baseline == nil || r.Baseline.Value <= 0 || r.Ratio <= 0 {
		t.Fatalf("result %+v", r)
	}
	if !strings.Contains(rep.Machine["workload"], "placed=") {
		t.Fatalf("machine %v", rep.Machine)
	}
	if _, err := RunGreen(context.Background(), GreenOptions{Jobs: -1}); err == nil {
		t.Fatal("negative jobs accepted")
	}
}

// TestGreenBruteAgreesAcrossSeeds: the comparison RunGreen makes before
// timing holds on several workloads, with and without interruptible jobs
// and with a tight capacity.
func TestGreenBruteAgreesAcrossSeeds(t *testing.T) {
	for seed := uint64(0); seed < 5; seed++ {
		for _, c := range []struct {
			capacity int
			intr     float64
		}{{50, 0.2}, {5, 0.5}, {1000, -1}} {
			g, jobs := greenWorkload(96, 600, max(c.intr, 0), seed)
			ours, err := placeOurs(g, c.capacity, jobs)
			if err != nil {
				t.Fatal(err)
			}
			base := placeBrute(g, c.capacity, jobs)
			unplaced := 0
			for i := range jobs {
				if len(ours[i]) != len(base[i]) {
					t.Fatalf("seed %d cap %d job %d: %v vs %v", seed, c.capacity, i, ours[i], base[i])
				}
				for k := range ours[i] {
					if ours[i][k] != base[i][k] {
						t.Fatalf("seed %d cap %d job %d: %v vs %v", seed, c.capacity, i, ours[i], base[i])
					}
				}
				if ours[i] == nil {
					unplaced++
				}
			}
			if c.capacity == 5 && unplaced == 0 {
				t.Errorf("seed %d: capacity 5 never binds", seed)
			}
		}
	}
}

func BenchmarkGreenPlanner(b *testing.B) {
	g, jobs := greenWorkload(96, 10000, 0.2, 1)
	for b.Loop() {
		placeOurs(g, 1250, jobs)
	}
}

func BenchmarkGreenBruteForce(b *testing.B) {
	g, jobs := greenWorkload(96, 10000, 0.2, 1)
	for b.Loop() {
		placeBrute(g, 1250, jobs)
	}
}
