package fedlearn

import (
	"fmt"
	"math"
	"os"
	"testing"
)

// goldenCase trains a small MLP for two epochs of Adam on seeded data and
// predicts a few rows: the same numbers on every platform (amd64 computed
// them; arm64 runs this test under qemu-user). Training may differ in the
// last bits between platforms (fused multiply-add on arm64), so the
// comparison allows 1e-9.
func goldenCase(t *testing.T) (Weights, [][]float64) {
	a := mustArch(t, "mlp:8", 4, 3)
	d := blobs(21, 100, 4, 3)
	tr := newTrainer(t, a, InitWeights(a, 5), TrainConfig{Solver: SolverAdam, LearnRate: 0.01, BatchSize: 16, Seed: 9, L2: 1e-3})
	for range 2 {
		if _, err := tr.Epoch(d); err != nil {
			t.Fatal(err)
		}
	}
	w := tr.Weights()
	f, err := NewForward(a, w)
	if err != nil {
		t.Fatal(err)
	}
	var probs [][]float64
	for r := range 3 {
		p := make([]float64, 3)
		if _, err := f.Predict(d.Row(r), p); err != nil {
			t.Fatal(err)
		}
		probs = append(probs, p)
	}
	return w, probs
}

var (
	goldenWeightSum = 24.04103931002798
	goldenProbs     = [][]float64{
		{0.16734896153939438, 0.64287186180271916, 0.18977917665788641},
		{0.27596460660618821, 0.1443936412861645, 0.57964175210764735},
		{0.05865738091142738, 0.025931206189946054, 0.91541141289862649},
	}
)

func TestGoldenAcrossPlatforms(t *testing.T) {
	w, probs := goldenCase(t)
	sum := 0.0
	for i, v := range w.Flatten(nil) {
		sum += float64(i%7+1) * v
	}
	if os.Getenv("FEDLEARN_PRINT_GOLDEN") != "" {
		fmt.Printf("goldenWeightSum = %.17g\n", sum)
		for _, p := range probs {
			fmt.Printf("{%.17g, %.17g, %.17g},\n", p[0], p[1], p[2])
		}
	}
	if math.Abs(sum-goldenWeightSum) > 1e-9 {
		t.Errorf("weighted sum of trained weights %.17g, golden %.17g", sum, goldenWeightSum)
	}
	for r, p := range probs {
		for j := range p {
			if math.Abs(p[j]-goldenProbs[r][j]) > 1e-9 {
				t.Errorf("row %d class %d: probability %.17g, golden %.17g", r, j, p[j], goldenProbs[r][j])
			}
		}
	}
}
