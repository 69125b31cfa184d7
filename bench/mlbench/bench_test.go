package mlbench

import (
	"fmt"
	"testing"

	"github.com/edgefleet/edgefleet/fedlearn"
)

var stepCases = []struct {
	arch        string
	in, classes int
	batch       int
}{
	{"mlp:64", 43, 6, 256},
	{"mlp:64", 43, 6, 64},
	{"lr", 5, 2, 64},
}

func BenchmarkStep(b *testing.B) {
	for _, tc := range stepCases {
		a, _ := fedlearn.ParseArch(tc.arch, tc.in, tc.classes)
		w := fedlearn.InitWeights(a, 1)
		x, y := Data(1, tc.batch, tc.in, tc.classes)
		name := fmt.Sprintf("%s_%dx%d/batch%d", a, tc.in, tc.classes, tc.batch)
		b.Run(name+"/gorgonia", func(b *testing.B) {
			tr, err := fedlearn.NewTrainer(a, w, fedlearn.TrainConfig{Solver: fedlearn.SolverSGD, LearnRate: 1e-3, BatchSize: tc.batch})
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tr.Step(x, y); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*tc.batch)/b.Elapsed().Seconds(), "examples/s")
		})
		b.Run(name+"/gonum", func(b *testing.B) {
			net, err := NewNet(a, w, tc.batch, "sgd", 1e-3, 0)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := net.Step(x, y); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*tc.batch)/b.Elapsed().Seconds(), "examples/s")
		})
	}
}

func BenchmarkInferBatch(b *testing.B) {
	const batch = 256
	a, _ := fedlearn.ParseArch("mlp:64", 43, 6)
	w := fedlearn.InitWeights(a, 1)
	x, _ := Data(2, batch, 43, 6)
	probs := make([]float64, batch*6)
	classes := make([]int, batch)
	report := func(b *testing.B) {
		b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "examples/s")
	}
	b.Run("forward", func(b *testing.B) {
		f, _ := fedlearn.NewForward(a, w)
		b.ReportAllocs()
		for b.Loop() {
			if err := f.PredictBatch(x, batch, probs, classes); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
	b.Run("forward_rowwise", func(b *testing.B) {
		f, _ := fedlearn.NewForward(a, w)
		b.ReportAllocs()
		for b.Loop() {
			for r := 0; r < batch; r++ {
				if _, err := f.Predict(x[r*43:(r+1)*43], probs[r*6:(r+1)*6]); err != nil {
					b.Fatal(err)
				}
			}
		}
		report(b)
	})
	b.Run("gorgonia", func(b *testing.B) {
		g, err := NewGraphForward(a, w, batch)
		if err != nil {
			b.Fatal(err)
		}
		defer g.Close()
		b.ReportAllocs()
		for b.Loop() {
			if err := g.Predict(x, probs); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
	b.Run("gonum", func(b *testing.B) {
		net, _ := NewNet(a, w, batch, "sgd", 1e-3, 0)
		b.ReportAllocs()
		for b.Loop() {
			if err := net.Predict(x, batch, probs); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
}

func BenchmarkInferSingle(b *testing.B) {
	a, _ := fedlearn.ParseArch("mlp:64", 43, 6)
	w := fedlearn.InitWeights(a, 1)
	x, _ := Data(3, 1, 43, 6)
	p := make([]float64, 6)
	b.Run("forward", func(b *testing.B) {
		f, _ := fedlearn.NewForward(a, w)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := f.Predict(x, p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("gonum", func(b *testing.B) {
		net, _ := NewNet(a, w, 1, "sgd", 1e-3, 0)
		b.ReportAllocs()
		for b.Loop() {
			if err := net.Predict(x, 1, p); err != nil {
				b.Fatal(err)
			}
		}
	})
}
