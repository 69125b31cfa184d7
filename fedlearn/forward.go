package fedlearn

import (
	"fmt"
	"math"
)

// Forward is a light forward pass over a model's weights, for inference
// without building a graph. It keeps scratch space, so one Forward must not
// be used from two goroutines at once; make one per goroutine (they share
// the weights, which they never change).
type Forward struct {
	arch    Arch
	w       Weights
	scratch [][]float64
	batch   [][]float64 // PredictBatch's, per layer
}

// NewForward checks the weights against the architecture and returns a
// forward pass over them. The weights are not copied and must not change
// while it is in use.
func NewForward(a Arch, w Weights) (*Forward, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	if err := w.Check(a); err != nil {
		return nil, err
	}
	f := &Forward{arch: a, w: w}
	for _, l := range a.Layers() {
		f.scratch = append(f.scratch, make([]float64, l[1]))
	}
	return f, nil
}

// Arch is the architecture the pass computes.
func (f *Forward) Arch() Arch { return f.arch }

// Predict computes the class probabilities of one example x (already
// normalised, len Inputs) into probs (len Classes) and returns the most
// probable class. It allocates nothing. It runs the same arithmetic as
// PredictBatch on a batch of one.
func (f *Forward) Predict(x, probs []float64) (int, error) {
	if len(x) != f.arch.Inputs {
		return 0, fmt.Errorf("fedlearn: %d features, model takes %d", len(x), f.arch.Inputs)
	}
	if len(probs) != f.arch.Classes {
		return 0, fmt.Errorf("fedlearn: room for %d probabilities, model has %d classes", len(probs), f.arch.Classes)
	}
	logits := f.layers(x, 1, f.scratch)
	return softmax(logits, probs), nil
}

// softmax writes the softmax of logits into probs and returns the argmax.
func softmax(logits, probs []float64) int {
	best := 0
	for i, v := range logits {
		if v > logits[best] {
			best = i
		}
	}
	maxv := logits[best]
	sum := 0.0
	for i, v := range logits {
		e := math.Exp(v - maxv)
		probs[i] = e
		sum += e
	}
	for i := range probs {
		probs[i] /= sum
	}
	return best
}
