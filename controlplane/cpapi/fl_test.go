package cpapi

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"testing"

	"github.com/edgefleet/edgefleet/fedlearn"
)

func TestFLUpdateRoundTrip(t *testing.T) {
	u := FLUpdate{Job: "flj-1", Round: 3, Attempt: 1, Examples: 42, Delta: []float32{1, -2.5, float32(math.NaN())}}
	got, err := DecodeFLUpdate(EncodeFLUpdate(u))
	if err != nil {
		t.Fatal(err)
	}
	if got.Job != u.Job || got.Round != 3 || got.Attempt != 1 || got.Examples != 42 || len(got.Delta) != 3 ||
		got.Delta[1] != -2.5 || !math.IsNaN(float64(got.Delta[2])) {
		t.Fatalf("round trip: %+v", got)
	}
	b := EncodeFLUpdate(u)
	for _, bad := range [][]byte{nil, b[:5], b[:len(b)-1], append(slices.Clone(b), 0)} {
		if _, err := DecodeFLUpdate(bad); err == nil {
			t.Errorf("decoded %d bytes of %d", len(bad), len(b))
		}
	}
	z := EncodeFLUpdate(FLUpdate{Job: "j", Round: 1, Examples: 0})
	if _, err := DecodeFLUpdate(z); err == nil {
		t.Error("decoded an update of 0 examples")
	}
}

// TestFLStatsUpdateRoundTrip: feature statistics travel as float64 (a
// sum that float32 would round survives exactly), in round 0 only.
func TestFLStatsUpdateRoundTrip(t *testing.T) {
	st := &fedlearn.FeatureStats{Count: []float64{8000, 7999}, Sum: []float64{4801234.56789, -3}, SumSq: []float64{2.9e9 + 0.125, 9}}
	u := FLUpdate{Job: "flj-1", Round: 0, Attempt: 2, Examples: 8000, Stats: st}
	got, err := DecodeFLUpdate(EncodeFLUpdate(u))
	if err != nil {
		t.Fatal(err)
	}
	if got.Stats == nil || got.Delta != nil || got.Round != 0 || got.Attempt != 2 || got.Examples != 8000 ||
		!slices.Equal(got.Stats.Count, st.Count) || !slices.Equal(got.Stats.Sum, st.Sum) || !slices.Equal(got.Stats.SumSq, st.SumSq) {
		t.Fatalf("round trip: %+v %+v", got, got.Stats)
	}
	b := EncodeFLUpdate(u)
	for _, bad := range [][]byte{b[:len(b)-8], append(slices.Clone(b), 0)} {
		if _, err := DecodeFLUpdate(bad); err == nil {
			t.Errorf("decoded %d bytes of %d", len(bad), len(b))
		}
	}
	if _, err := DecodeFLUpdate(EncodeFLUpdate(FLUpdate{Job: "j", Round: 0, Examples: 1, Delta: []float32{1}})); err == nil {
		t.Error("decoded a delta for round 0")
	}
	x := validTask()
	x.Kind, x.Round, x.DP = FLTaskStats, 0, &FLTaskDP{Clip: 1, NoiseMultiplier: 0.5}
	if err := x.Validate(); err != nil {
		t.Errorf("statistics task: %v", err)
	}
}

func FuzzDecodeFLUpdate(f *testing.F) {
	f.Add(EncodeFLUpdate(FLUpdate{Job: "flj-1", Round: 1, Examples: 5, Delta: []float32{1, 2, 3}}))
	f.Add(EncodeFLUpdate(FLUpdate{Job: "j", Round: 7, Attempt: 2, Examples: 1}))
	f.Add([]byte(flUpdateMagic))
	f.Add(EncodeFLUpdate(FLUpdate{Job: "flj-1", Round: 0, Examples: 9, Stats: &fedlearn.FeatureStats{Count: []float64{9, 8}, Sum: []float64{1.5, -2}, SumSq: []float64{3, 4}}}))
	f.Add([]byte(flStatsMagic))
	f.Add(EncodeFLUpdate(FLUpdate{Job: "flj-1", Round: 2, Attempt: 1, SecAgg: []byte("EFSA\x01\x02\x00\x00\x00\x00\x00\x00\x00\x07keys")}))
	f.Add([]byte(flSecAggMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := DecodeFLUpdate(b)
		if err != nil {
			return
		}
		if again := EncodeFLUpdate(u); !bytes.Equal(again, b) {
			t.Fatalf("decoded %x, encodes back to %x", b, again)
		}
	})
}

// TestFLSecAggUpdateRoundTrip: a secure-aggregation answer carries its
// stage message and no example count.
func TestFLSecAggUpdateRoundTrip(t *testing.T) {
	u := FLUpdate{Job: "flj-1", Round: 2, Attempt: 1, SecAgg: []byte("EFSA message")}
	b := EncodeFLUpdate(u)
	got, err := DecodeFLUpdate(b)
	if err != nil {
		t.Fatal(err)
	}
	if string(got.SecAgg) != "EFSA message" || got.Delta != nil || got.Stats != nil || got.Examples != 0 || got.Round != 2 || got.Attempt != 1 {
		t.Fatalf("round trip: %+v", got)
	}
	withExamples := slices.Clone(b)
	withExamples[len(flSecAggMagic)+2+len(u.Job)+8] = 5 // the examples field
	for _, bad := range [][]byte{b[:len(b)-1], append(slices.Clone(b), 0), withExamples, EncodeFLUpdate(FLUpdate{Job: "j", Round: 1, SecAgg: []byte{}})} {
		if _, err := DecodeFLUpdate(bad); err == nil {
			t.Errorf("decoded %q", bad)
		}
	}
	x := validTask()
	x.Global, x.Arch = nil, fedlearn.Arch{}
	x.SecAgg = &FLTaskSecAgg{Stage: FLSecAggSetup, Message: []byte("m"), MaxWeight: 1000}
	if err := x.Validate(); err != nil {
		t.Errorf("setup stage without a model: %v", err)
	}
	x.SecAgg.Stage = FLSecAggCollect
	if err := x.Validate(); err == nil {
		t.Error("collect stage without a model accepted")
	}
	for name, edit := range map[string]func(*FLTaskSecAgg){
		"stage":      func(s *FLTaskSecAgg) { s.Stage = "train" },
		"message":    func(s *FLTaskSecAgg) { s.Message = nil },
		"max_weight": func(s *FLTaskSecAgg) { s.MaxWeight = 0 },
	} {
		y := validTask()
		y.SecAgg = &FLTaskSecAgg{Stage: FLSecAggUnmask, Message: []byte("m"), MaxWeight: 1000}
		edit(y.SecAgg)
		if err := y.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func validTask() FLTask {
	return FLTask{Job: "flj-1", Round: 1, Arch: fedlearn.Arch{Kind: fedlearn.KindLR, Inputs: 1, Classes: 2},
		Schema: fedlearn.Schema{Features: []fedlearn.Feature{{Name: "t", Metric: "t", Agg: fedlearn.AggLatest}}, Label: fedlearn.Label{Metric: "y"}},
		Labels: []string{"a", "b"}, Global: []float64{0, 0, 0, 0}, Epochs: 1, BatchSize: 8, LearnRate: 0.1, Solver: "sgd"}
}

func TestFLTaskValidate(t *testing.T) {
	if err := validTask().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(*FLTask){
		"global size": func(x *FLTask) { x.Global = x.Global[:3] },
		"nan":         func(x *FLTask) { x.Global[2] = math.NaN() },
		"labels":      func(x *FLTask) { x.Labels = []string{"a"} },
		"epochs":      func(x *FLTask) { x.Epochs = 0 },
		"round":       func(x *FLTask) { x.Round = 0 },
		"stats round": func(x *FLTask) { x.Kind = FLTaskStats },
		"kind":        func(x *FLTask) { x.Kind = "evaluate" },
		"dp clip":     func(x *FLTask) { x.DP = &FLTaskDP{Clip: 0, NoiseMultiplier: 1} },
		"dp z":        func(x *FLTask) { x.DP = &FLTaskDP{Clip: 1, NoiseMultiplier: math.NaN()} },
		"learn_rate":  func(x *FLTask) { x.LearnRate = math.Inf(1) },
	} {
		x := validTask()
		edit(&x)
		if err := x.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzFLTask: any JSON an agent might receive as its task decodes and
// validates without a panic.
func FuzzFLTask(f *testing.F) {
	b, _ := json.Marshal(FLTaskResponse{Task: ptr(validTask()), Cursor: "flj-1/1/0"})
	f.Add(b)
	f.Add([]byte(`{"task":{"arch":{"kind":"mlp","inputs":3,"classes":2,"hidden":[4]},"global":[1e308,-1e308]}}`))
	f.Add([]byte(`{"cursor":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r FLTaskResponse
		if json.Unmarshal(b, &r) != nil || r.Task == nil {
			return
		}
		_ = r.Task.Validate()
	})
}

func ptr[T any](v T) *T { return &v }
