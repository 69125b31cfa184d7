package secagg

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// Quantisation as Flower's: clip to [−c, c], shift and scale into
// [0, Q−1], round stochastically (up with probability equal to the
// fractional part, so the rounding is unbiased). Flower scales by Q/(2c),
// which maps c to Q itself; here the scale is (Q−1)/(2c) so every value is
// below Q as the parameter's name says, and the bound n·(Q−1) < M holds.

func scale(p Params) float64 {
	return float64(p.QuantizationRange-1) / (2 * p.ClippingRange)
}

// quantize writes the quantised delta into dst.
func quantize(dst []uint32, delta []float32, p Params, rng *rand.Rand) error {
	c, s := p.ClippingRange, scale(p)
	top := float64(p.QuantizationRange - 1)
	for i, v := range delta {
		x := float64(v)
		if math.IsNaN(x) {
			return fmt.Errorf("secagg: update value %d is NaN", i)
		}
		x = (min(max(x, -c), c) + c) * s
		f := math.Floor(x)
		if rng.Float64() < x-f {
			f++
		}
		dst[i] = uint32(min(f, top))
	}
	return nil
}

// dequantize turns the sum of n clients' quantised vectors (each entry at
// most n·(Q−1)) into the sum of their clipped deltas.
func dequantize(sum []uint32, n int, p Params) ([]float64, error) {
	s := scale(p)
	limit := uint64(n) * (p.QuantizationRange - 1)
	out := make([]float64, len(sum))
	off := float64(n) * p.ClippingRange
	for i, v := range sum {
		if uint64(v) > limit {
			return nil, fmt.Errorf("secagg: unmasked sum at %d is %d, above %d clients x (quantization_range-1) = %d: masks did not cancel", i, v, n, limit)
		}
		out[i] = float64(v)/s - off
	}
	return out, nil
}

// Weighted is the vector a client masks for a weighted mean, as Flower's
// secaggplus_mod builds it: its weight r = min(examples/maxWeight, 1)
// first, then r·delta. The server divides the sum of the r·delta by the
// sum of the r; the examples themselves are not revealed.
func Weighted(delta []float32, examples int, maxWeight float64) []float32 {
	r := float32(math.Min(float64(examples)/maxWeight, 1))
	out := make([]float32, len(delta)+1)
	out[0] = r
	for i, d := range delta {
		out[i+1] = r * d
	}
	return out
}
