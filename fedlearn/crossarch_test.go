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

// The cross-architecture check (test/crossarch_test.go) runs this test on
// amd64 and on arm64 under qemu with EDGEFLEET_PREDICTIONS_OUT set, and
// compares the two files with archcheck.Compare: weights must match bit for
// bit, probabilities within archcheck.Tolerance.
// EDGEFLEET_PREDICTIONS_PERTURB adds a value to one weight of every model, so
// that the check can be shown to fail.

// crossArchModels are deterministic models: seeded Glorot weights, and
// fixed weights that are exact binary fractions (so they are the same on
// every platform without depending on any library function).
func crossArchModels(t *testing.T) []struct {
	name string
	arch Arch
	w    Weights
} {
	t.Helper()
	mustArch := func(s string, in, out int) Arch {
		a, err := ParseArch(s, in, out)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	lr := mustArch("lr", 5, 2)
	mlp := mustArch("mlp:64", 43, 6)
	deep := mustArch("mlp:16,16", 8, 3)
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
	return []struct {
		name string
		arch Arch
		w    Weights
	}{
		{"lr-5x2-glorot-seed1", lr, InitWeights(lr, 1)},
		{"mlp-43x64x6-glorot-seed7", mlp, InitWeights(mlp, 7)},
		{"mlp-8x16x16x3-fixed", deep, fixed},
	}
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
		c := archcheck.Model{Name: m.name, Arch: m.arch.String(), Weights: w.Flatten(nil),
			Inputs: crossArchInputs(m.arch.Inputs, 16, uint64(100+i))}
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
		dump.Models = append(dump.Models, c)
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
