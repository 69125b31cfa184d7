package fedlearn

import (
	"errors"
	"math"
	"testing"
)

func TestParseArch(t *testing.T) {
	for _, tc := range []struct {
		in     string
		want   string
		params int
	}{
		{"lr", "lr", 5*2 + 2},
		{"mlp:64", "mlp:64", 5*64 + 64 + 64*2 + 2},
		{"mlp:8,4", "mlp:8,4", 5*8 + 8 + 8*4 + 4 + 4*2 + 2},
	} {
		a, err := ParseArch(tc.in, 5, 2)
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if a.String() != tc.want || a.NumParams() != tc.params || NewWeights(a).Len() != tc.params {
			t.Errorf("%s: got %s with %d params, want %s with %d", tc.in, a, a.NumParams(), tc.want, tc.params)
		}
	}
	for _, bad := range []string{"", "cnn", "lr:3", "mlp", "mlp:", "mlp:x", "mlp:0", "mlp:1,2,3,4,5,6,7,8,9"} {
		if _, err := ParseArch(bad, 5, 2); !errors.Is(err, ErrArch) {
			t.Errorf("%q: err %v, want ErrArch", bad, err)
		}
	}
	if _, err := ParseArch("mlp:4096,4096", 4096, 2); !errors.Is(err, ErrArch) {
		t.Errorf("oversized model accepted: %v", err)
	}
}

func TestInitWeightsDeterministic(t *testing.T) {
	a, _ := ParseArch("mlp:16", 7, 3)
	w1, w2, w3 := InitWeights(a, 1), InitWeights(a, 1), InitWeights(a, 2)
	f1, f2, f3 := w1.Flatten(nil), w2.Flatten(nil), w3.Flatten(nil)
	same := true
	for i := range f1 {
		if math.Float64bits(f1[i]) != math.Float64bits(f2[i]) {
			t.Fatalf("same seed, value %d differs", i)
		}
		same = same && f1[i] == f3[i]
	}
	if same {
		t.Fatal("different seeds gave the same weights")
	}
	if err := w1.Check(a); err != nil {
		t.Fatal(err)
	}
	w1[0].Data[3] = math.NaN()
	if err := w1.Check(a); !errors.Is(err, ErrWeights) {
		t.Fatalf("NaN weight: %v", err)
	}
}

// TestForwardByHand checks the forward pass against a computation written
// out for a 2-2-2 MLP.
func TestForwardByHand(t *testing.T) {
	a := Arch{Kind: KindMLP, Inputs: 2, Hidden: []int{2}, Classes: 2}
	w := NewWeights(a)
	copy(w[0].Data, []float64{1, -1, 2, 0.5}) // x·W0: h0 = x0 + 2x1, h1 = -x0 + 0.5x1
	copy(w[1].Data, []float64{0, -10})        // b0
	copy(w[2].Data, []float64{1, 0, 0, 1})    // identity
	copy(w[3].Data, []float64{0.5, 0})        // b1
	f, err := NewForward(a, w)
	if err != nil {
		t.Fatal(err)
	}
	probs := make([]float64, 2)
	c, err := f.Predict([]float64{1, 2}, probs)
	if err != nil {
		t.Fatal(err)
	}
	// h = relu(5, -10) = (5, 0); logits = (5.5, 0)
	p0 := 1 / (1 + math.Exp(-5.5))
	if c != 0 || math.Abs(probs[0]-p0) > 1e-15 || math.Abs(probs[1]-(1-p0)) > 1e-15 {
		t.Fatalf("class %d probs %v, want 0 [%v %v]", c, probs, p0, 1-p0)
	}
	if _, err := f.Predict([]float64{1}, probs); err == nil {
		t.Fatal("wrong feature count accepted")
	}
}
