// Package coord is the federated-learning coordinator's core: a job's
// rounds as a state machine with no I/O. Time, the agents available and
// the agents' updates go in (Tick, Offer); events come out (a round
// opened, an update accepted or refused, a round aggregated or failed, the
// job finished), for the caller to persist and act on, in the manner of
// etcd raft's Ready. The control plane drives it with its clock and its
// store; a simulation can drive it directly.
//
// Clients send Δ = w_local − w_global as float32 (strategy.Update);
// aggregation is fedlearn/strategy's.
package coord

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/strategy"
)

// ErrSpec is wrapped by every error about a job spec.
var ErrSpec = errors.New("coord: invalid job spec")

// Defaults of a Spec.
const (
	DefaultRounds        = 10
	DefaultFraction      = 1.0
	DefaultRoundTimeout  = 10 * time.Minute
	DefaultMinCompletion = 0.5
	DefaultMaxRetries    = 3
	DefaultEpochs        = 1
	DefaultBatchSize     = 32
	DefaultLearnRate     = 0.01
	DefaultSolver        = "sgd"
	MaxRounds            = 10000
)

// Evaluation names the data the coordinator evaluates the global model on
// after each round: a split of a data set of fedlearn/datasets.
type Evaluation struct {
	Dataset string `json:"dataset"`
	// Split is a test part's name (e.g. "datatest"); empty means every
	// test part.
	Split string `json:"split,omitempty"`
	Seed  uint64 `json:"seed,omitempty"`
}

// Spec is a federated-learning job.
type Spec struct {
	// Model is the registry name the finished model is stored under.
	Model  string          `json:"model"`
	Arch   fedlearn.Arch   `json:"arch"`
	Schema fedlearn.Schema `json:"schema"`
	Labels []string        `json:"labels"`
	// Initial is the initial global model, flat (fedlearn.Weights.Flatten
	// order); empty means fedlearn.InitWeights(Arch, Seed).
	Initial []float64 `json:"initial,omitempty"`
	// From and To bound the readings the clients train on, [From, To).
	From time.Time `json:"from,omitzero"`
	To   time.Time `json:"to,omitzero"`
	// Selector restricts the clients to agents whose labels match
	// ("key=value[,key=value...]"); empty means every agent.
	Selector string          `json:"selector,omitempty"`
	Strategy strategy.Config `json:"strategy"`
	Rounds   int             `json:"rounds,omitempty"`
	// MinAvailable agents must be available before a round opens.
	MinAvailable int `json:"min_available_clients,omitempty"`
	// Fraction of the available agents selected per round (Flower's
	// fraction_fit), at least MinFit of them.
	Fraction float64 `json:"fraction_fit,omitempty"`
	MinFit   int     `json:"min_fit_clients,omitempty"`
	// MinReport updates close a round before its timeout; 0 means every
	// selected client.
	MinReport int `json:"min_report,omitempty"`
	// MinCompletion is the fraction of the selected clients that must
	// report for the round to be aggregated; below it the round fails and
	// is retried (at most MaxRetries times, then the job fails).
	MinCompletion float64           `json:"min_completion,omitempty"`
	MaxRetries    int               `json:"max_retries,omitempty"`
	RoundTimeout  fedlearn.Duration `json:"round_timeout,omitempty"`
	// Deadline ends the job (failed) if it has not finished by then.
	Deadline  time.Time `json:"deadline,omitzero"`
	Epochs    int       `json:"epochs,omitempty"`
	BatchSize int       `json:"batch_size,omitempty"`
	LearnRate float64   `json:"learn_rate,omitempty"`
	Solver    string    `json:"solver,omitempty"`
	// Mu is FedProx's proximal term sent to the clients; with strategy
	// fedprox it defaults to the strategy's proximal_mu.
	Mu float64 `json:"mu,omitempty"`
	// Seed draws the clients of each round and the initial weights.
	Seed       uint64      `json:"seed,omitempty"`
	Evaluation *Evaluation `json:"evaluation,omitempty"`
	// Carbon, when set, makes the rounds carbon- and battery-aware (see
	// Carbon).
	Carbon *Carbon `json:"carbon,omitempty"`
}

func specErr(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrSpec, field, fmt.Sprintf(format, args...))
}

// Resolve fills the defaults in and checks every field.
func (s *Spec) Resolve() error {
	if err := fedlearn.CheckName(s.Model); err != nil {
		return specErr("model", "%v", err)
	}
	if err := s.Arch.Validate(); err != nil {
		return specErr("arch", "%v", err)
	}
	if err := s.Schema.Validate(); err != nil {
		return specErr("schema", "%v", err)
	}
	if len(s.Schema.Features) != s.Arch.Inputs {
		return specErr("schema", "%d features, the architecture has %d inputs", len(s.Schema.Features), s.Arch.Inputs)
	}
	if len(s.Labels) != s.Arch.Classes {
		return specErr("labels", "%d labels, the architecture has %d classes", len(s.Labels), s.Arch.Classes)
	}
	if n := s.Arch.NumParams(); len(s.Initial) != 0 && len(s.Initial) != n {
		return specErr("initial", "%d values, the architecture has %d parameters", len(s.Initial), n)
	}
	for i, v := range s.Initial {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return specErr("initial", "value %d is %v", i, v)
		}
	}
	if !s.From.IsZero() && !s.To.IsZero() && !s.From.Before(s.To) {
		return specErr("to", "%s is not after from %s", s.To, s.From)
	}
	st, err := strategy.New(s.Strategy)
	if err != nil {
		return specErr("strategy", "%v", err)
	}
	if p, ok := st.(strategy.FedProx); ok && s.Mu == 0 {
		s.Mu = p.ProximalMu
	}
	if o, ok := st.(*strategy.FedOpt); ok && s.LearnRate == 0 {
		// Flower's η_l is the clients' learning rate.
		s.LearnRate = o.Config().EtaL
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&s.Rounds, DefaultRounds)
	def(&s.MinAvailable, 1)
	def(&s.MinFit, 1)
	def(&s.MaxRetries, DefaultMaxRetries)
	def(&s.Epochs, DefaultEpochs)
	def(&s.BatchSize, DefaultBatchSize)
	if s.Fraction == 0 {
		s.Fraction = DefaultFraction
	}
	if s.MinCompletion == 0 {
		s.MinCompletion = DefaultMinCompletion
	}
	if s.RoundTimeout == 0 {
		s.RoundTimeout = fedlearn.Duration(DefaultRoundTimeout)
	}
	if s.LearnRate == 0 {
		s.LearnRate = DefaultLearnRate
	}
	if s.Solver == "" {
		s.Solver = DefaultSolver
	}
	switch {
	case s.Rounds < 0 || s.Rounds > MaxRounds:
		return specErr("rounds", "%d (want 1-%d)", s.Rounds, MaxRounds)
	case s.MinAvailable < 1:
		return specErr("min_available_clients", "%d (want ≥ 1)", s.MinAvailable)
	case s.MinFit < 1 || s.MinFit > s.MinAvailable:
		return specErr("min_fit_clients", "%d (want 1-min_available_clients %d)", s.MinFit, s.MinAvailable)
	case !(s.Fraction > 0 && s.Fraction <= 1):
		return specErr("fraction_fit", "%v (want (0, 1])", s.Fraction)
	case s.MinReport < 0:
		return specErr("min_report", "%d (want ≥ 0)", s.MinReport)
	case !(s.MinCompletion > 0 && s.MinCompletion <= 1):
		return specErr("min_completion", "%v (want (0, 1])", s.MinCompletion)
	case s.MaxRetries < 0:
		return specErr("max_retries", "%d (want ≥ 0)", s.MaxRetries)
	case s.RoundTimeout < 0:
		return specErr("round_timeout", "%s is negative", time.Duration(s.RoundTimeout))
	case s.Epochs < 1 || s.Epochs > 10000:
		return specErr("epochs", "%d (want 1-10000)", s.Epochs)
	case s.BatchSize < 1 || s.BatchSize > fedlearn.MaxBatchSize:
		return specErr("batch_size", "%d (want 1-%d)", s.BatchSize, fedlearn.MaxBatchSize)
	case !(s.LearnRate > 0) || math.IsInf(s.LearnRate, 0):
		return specErr("learn_rate", "%v (want a finite number > 0)", s.LearnRate)
	case !(s.Mu >= 0) || math.IsInf(s.Mu, 0):
		return specErr("mu", "%v (want a finite number ≥ 0)", s.Mu)
	}
	switch s.Solver {
	case "sgd", "momentum", "adam":
	default:
		return specErr("solver", "%q (want sgd, momentum or adam)", s.Solver)
	}
	return s.Carbon.resolve()
}

// InitialWeights is the flat initial global model.
func (s *Spec) InitialWeights() []float64 {
	if len(s.Initial) > 0 {
		return append([]float64(nil), s.Initial...)
	}
	return fedlearn.InitWeights(s.Arch, s.Seed).Flatten(nil)
}
