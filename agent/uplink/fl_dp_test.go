package uplink

import (
	"math"
	"slices"
	"testing"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// TestPrivatize: local DP clips the delta to C (direction kept) and adds
// noise of standard deviation z·C drawn afresh each time (not from the
// task, which the control plane knows).
func TestPrivatize(t *testing.T) {
	delta := make([]float32, 10000)
	for i := range delta {
		delta[i] = 1 // norm 100
	}
	out, err := privatize(delta, &cpapi.FLTaskDP{Clip: 2, NoiseMultiplier: 1e-9})
	if err != nil {
		t.Fatal(err)
	}
	norm := 0.0
	for _, v := range out {
		norm += float64(v) * float64(v)
		if math.Abs(float64(v)-0.02) > 1e-6 {
			t.Fatalf("clipped value %v, want 2/100", v)
		}
	}
	if math.Abs(math.Sqrt(norm)-2) > 1e-4 {
		t.Fatalf("clipped norm %v, want 2", math.Sqrt(norm))
	}
	small := make([]float32, 10000) // norm 0: only noise
	a, err := privatize(small, &cpapi.FLTaskDP{Clip: 0.5, NoiseMultiplier: 2})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := privatize(small, &cpapi.FLTaskDP{Clip: 0.5, NoiseMultiplier: 2})
	if slices.Equal(a, b) {
		t.Fatal("two calls drew the same noise")
	}
	var sq float64
	for _, v := range a {
		sq += float64(v) * float64(v)
	}
	if sd := math.Sqrt(sq / float64(len(a))); math.Abs(sd-1) > 0.05 {
		t.Fatalf("noise standard deviation %v, want z·C = 1", sd)
	}
	if _, err := privatize(delta, &cpapi.FLTaskDP{Clip: 0, NoiseMultiplier: 1}); err == nil {
		t.Fatal("a clipping norm of 0 accepted")
	}
}
