package bench

import (
	"context"
	"encoding/json"
	"testing"
)

func TestRunCRDTSmall(t *testing.T) {
	rep, err := RunCRDT(context.Background(), CRDTOptions{Dir: t.TempDir(), Ops: 40, BatchSize: 10, Rounds: 2})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Suite != "crdt" || len(rep.Results) != 2 {
		t.Fatalf("report %+v", rep)
	}
	want := map[string]string{"local_write": "sqlite_insert", "merge": "sqlite_insert_batch"}
	for _, r := range rep.Results {
		if r.Unit != "ops/s" || r.Value <= 0 || r.Baseline == nil || r.Baseline.Name != want[r.Name] || r.Baseline.Value <= 0 {
			t.Fatalf("result %+v", r)
		}
		if r.Ratio != r.Value/r.Baseline.Value {
			t.Fatalf("ratio %v != %v / %v", r.Ratio, r.Value, r.Baseline.Value)
		}
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil || back["suite"] != "crdt" {
		t.Fatalf("json %s", b)
	}
	if _, err := RunCRDT(context.Background(), CRDTOptions{Ops: -1}); err == nil {
		t.Fatal("negative ops accepted")
	}
}

func TestMedian(t *testing.T) {
	if m := Median([]float64{5, 1, 3}); m != 3 {
		t.Fatal(m)
	}
	if m := Median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Fatal(m)
	}
	if Median(nil) != 0 {
		t.Fatal("empty")
	}
}

// BenchmarkCRDTSuite runs the full crdt suite once per iteration and
// reports its figures (run with -benchtime=1x).
func BenchmarkCRDTSuite(b *testing.B) {
	for b.Loop() {
		rep, err := RunCRDT(context.Background(), CRDTOptions{Dir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range rep.Results {
			b.ReportMetric(r.Value, r.Name+"_ops/s")
			b.ReportMetric(r.Baseline.Value, r.Baseline.Name+"_ops/s")
			b.ReportMetric(r.Ratio, r.Name+"_ratio")
		}
		out, _ := json.Marshal(rep)
		b.Log(string(out))
	}
}
