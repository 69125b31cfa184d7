package strategy

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// benchRound is 1,000 updates of 10,000 float32 values (40 MB), built once.
var benchRound = func() func() ([]float64, []Update) {
	var g []float64
	var us []Update
	return func() ([]float64, []Update) {
		if us == nil {
			rng := rand.New(rand.NewPCG(1, 1))
			us = randomRound(rng, 1000, 10000)
			for i := range us {
				us[i].Client = fmt.Sprintf("agent-%05d", i)
			}
			g = make([]float64, 10000)
		}
		return g, us
	}
}()

func benchStrategy(b *testing.B, s Strategy) {
	g, us := benchRound()
	b.ReportAllocs()
	b.SetBytes(int64(len(us) * len(g) * 4))
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.Aggregate(g, us); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFedAvg(b *testing.B)        { benchStrategy(b, FedAvg{}) }
func BenchmarkFedMedian(b *testing.B)     { benchStrategy(b, FedMedian{}) }
func BenchmarkFedTrimmedAvg(b *testing.B) { benchStrategy(b, FedTrimmedAvg{Beta: 0.2}) }
func BenchmarkKrum(b *testing.B)          { benchStrategy(b, Krum{Malicious: 100}) }
func BenchmarkFedAdam(b *testing.B) {
	f, _ := NewFedOpt(Adam, DefaultFedOptConfig(Adam))
	benchStrategy(b, f)
}
