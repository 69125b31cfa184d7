package fedlearn

import (
	"math"
	"strings"
	"testing"
)

func TestPredictBatchLikePredict(t *testing.T) {
	for _, arch := range []string{"lr", "mlp:16", "mlp:16,8"} {
		a := mustArch(t, arch, 7, 4)
		f, err := NewForward(a, InitWeights(a, 3))
		if err != nil {
			t.Fatal(err)
		}
		for _, rows := range []int{1, 5, 300, 17} { // grows, then reuses
			d := blobs(uint64(rows), rows, 7, 4)
			probs := make([]float64, rows*4)
			classes := make([]int, rows)
			if err := f.PredictBatch(d.X, rows, probs, classes); err != nil {
				t.Fatal(err)
			}
			p := make([]float64, 4)
			for r := 0; r < rows; r++ {
				c, _ := f.Predict(d.Row(r), p)
				if c != classes[r] {
					t.Errorf("%s rows %d: row %d class %d, Predict says %d", arch, rows, r, classes[r], c)
				}
				for j := range p {
					if math.Abs(p[j]-probs[r*4+j]) > 1e-12 {
						t.Fatalf("%s rows %d: row %d class %d: %v, Predict says %v", arch, rows, r, j, probs[r*4+j], p[j])
					}
				}
			}
		}
		if err := f.PredictBatch(make([]float64, 14), 2, make([]float64, 8), nil); err != nil {
			t.Errorf("nil classes: %v", err)
		}
	}
	a := mustArch(t, "lr", 3, 2)
	f, _ := NewForward(a, InitWeights(a, 1))
	for _, tc := range []struct {
		x       []float64
		rows    int
		probs   []float64
		classes []int
		want    string
	}{
		{nil, 0, nil, nil, "0 rows"},
		{make([]float64, 5), 2, make([]float64, 4), nil, "feature values"},
		{make([]float64, 6), 2, make([]float64, 3), nil, "probabilities"},
		{make([]float64, 6), 2, make([]float64, 4), make([]int, 1), "classes"},
	} {
		if err := f.PredictBatch(tc.x, tc.rows, tc.probs, tc.classes); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err = %v, want it to name %q", err, tc.want)
		}
	}
}

func TestPredictAllocatesNothing(t *testing.T) {
	a := mustArch(t, "mlp:64,32", 43, 6)
	f, _ := NewForward(a, InitWeights(a, 1))
	x := blobs(1, 1, 43, 6).X
	p := make([]float64, 6)
	if n := testing.AllocsPerRun(100, func() { f.Predict(x, p) }); n != 0 {
		t.Errorf("Predict allocates %v times a call", n)
	}
}
