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
//
// A job whose schema has no normalisation first runs a statistics round,
// round 0: its clients send each feature's count, sum and sum of squares
// over their examples (fedlearn.FeatureStats, never an example), and the
// coordinator sets the schema's mean, std and impute values from their
// sums; every later round's task carries that schema (State.Schema).
//
// With differential privacy (Spec.DP) the coordinator clips and noises the
// mean centrally (fedlearn/privacy.Central, its noise seeded from the job's
// seed, its noise key and the round, so a restart re-runs a round exactly)
// or leaves that to the clients (local), and its accountant reports the
// (ε, δ) spent after every round.
//
// With secure aggregation (Spec.SecAgg) a training round runs SecAgg+'s
// four stages (secagg.go) and the coordinator sees only the sum of the
// survivors' weighted deltas.
package coord

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/privacy"
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
	// FederatedStats runs a statistics round (round 0) before round 1:
	// the clients send each feature's count, sum and sum of squares over
	// their examples, and their sums set the schema's mean, std and
	// impute values. Unset means on when every feature of the schema has
	// mean 0 and std 0 (no normalisation given).
	FederatedStats *bool `json:"federated_stats,omitempty"`
	// DP is differential privacy; nil means none.
	DP *DP `json:"dp,omitempty"`
	// Carbon, when set, makes the rounds carbon- and battery-aware (see
	// Carbon).
	Carbon *Carbon `json:"carbon,omitempty"`
	// SecAgg, when set, runs the training rounds under secure
	// aggregation (SecAgg+; see SecAgg).
	SecAgg *SecAgg `json:"secagg,omitempty"`
}

// Differential-privacy modes.
const (
	// DPCentral: the coordinator clips each update to norm Clip and adds
	// Gaussian noise σ = z·C/m to the mean of the m updates it aggregates
	// (fedlearn/privacy.Central).
	DPCentral = "central"
	// DPLocal: each client clips its update and adds noise σ = z·C before
	// sealing it (fedlearn/privacy.Local); the coordinator aggregates as
	// usual.
	DPLocal = "local"
	// DefaultDPDelta is the δ the privacy spent is reported at.
	DefaultDPDelta = 1e-5
)

// DP is a job's differential privacy. The accountant (fedlearn/privacy)
// reports (ε, δ) after every round, with q the fraction of the available
// clients the round selected, and the job stops (done, reason "epsilon
// budget") before a round that would spend more than Budget.
type DP struct {
	Mode string `json:"mode"`
	// NoiseMultiplier is z.
	NoiseMultiplier float64 `json:"noise_multiplier"`
	// Clip is the clipping norm C.
	Clip float64 `json:"clip"`
	// Delta is δ; 0 means DefaultDPDelta.
	Delta float64 `json:"delta,omitempty"`
	// Budget is the largest ε the job may spend; 0 means no budget.
	Budget float64 `json:"epsilon_budget,omitempty"`
}

// Unnormalized reports whether no feature of s has a mean or a std: the
// schema of a job whose statistics are to be computed federatedly.
func Unnormalized(s fedlearn.Schema) bool {
	for _, f := range s.Features {
		if f.Mean != 0 || f.Std != 0 {
			return false
		}
	}
	return true
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
	if s.FederatedStats == nil {
		on := Unnormalized(s.Schema)
		s.FederatedStats = &on
	}
	if s.DP != nil {
		if err := s.DP.resolve(st); err != nil {
			return err
		}
	}
	if s.SecAgg != nil {
		if err := s.SecAgg.resolve(s, st); err != nil {
			return err
		}
	}
	return s.Carbon.resolve()
}

func (d *DP) resolve(st strategy.Strategy) error {
	if d.Delta == 0 {
		d.Delta = DefaultDPDelta
	}
	switch d.Mode {
	case DPCentral:
		if _, ok := st.(strategy.MeanApplier); !ok {
			return specErr("dp.mode", "central DP needs a strategy that averages (fedavg, fedprox, fedadam, fedyogi, fedadagrad); %s has another sensitivity", st.Name())
		}
	case DPLocal:
	default:
		return specErr("dp.mode", "%q (want central or local)", d.Mode)
	}
	switch {
	case !(d.NoiseMultiplier > 0) || math.IsInf(d.NoiseMultiplier, 0):
		return specErr("dp.noise_multiplier", "%v (want a finite number > 0)", d.NoiseMultiplier)
	case !(d.Clip > 0) || math.IsInf(d.Clip, 0):
		return specErr("dp.clip", "%v (want a finite number > 0)", d.Clip)
	}
	if _, err := privacy.NewAccountant(d.Delta, d.Budget); err != nil {
		field := "dp.delta"
		if d.Delta > 0 && d.Delta < 1 {
			field = "dp.epsilon_budget"
		}
		return specErr(field, "%v", err)
	}
	return nil
}

// InitialWeights is the flat initial global model.
func (s *Spec) InitialWeights() []float64 {
	if len(s.Initial) > 0 {
		return append([]float64(nil), s.Initial...)
	}
	return fedlearn.InitWeights(s.Arch, s.Seed).Flatten(nil)
}

// ParseDP reads differential privacy from a flag:
// "[central:|local:]z=Z,C=C[,delta=D][,budget=E]" (mode central when
// left out; "clip" for C and "noise_multiplier" for z too). It checks the
// syntax and the numbers' form; Spec.Resolve checks their ranges.
func ParseDP(s string) (*DP, error) {
	fail := func(format string, args ...any) (*DP, error) {
		return nil, fmt.Errorf("%w: dp %q: %s", ErrSpec, s, fmt.Sprintf(format, args...))
	}
	d := &DP{Mode: DPCentral}
	rest := s
	if mode, tail, ok := strings.Cut(s, ":"); ok {
		d.Mode, rest = mode, tail
		if mode != DPCentral && mode != DPLocal {
			return fail("mode %q (want central or local)", mode)
		}
	}
	seen := map[string]bool{}
	for _, kv := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || v == "" {
			return fail("%q is not key=value", kv)
		}
		x, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(x) || math.IsInf(x, 0) {
			return fail("%s: %q is not a finite number", k, v)
		}
		var dst *float64
		switch k {
		case "z", "noise_multiplier":
			k, dst = "z", &d.NoiseMultiplier
		case "C", "c", "clip":
			k, dst = "C", &d.Clip
		case "delta":
			dst = &d.Delta
		case "budget", "epsilon_budget":
			k, dst = "budget", &d.Budget
		default:
			return fail("unknown key %q (want z, C, delta, budget)", k)
		}
		if seen[k] {
			return fail("%s given twice", k)
		}
		seen[k] = true
		*dst = x
	}
	if !seen["z"] || !seen["C"] {
		return fail("z and C are required")
	}
	return d, nil
}

// String is the DP in ParseDP's form.
func (d DP) String() string {
	s := fmt.Sprintf("%s:z=%g,C=%g", d.Mode, d.NoiseMultiplier, d.Clip)
	if d.Delta != 0 {
		s += fmt.Sprintf(",delta=%g", d.Delta)
	}
	if d.Budget != 0 {
		s += fmt.Sprintf(",budget=%g", d.Budget)
	}
	return s
}
