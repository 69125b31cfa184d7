package strategy

import (
	"fmt"
	"strings"
)

// Config names a strategy and its parameters as a job spec carries them
// (JSON or YAML). A parameter left out (nil) takes Flower's default; FedProx
// has none for proximal_mu, which must be given.
type Config struct {
	// Name is one of fedavg, fedprox, fedadam, fedyogi, fedadagrad,
	// fedmedian, fedtrimmedavg, krum, multikrum (any case).
	Name string `json:"name" yaml:"name"`
	// ProximalMu is FedProx's μ.
	ProximalMu *float64 `json:"proximal_mu,omitempty" yaml:"proximal_mu,omitempty"`
	// Eta, EtaL, Beta1, Beta2 and Tau are FedOpt's η, η_l, β1, β2, τ
	// (defaults: DefaultFedOptConfig).
	Eta   *float64 `json:"eta,omitempty" yaml:"eta,omitempty"`
	EtaL  *float64 `json:"eta_l,omitempty" yaml:"eta_l,omitempty"`
	Beta1 *float64 `json:"beta_1,omitempty" yaml:"beta_1,omitempty"`
	Beta2 *float64 `json:"beta_2,omitempty" yaml:"beta_2,omitempty"`
	Tau   *float64 `json:"tau,omitempty" yaml:"tau,omitempty"`
	// Beta is FedTrimmedAvg's cut fraction (default 0.2).
	Beta *float64 `json:"beta,omitempty" yaml:"beta,omitempty"`
	// NumMalicious is Krum's f (default 0).
	NumMalicious *int `json:"num_malicious_clients,omitempty" yaml:"num_malicious_clients,omitempty"`
	// NumToKeep is Multi-Krum's m (default 0 for krum; required, > 0, for
	// multikrum).
	NumToKeep *int `json:"num_clients_to_keep,omitempty" yaml:"num_clients_to_keep,omitempty"`
}

// New returns the strategy a Config describes. Parameters that do not
// belong to the named strategy are refused, so that a typo in a job spec
// is not silently ignored.
func New(c Config) (Strategy, error) {
	name := strings.ToLower(c.Name)
	allowed := map[string][]string{
		"fedavg":        nil,
		"fedmedian":     nil,
		"fedprox":       {"proximal_mu"},
		"fedadam":       {"eta", "eta_l", "beta_1", "beta_2", "tau"},
		"fedyogi":       {"eta", "eta_l", "beta_1", "beta_2", "tau"},
		"fedadagrad":    {"eta", "eta_l", "tau"},
		"fedtrimmedavg": {"beta"},
		"krum":          {"num_malicious_clients", "num_clients_to_keep"},
		"multikrum":     {"num_malicious_clients", "num_clients_to_keep"},
	}
	ok, known := allowed[name]
	if !known {
		return nil, fmt.Errorf("%w: unknown strategy %q (fedavg, fedprox, fedadam, fedyogi, fedadagrad, fedmedian, fedtrimmedavg, krum, multikrum)", ErrConfig, c.Name)
	}
	set := map[string]bool{
		"proximal_mu": c.ProximalMu != nil, "eta": c.Eta != nil, "eta_l": c.EtaL != nil, "beta_1": c.Beta1 != nil,
		"beta_2": c.Beta2 != nil, "tau": c.Tau != nil, "beta": c.Beta != nil,
		"num_malicious_clients": c.NumMalicious != nil, "num_clients_to_keep": c.NumToKeep != nil,
	}
	for _, p := range ok {
		delete(set, p)
	}
	for p, isSet := range set {
		if isSet {
			return nil, fmt.Errorf("%w: %s has no parameter %s", ErrConfig, name, p)
		}
	}
	f64 := func(p *float64, def float64) float64 {
		if p == nil {
			return def
		}
		return *p
	}
	switch name {
	case "fedavg":
		return FedAvg{}, nil
	case "fedmedian":
		return FedMedian{}, nil
	case "fedprox":
		if c.ProximalMu == nil {
			return nil, fmt.Errorf("%w: fedprox needs proximal_mu (Flower has no default)", ErrConfig)
		}
		return NewFedProx(*c.ProximalMu)
	case "fedadam", "fedyogi", "fedadagrad":
		o := map[string]Optimizer{"fedadam": Adam, "fedyogi": Yogi, "fedadagrad": Adagrad}[name]
		d := DefaultFedOptConfig(o)
		return NewFedOpt(o, FedOptConfig{
			Eta: f64(c.Eta, d.Eta), EtaL: f64(c.EtaL, d.EtaL), Beta1: f64(c.Beta1, d.Beta1), Beta2: f64(c.Beta2, d.Beta2), Tau: f64(c.Tau, d.Tau),
		})
	case "fedtrimmedavg":
		return NewFedTrimmedAvg(f64(c.Beta, DefaultTrimBeta))
	}
	// krum, multikrum
	f, m := 0, 0
	if c.NumMalicious != nil {
		f = *c.NumMalicious
	}
	if c.NumToKeep != nil {
		m = *c.NumToKeep
	}
	if name == "multikrum" && m < 1 {
		return nil, fmt.Errorf("%w: multikrum needs num_clients_to_keep ≥ 1", ErrConfig)
	}
	return NewKrum(f, m)
}
