package privacy

import (
	"errors"
	"fmt"
	"math"
)

// Orders of Rényi differential privacy the accountant tracks: the integers
// MinOrder..MaxOrder.
const (
	MinOrder = 2
	MaxOrder = 512
)

const numOrders = MaxOrder - MinOrder + 1

// ErrBudgetExceeded is returned when rounds would spend more than the
// accountant's ε budget.
var ErrBudgetExceeded = errors.New("privacy: ε budget exceeded")

// RDP returns the Rényi differential privacy at integer order alpha
// (MinOrder..MaxOrder) of one round of the Poisson-subsampled Gaussian
// mechanism: each client takes part with probability q and the sum of the
// clipped updates gets Gaussian noise of z times the clipping norm.
//
// It is the exact binomial expansion of Mironov, Talwar and Zhang 2019,
// "Rényi Differential Privacy of the Sampled Gaussian Mechanism" (as
// TensorFlow Privacy's and Opacus's _compute_log_a_int), summed in log
// space:
//
//	A_α = Σ_{i=0..α} C(α,i)·q^i·(1−q)^(α−i)·exp((i² − i)/(2z²)),  RDP(α) = ln(A_α)/(α − 1).
//
// For q = 1 it is α/(2z²); for q = 0 it is 0; for z = 0 (and q > 0) +Inf.
func RDP(q, z float64, alpha int) (float64, error) {
	if err := checkQZ(q, z); err != nil {
		return 0, err
	}
	if alpha < MinOrder || alpha > MaxOrder {
		return 0, fmt.Errorf("privacy: Rényi order %d outside %d..%d", alpha, MinOrder, MaxOrder)
	}
	return rdp(q, z, alpha), nil
}

func checkQZ(q, z float64) error {
	if !(q >= 0 && q <= 1) {
		return fmt.Errorf("privacy: sampling rate q %v outside [0, 1]", q)
	}
	if !(z >= 0) || math.IsInf(z, 0) {
		return fmt.Errorf("privacy: noise multiplier z %v, want a finite number ≥ 0", z)
	}
	return nil
}

func rdp(q, z float64, alpha int) float64 {
	switch {
	case q == 0:
		return 0
	case z == 0:
		return math.Inf(1)
	case q == 1:
		return float64(alpha) / (2 * z * z)
	}
	lq, l1q := math.Log(q), math.Log1p(-q)
	lgA, _ := math.Lgamma(float64(alpha) + 1)
	logA := math.Inf(-1)
	for i := 0; i <= alpha; i++ {
		lgI, _ := math.Lgamma(float64(i) + 1)
		lgR, _ := math.Lgamma(float64(alpha-i) + 1)
		s := lgA - lgI - lgR + float64(i)*lq + float64(alpha-i)*l1q + float64(i*i-i)/(2*z*z)
		logA = logAdd(logA, s)
	}
	return logA / float64(alpha-1)
}

// logAdd returns ln(e^a + e^b).
func logAdd(a, b float64) float64 {
	if a < b {
		a, b = b, a
	}
	if math.IsInf(b, -1) {
		return a
	}
	return a + math.Log1p(math.Exp(b-a))
}

// Spent is a privacy guarantee: the rounds so far are (Epsilon, Delta)-DP;
// Order is the Rényi order that gave the bound (0 when Epsilon is 0 or
// +Inf).
type Spent struct {
	Epsilon float64 `json:"epsilon"`
	Delta   float64 `json:"delta"`
	Order   int     `json:"order,omitempty"`
	Rounds  int     `json:"rounds"`
}

// epsilon converts total Rényi DP at orders MinOrder..MaxOrder into ε at
// delta: ε = min over α of [RDP_total(α) + ln(1/δ)/(α − 1)].
func epsilon(total *[numOrders]float64, delta float64) (float64, int) {
	best, order := math.Inf(1), 0
	l := math.Log(1 / delta)
	for k, r := range total {
		a := k + MinOrder
		if e := r + l/float64(a-1); e < best {
			best, order = e, a
		}
	}
	return best, order
}

// Epsilon returns the (ε, δ) guarantee of rounds rounds of the sampled
// Gaussian mechanism (q, z), with the order that gives it.
func Epsilon(q, z float64, rounds int, delta float64) (Spent, error) {
	a, err := NewAccountant(delta, 0)
	if err != nil {
		return Spent{}, err
	}
	if err := a.Add(q, z, rounds); err != nil {
		return Spent{}, err
	}
	return a.Spent(), nil
}

// Accountant adds up the privacy loss of a job's rounds (Rényi DP at the
// integer orders 2..512, composed by summing) and reports (ε, δ) and
// whether more rounds fit in an ε budget. It is not safe for concurrent
// use.
type Accountant struct {
	delta  float64
	budget float64
	rounds int
	total  [numOrders]float64

	// cache of the per-round RDP of the last (q, z)
	cq, cz float64
	cache  *[numOrders]float64
}

// NewAccountant returns an accountant reporting ε at delta (in (0, 1)).
// budget is the largest ε the job may spend; 0 means no budget.
func NewAccountant(delta, budget float64) (*Accountant, error) {
	if !(delta > 0 && delta < 1) {
		return nil, fmt.Errorf("privacy: delta %v outside (0, 1)", delta)
	}
	if !(budget >= 0) || math.IsInf(budget, 0) {
		return nil, fmt.Errorf("privacy: ε budget %v, want a finite number ≥ 0 (0: none)", budget)
	}
	return &Accountant{delta: delta, budget: budget}, nil
}

func (a *Accountant) perRound(q, z float64) (*[numOrders]float64, error) {
	if err := checkQZ(q, z); err != nil {
		return nil, err
	}
	if a.cache == nil || a.cq != q || a.cz != z {
		c := new([numOrders]float64)
		for k := range c {
			c[k] = rdp(q, z, k+MinOrder)
		}
		a.cache, a.cq, a.cz = c, q, z
	}
	return a.cache, nil
}

// after returns what the accountant would report after rounds more rounds
// of (q, z), and the total RDP then.
func (a *Accountant) after(q, z float64, rounds int) (Spent, *[numOrders]float64, error) {
	if rounds < 0 {
		return Spent{}, nil, fmt.Errorf("privacy: %d rounds, want ≥ 0", rounds)
	}
	r, err := a.perRound(q, z)
	if err != nil {
		return Spent{}, nil, err
	}
	total := a.total
	for k := range total {
		total[k] += float64(rounds) * r[k]
	}
	return a.spent(&total, a.rounds+rounds), &total, nil
}

// spent converts total RDP into (ε, δ). With nothing spent (no rounds, or
// only rounds of q = 0) ε is 0, not the conversion's ln(1/δ)/511.
func (a *Accountant) spent(total *[numOrders]float64, rounds int) Spent {
	s := Spent{Delta: a.delta, Rounds: rounds}
	for _, r := range total {
		if r != 0 {
			s.Epsilon, s.Order = epsilon(total, a.delta)
			break
		}
	}
	if math.IsInf(s.Epsilon, 1) {
		s.Order = 0
	}
	return s
}

// Check returns what Spent would report after rounds more rounds of (q, z),
// and ErrBudgetExceeded (wrapped, with the figures) if that would exceed the
// budget. It changes nothing: a coordinator calls it before a round and
// stops the job on ErrBudgetExceeded.
func (a *Accountant) Check(q, z float64, rounds int) (Spent, error) {
	s, _, err := a.after(q, z, rounds)
	if err != nil {
		return Spent{}, err
	}
	if a.budget > 0 && s.Epsilon > a.budget {
		return s, fmt.Errorf("%w: %d rounds of q=%v z=%v would reach ε=%.4g at δ=%g, budget %.4g", ErrBudgetExceeded, s.Rounds, q, z, s.Epsilon, a.delta, a.budget)
	}
	return s, nil
}

// Add records rounds rounds of (q, z); q is the expected fraction of
// clients per round, z the noise multiplier. It records them even past the
// budget (they happened); use Check first.
func (a *Accountant) Add(q, z float64, rounds int) error {
	s, total, err := a.after(q, z, rounds)
	if err != nil {
		return err
	}
	a.total, a.rounds = *total, s.Rounds
	return nil
}

// Spent returns the guarantee of the rounds recorded so far.
func (a *Accountant) Spent() Spent {
	return a.spent(&a.total, a.rounds)
}

// Remaining returns how many more rounds of (q, z) fit in the budget
// (capped at limit), or limit when there is no budget.
func (a *Accountant) Remaining(q, z float64, limit int) (int, error) {
	if limit < 0 {
		return 0, fmt.Errorf("privacy: limit %d, want ≥ 0", limit)
	}
	if err := checkQZ(q, z); err != nil {
		return 0, err
	}
	if a.budget == 0 {
		return limit, nil
	}
	fits := func(k int) bool {
		s, _, _ := a.after(q, z, k)
		return s.Epsilon <= a.budget
	}
	if !fits(0) {
		return 0, nil
	}
	lo, hi := 0, limit // fits(lo); ε grows with rounds
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		if fits(mid) {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo, nil
}
