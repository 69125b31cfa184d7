package fedlearn

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
)

// ErrWeights is returned for weights that do not fit their architecture or
// are not finite.
var ErrWeights = errors.New("fedlearn: invalid weights")

// Tensor is one named parameter, row-major.
type Tensor struct {
	Name  string    `json:"name"`
	Shape []int     `json:"shape"`
	Data  []float64 `json:"-"`
}

// Weights are a model's parameters in its architecture's order: for each
// dense layer l (0-based) "w{l}" of shape [in, out], then "b{l}" of shape
// [out]. A layer computes y = x·W + b.
type Weights []Tensor

// NewWeights returns zero weights for the architecture.
func NewWeights(a Arch) Weights {
	var w Weights
	for i, l := range a.Layers() {
		w = append(w,
			Tensor{Name: fmt.Sprintf("w%d", i), Shape: []int{l[0], l[1]}, Data: make([]float64, l[0]*l[1])},
			Tensor{Name: fmt.Sprintf("b%d", i), Shape: []int{l[1]}, Data: make([]float64, l[1])},
		)
	}
	return w
}

// InitWeights returns the architecture's starting weights drawn from seed:
// Glorot-uniform matrices and zero biases. The same seed gives the same
// weights, bit for bit, on every platform.
func InitWeights(a Arch, seed uint64) Weights {
	w := NewWeights(a)
	rng := rand.New(rand.NewPCG(seed, 0x65646765666c6565)) // "edgeflee"
	for i := 0; i < len(w); i += 2 {
		m := w[i]
		limit := math.Sqrt(6 / float64(m.Shape[0]+m.Shape[1]))
		for j := range m.Data {
			m.Data[j] = (2*rng.Float64() - 1) * limit
		}
	}
	return w
}

// Clone returns a deep copy.
func (w Weights) Clone() Weights {
	c := make(Weights, len(w))
	for i, t := range w {
		c[i] = Tensor{Name: t.Name, Shape: append([]int(nil), t.Shape...), Data: append([]float64(nil), t.Data...)}
	}
	return c
}

// Len is the total number of values.
func (w Weights) Len() int {
	n := 0
	for _, t := range w {
		n += len(t.Data)
	}
	return n
}

// Flatten appends every value in order to dst.
func (w Weights) Flatten(dst []float64) []float64 {
	for _, t := range w {
		dst = append(dst, t.Data...)
	}
	return dst
}

// SetFlat copies a flat vector (as Flatten makes it) into w.
func (w Weights) SetFlat(v []float64) error {
	if len(v) != w.Len() {
		return fmt.Errorf("%w: flat vector has %d values, weights have %d", ErrWeights, len(v), w.Len())
	}
	for _, t := range w {
		n := copy(t.Data, v)
		v = v[n:]
	}
	return nil
}

// Check verifies that the weights have the architecture's names and shapes
// and that every value is finite.
func (w Weights) Check(a Arch) error {
	want := NewWeights(a)
	if len(w) != len(want) {
		return fmt.Errorf("%w: %d tensors, architecture %s needs %d", ErrWeights, len(w), a, len(want))
	}
	for i, t := range w {
		e := want[i]
		if t.Name != e.Name || !sameShape(t.Shape, e.Shape) {
			return fmt.Errorf("%w: tensor %d is %q %v, want %q %v", ErrWeights, i, t.Name, t.Shape, e.Name, e.Shape)
		}
		if len(t.Data) != len(e.Data) {
			return fmt.Errorf("%w: tensor %q has %d values, shape %v needs %d", ErrWeights, t.Name, len(t.Data), t.Shape, len(e.Data))
		}
		for j, v := range t.Data {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return fmt.Errorf("%w: tensor %q value %d is %v", ErrWeights, t.Name, j, v)
			}
		}
	}
	return nil
}

func sameShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
