package bench

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestRunMLTiny(t *testing.T) {
	for _, clock := range []struct {
		name string
		now  func() time.Time
	}{{"wall", nil}, {"cpu", CPUClock}} {
		rep, err := RunML(context.Background(), MLOptions{Rounds: 1, MinTime: time.Millisecond, Latencies: 10, Now: clock.now, ClockName: clock.name})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Suite != "ml" || !strings.Contains(rep.Machine["workload"], "clock="+clock.name) {
			t.Fatalf("report header %+v", rep)
		}
		want := []struct{ name, unit string }{
			{"ml_train_step_mlp_43x64x6_b256", "examples/s"},
			{"ml_train_step_mlp_43x64x6_b64", "examples/s"},
			{"ml_train_step_lr_5x2_b64", "examples/s"},
			{"ml_train_step_mlp_43x64x6_b256_adam", "examples/s"},
			{"ml_infer_batch_mlp_43x64x6_b256", "examples/s"},
			{"ml_infer_batch_rowwise_mlp_43x64x6_b256", "examples/s"},
			{"ml_infer_batch_gorgonia_mlp_43x64x6_b256", "examples/s"},
			{"ml_infer_single_mlp_43x64x6", "predictions/s"},
			{"ml_infer_single_mlp_43x64x6_p50", "us"},
			{"ml_infer_single_mlp_43x64x6_p99", "us"},
		}
		if len(rep.Results) != len(want) {
			t.Fatalf("got %d results, want %d: %+v", len(rep.Results), len(want), rep.Results)
		}
		for i, w := range want {
			r := rep.Results[i]
			if r.Name != w.name || r.Unit != w.unit {
				t.Errorf("result %d = %s (%s), want %s (%s)", i, r.Name, r.Unit, w.name, w.unit)
			}
			if r.Baseline == nil || r.Baseline.Name == "" || r.Ratio <= 0 {
				t.Errorf("%s: missing baseline or ratio: %+v", r.Name, r)
			}
			if clock.name == "wall" && (r.Value <= 0 || r.Baseline.Value <= 0) {
				// CPU time is too coarse for a 1 ms measurement to be
				// positive on every system; wall time is not.
				t.Errorf("%s: missing figures: %+v", r.Name, r)
			}
		}
	}
}

func TestRunMLOptions(t *testing.T) {
	if _, err := RunML(context.Background(), MLOptions{Rounds: -1}); err == nil {
		t.Fatal("negative rounds accepted")
	}
	if _, err := RunML(context.Background(), MLOptions{Now: func() time.Time { return time.Time{} }}); err == nil || !strings.Contains(err.Error(), "clock") {
		t.Fatalf("a clock without readings: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := RunML(ctx, MLOptions{Rounds: 1, MinTime: time.Hour}); err == nil {
		t.Fatal("cancelled context ignored")
	}
}

func TestQuantile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	if q := quantile(xs, 0.5); q != 5 {
		t.Errorf("p50 = %v, want 5", q)
	}
	if q := quantile(xs, 0.99); q != 10 {
		t.Errorf("p99 = %v, want 10", q)
	}
	if q := quantile(nil, 0.5); q != 0 {
		t.Errorf("empty = %v", q)
	}
}
