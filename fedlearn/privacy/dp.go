// Package privacy is differential privacy for federated learning, as
// Flower's DP strategy wrappers and mods do it (DP-FedAvg, McMahan et al.
// 2018; FlatClip, arXiv:1710.06963): each client's delta is clipped to L2
// norm C and Gaussian noise is added either centrally, to the mean of the m
// aggregated deltas with σ = z·C/m, or locally, on the device, to the
// device's own delta with σ = z·C. The accountant reports the (ε, δ)
// guarantee of the rounds run so far from the Rényi DP of the
// Poisson-subsampled Gaussian mechanism.
//
// Randomness comes from a NoiseSource, seeded for tests and from the
// operating system in production. Noise is drawn in float64 with Go's
// NormFloat64, which is not hardened against the floating-point attacks on
// textbook samplers (Mironov 2012); that is outside this package.
package privacy

import (
	crand "crypto/rand"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/edgefleet/edgefleet/fedlearn/strategy"
)

// NoiseSource draws standard normal values. *math/rand/v2.Rand is one.
type NoiseSource interface {
	NormFloat64() float64
}

// NewSource returns a NoiseSource from a seed: the same seed, the same
// noise (ChaCha8).
func NewSource(seed [32]byte) NoiseSource {
	return rand.New(rand.NewChaCha8(seed))
}

// SystemSource returns a NoiseSource seeded from the operating system's
// random generator: the production default.
func SystemSource() NoiseSource {
	var seed [32]byte
	crand.Read(seed[:]) // never fails (crypto/rand panics rather than return an error)
	return NewSource(seed)
}

// L2Norm is the Euclidean norm of v, in float64, without overflow.
func L2Norm[F float32 | float64](v []F) float64 {
	s := 0.0
	for _, x := range v {
		s += float64(x) * float64(x)
	}
	if !math.IsInf(s, 1) {
		return math.Sqrt(s)
	}
	m := 0.0
	for _, x := range v {
		m = math.Max(m, math.Abs(float64(x)))
	}
	s = 0
	for _, x := range v {
		y := float64(x) / m
		s += y * y
	}
	return m * math.Sqrt(s)
}

// ClipFactor is min(1, c/norm): the factor that brings a vector of that
// norm to L2 norm at most c (Flower's clip_inputs_inplace).
func ClipFactor(norm, c float64) float64 {
	if norm <= c {
		return 1
	}
	return c / norm
}

func checkParams(c, z float64) error {
	if !(c > 0) || math.IsInf(c, 0) {
		return fmt.Errorf("privacy: clipping norm %v, want a finite number > 0", c)
	}
	if !(z >= 0) || math.IsInf(z, 0) {
		return fmt.Errorf("privacy: noise multiplier %v, want a finite number ≥ 0", z)
	}
	return nil
}

// Central is central differential privacy around a mean-based strategy
// (Flower's DifferentialPrivacyServerSideFixedClipping): every delta is
// clipped to L2 norm Clip, the clipped deltas are averaged with equal
// weights, Gaussian noise of standard deviation σ = z·C/m is added to every
// coordinate of the mean (m = number of updates aggregated), and the noisy
// mean goes to Next (FedAvg's step, or FedAdam/FedYogi/FedAdagrad's
// optimiser, which only post-process it).
//
// Example counts are ignored: weighting by them would let one client move
// the mean by more than C/m, which the noise does not cover (Flower's
// wrapper keeps the inner strategy's weighting; this one does not).
// Strategies without a mean (FedMedian, FedTrimmedAvg, Krum) have other
// sensitivities and cannot be wrapped. Dividing by the actual m, as Flower
// does with num_sampled_clients, is the usual approximation of DP-FedAvg's
// fixed denominator q·N.
type Central struct {
	// Clip is the clipping norm C.
	Clip float64
	// NoiseMultiplier is z.
	NoiseMultiplier float64
	// Next applies the noisy mean: strategy.FedAvg, strategy.FedProx or a
	// *strategy.FedOpt.
	Next strategy.MeanApplier
	// Source draws the noise; nil means SystemSource.
	Source NoiseSource

	last Round
}

// Round describes the last aggregation of a Central.
type Round struct {
	// Clients is m, the number of updates aggregated.
	Clients int `json:"clients"`
	// Clipped is how many of them were longer than C.
	Clipped int `json:"clipped"`
	// Sigma is the standard deviation of the noise added to the mean.
	Sigma float64 `json:"sigma"`
}

// Name implements strategy.Strategy: "DP(FedAvg)" and so on.
func (c *Central) Name() string {
	if c.Next == nil {
		return "DP()"
	}
	return "DP(" + c.Next.Name() + ")"
}

// Last returns what the last successful Aggregate did.
func (c *Central) Last() Round { return c.last }

// Aggregate implements strategy.Strategy.
func (c *Central) Aggregate(global []float64, updates []strategy.Update) ([]float64, error) {
	if err := checkParams(c.Clip, c.NoiseMultiplier); err != nil {
		return nil, err
	}
	if c.Next == nil {
		return nil, fmt.Errorf("privacy: central DP has no strategy to apply the mean (FedAvg, FedProx or FedOpt)")
	}
	sorted, err := strategy.Check(global, updates)
	if err != nil {
		return nil, err
	}
	if c.Source == nil {
		c.Source = SystemSource()
	}
	m := len(sorted)
	mean := make([]float64, len(global))
	clipped := 0
	for _, u := range sorted {
		f := ClipFactor(L2Norm(u.Delta), c.Clip)
		if f < 1 {
			clipped++
		}
		for j, v := range u.Delta {
			mean[j] += f * float64(v)
		}
	}
	sigma := c.NoiseMultiplier * c.Clip / float64(m)
	inv := 1 / float64(m)
	for j := range mean {
		mean[j] *= inv
		if sigma > 0 {
			mean[j] += sigma * c.Source.NormFloat64()
		}
	}
	out, err := c.Next.ApplyMean(global, mean)
	if err != nil {
		return nil, err
	}
	c.last = Round{Clients: m, Clipped: clipped, Sigma: sigma}
	return out, nil
}

// Local is local differential privacy on the device (in the spirit of
// Flower's LocalDpMod, parameterised by the noise multiplier instead of ε):
// the device clips its delta to L2 norm Clip and adds Gaussian noise of
// standard deviation σ = z·C to every value before the delta leaves it.
// There is no m on a device: its own release is the Gaussian mechanism, so
// the accountant with the same z (and q = the device's chance to be
// selected) bounds what one device's updates reveal, without trusting the
// coordinator. The mean of m such deltas carries noise z·C/√m, √m times
// the central noise.
type Local struct {
	// Clip is the clipping norm C.
	Clip float64
	// NoiseMultiplier is z.
	NoiseMultiplier float64
	// Source draws the noise; nil means SystemSource.
	Source NoiseSource
}

// Privatize clips delta (w_local − w_global as the device computes it, in
// float64), adds the noise, and returns the result as float32 for the
// wire. Rounding to float32 after the noise is post-processing and costs no
// privacy. delta is not modified. clipped says whether the delta was longer
// than C.
func (l *Local) Privatize(delta []float64) (out []float32, clipped bool, err error) {
	if err := checkParams(l.Clip, l.NoiseMultiplier); err != nil {
		return nil, false, err
	}
	for i, v := range delta {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, false, fmt.Errorf("privacy: delta value %d is %v", i, v)
		}
	}
	if l.Source == nil {
		l.Source = SystemSource()
	}
	f := ClipFactor(L2Norm(delta), l.Clip)
	sigma := l.NoiseMultiplier * l.Clip
	out = make([]float32, len(delta))
	for j, v := range delta {
		x := f * v
		if sigma > 0 {
			x += sigma * l.Source.NormFloat64()
		}
		out[j] = float32(x)
	}
	return out, f < 1, nil
}
