// Package archcheck compares what models predict on two architectures. The
// fedlearn tests write a Dump of deterministic models' weights, inputs and
// predictions (fedlearn/crossarch_test.go); test/arm64_test.go writes one on
// amd64 and one on arm64 under qemu and compares them with Compare.
package archcheck

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
)

// Tolerance is how far a probability computed on one architecture may be
// from another's. Go fuses multiply-adds on arm64 (not on amd64), so the
// last bits differ; anything beyond rounding is a bug.
const Tolerance = 1e-5

// Dump is one architecture's predictions.
type Dump struct {
	GOARCH string  `json:"goarch"`
	Models []Model `json:"models"`
}

// Model is one model's weights (flattened), inputs, and for each input the
// predicted class and the class probabilities.
type Model struct {
	Name string `json:"name"`
	Arch string `json:"arch"`
	// Exact is set when the weights come from seeds and exact arithmetic,
	// so they must be equal bit for bit; trained weights need only be
	// within the tolerance.
	Exact   bool      `json:"exact"`
	Weights []float64 `json:"weights"`
	// Losses are the training losses (one per epoch) of a trained model.
	Losses  []float64   `json:"losses,omitempty"`
	Inputs  [][]float64 `json:"inputs"`
	Classes []int       `json:"classes"`
	Probs   [][]float64 `json:"probs"`
}

// Write stores d as JSON (floats in the shortest form that reads back
// exactly).
func Write(path string, d Dump) error {
	b, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("archcheck: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("archcheck: %w", err)
	}
	return nil
}

// Read loads a dump written by Write.
func Read(path string) (Dump, error) {
	var d Dump
	b, err := os.ReadFile(path)
	if err != nil {
		return d, fmt.Errorf("archcheck: %w", err)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return d, fmt.Errorf("archcheck: %s: %w", path, err)
	}
	if len(d.Models) == 0 {
		return d, fmt.Errorf("archcheck: %s: no models", path)
	}
	return d, nil
}

// Compare lists every way got differs from want: the models, their
// architectures and inputs must be the same bit for bit (they come from
// seeds and exact arithmetic), and so must the weights of Exact models;
// trained weights, training losses and the probabilities must be within
// tol, and the predicted class the same unless want's two best
// probabilities are within tol of each other.
func Compare(want, got Dump, tol float64) []string {
	var diffs []string
	add := func(format string, a ...any) { diffs = append(diffs, fmt.Sprintf(format, a...)) }
	if len(want.Models) != len(got.Models) {
		add("%d models, want %d", len(got.Models), len(want.Models))
		return diffs
	}
	for i, w := range want.Models {
		g := got.Models[i]
		if g.Name != w.Name || g.Arch != w.Arch || g.Exact != w.Exact {
			add("model %d is %s (%s, exact %v), want %s (%s, exact %v)", i, g.Name, g.Arch, g.Exact, w.Name, w.Arch, w.Exact)
			continue
		}
		if w.Exact && !sameBits(g.Weights, w.Weights) {
			add("%s: weights differ", w.Name)
		}
		if !w.Exact {
			if j, d := farthest(g.Weights, w.Weights); !(d <= tol) {
				add("%s: weight %d differs by %.3g", w.Name, j, d)
			}
		}
		if j, d := farthest(g.Losses, w.Losses); !(d <= tol) {
			add("%s: loss of epoch %d differs by %.3g", w.Name, j+1, d)
		}
		n := len(w.Inputs)
		if len(w.Probs) != n || len(w.Classes) != n || len(g.Inputs) != n || len(g.Probs) != n || len(g.Classes) != n {
			add("%s: %d inputs, %d predictions, %d classes, want %d of each", w.Name, len(g.Inputs), len(g.Probs), len(g.Classes), n)
			continue
		}
		for r := range w.Inputs {
			if !sameBits(g.Inputs[r], w.Inputs[r]) {
				add("%s: input %d differs", w.Name, r)
				continue
			}
			if len(g.Probs[r]) != len(w.Probs[r]) {
				add("%s: input %d: %d probabilities, want %d", w.Name, r, len(g.Probs[r]), len(w.Probs[r]))
				continue
			}
			for k, wp := range w.Probs[r] {
				if d := math.Abs(g.Probs[r][k] - wp); !(d <= tol) {
					add("%s: input %d class %d: probability %.17g, want %.17g (difference %.3g)", w.Name, r, k, g.Probs[r][k], wp, d)
				}
			}
			if g.Classes[r] != w.Classes[r] && !nearTie(w.Probs[r], tol) {
				add("%s: input %d: class %d, want %d", w.Name, r, g.Classes[r], w.Classes[r])
			}
		}
	}
	return diffs
}

// MaxDiff is the largest probability difference between two dumps that
// Compare found equal.
func MaxDiff(a, b Dump) float64 {
	m := 0.0
	for i := range a.Models {
		for r := range a.Models[i].Probs {
			for k := range a.Models[i].Probs[r] {
				m = math.Max(m, math.Abs(a.Models[i].Probs[r][k]-b.Models[i].Probs[r][k]))
			}
		}
	}
	return m
}

// farthest returns the index and size of the largest difference between a
// and b, or +Inf when their lengths differ.
func farthest(a, b []float64) (int, float64) {
	if len(a) != len(b) {
		return -1, math.Inf(1)
	}
	at, m := 0, 0.0
	for i := range a {
		d := math.Abs(a[i] - b[i])
		if !(d <= m) {
			at, m = i, d
		}
	}
	return at, m
}

func sameBits(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float64bits(a[i]) != math.Float64bits(b[i]) {
			return false
		}
	}
	return true
}

// nearTie reports whether the two largest probabilities are within tol.
func nearTie(p []float64, tol float64) bool {
	first, second := math.Inf(-1), math.Inf(-1)
	for _, v := range p {
		if v > first {
			first, second = v, first
		} else if v > second {
			second = v
		}
	}
	return first-second <= tol
}
