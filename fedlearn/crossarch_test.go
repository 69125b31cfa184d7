package fedlearn

import (
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"testing"

	"github.com/edgefleet/edgefleet/internal/archcheck"
)

// The cross-architecture check (test/arm64_test.go) runs this test on
// amd64 and on arm64 under qemu with EDGEFLEET_PREDICTIONS_OUT set, and
// compares the two files with archcheck.Compare: weights must match bit for
// bit, probabilities within archcheck.Tolerance.
// EDGEFLEET_PREDICTIONS_PERTURB adds a value to one weight of every model, so
// that the check can be shown to fail.

// crossArchModel is one model of the cross-architecture check.
type crossArchModel struct {
	name   string
	arch   Arch
	w      Weights
	exact  bool      // weights from seeds and exact arithmetic only
	losses []float64 // per epoch, for trained models
}

// crossArchModels are deterministic models: seeded Glorot weights; fixed
// weights that are exact binary fractions (the same on every platform
// without depending on any library function); and models trained for a few
// seeded epochs by gorgonia (an MLP with Adam and L2, LR with momentum and
// the FedProx term), whose weights differ between architectures by rounding
// only.
func crossArchModels(t *testing.T) []crossArchModel {
	t.Helper()
	lr := mustArch(t, "lr", 5, 2)
	mlp := mustArch(t, "mlp:64", 43, 6)
	deep := mustArch(t, "mlp:16,16", 8, 3)
	fixed := NewWeights(deep)
	for ti, tn := range fixed {
		for j := range tn.Data {
			// Values in [-1.375, 1.375] in steps of 1/8; biases smaller.
			v := float64((j*37+ti*11+5)%23-11) / 8
			if len(tn.Shape) == 1 {
				v /= 4
			}
			tn.Data[j] = v
		}
	}
	models := []crossArchModel{
		{name: "lr-5x2-glorot-seed1", arch: lr, w: InitWeights(lr, 1), exact: true},
		{name: "mlp-43x64x6-glorot-seed7", arch: mlp, w: InitWeights(mlp, 7), exact: true},
		{name: "mlp-8x16x16x3-fixed", arch: deep, w: fixed, exact: true},
	}

	small := mustArch(t, "mlp:16", 6, 3)
	lr6 := mustArch(t, "lr", 6, 3)
	for _, tc := range []struct {
		name string
		arch Arch
		cfg  TrainConfig
	}{
		{"mlp-6x16x3-adam-l2-trained", small, TrainConfig{Solver: SolverAdam, LearnRate: 0.01, BatchSize: 32, L2: 1e-3, Seed: 3}},
		{"lr-6x3-momentum-fedprox-trained", lr6, TrainConfig{Solver: SolverMomentum, LearnRate: 0.05, Momentum: 0.9, BatchSize: 16,
			Mu: 0.1, Global: InitWeights(lr6, 9), Seed: 4}},
	} {
		tr := newTrainer(t, tc.arch, InitWeights(tc.arch, 7), tc.cfg)
		d := blobs(11, 300, tc.arch.Inputs, tc.arch.Classes)
		m := crossArchModel{name: tc.name, arch: tc.arch}
		for range 5 {
			loss, err := tr.Epoch(d)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			m.losses = append(m.losses, loss)
		}
		m.w = tr.Weights()
		models = append(models, m)
	}
	return models
}

// crossArchInputs are n inputs from a fixed seed in [-3, 3) (exact
// arithmetic on the generator's output), then an all-zero input and one of
// large values that saturates the softmax.
func crossArchInputs(dim, n int, seed uint64) [][]float64 {
	rng := rand.New(rand.NewPCG(seed, 1))
	var xs [][]float64
	for range n {
		x := make([]float64, dim)
		for j := range x {
			x[j] = (2*rng.Float64() - 1) * 3
		}
		xs = append(xs, x)
	}
	big := make([]float64, dim)
	for j := range big {
		big[j] = float64(20 - 7*(j%6))
	}
	return append(xs, make([]float64, dim), big)
}

func TestCrossArchPredictions(t *testing.T) {
	perturb := 0.0
	if s := os.Getenv("EDGEFLEET_PREDICTIONS_PERTURB"); s != "" {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatalf("EDGEFLEET_PREDICTIONS_PERTURB=%q: %v", s, err)
		}
		perturb = v
	}
	dump := archcheck.Dump{GOARCH: runtime.GOARCH}
	for i, m := range crossArchModels(t) {
		w := m.w.Clone()
		w[0].Data[0] += perturb
		f, err := NewForward(m.arch, w)
		if err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		c := archcheck.Model{Name: m.name, Arch: m.arch.String(), Exact: m.exact, Weights: w.Flatten(nil),
			Losses: m.losses, Inputs: crossArchInputs(m.arch.Inputs, 16, uint64(100+i))}
		for _, x := range c.Inputs {
			p := make([]float64, m.arch.Classes)
			class, err := f.Predict(x, p)
			if err != nil {
				t.Fatalf("%s: %v", m.name, err)
			}
			sum := 0.0
			for _, v := range p {
				if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
					t.Fatalf("%s: probability %v for input %v", m.name, v, x)
				}
				sum += v
			}
			if math.Abs(sum-1) > 1e-12 {
				t.Fatalf("%s: probabilities sum to %v", m.name, sum)
			}
			c.Classes = append(c.Classes, class)
			c.Probs = append(c.Probs, p)
		}
		dump.Models = append(dump.Models, c, crossArchBatch(t, f, c))
	}
	out := os.Getenv("EDGEFLEET_PREDICTIONS_OUT")
	if out == "" {
		return
	}
	if err := archcheck.Write(out, dump); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d models' predictions on %s to %s", len(dump.Models), runtime.GOARCH, out)
}

// crossArchBatch is m predicted again in one batch (PredictBatch, gonum's
// GEMM), as its own entry "<name>/batch".
func crossArchBatch(t *testing.T, f *Forward, m archcheck.Model) archcheck.Model {
	t.Helper()
	a := f.Arch()
	var x []float64
	for _, in := range m.Inputs {
		x = append(x, in...)
	}
	rows := len(m.Inputs)
	probs := make([]float64, rows*a.Classes)
	b := m
	b.Name += "/batch"
	b.Classes = make([]int, rows)
	b.Probs = nil
	if err := f.PredictBatch(x, rows, probs, b.Classes); err != nil {
		t.Fatalf("%s: %v", b.Name, err)
	}
	for r := range rows {
		b.Probs = append(b.Probs, probs[r*a.Classes:(r+1)*a.Classes])
	}
	return b
}
