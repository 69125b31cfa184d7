package strategy

import (
	"fmt"
	"math"
)

// FedAvg is federated averaging (McMahan et al. 2017): the next global
// model is w + Σ n_i·Δ_i / Σ n_i, each client weighted by its example
// count (Flower's aggregate).
type FedAvg struct{}

// Name implements Strategy.
func (FedAvg) Name() string { return "FedAvg" }

// Aggregate implements Strategy.
func (f FedAvg) Aggregate(global []float64, updates []Update) ([]float64, error) {
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

// ApplyMean implements MeanApplier: global + mean.
func (FedAvg) ApplyMean(global, mean []float64) ([]float64, error) {
	if err := checkMean(global, mean); err != nil {
		return nil, err
	}
	return add(global, mean), nil
}

// FedProx (Li et al. 2020) aggregates as FedAvg; its difference is on the
// clients, which add (μ/2)·‖w − w_global‖² to their local loss. The
// coordinator sends ClientConfig to the clients with each round's task.
// Flower has no default for μ; neither has this type.
type FedProx struct {
	FedAvg
	// ProximalMu is μ ≥ 0; 0 makes the clients' objective FedAvg's.
	ProximalMu float64
}

// NewFedProx returns FedProx with proximal term μ.
func NewFedProx(mu float64) (FedProx, error) {
	if math.IsNaN(mu) || math.IsInf(mu, 0) || mu < 0 {
		return FedProx{}, fmt.Errorf("%w: FedProx proximal_mu %v, want a finite number ≥ 0", ErrConfig, mu)
	}
	return FedProx{ProximalMu: mu}, nil
}

// Name implements Strategy.
func (FedProx) Name() string { return "FedProx" }

// ClientConfig is what the clients need to train for FedProx, under
// Flower's key.
func (p FedProx) ClientConfig() map[string]float64 {
	return map[string]float64{"proximal_mu": p.ProximalMu}
}
