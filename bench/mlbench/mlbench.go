// Package mlbench is the baseline of the ml benchmark suite: fedlearn's
// models (multinomial logistic regression and the ReLU MLP) written by
// hand over gonum's BLAS, with no graph, no autodiff and no allocation per
// step. It computes the same loss (mean softmax cross-entropy), gradients
// (with the same L2 on weight matrices) and updates (SGD, Adam) as
// fedlearn's gorgonia trainer, so that a figure measured on both in the
// same run says what the graph machinery costs.
package mlbench

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas64"

	"github.com/edgefleet/edgefleet/fedlearn"
)

// Solver is the update rule: "sgd" or "adam" (beta1 0.9, beta2 0.999,
// eps 1e-8, as gorgonia's AdamSolver).
type Solver string

// Net is one model with buffers for a batch of up to Batch rows.
type Net struct {
	arch   fedlearn.Arch
	batch  int
	layers [][2]int
	w, b   [][]float64 // weights [in x out] row-major, biases [out]
	gw, gb [][]float64 // gradients
	z      [][]float64 // pre-activations per layer, batch x out
	dz     [][]float64 // their gradients
	probs  []float64   // batch x classes

	solver Solver
	lr, l2 float64
	m, v   [][]float64 // Adam moments, w then b of each layer interleaved
	iter   int
}

// NewNet copies the weights and allocates every buffer.
func NewNet(a fedlearn.Arch, w fedlearn.Weights, batch int, solver Solver, lr, l2 float64) (*Net, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	if err := w.Check(a); err != nil {
		return nil, err
	}
	if batch < 1 {
		return nil, fmt.Errorf("mlbench: batch %d", batch)
	}
	if solver != "sgd" && solver != "adam" {
		return nil, fmt.Errorf("mlbench: solver %q (want sgd or adam)", solver)
	}
	n := &Net{arch: a, batch: batch, layers: a.Layers(), solver: solver, lr: lr, l2: l2}
	for l, io := range n.layers {
		n.w = append(n.w, append([]float64(nil), w[2*l].Data...))
		n.b = append(n.b, append([]float64(nil), w[2*l+1].Data...))
		n.gw = append(n.gw, make([]float64, io[0]*io[1]))
		n.gb = append(n.gb, make([]float64, io[1]))
		n.z = append(n.z, make([]float64, batch*io[1]))
		n.dz = append(n.dz, make([]float64, batch*io[1]))
		if solver == "adam" {
			n.m = append(n.m, make([]float64, io[0]*io[1]), make([]float64, io[1]))
			n.v = append(n.v, make([]float64, io[0]*io[1]), make([]float64, io[1]))
		}
	}
	n.probs = make([]float64, batch*a.Classes)
	return n, nil
}

func general(rows, cols int, data []float64) blas64.General {
	return blas64.General{Rows: rows, Cols: cols, Stride: cols, Data: data[:rows*cols]}
}

// forward computes the activations of rows examples of x; z[l] holds the
// post-ReLU activations of hidden layers (ReLU is applied in place) and the
// logits of the last.
func (n *Net) forward(x []float64, rows int) {
	in := general(rows, n.arch.Inputs, x)
	last := len(n.layers) - 1
	for l, io := range n.layers {
		out := general(rows, io[1], n.z[l])
		for r := 0; r < rows; r++ {
			copy(out.Data[r*io[1]:(r+1)*io[1]], n.b[l])
		}
		blas64.Gemm(blas.NoTrans, blas.NoTrans, 1, in, general(io[0], io[1], n.w[l]), 1, out)
		if l != last {
			for i, v := range out.Data {
				if v < 0 {
					out.Data[i] = 0
				}
			}
		}
		in = out
	}
}

// softmaxRows writes the row-wise softmax of logits into probs.
func softmaxRows(logits, probs []float64, rows, classes int) {
	for r := 0; r < rows; r++ {
		lz, p := logits[r*classes:(r+1)*classes], probs[r*classes:(r+1)*classes]
		m := lz[0]
		for _, v := range lz[1:] {
			m = max(m, v)
		}
		s := 0.0
		for j, v := range lz {
			e := math.Exp(v - m)
			p[j] = e
			s += e
		}
		for j := range p {
			p[j] /= s
		}
	}
}

// Gradients computes the mean cross-entropy of a batch (1 to Batch rows)
// and its gradients, plus L2·W for weight matrices.
func (n *Net) Gradients(x []float64, y []int) (float64, error) {
	rows := len(y)
	if rows < 1 || rows > n.batch || len(x) != rows*n.arch.Inputs {
		return 0, fmt.Errorf("mlbench: batch of %d rows, %d values", rows, len(x))
	}
	n.forward(x, rows)
	last := len(n.layers) - 1
	c := n.arch.Classes
	softmaxRows(n.z[last], n.probs, rows, c)
	loss := 0.0
	inv := 1 / float64(rows)
	dz := n.dz[last][:rows*c]
	for r, lab := range y {
		if lab < 0 || lab >= c {
			return 0, fmt.Errorf("mlbench: label %d", lab)
		}
		loss -= math.Log(n.probs[r*c+lab])
		for j := 0; j < c; j++ {
			dz[r*c+j] = n.probs[r*c+j] * inv
		}
		dz[r*c+lab] -= inv
	}
	for l := last; l >= 0; l-- {
		io := n.layers[l]
		d := general(rows, io[1], n.dz[l])
		var in blas64.General
		if l == 0 {
			in = general(rows, n.arch.Inputs, x)
		} else {
			in = general(rows, io[0], n.z[l-1])
		}
		// dW = inᵀ · dZ (+ L2·W), db = column sums of dZ.
		gw := general(io[0], io[1], n.gw[l])
		if n.l2 > 0 {
			for i, v := range n.w[l] {
				gw.Data[i] = n.l2 * v
			}
			blas64.Gemm(blas.Trans, blas.NoTrans, 1, in, d, 1, gw)
		} else {
			blas64.Gemm(blas.Trans, blas.NoTrans, 1, in, d, 0, gw)
		}
		gb := n.gb[l]
		clear(gb)
		for r := 0; r < rows; r++ {
			for j, v := range d.Data[r*io[1] : (r+1)*io[1]] {
				gb[j] += v
			}
		}
		if l > 0 {
			// dA = dZ · Wᵀ, then through the ReLU of layer l-1.
			prev := general(rows, io[0], n.dz[l-1])
			blas64.Gemm(blas.NoTrans, blas.Trans, 1, d, general(io[0], io[1], n.w[l]), 0, prev)
			for i, a := range n.z[l-1][:rows*io[0]] {
				if a <= 0 {
					prev.Data[i] = 0
				}
			}
		}
	}
	return loss * inv, nil
}

// Step computes the gradients of a batch and applies one update.
func (n *Net) Step(x []float64, y []int) (float64, error) {
	loss, err := n.Gradients(x, y)
	if err != nil {
		return 0, err
	}
	switch n.solver {
	case "sgd":
		for l := range n.layers {
			blas64.Axpy(-n.lr, blas64.Vector{N: len(n.gw[l]), Inc: 1, Data: n.gw[l]}, blas64.Vector{N: len(n.w[l]), Inc: 1, Data: n.w[l]})
			blas64.Axpy(-n.lr, blas64.Vector{N: len(n.gb[l]), Inc: 1, Data: n.gb[l]}, blas64.Vector{N: len(n.b[l]), Inc: 1, Data: n.b[l]})
		}
	case "adam":
		n.iter++
		c1 := 1 / (1 - math.Pow(0.9, float64(n.iter)))
		c2 := 1 / (1 - math.Pow(0.999, float64(n.iter)))
		for l := range n.layers {
			n.adam(n.w[l], n.gw[l], n.m[2*l], n.v[2*l], c1, c2)
			n.adam(n.b[l], n.gb[l], n.m[2*l+1], n.v[2*l+1], c1, c2)
		}
	}
	return loss, nil
}

func (n *Net) adam(w, g, m, v []float64, c1, c2 float64) {
	for i, gi := range g {
		m[i] = 0.9*m[i] + (1-0.9)*gi
		v[i] = 0.999*v[i] + (1-0.999)*gi*gi
		w[i] -= n.lr * (m[i] * c1) / (math.Sqrt(v[i]*c2) + 1e-8)
	}
}

// Predict computes the class probabilities of rows examples of x into
// probs (rows x Classes), batched through gonum's GEMM.
func (n *Net) Predict(x []float64, rows int, probs []float64) error {
	if rows < 1 || rows > n.batch || len(x) != rows*n.arch.Inputs || len(probs) != rows*n.arch.Classes {
		return errors.New("mlbench: predict: sizes do not fit")
	}
	n.forward(x, rows)
	softmaxRows(n.z[len(n.layers)-1], probs, rows, n.arch.Classes)
	return nil
}

// Weights returns a copy of the current weights.
func (n *Net) Weights() fedlearn.Weights { return n.pack(n.w, n.b) }

// Grads returns a copy of the last gradients, laid out as weights.
func (n *Net) Grads() fedlearn.Weights { return n.pack(n.gw, n.gb) }

func (n *Net) pack(w, b [][]float64) fedlearn.Weights {
	out := fedlearn.NewWeights(n.arch)
	for l := range n.layers {
		copy(out[2*l].Data, w[l])
		copy(out[2*l+1].Data, b[l])
	}
	return out
}

// Data draws n seeded examples: standard normal features (in per row) and
// uniform labels in [0, classes).
func Data(seed uint64, n, in, classes int) ([]float64, []int) {
	rng := rand.New(rand.NewPCG(seed, 3))
	x := make([]float64, n*in)
	for i := range x {
		x[i] = rng.NormFloat64()
	}
	y := make([]int, n)
	for i := range y {
		y[i] = rng.IntN(classes)
	}
	return x, y
}
