package mlbench

import (
	"math"
	"testing"

	"github.com/edgefleet/edgefleet/fedlearn"
)

func maxDiff(t *testing.T, a, b fedlearn.Weights) float64 {
	t.Helper()
	fa, fb := a.Flatten(nil), b.Flatten(nil)
	if len(fa) != len(fb) {
		t.Fatalf("%d vs %d values", len(fa), len(fb))
	}
	d := 0.0
	for i := range fa {
		d = max(d, math.Abs(fa[i]-fb[i]))
	}
	return d
}

// TestSameGradientsAsGorgonia: the hand-written baseline and fedlearn's
// gorgonia trainer compute the same loss and gradients (within 1e-9), so
// the benchmark compares equal work.
func TestSameGradientsAsGorgonia(t *testing.T) {
	cases := []struct {
		arch        string
		in, classes int
		batch, rows int
		l2          float64
	}{
		{"lr", 5, 2, 64, 64, 0},
		{"mlp:64", 43, 6, 64, 64, 0},
		{"mlp:64", 43, 6, 256, 200, 1e-3}, // a partial batch, padded by the trainer
		{"mlp:16,8", 7, 3, 32, 32, 0.1},
	}
	for _, tc := range cases {
		a, err := fedlearn.ParseArch(tc.arch, tc.in, tc.classes)
		if err != nil {
			t.Fatal(err)
		}
		w := fedlearn.InitWeights(a, 4)
		x, y := Data(1, tc.rows, tc.in, tc.classes)
		tr, err := fedlearn.NewTrainer(a, w, fedlearn.TrainConfig{Solver: fedlearn.SolverSGD, LearnRate: 0.1, BatchSize: tc.batch, L2: tc.l2})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		net, err := NewNet(a, w, tc.batch, "sgd", 0.1, tc.l2)
		if err != nil {
			t.Fatal(err)
		}
		gg, lg, err := tr.Gradients(x, y)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Gradients(x, y)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(lg-ln) > 1e-9 {
			t.Errorf("%s: loss %v (gorgonia) vs %v (gonum)", tc.arch, lg, ln)
		}
		if d := maxDiff(t, gg, net.Grads()); d > 1e-9 {
			t.Errorf("%s batch %d rows %d: gradients differ by up to %g", tc.arch, tc.batch, tc.rows, d)
		}
		// Ten SGD steps stay together too.
		for i := range 10 {
			x, y := Data(uint64(10+i), tc.rows, tc.in, tc.classes)
			if _, err := tr.Step(x, y); err != nil {
				t.Fatal(err)
			}
			if _, err := net.Step(x, y); err != nil {
				t.Fatal(err)
			}
		}
		if d := maxDiff(t, tr.Weights(), net.Weights()); d > 1e-9 {
			t.Errorf("%s: weights after 10 SGD steps differ by up to %g", tc.arch, d)
		}
	}
}

// TestAdamLikeGorgonia: the baseline's Adam follows gorgonia's.
func TestAdamLikeGorgonia(t *testing.T) {
	a, _ := fedlearn.ParseArch("mlp:64", 43, 6)
	w := fedlearn.InitWeights(a, 4)
	tr, err := fedlearn.NewTrainer(a, w, fedlearn.TrainConfig{Solver: fedlearn.SolverAdam, LearnRate: 0.01, BatchSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	net, err := NewNet(a, w, 64, "adam", 0.01, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		x, y := Data(uint64(i), 64, 43, 6)
		if _, err := tr.Step(x, y); err != nil {
			t.Fatal(err)
		}
		if _, err := net.Step(x, y); err != nil {
			t.Fatal(err)
		}
	}
	if d := maxDiff(t, tr.Weights(), net.Weights()); d > 1e-9 {
		t.Errorf("weights after 10 Adam steps differ by up to %g", d)
	}
}

// TestPredictLikeForward: batched gonum inference and fedlearn's Forward
// give the same probabilities.
func TestPredictLikeForward(t *testing.T) {
	a, _ := fedlearn.ParseArch("mlp:64", 43, 6)
	w := fedlearn.InitWeights(a, 4)
	net, err := NewNet(a, w, 100, "sgd", 0.1, 0)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fedlearn.NewForward(a, w)
	if err != nil {
		t.Fatal(err)
	}
	x, _ := Data(3, 100, 43, 6)
	probs := make([]float64, 100*6)
	if err := net.Predict(x, 100, probs); err != nil {
		t.Fatal(err)
	}
	p := make([]float64, 6)
	for r := range 100 {
		if _, err := f.Predict(x[r*43:(r+1)*43], p); err != nil {
			t.Fatal(err)
		}
		for j := range p {
			if math.Abs(p[j]-probs[r*6+j]) > 1e-12 {
				t.Fatalf("row %d class %d: %v vs %v", r, j, p[j], probs[r*6+j])
			}
		}
	}
}

func TestGraphForwardLikeForward(t *testing.T) {
	a, _ := fedlearn.ParseArch("mlp:64", 43, 6)
	w := fedlearn.InitWeights(a, 4)
	g, err := NewGraphForward(a, w, 50)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	f, _ := fedlearn.NewForward(a, w)
	for round := range 2 { // the second run reuses the machine
		x, _ := Data(uint64(5+round), 50, 43, 6)
		probs := make([]float64, 50*6)
		if err := g.Predict(x, probs); err != nil {
			t.Fatal(err)
		}
		p := make([]float64, 6)
		for r := range 50 {
			f.Predict(x[r*43:(r+1)*43], p)
			for j := range p {
				if math.Abs(p[j]-probs[r*6+j]) > 1e-9 {
					t.Fatalf("round %d row %d class %d: %v vs %v", round, r, j, p[j], probs[r*6+j])
				}
			}
		}
	}
}
