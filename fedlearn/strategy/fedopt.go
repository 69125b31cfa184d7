package strategy

import (
	"fmt"
	"math"
	"slices"
)

// Optimizer names a FedOpt server optimiser.
type Optimizer string

// Server optimisers of Adaptive Federated Optimization (Reddi et al. 2021).
const (
	Adam    Optimizer = "adam"
	Yogi    Optimizer = "yogi"
	Adagrad Optimizer = "adagrad"
)

// FedOptConfig are FedOpt's parameters, named as Flower names them.
type FedOptConfig struct {
	// Eta (η) is the server learning rate.
	Eta float64 `json:"eta"`
	// EtaL (η_l) is the client learning rate. Flower stores it without
	// using it on the server; the coordinator sends it to the clients.
	EtaL float64 `json:"eta_l"`
	// Beta1 (β1) is the first-moment (momentum) factor; Adagrad uses 0.
	Beta1 float64 `json:"beta_1"`
	// Beta2 (β2) is the second-moment factor; Adagrad does not use it.
	Beta2 float64 `json:"beta_2"`
	// Tau (τ) controls the degree of adaptivity: it is added to √v.
	Tau float64 `json:"tau"`
}

// DefaultFedOptConfig returns Flower's defaults for the optimiser:
//
//	FedAdam:    η = 0.1,  η_l = 0.1,    β1 = 0.9, β2 = 0.99, τ = 1e-9
//	FedYogi:    η = 0.01, η_l = 0.0316, β1 = 0.9, β2 = 0.99, τ = 1e-3
//	FedAdagrad: η = 0.1,  η_l = 0.1,    β1 = 0,   β2 = 0,    τ = 1e-9
func DefaultFedOptConfig(o Optimizer) FedOptConfig {
	switch o {
	case Yogi:
		return FedOptConfig{Eta: 1e-2, EtaL: 0.0316, Beta1: 0.9, Beta2: 0.99, Tau: 1e-3}
	case Adagrad:
		return FedOptConfig{Eta: 1e-1, EtaL: 1e-1, Tau: 1e-9}
	default:
		return FedOptConfig{Eta: 1e-1, EtaL: 1e-1, Beta1: 0.9, Beta2: 0.99, Tau: 1e-9}
	}
}

// FedOpt is FedAdam, FedYogi or FedAdagrad: the example-weighted mean delta
// Δ_t (FedAvg's) is treated as a pseudo-gradient for a server optimiser,
// exactly as Flower's strategies do it (element-wise):
//
//	m_t = β1·m_{t−1} + (1 − β1)·Δ_t                      (Adagrad: m_t = Δ_t)
//	Adam:    v_t = β2·v_{t−1} + (1 − β2)·Δ_t²
//	Yogi:    v_t = v_{t−1} − (1 − β2)·Δ_t²·sign(v_{t−1} − Δ_t²)
//	Adagrad: v_t = v_{t−1} + Δ_t²
//	w_{t+1} = w_t + η'·m_t / (√v_t + τ)
//
// with m_0 = v_0 = 0, and η' = η except for Adam, where Flower corrects the
// bias as η' = η·√(1 − β2^(t+1)) / (1 − β1^(t+1)) with t the 1-based round
// (Flower's server_round; the exponent t+1 is Flower's).
//
// FedOpt keeps m, v and t between rounds: one FedOpt serves one job, and its
// State is saved with the job to survive a restart.
type FedOpt struct {
	opt   Optimizer
	cfg   FedOptConfig
	round int
	m, v  []float64
}

// NewFedOpt returns a FedOpt for the optimiser. Eta must be positive, Tau
// and EtaL non-negative, Beta1 and Beta2 in [0, 1) (Adagrad ignores both
// betas, as Flower sets them to 0).
func NewFedOpt(o Optimizer, cfg FedOptConfig) (*FedOpt, error) {
	switch o {
	case Adam, Yogi:
	case Adagrad:
		cfg.Beta1, cfg.Beta2 = 0, 0
	default:
		return nil, fmt.Errorf("%w: unknown FedOpt optimiser %q (adam, yogi, adagrad)", ErrConfig, o)
	}
	finite := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	switch {
	case !finite(cfg.Eta) || cfg.Eta <= 0:
		return nil, fmt.Errorf("%w: %s eta %v, want > 0", ErrConfig, o, cfg.Eta)
	case !finite(cfg.EtaL) || cfg.EtaL < 0:
		return nil, fmt.Errorf("%w: %s eta_l %v, want ≥ 0", ErrConfig, o, cfg.EtaL)
	case !finite(cfg.Tau) || cfg.Tau < 0:
		return nil, fmt.Errorf("%w: %s tau %v, want ≥ 0", ErrConfig, o, cfg.Tau)
	case !(cfg.Beta1 >= 0 && cfg.Beta1 < 1):
		return nil, fmt.Errorf("%w: %s beta_1 %v, want in [0, 1)", ErrConfig, o, cfg.Beta1)
	case !(cfg.Beta2 >= 0 && cfg.Beta2 < 1):
		return nil, fmt.Errorf("%w: %s beta_2 %v, want in [0, 1)", ErrConfig, o, cfg.Beta2)
	}
	return &FedOpt{opt: o, cfg: cfg}, nil
}

// Name implements Strategy: FedAdam, FedYogi or FedAdagrad.
func (f *FedOpt) Name() string {
	switch f.opt {
	case Yogi:
		return "FedYogi"
	case Adagrad:
		return "FedAdagrad"
	}
	return "FedAdam"
}

// Config returns the parameters in use.
func (f *FedOpt) Config() FedOptConfig { return f.cfg }

// Aggregate implements Strategy and advances the optimiser by one round.
func (f *FedOpt) Aggregate(global []float64, updates []Update) ([]float64, error) {
	sorted, err := check(global, updates, false)
	if err != nil {
		return nil, err
	}
	mean, err := weightedMean(sorted, len(global))
	if err != nil {
		return nil, err
	}
	return f.ApplyMean(global, mean)
}

// ApplyMean implements MeanApplier: one optimiser step with pseudo-gradient
// mean. On error the state is unchanged.
func (f *FedOpt) ApplyMean(global, mean []float64) ([]float64, error) {
	if err := checkMean(global, mean); err != nil {
		return nil, err
	}
	if f.m != nil && len(f.m) != len(global) {
		return nil, fmt.Errorf("%w: %s state is for %d parameters, the model has %d", ErrConfig, f.Name(), len(f.m), len(global))
	}
	if f.m == nil {
		f.m, f.v = make([]float64, len(global)), make([]float64, len(global))
	}
	f.round++
	b1, b2 := f.cfg.Beta1, f.cfg.Beta2
	eta := f.cfg.Eta
	if f.opt == Adam {
		t := float64(f.round) + 1
		eta *= math.Sqrt(1-math.Pow(b2, t)) / (1 - math.Pow(b1, t))
	}
	out := make([]float64, len(global))
	for j, d := range mean {
		m := b1*f.m[j] + (1-b1)*d
		v := f.v[j]
		d2 := d * d
		switch f.opt {
		case Adam:
			v = b2*v + (1-b2)*d2
		case Yogi:
			v -= (1 - b2) * d2 * sign(v-d2)
		case Adagrad:
			v += d2
		}
		f.m[j], f.v[j] = m, v
		out[j] = global[j] + eta*m/(math.Sqrt(v)+f.cfg.Tau)
	}
	return out, nil
}

// sign is numpy's sign for finite x.
func sign(x float64) float64 {
	switch {
	case x > 0:
		return 1
	case x < 0:
		return -1
	}
	return 0
}

// FedOptState is the optimiser's state between rounds.
type FedOptState struct {
	// Round is the number of rounds applied so far.
	Round int       `json:"round"`
	M     []float64 `json:"m,omitempty"`
	V     []float64 `json:"v,omitempty"`
}

// State returns a copy of the optimiser's state.
func (f *FedOpt) State() FedOptState {
	return FedOptState{Round: f.round, M: slices.Clone(f.m), V: slices.Clone(f.v)}
}

// SetState restores a state from State (for instance after a restart).
func (f *FedOpt) SetState(s FedOptState) error {
	if s.Round < 0 || len(s.M) != len(s.V) || (s.Round > 0) != (len(s.M) > 0) {
		return fmt.Errorf("%w: %s state: round %d with %d first and %d second moments", ErrConfig, f.Name(), s.Round, len(s.M), len(s.V))
	}
	for j := range s.M {
		if math.IsNaN(s.M[j]) || math.IsInf(s.M[j], 0) || math.IsNaN(s.V[j]) || math.IsInf(s.V[j], 0) {
			return fmt.Errorf("%w: %s state value %d is not finite", ErrConfig, f.Name(), j)
		}
		if s.V[j] < 0 {
			return fmt.Errorf("%w: %s state second moment %d is negative", ErrConfig, f.Name(), j)
		}
	}
	f.round, f.m, f.v = s.Round, slices.Clone(s.M), slices.Clone(s.V)
	return nil
}
