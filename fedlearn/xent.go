package fedlearn

import (
	"fmt"
	"hash"
	"hash/fnv"
	"math"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// softmaxXent is the loss node of the training graph, a gorgonia op:
// given logits Z and target weights T (both batch x classes),
//
//	loss = −Σᵢⱼ Tᵢⱼ · log softmax(Zᵢ)ⱼ
//
// computed row by row with the row's own maximum subtracted (log-sum-exp).
// Its gradient with respect to Z (softmaxXentGrad) is, per row,
// g · (sᵢ·softmax(Zᵢ) − Tᵢ) with sᵢ = Σⱼ Tᵢⱼ and g the incoming gradient;
// a padding row (T = 0) gets exactly 0. T gets no gradient.
//
// It replaces gorgonia's LogSoftMax → HadamardProd → Sum → Neg chain,
// which computes the same thing, because of what measurement showed of
// gorgonia.org/tensor v0.9.23's softmax kernels: they start one goroutine
// per row forward and backward (512 goroutines a step at batch 256, 64 %
// of the step's allocations and most of its scheduling under load), and
// they take each row's maximum from the first element of the whole
// tensor rather than of the row, so a row far below the first one can
// underflow to log(0).
//
// Each run also stores the loss in *out, so the trainer reads it without
// going through the node's binding.
type softmaxXent struct{ out *float64 }

func softmaxXentLoss(logits, target *G.Node, out *float64) (*G.Node, error) {
	return G.ApplyOp(softmaxXent{out: out}, logits, target)
}

func (softmaxXent) Arity() int { return 2 }

func (softmaxXent) Type() hm.Type {
	a := hm.TypeVariable('a')
	m := G.TensorType{Dims: 2, Of: a}
	return hm.NewFnType(m, m, a)
}

func (softmaxXent) InferShape(inputs ...G.DimSizer) (tensor.Shape, error) {
	if len(inputs) != 2 {
		return nil, fmt.Errorf("fedlearn: softmax cross-entropy takes 2 inputs, got %d", len(inputs))
	}
	return tensor.ScalarShape(), nil
}

func (op softmaxXent) Do(inputs ...G.Value) (G.Value, error) {
	z, tg, err := xentInputs(inputs[:min(len(inputs), 2)], 2)
	if err != nil {
		return nil, err
	}
	rows, classes := z.Shape()[0], z.Shape()[1]
	zd, td := z.Data().([]float64), tg.Data().([]float64)
	loss := 0.0
	for r := 0; r < rows; r++ {
		zr, tr := zd[r*classes:(r+1)*classes], td[r*classes:(r+1)*classes]
		lse := logSumExp(zr)
		for j, t := range tr {
			if t != 0 {
				loss -= t * (zr[j] - lse)
			}
		}
	}
	if op.out != nil {
		*op.out = loss
	}
	return G.NewF64(loss), nil
}

func (softmaxXent) ReturnsPtr() bool     { return false }
func (softmaxXent) CallsExtern() bool    { return false }
func (softmaxXent) OverwritesInput() int { return -1 }
func (op softmaxXent) WriteHash(h hash.Hash) {
	fmt.Fprint(h, op.String())
}
func (op softmaxXent) Hashcode() uint32 { return opHash(op) }
func (softmaxXent) String() string      { return "SoftmaxXent" }

// DiffWRT: the loss is differentiable in the logits, not in the targets.
func (softmaxXent) DiffWRT(inputs int) []bool { return []bool{true, false} }

// SymDiff returns the gradient node for the logits (none for the targets).
func (softmaxXent) SymDiff(inputs G.Nodes, output, grad *G.Node) (G.Nodes, error) {
	if len(inputs) != 2 {
		return nil, fmt.Errorf("fedlearn: softmax cross-entropy takes 2 inputs, got %d", len(inputs))
	}
	dz, err := G.ApplyOp(softmaxXentGrad{}, inputs[0], inputs[1], grad)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dz, nil}, nil
}

// softmaxXentGrad computes the gradient of softmaxXent for its logits.
type softmaxXentGrad struct{}

func (softmaxXentGrad) Arity() int { return 3 }

func (softmaxXentGrad) Type() hm.Type {
	a := hm.TypeVariable('a')
	m := G.TensorType{Dims: 2, Of: a}
	return hm.NewFnType(m, m, a, m)
}

func (softmaxXentGrad) InferShape(inputs ...G.DimSizer) (tensor.Shape, error) {
	if len(inputs) != 3 {
		return nil, fmt.Errorf("fedlearn: softmax cross-entropy gradient takes 3 inputs, got %d", len(inputs))
	}
	s, ok := inputs[0].(tensor.Shape)
	if !ok {
		return nil, fmt.Errorf("fedlearn: softmax cross-entropy gradient: logits shape is %T", inputs[0])
	}
	return s.Clone(), nil
}

func (op softmaxXentGrad) Do(inputs ...G.Value) (G.Value, error) {
	if len(inputs) != 3 {
		return nil, fmt.Errorf("fedlearn: softmax cross-entropy gradient takes 3 inputs, got %d", len(inputs))
	}
	z, ok := inputs[0].(tensor.Tensor)
	if !ok {
		return nil, fmt.Errorf("fedlearn: softmax cross-entropy gradient: logits are %T", inputs[0])
	}
	out := tensor.New(tensor.WithShape(z.Shape().Clone()...), tensor.Of(tensor.Float64))
	return op.UsePreallocDo(out, inputs...)
}

func (op softmaxXentGrad) UsePreallocDo(prealloc G.Value, inputs ...G.Value) (G.Value, error) {
	if len(inputs) != 3 {
		return nil, fmt.Errorf("fedlearn: softmax cross-entropy gradient takes 3 inputs, got %d", len(inputs))
	}
	z, tg, err := xentInputs(inputs[:2], 3)
	if err != nil {
		return nil, err
	}
	g, err := scalarOf(inputs[2])
	if err != nil {
		return nil, err
	}
	out, ok := prealloc.(tensor.Tensor)
	if !ok || !out.Shape().Eq(z.Shape()) || out.Dtype() != tensor.Float64 {
		return nil, fmt.Errorf("fedlearn: softmax cross-entropy gradient: output is %T %v", prealloc, prealloc.Shape())
	}
	rows, classes := z.Shape()[0], z.Shape()[1]
	zd, td, od := z.Data().([]float64), tg.Data().([]float64), out.Data().([]float64)
	for r := 0; r < rows; r++ {
		zr, tr, or := zd[r*classes:(r+1)*classes], td[r*classes:(r+1)*classes], od[r*classes:(r+1)*classes]
		s := 0.0
		for _, t := range tr {
			s += t
		}
		if s == 0 {
			clear(or)
			continue
		}
		lse := logSumExp(zr)
		for j, v := range zr {
			or[j] = g * (s*math.Exp(v-lse) - tr[j])
		}
	}
	return out, nil
}

func (softmaxXentGrad) ReturnsPtr() bool     { return false }
func (softmaxXentGrad) CallsExtern() bool    { return false }
func (softmaxXentGrad) OverwritesInput() int { return -1 }
func (op softmaxXentGrad) WriteHash(h hash.Hash) {
	fmt.Fprint(h, op.String())
}
func (op softmaxXentGrad) Hashcode() uint32 { return opHash(op) }
func (softmaxXentGrad) String() string      { return "SoftmaxXentGrad" }

func opHash(op interface{ WriteHash(hash.Hash) }) uint32 {
	h := fnv.New32a()
	op.WriteHash(h)
	return h.Sum32()
}

// xentInputs checks the logits and targets: float64 matrices of one shape.
func xentInputs(inputs []G.Value, arity int) (z, t tensor.Tensor, err error) {
	if len(inputs) != 2 {
		return nil, nil, fmt.Errorf("fedlearn: softmax cross-entropy takes %d inputs, got %d", arity, len(inputs))
	}
	var ok bool
	if z, ok = inputs[0].(tensor.Tensor); !ok {
		return nil, nil, fmt.Errorf("fedlearn: softmax cross-entropy: logits are %T", inputs[0])
	}
	if t, ok = inputs[1].(tensor.Tensor); !ok {
		return nil, nil, fmt.Errorf("fedlearn: softmax cross-entropy: targets are %T", inputs[1])
	}
	if z.Dtype() != tensor.Float64 || t.Dtype() != tensor.Float64 || z.Dims() != 2 || !z.Shape().Eq(t.Shape()) {
		return nil, nil, fmt.Errorf("fedlearn: softmax cross-entropy: logits %v %v and targets %v %v", z.Dtype(), z.Shape(), t.Dtype(), t.Shape())
	}
	return z, t, nil
}

// scalarOf reads a float64 scalar value.
func scalarOf(v G.Value) (float64, error) {
	switch d := v.Data().(type) {
	case float64:
		return d, nil
	case []float64:
		if len(d) == 1 {
			return d[0], nil
		}
	}
	return 0, fmt.Errorf("fedlearn: softmax cross-entropy gradient: incoming gradient is %T %v, want a float64 scalar", v, v.Shape())
}

// logSumExp is log Σ exp(z), with max(z) subtracted first.
func logSumExp(z []float64) float64 {
	m := z[0]
	for _, v := range z[1:] {
		m = max(m, v)
	}
	s := 0.0
	for _, v := range z {
		s += math.Exp(v - m)
	}
	return m + math.Log(s)
}
