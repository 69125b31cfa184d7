package fedlearn

import (
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

// blobs makes a seeded, learnable classification problem: each class is a
// Gaussian blob around its own centre.
func blobs(seed uint64, n, inputs, classes int) Examples {
	rng := rand.New(rand.NewPCG(seed, 1))
	centres := make([][]float64, classes)
	for c := range centres {
		centres[c] = make([]float64, inputs)
		for j := range centres[c] {
			centres[c][j] = 2 * rng.NormFloat64()
		}
	}
	d := Examples{Inputs: inputs, X: make([]float64, 0, n*inputs), Y: make([]int, n)}
	for i := range n {
		c := rng.IntN(classes)
		d.Y[i] = c
		for j := range inputs {
			d.X = append(d.X, centres[c][j]+rng.NormFloat64())
		}
	}
	return d
}

func mustArch(t testing.TB, s string, in, classes int) Arch {
	t.Helper()
	a, err := ParseArch(s, in, classes)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func newTrainer(t testing.TB, a Arch, w Weights, cfg TrainConfig) *Trainer {
	t.Helper()
	tr, err := NewTrainer(a, w, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func train(t testing.TB, a Arch, cfg TrainConfig, d Examples, epochs int) Weights {
	t.Helper()
	tr := newTrainer(t, a, InitWeights(a, 7), cfg)
	for range epochs {
		if _, err := tr.Epoch(d); err != nil {
			t.Fatal(err)
		}
	}
	return tr.Weights()
}

func sameBits(a, b Weights) bool {
	fa, fb := a.Flatten(nil), b.Flatten(nil)
	if len(fa) != len(fb) {
		return false
	}
	for i := range fa {
		if math.Float64bits(fa[i]) != math.Float64bits(fb[i]) {
			return false
		}
	}
	return true
}

func TestTrainLearns(t *testing.T) {
	d := blobs(1, 600, 5, 3)
	test := blobs(1, 300, 5, 3) // same centres (same seed), fresh draws would need another seed
	for _, arch := range []string{"lr", "mlp:16", "mlp:16,8"} {
		for _, s := range []Solver{SolverSGD, SolverMomentum, SolverAdam} {
			t.Run(arch+"/"+string(s), func(t *testing.T) {
				a := mustArch(t, arch, 5, 3)
				cfg := TrainConfig{Solver: s, LearnRate: 0.05, BatchSize: 32, Seed: 3}
				if s == SolverMomentum {
					cfg.Momentum = 0.9
					cfg.LearnRate = 0.01
				}
				if s == SolverAdam {
					cfg.LearnRate = 0.01
				}
				tr := newTrainer(t, a, InitWeights(a, 1), cfg)
				first, err := tr.Epoch(d)
				if err != nil {
					t.Fatal(err)
				}
				var last float64
				for range 9 {
					if last, err = tr.Epoch(d); err != nil {
						t.Fatal(err)
					}
				}
				if tr.Epochs() != 10 {
					t.Errorf("Epochs = %d, want 10", tr.Epochs())
				}
				if !(last < first/2) {
					t.Errorf("loss went from %v to %v, want at least halved", first, last)
				}
				_, acc, err := Evaluate(a, tr.Weights(), test)
				if err != nil {
					t.Fatal(err)
				}
				if acc < 0.95 {
					t.Errorf("accuracy %v, want >= 0.95", acc)
				}
			})
		}
	}
}

func TestTrainDeterministic(t *testing.T) {
	d := blobs(2, 500, 6, 4) // 500 = 7 batches of 64 + 52: a partial last batch
	a := mustArch(t, "mlp:12", 6, 4)
	for _, s := range []Solver{SolverSGD, SolverMomentum, SolverAdam} {
		cfg := TrainConfig{Solver: s, LearnRate: 0.01, BatchSize: 64, Seed: 11, L2: 1e-3}
		if s == SolverMomentum {
			cfg.Momentum = 0.5
		}
		w1 := train(t, a, cfg, d, 3)
		w2 := train(t, a, cfg, d, 3)
		if !sameBits(w1, w2) {
			t.Errorf("%s: same seed gave different weights", s)
		}
		cfg.Seed = 12
		w3 := train(t, a, cfg, d, 3)
		if sameBits(w1, w3) {
			t.Errorf("%s: different seeds gave the same weights", s)
		}
	}
}

// TestPartialBatchPadding checks that a padded batch computes what an
// unpadded one does: a batch of 5 through a graph built for 8 gives the
// same loss and gradients, bit for bit, as through a graph built for 5.
func TestPartialBatchPadding(t *testing.T) {
	d := blobs(3, 5, 4, 3)
	a := mustArch(t, "mlp:7", 4, 3)
	w := InitWeights(a, 2)
	exact := newTrainer(t, a, w, TrainConfig{Solver: SolverSGD, LearnRate: 0.1, BatchSize: 5})
	padded := newTrainer(t, a, w, TrainConfig{Solver: SolverSGD, LearnRate: 0.1, BatchSize: 8})
	ge, le, err := exact.Gradients(d.X, d.Y)
	if err != nil {
		t.Fatal(err)
	}
	gp, lp, err := padded.Gradients(d.X, d.Y)
	if err != nil {
		t.Fatal(err)
	}
	if math.Float64bits(le) != math.Float64bits(lp) || !sameBits(ge, gp) {
		t.Errorf("padded batch differs: loss %v vs %v", le, lp)
	}
	// And a step after a full batch: the spare rows must be cleared again.
	full := blobs(4, 8, 4, 3)
	if _, err := padded.Step(full.X, full.Y); err != nil {
		t.Fatal(err)
	}
	if _, err := exact.Step(full.X[:5*4], full.Y[:5]); err != nil {
		t.Fatal(err)
	}
	padded2 := newTrainer(t, a, padded.Weights(), TrainConfig{Solver: SolverSGD, LearnRate: 0.1, BatchSize: 8})
	exact2 := newTrainer(t, a, padded.Weights(), TrainConfig{Solver: SolverSGD, LearnRate: 0.1, BatchSize: 5})
	if _, err := padded.Step(d.X, d.Y); err != nil {
		t.Fatal(err)
	}
	if _, err := exact2.Step(d.X, d.Y); err != nil {
		t.Fatal(err)
	}
	_ = padded2
	if !sameBits(padded.Weights(), exact2.Weights()) {
		t.Error("a short batch after a full one trained differently from an exact-size graph")
	}
}

// TestGradientsNumeric compares gorgonia's gradients with central finite
// differences of the loss computed by Evaluate's forward pass.
func TestGradientsNumeric(t *testing.T) {
	d := blobs(5, 9, 4, 3)
	a := mustArch(t, "mlp:5,4", 4, 3)
	w := InitWeights(a, 3)
	for i := range w {
		if w[i].Name[0] == 'b' {
			for j := range w[i].Data {
				w[i].Data[j] = 0.1 * float64(j+1)
			}
		}
	}
	glob := InitWeights(a, 9)
	cfg := TrainConfig{Solver: SolverSGD, LearnRate: 0.1, BatchSize: 16, L2: 0.3, Mu: 0.7, Global: glob}
	tr := newTrainer(t, a, w, cfg)
	g, _, err := tr.Gradients(d.X, d.Y)
	if err != nil {
		t.Fatal(err)
	}
	objective := func(w Weights) float64 {
		loss, _, err := Evaluate(a, w, d)
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range w {
			for j, v := range p.Data {
				if p.Name[0] == 'w' {
					loss += cfg.L2 / 2 * v * v
				}
				diff := v - glob[i].Data[j]
				loss += cfg.Mu / 2 * diff * diff
			}
		}
		return loss
	}
	const h = 1e-6
	for i := range w {
		for j := range w[i].Data {
			wp, wm := w.Clone(), w.Clone()
			wp[i].Data[j] += h
			wm[i].Data[j] -= h
			num := (objective(wp) - objective(wm)) / (2 * h)
			if diff := math.Abs(num - g[i].Data[j]); diff > 1e-6*math.Max(1, math.Abs(num)) {
				t.Errorf("%s[%d]: gorgonia %v, numeric %v", w[i].Name, j, g[i].Data[j], num)
			}
		}
	}
}

func TestProximalPullsTowardGlobal(t *testing.T) {
	d := blobs(6, 400, 5, 3)
	a := mustArch(t, "mlp:8", 5, 3)
	global := InitWeights(a, 7) // the trainers start from it too
	dist := func(w Weights) float64 {
		s := 0.0
		for i := range w {
			for j, v := range w[i].Data {
				s += (v - global[i].Data[j]) * (v - global[i].Data[j])
			}
		}
		return math.Sqrt(s)
	}
	base := TrainConfig{Solver: SolverSGD, LearnRate: 0.05, BatchSize: 32, Seed: 1}
	prox := base
	prox.Mu, prox.Global = 1, global
	free := dist(train(t, a, base, d, 5))
	pulled := dist(train(t, a, prox, d, 5))
	t.Logf("distance from global: mu=0 %.4f, mu=1 %.4f", free, pulled)
	if !(pulled < 0.7*free) {
		t.Errorf("proximal term did not pull toward the global model: %v vs %v without", pulled, free)
	}
}

func TestL2ShrinksWeights(t *testing.T) {
	d := blobs(8, 400, 5, 3)
	a := mustArch(t, "mlp:8", 5, 3)
	norm := func(w Weights) (wn, bn float64) {
		for _, p := range w {
			for _, v := range p.Data {
				if p.Name[0] == 'w' {
					wn += v * v
				} else {
					bn += v * v
				}
			}
		}
		return math.Sqrt(wn), math.Sqrt(bn)
	}
	for _, s := range []Solver{SolverSGD, SolverMomentum, SolverAdam} {
		cfg := TrainConfig{Solver: s, LearnRate: 0.05, BatchSize: 32, Seed: 1}
		if s == SolverMomentum {
			cfg.Momentum, cfg.LearnRate = 0.9, 0.01
		}
		if s == SolverAdam {
			cfg.LearnRate = 0.01
		}
		plain, _ := norm(train(t, a, cfg, d, 5))
		cfg.L2 = 0.1
		shrunk, _ := norm(train(t, a, cfg, d, 5))
		t.Logf("%s: weight norm %.4f, with L2 0.1 %.4f", s, plain, shrunk)
		if !(shrunk < 0.8*plain) {
			t.Errorf("%s: L2 did not shrink the weights: %v vs %v without", s, shrunk, plain)
		}
	}
}

func TestTrainConfigErrors(t *testing.T) {
	a := mustArch(t, "mlp:4", 3, 2)
	w := InitWeights(a, 1)
	ok := TrainConfig{Solver: SolverAdam, LearnRate: 0.01, BatchSize: 8}
	other := mustArch(t, "mlp:5", 3, 2)
	cases := []struct {
		name string
		mod  func(*TrainConfig)
		want string
	}{
		{"solver", func(c *TrainConfig) { c.Solver = "lbfgs" }, "unknown solver"},
		{"lr zero", func(c *TrainConfig) { c.LearnRate = 0 }, "learning rate"},
		{"lr nan", func(c *TrainConfig) { c.LearnRate = math.NaN() }, "learning rate"},
		{"lr inf", func(c *TrainConfig) { c.LearnRate = math.Inf(1) }, "learning rate"},
		{"batch", func(c *TrainConfig) { c.BatchSize = 0 }, "batch size"},
		{"batch big", func(c *TrainConfig) { c.BatchSize = MaxBatchSize + 1 }, "batch size"},
		{"l2", func(c *TrainConfig) { c.L2 = -1 }, "L2"},
		{"mu", func(c *TrainConfig) { c.Mu = math.NaN() }, "mu"},
		{"mu no global", func(c *TrainConfig) { c.Mu = 0.1 }, "global"},
		{"global shape", func(c *TrainConfig) { c.Mu, c.Global = 0.1, InitWeights(other, 1) }, "global weights"},
		{"momentum on adam", func(c *TrainConfig) { c.Momentum = 0.9 }, "momentum"},
		{"momentum 1", func(c *TrainConfig) { c.Solver, c.Momentum = SolverMomentum, 1 }, "momentum"},
	}
	for _, tc := range cases {
		cfg := ok
		tc.mod(&cfg)
		_, err := NewTrainer(a, w, cfg)
		if err == nil || !errors.Is(err, ErrTrainConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrTrainConfig naming %q", tc.name, err, tc.want)
		}
	}
	wide := mustArch(t, "mlp:4096", 3, 2)
	if _, err := NewTrainer(wide, InitWeights(wide, 1), TrainConfig{Solver: SolverSGD, LearnRate: 0.1, BatchSize: 2048}); err == nil || !strings.Contains(err.Error(), "too much memory") {
		t.Errorf("batch 2048 x hidden 4096: err = %v", err)
	}
	bad := w.Clone()
	bad[0].Data[0] = math.Inf(1)
	if _, err := NewTrainer(a, bad, ok); !errors.Is(err, ErrWeights) {
		t.Errorf("Inf initial weight: err = %v", err)
	}
	if _, err := NewTrainer(a, InitWeights(other, 1), ok); !errors.Is(err, ErrWeights) {
		t.Errorf("weights of another architecture: err = %v", err)
	}
}

func TestTrainBadInput(t *testing.T) {
	a := mustArch(t, "lr", 3, 2)
	tr := newTrainer(t, a, InitWeights(a, 1), TrainConfig{Solver: SolverSGD, LearnRate: 0.1, BatchSize: 4})
	before := tr.Weights()
	cases := []struct {
		name string
		x    []float64
		y    []int
		want string
	}{
		{"empty", nil, nil, "batch of 0"},
		{"too many", make([]float64, 15), make([]int, 5), "batch of 5"},
		{"short x", make([]float64, 5), make([]int, 2), "feature values"},
		{"label", make([]float64, 3), []int{2}, "label 2"},
		{"negative label", make([]float64, 3), []int{-1}, "label -1"},
		{"nan", []float64{0, math.NaN(), 0}, []int{0}, "example 0 feature 1 is NaN"},
		{"inf", []float64{0, 0, 0, 0, math.Inf(-1), 0}, []int{1, 0}, "example 1 feature 1 is -Inf"},
	}
	for _, tc := range cases {
		_, err := tr.Step(tc.x, tc.y)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to name %q", tc.name, err, tc.want)
		}
	}
	if !sameBits(before, tr.Weights()) {
		t.Error("refused batches changed the weights")
	}
	// The trainer still works after refusals.
	if _, err := tr.Step([]float64{1, 2, 3}, []int{1}); err != nil {
		t.Fatal(err)
	}
	// Epoch names the bad example.
	d := Examples{X: []float64{1, 2, 3, 4, math.NaN(), 6}, Y: []int{0, 1}, Inputs: 3}
	if _, err := tr.Epoch(d); err == nil || !strings.Contains(err.Error(), "example 1 feature 1") {
		t.Errorf("NaN in epoch: err = %v", err)
	}
	if _, err := tr.Epoch(Examples{X: []float64{1, 2}, Y: []int{0}, Inputs: 2}); err == nil || !strings.Contains(err.Error(), "2 features") {
		t.Errorf("wrong width: err = %v", err)
	}
}

func TestTrainDivergenceIsAnError(t *testing.T) {
	a := mustArch(t, "mlp:8", 3, 2)
	d := blobs(9, 64, 3, 2)
	for i := range d.X {
		d.X[i] *= 1e150
	}
	tr := newTrainer(t, a, InitWeights(a, 1), TrainConfig{Solver: SolverSGD, LearnRate: 1e100, BatchSize: 16})
	var err error
	for range 5 {
		if _, err = tr.Epoch(d); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrNotFinite) {
		t.Fatalf("err = %v, want ErrNotFinite", err)
	}
	if err := tr.Weights().Check(a); err != nil {
		// The weights the trainer reports stay finite whenever the failure
		// was caught before the update (loss or gradient).
		if _, err2 := tr.Step(d.X[:3], d.Y[:1]); !errors.Is(err2, ErrNotFinite) {
			t.Errorf("a trainer with non-finite weights trained on: %v", err2)
		}
	}
}

func TestEvaluate(t *testing.T) {
	a := mustArch(t, "lr", 2, 2)
	w := NewWeights(a)
	// Class 1 iff x0 > 0.
	w[0].Data = []float64{-1, 1, 0, 0}
	d := Examples{X: []float64{1, 0, -1, 0, 2, 0, 3, 0}, Y: []int{1, 0, 1, 0}, Inputs: 2}
	loss, acc, err := Evaluate(a, w, d)
	if err != nil {
		t.Fatal(err)
	}
	if acc != 0.75 {
		t.Errorf("accuracy %v, want 0.75", acc)
	}
	// -log σ(2), -log σ(2), -log σ(4), -log σ(-6), averaged.
	sp := func(z float64) float64 { return math.Log1p(math.Exp(-z)) }
	want := (sp(2) + sp(2) + sp(4) + sp(-6)) / 4
	if math.Abs(loss-want) > 1e-12 {
		t.Errorf("loss %v, want %v", loss, want)
	}
	if _, _, err := Evaluate(a, w, Examples{Inputs: 2}); err == nil {
		t.Error("no examples: no error")
	}
}

// TestRunnerLikeRunAll: running the program through the machine's Run
// gives the same weights, bit for bit, as gorgonia's Reset and RunAll.
func TestRunnerLikeRunAll(t *testing.T) {
	d := blobs(12, 300, 5, 3)
	a := mustArch(t, "mlp:9,4", 5, 3)
	for _, s := range []Solver{SolverSGD, SolverAdam} {
		cfg := TrainConfig{Solver: s, LearnRate: 0.01, BatchSize: 64, Seed: 2, L2: 1e-3}
		fast := newTrainer(t, a, InitWeights(a, 1), cfg)
		slow := newTrainer(t, a, InitWeights(a, 1), cfg)
		if !fast.runner.run.IsValid() {
			t.Fatal("the runner fell back to RunAll: gorgonia's layout changed")
		}
		slow.runner.run = reflect.Value{}
		for range 3 {
			lf, err := fast.Epoch(d)
			if err != nil {
				t.Fatal(err)
			}
			ls, err := slow.Epoch(d)
			if err != nil {
				t.Fatal(err)
			}
			if math.Float64bits(lf) != math.Float64bits(ls) {
				t.Errorf("%s: epoch loss %v vs %v", s, lf, ls)
			}
		}
		if !sameBits(fast.Weights(), slow.Weights()) {
			t.Errorf("%s: Run and RunAll trained differently", s)
		}
	}
}
