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
