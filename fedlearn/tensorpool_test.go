package fedlearn

import (
	"testing"

	"gorgonia.org/tensor"
)

// TestTensorPoolOff: a tensor handed back to gorgonia's pool is never
// handed out again (the pool can hang concurrent trainers: tensorpool.go).
// With the pool on, the tensor returned is the next one New gives.
func TestTensorPoolOff(t *testing.T) {
	newT := func() *tensor.Dense { return tensor.New(tensor.WithShape(2), tensor.Of(tensor.Float32)) }
	// drain whatever the pool holds, so that a return would be taken next
	for range tensor.PoolSize + 1 {
		newT()
	}
	a := newT()
	tensor.ReturnTensor(a)
	if b := newT(); a == b {
		t.Fatal("a tensor returned to gorgonia's pool came back from tensor.New: the pool is on")
	}
}
