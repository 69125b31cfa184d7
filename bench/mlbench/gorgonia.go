package mlbench

import (
	"fmt"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/edgefleet/edgefleet/fedlearn"
)

// GraphForward is batched inference through a forward-only gorgonia graph
// (dense layers, ReLU, softmax) built once for a batch of Batch rows and
// run by a tape machine: the alternative to fedlearn's light Forward that
// the suite measures beside it.
type GraphForward struct {
	vm    G.VM
	xData []float64
	out   *G.Node
	batch int
}

// NewGraphForward builds the graph over a copy of the weights.
func NewGraphForward(a fedlearn.Arch, w fedlearn.Weights, batch int) (*GraphForward, error) {
	if err := w.Check(a); err != nil {
		return nil, err
	}
	g := G.NewGraph()
	f := &GraphForward{xData: make([]float64, batch*a.Inputs), batch: batch}
	h := G.NewMatrix(g, tensor.Float64, G.WithShape(batch, a.Inputs), G.WithName("x"),
		G.WithValue(tensor.New(tensor.WithShape(batch, a.Inputs), tensor.WithBacking(f.xData))))
	layers := a.Layers()
	for l, io := range layers {
		wn := G.NewMatrix(g, tensor.Float64, G.WithShape(io[0], io[1]), G.WithName(fmt.Sprintf("w%d", l)),
			G.WithValue(tensor.New(tensor.WithShape(io[0], io[1]), tensor.WithBacking(append([]float64(nil), w[2*l].Data...)))))
		bn := G.NewMatrix(g, tensor.Float64, G.WithShape(1, io[1]), G.WithName(fmt.Sprintf("b%d", l)),
			G.WithValue(tensor.New(tensor.WithShape(1, io[1]), tensor.WithBacking(append([]float64(nil), w[2*l+1].Data...)))))
		xw, err := G.Mul(h, wn)
		if err != nil {
			return nil, err
		}
		if h, err = G.BroadcastAdd(xw, bn, nil, []byte{0}); err != nil {
			return nil, err
		}
		if l != len(layers)-1 {
			if h, err = G.Rectify(h); err != nil {
				return nil, err
			}
		}
	}
	var err error
	if f.out, err = G.SoftMax(h); err != nil {
		return nil, err
	}
	f.vm = G.NewTapeMachine(g)
	return f, nil
}

// Predict computes the probabilities of Batch rows of x into probs.
func (f *GraphForward) Predict(x, probs []float64) error {
	if len(x) != len(f.xData) {
		return fmt.Errorf("mlbench: graph forward takes %d values, got %d", len(f.xData), len(x))
	}
	copy(f.xData, x)
	f.vm.Reset()
	if err := f.vm.RunAll(); err != nil {
		return err
	}
	copy(probs, f.out.Value().Data().([]float64))
	return nil
}

// Close releases the machine.
func (f *GraphForward) Close() error { return f.vm.Close() }
