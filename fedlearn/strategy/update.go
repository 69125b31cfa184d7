// Package strategy aggregates federated-learning updates into a new global
// model, with the strategies and parameter defaults of Flower (flwr):
// FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad, FedMedian, FedTrimmedAvg
// and Krum / Multi-Krum.
//
// An update is a client's delta Δ = w_local − w_global as a flat vector in
// the order of fedlearn.Weights.Flatten, float32 as on the wire, with the
// number of examples the client trained on. Arithmetic is float64.
//
// Every strategy is deterministic and invariant to the order in which
// updates arrive, bit for bit: updates are processed in the order of their
// client names (which must be unique in one call), and the order
// statistics (median, trimmed mean, Krum's nearest neighbours) depend only
// on the values. Flower aggregates the clients' weights w_local; this
// package aggregates deltas, which gives the same model because every
// client starts from the same global weights (w_global + mean(Δ) =
// mean(w_local), and distances between deltas equal distances between
// weights).
//
// The package is pure: no network, no clock, no randomness (differential
// privacy's noise lives in fedlearn/privacy).
package strategy

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
)

// ErrInvalidUpdate is returned, wrapped in an *UpdateError, for an update
// that cannot be aggregated.
var ErrInvalidUpdate = errors.New("strategy: invalid update")

// ErrConfig is returned for invalid strategy parameters or an invalid call
// (no updates, an empty or non-finite global model, state of another
// model).
var ErrConfig = errors.New("strategy: invalid configuration")

// Update is one client's contribution to a round.
type Update struct {
	// Client names the sender; unique within a round. Errors name it and
	// it fixes the order of summation.
	Client string
	// Delta is w_local − w_global, flat, as fedlearn.Weights.Flatten
	// orders the weights.
	Delta []float32
	// Examples is the number of training examples behind the update: the
	// client's weight in FedAvg and Multi-Krum. It must be positive.
	Examples int
}

// UpdateError says which client's update was refused and why.
type UpdateError struct {
	Client string
	Reason string
}

func (e *UpdateError) Error() string {
	return fmt.Sprintf("strategy: update from client %q: %s", e.Client, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalidUpdate) true.
func (e *UpdateError) Unwrap() error { return ErrInvalidUpdate }

// Strategy turns the current global model and the round's updates into the
// next global model. Aggregate does not modify its arguments. Strategies
// with state (FedOpt) are not safe for concurrent use; the others are.
type Strategy interface {
	// Name is the strategy's name, as Flower spells it (FedAvg, ...).
	Name() string
	Aggregate(global []float64, updates []Update) ([]float64, error)
}

// MeanApplier is implemented by the strategies whose aggregate is the mean
// of the deltas followed by a server step (FedAvg, FedProx, FedAdam,
// FedYogi, FedAdagrad). Central differential privacy computes the mean
// itself (clipped, uniformly weighted, noised) and hands it to ApplyMean.
type MeanApplier interface {
	Strategy
	// ApplyMean returns the next global model given the round's mean
	// delta. For FedOpt it advances the optimiser's state.
	ApplyMean(global, mean []float64) ([]float64, error)
}

// CheckUpdate reports whether u can be aggregated into a model of dim
// parameters: a named client, a delta of the right length with finite
// values, and a positive example count. A coordinator calls it on receipt
// to refuse a bad update and go on with the round.
func CheckUpdate(dim int, u Update) error {
	if err := checkMeta(dim, u); err != nil {
		return err
	}
	if i := firstNonFinite(u.Delta); i >= 0 {
		return nonFinite(u, i)
	}
	return nil
}

// checkMeta is CheckUpdate without the scan of the values.
func checkMeta(dim int, u Update) error {
	if u.Client == "" {
		return &UpdateError{Client: u.Client, Reason: "no client name"}
	}
	if len(u.Delta) != dim {
		return &UpdateError{Client: u.Client, Reason: fmt.Sprintf("delta has %d values, the model has %d", len(u.Delta), dim)}
	}
	if u.Examples <= 0 {
		return &UpdateError{Client: u.Client, Reason: fmt.Sprintf("example count %d, want a positive number", u.Examples)}
	}
	return nil
}

// firstNonFinite returns the index of the first NaN or ±Inf in v, or -1.
func firstNonFinite(v []float32) int {
	for i, x := range v {
		if !finite32(x) {
			return i
		}
	}
	return -1
}

// finite32 reports whether x is neither NaN nor ±Inf (not all exponent
// bits set).
func finite32(x float32) bool { return math.Float32bits(x)&0x7f800000 != 0x7f800000 }

func nonFinite(u Update, i int) error {
	return &UpdateError{Client: u.Client, Reason: fmt.Sprintf("delta value %d is %v", i, u.Delta[i])}
}

// Check validates a whole call: a non-empty finite global model, at least
// one update, every update valid (CheckUpdate) and client names unique. It
// returns the updates sorted by client name (a new slice; the deltas are
// shared, not copied).
func Check(global []float64, updates []Update) ([]Update, error) {
	return check(global, updates, true)
}

// check is Check; with scan false it leaves the deltas' values to be
// checked while they are read (weightedMean).
func check(global []float64, updates []Update, scan bool) ([]Update, error) {
	if len(global) == 0 {
		return nil, fmt.Errorf("%w: empty global model", ErrConfig)
	}
	for i, v := range global {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("%w: global model value %d is %v", ErrConfig, i, v)
		}
	}
	if len(updates) == 0 {
		return nil, fmt.Errorf("%w: no updates to aggregate", ErrConfig)
	}
	for _, u := range updates {
		if err := checkMeta(len(global), u); err != nil {
			return nil, err
		}
	}
	if scan {
		for _, u := range updates {
			if i := firstNonFinite(u.Delta); i >= 0 {
				return nil, nonFinite(u, i)
			}
		}
	}
	sorted := slices.Clone(updates)
	slices.SortFunc(sorted, func(a, b Update) int { return strings.Compare(a.Client, b.Client) })
	for i := 1; i < len(sorted); i++ {
		if sorted[i].Client == sorted[i-1].Client {
			return nil, &UpdateError{Client: sorted[i].Client, Reason: "more than one update in the round"}
		}
	}
	return sorted, nil
}

// weightedMean returns Σ n_i·Δ_i / Σ n_i over sorted updates (Flower's
// aggregate), as float64, and fails on a NaN or Inf in a delta. It does
// not check the values as it reads them: a NaN or Inf makes its
// coordinate's sum non-finite (weights are positive, and float32 values
// times an int's weight cannot overflow float64, summed over any number
// of clients), so one scan of the mean finds a bad coordinate and only
// then are the deltas searched for the culprit (the first by client
// name at the first bad coordinate).
func weightedMean(sorted []Update, dim int) ([]float64, error) {
	mean := make([]float64, dim)
	total := 0.0
	for _, u := range sorted {
		total += float64(u.Examples)
	}
	for _, u := range sorted {
		axpy32(mean, float64(u.Examples), u.Delta)
	}
	for j, v := range mean {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			for _, u := range sorted {
				if !finite32(u.Delta[j]) {
					return nil, nonFinite(u, j)
				}
			}
		}
	}
	inv := 1 / total
	for j := range mean {
		mean[j] *= inv
	}
	return mean, nil
}

// axpy32 adds a·x to y; len(x) ≥ len(y).
func axpy32(y []float64, a float64, x []float32) {
	x = x[:len(y)]
	for j := range y {
		y[j] += a * float64(x[j])
	}
}

// add returns global + delta as a new slice.
func add(global, delta []float64) []float64 {
	out := make([]float64, len(global))
	for j := range out {
		out[j] = global[j] + delta[j]
	}
	return out
}

// checkMean validates ApplyMean's arguments.
func checkMean(global, mean []float64) error {
	if len(global) == 0 {
		return fmt.Errorf("%w: empty global model", ErrConfig)
	}
	if len(mean) != len(global) {
		return fmt.Errorf("%w: mean delta has %d values, the model has %d", ErrConfig, len(mean), len(global))
	}
	for i := range global {
		if math.IsNaN(global[i]) || math.IsInf(global[i], 0) {
			return fmt.Errorf("%w: global model value %d is %v", ErrConfig, i, global[i])
		}
		if math.IsNaN(mean[i]) || math.IsInf(mean[i], 0) {
			return fmt.Errorf("%w: mean delta value %d is %v", ErrConfig, i, mean[i])
		}
	}
	return nil
}
