package secagg

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
)

// Flower's defaults (flwr SecAggPlusWorkflow).
const (
	DefaultClippingRange     = 8.0
	DefaultQuantizationRange = 1 << 22
	DefaultModulusRange      = 1 << 32
)

// Limits of one round.
const (
	// MaxClients bounds the clients of one round (client ids are 1..n).
	MaxClients = 1 << 16
	// MaxDim bounds the length of one update.
	MaxDim = 1 << 28
)

// ErrConfig is returned, wrapped, for invalid parameters.
var ErrConfig = errors.New("secagg: invalid configuration")

// Config holds the SecAgg+ parameters as Flower's SecAggPlusWorkflow takes
// them.
//
// NumShares and ReconstructionThreshold follow Flower's int-or-float
// convention in one float64: a value in (0, 1] is a proportion (of the
// sampled clients for NumShares, of the number of shares for the
// threshold), a value above 1 is a count and must be an integer (Flower's
// integer 1 means the proportion 1.0, which is the same here). Flower has
// no default for either; both are required.
type Config struct {
	// NumShares is the size of each client's neighbourhood, itself
	// included: its mask seed and mask key are split into this many
	// shares, one kept and one per neighbour. As a count it must be
	// greater than 2.
	NumShares float64
	// ReconstructionThreshold is the number of shares that reconstruct a
	// secret; t-1 colluding neighbours learn nothing. As a count it must be
	// less than NumShares (when NumShares is a count).
	ReconstructionThreshold float64
	// ClippingRange c: each value is clipped to [-c, c] before
	// quantisation. 0 = DefaultClippingRange (8.0).
	ClippingRange float64
	// QuantizationRange Q: clipped values map to integers in [0, Q).
	// 0 = DefaultQuantizationRange (2^22).
	QuantizationRange uint64
	// ModulusRange M: masks and sums live in Z_M; a power of two, greater
	// than Q, at most 2^32. 0 = DefaultModulusRange (2^32).
	ModulusRange uint64
}

// Params are the resolved parameters of one round, sent to every client in
// the setup stage.
type Params struct {
	NumClients        int
	NumShares         int
	Threshold         int
	ClippingRange     float64
	QuantizationRange uint64
	ModulusRange      uint64
	// Dim is the length of every update.
	Dim int
}

// Resolve applies the defaults and Flower's rules for n sampled clients
// and updates of dim values:
//
//   - rounding is Python's (half to even), as in Flower;
//   - a proportion of shares is round(p·n), made odd when below n, and n
//     when that leaves 2 or fewer; a count above n is cut to n (Flower lets
//     the neighbour window wrap around; the neighbourhood is the same);
//   - an even count below n is made odd (Flower warns and adds one);
//   - a proportion threshold is round(p·k), at least 2;
//   - n·(Q−1) must be below M, so that the sum cannot wrap around (Flower
//     only warns; here it is an error because the output would be wrong).
func (c Config) Resolve(n, dim int) (Params, error) {
	p := Params{NumClients: n, Dim: dim, ClippingRange: c.ClippingRange, QuantizationRange: c.QuantizationRange, ModulusRange: c.ModulusRange}
	if p.ClippingRange == 0 {
		p.ClippingRange = DefaultClippingRange
	}
	if p.QuantizationRange == 0 {
		p.QuantizationRange = DefaultQuantizationRange
	}
	if p.ModulusRange == 0 {
		p.ModulusRange = DefaultModulusRange
	}
	if n < 2 || n > MaxClients {
		return Params{}, fmt.Errorf("%w: %d clients, want 2..%d", ErrConfig, n, MaxClients)
	}
	k, err := count("num_shares", c.NumShares)
	if err != nil {
		return Params{}, err
	}
	if k < 0 { // a proportion
		k = int(math.RoundToEven(c.NumShares * float64(n))) // Python's round
		if k < n && k%2 == 0 {
			k++
		}
		if k <= 2 {
			k = n
		}
	} else if k <= 2 {
		return Params{}, fmt.Errorf("%w: num_shares %v: a count must be greater than 2", ErrConfig, c.NumShares)
	}
	if k > n {
		k = n
	}
	if k < n && k%2 == 0 {
		k++
	}
	p.NumShares = k
	t, err := count("reconstruction_threshold", c.ReconstructionThreshold)
	if err != nil {
		return Params{}, err
	}
	if t < 0 {
		t = max(int(math.RoundToEven(c.ReconstructionThreshold*float64(k))), 2)
	} else if c.NumShares > 1 && t >= int(c.NumShares) {
		return Params{}, fmt.Errorf("%w: reconstruction_threshold %d must be less than num_shares %v", ErrConfig, t, c.NumShares)
	}
	p.Threshold = t
	if err := p.Validate(); err != nil {
		return Params{}, err
	}
	return p, nil
}

// count returns a count (> 1, integral), or -1 for a proportion in (0, 1].
func count(name string, v float64) (int, error) {
	switch {
	case math.IsNaN(v) || v <= 0:
		return 0, fmt.Errorf("%w: %s %v: want a proportion in (0, 1] or a count (Flower has no default)", ErrConfig, name, v)
	case v <= 1:
		return -1, nil
	case v != math.Trunc(v) || v > MaxClients:
		return 0, fmt.Errorf("%w: %s %v: a count must be an integer up to %d", ErrConfig, name, v, MaxClients)
	}
	return int(v), nil
}

// Validate checks resolved parameters (the server's, or those a client
// receives in the setup stage).
func (p Params) Validate() error {
	switch {
	case p.NumClients < 2 || p.NumClients > MaxClients:
		return fmt.Errorf("%w: %d clients, want 2..%d", ErrConfig, p.NumClients, MaxClients)
	case p.NumShares < 2 || p.NumShares > p.NumClients:
		return fmt.Errorf("%w: num_shares %d, want 2..%d (the number of clients)", ErrConfig, p.NumShares, p.NumClients)
	case p.Threshold < 2 || p.Threshold > p.NumShares:
		return fmt.Errorf("%w: reconstruction_threshold %d, want 2..%d (num_shares)", ErrConfig, p.Threshold, p.NumShares)
	case math.IsNaN(p.ClippingRange) || math.IsInf(p.ClippingRange, 0) || p.ClippingRange <= 0:
		return fmt.Errorf("%w: clipping_range %v, want a positive finite number", ErrConfig, p.ClippingRange)
	case p.ModulusRange < 2 || p.ModulusRange > 1<<32 || bits.OnesCount64(p.ModulusRange) != 1:
		return fmt.Errorf("%w: modulus_range %d, want a power of two up to 2^32", ErrConfig, p.ModulusRange)
	case p.QuantizationRange < 2 || p.QuantizationRange >= p.ModulusRange:
		return fmt.Errorf("%w: quantization_range %d, want 2..modulus_range-1 (%d)", ErrConfig, p.QuantizationRange, p.ModulusRange-1)
	case p.Dim < 1 || p.Dim > MaxDim:
		return fmt.Errorf("%w: update length %d, want 1..%d", ErrConfig, p.Dim, MaxDim)
	}
	hi, lo := bits.Mul64(uint64(p.NumClients), p.QuantizationRange-1)
	if hi != 0 || lo >= p.ModulusRange {
		return fmt.Errorf("%w: %d clients x (quantization_range-1) = %d does not fit below modulus_range %d: the sum would wrap around", ErrConfig, p.NumClients, lo, p.ModulusRange)
	}
	return nil
}

// width is the number of bytes of one element of a masked vector.
func (p Params) width() int {
	return (bits.Len64(p.ModulusRange-1) + 7) / 8
}
