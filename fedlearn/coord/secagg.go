package coord

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/secagg"
	"github.com/edgefleet/edgefleet/fedlearn/strategy"
)

// Secure aggregation (Spec.SecAgg): a training round runs SecAgg+
// (fedlearn/secagg) in four stages, each a task the selected agents pull
// and answer like an update, sealed and signed:
//
//	setup      the task carries secagg.Setup; the agent answers its public keys
//	share_keys the task carries its neighbours' keys; it answers sealed shares
//	collect    the task carries the shares addressed to it; it trains and
//	           answers its masked vector
//	unmask     the task names its neighbours that sent a vector and those
//	           that did not; it answers the shares that remove their masks
//
// A stage closes when every client it waits for answered, or at its
// deadline: the collect stage at the round's deadline (it includes the
// training), the others SecAgg.StageTimeout after they opened. Clients
// that answer no more are left out (those that dropped after sending
// their shares have their pairwise masks removed from the shares of their
// neighbours, the point of SecAgg+). The coordinator sees public keys,
// sealed shares, masked vectors and the shares of the unmask stage: it
// learns the sum of the survivors' vectors and who they are.
//
// FedAvg's weighting is Flower's: each client masks [r, r·Δ] with r =
// min(examples / max_weight, 1), and the mean is the sum of r·Δ over the
// sum of r; the number of examples is not revealed.
//
// The key material of a round lives in the memory of the coordinator and
// the agents only: a coordinator restored mid-round fails the round (the
// reason says so) and the next attempt runs it again.
//
// The statistics round (round 0) is not secure-aggregated: its per-client
// feature counts and sums reach the coordinator sealed, but not masked.

// SecAgg stages, in order.
const (
	StageSetup     = "setup"
	StageShareKeys = "share_keys"
	StageCollect   = "collect"
	StageUnmask    = "unmask"
)

// Defaults of SecAgg.
const (
	DefaultSecAggMaxWeight    = 1000.0 // Flower's max_weight
	DefaultSecAggStageTimeout = 30 * time.Second
)

// ReasonSecAggRestart is the reason of a secure-aggregation round failed
// because the coordinator was restored mid-round.
const ReasonSecAggRestart = "the coordinator restarted during secure aggregation; its key material was in memory"

// SecAgg is secure aggregation's configuration: Flower's SecAggPlusWorkflow
// parameters (see secagg.Config for their meaning and defaults), its
// max_weight, and the timeout of the stages without training.
type SecAgg struct {
	NumShares               float64 `json:"num_shares"`
	ReconstructionThreshold float64 `json:"reconstruction_threshold"`
	ClippingRange           float64 `json:"clipping_range,omitempty"`
	QuantizationRange       uint64  `json:"quantization_range,omitempty"`
	ModulusRange            uint64  `json:"modulus_range,omitempty"`
	// MaxWeight: a client's weight is min(examples/MaxWeight, 1); 0 means
	// DefaultSecAggMaxWeight.
	MaxWeight float64 `json:"max_weight,omitempty"`
	// StageTimeout bounds the setup, share_keys and unmask stages; 0 means
	// the smaller of DefaultSecAggStageTimeout and a quarter of the round
	// timeout.
	StageTimeout fedlearn.Duration `json:"stage_timeout,omitempty"`
}

func (a *SecAgg) config() secagg.Config {
	return secagg.Config{NumShares: a.NumShares, ReconstructionThreshold: a.ReconstructionThreshold,
		ClippingRange: a.ClippingRange, QuantizationRange: a.QuantizationRange, ModulusRange: a.ModulusRange}
}

func (a *SecAgg) resolve(s *Spec, st strategy.Strategy) error {
	if _, ok := st.(strategy.MeanApplier); !ok {
		return specErr("secagg", "secure aggregation yields only the sum: it needs a strategy that averages (fedavg, fedprox, fedadam, fedyogi, fedadagrad), not %s", st.Name())
	}
	if s.DP != nil && s.DP.Mode == DPCentral {
		return specErr("secagg", "central DP clips each update at the coordinator, which secure aggregation hides; use local DP")
	}
	if a.MaxWeight == 0 {
		a.MaxWeight = DefaultSecAggMaxWeight
	}
	if !(a.MaxWeight >= 1) || math.IsInf(a.MaxWeight, 0) {
		return specErr("secagg.max_weight", "%v (want a finite number ≥ 1)", a.MaxWeight)
	}
	if a.StageTimeout == 0 {
		a.StageTimeout = fedlearn.Duration(min(DefaultSecAggStageTimeout, time.Duration(s.RoundTimeout)/4))
	}
	if a.StageTimeout <= 0 || a.StageTimeout >= s.RoundTimeout {
		return specErr("secagg.stage_timeout", "%s (want > 0 and below the round timeout %s)", time.Duration(a.StageTimeout), time.Duration(s.RoundTimeout))
	}
	// The parameters' form; a round checks them again for its clients.
	if _, err := a.config().Resolve(max(s.MinFit, 3), s.Arch.NumParams()+1); err != nil {
		return specErr("secagg", "%v", err)
	}
	return nil
}

// SecAggState is a secure-aggregation round's progress (Round.SecAgg).
type SecAggState struct {
	Stage         string    `json:"stage"`
	StageDeadline time.Time `json:"stage_deadline"`
	// Clients that answered each stage so far.
	Keys     int `json:"keys"`
	Shares   int `json:"shares"`
	Vectors  int `json:"vectors"`
	Unmasked int `json:"unmasked"`
	// Dropped are the clients that sent shares but no vector (their
	// masks removed), once the round aggregated.
	Dropped []string `json:"dropped,omitempty"`
}

// saRound is the memory of a secure-aggregation round: the server's state
// machine, the message each client is to get in this stage, and who
// answered it.
type saRound struct {
	srv      *secagg.Server
	out      map[string][]byte
	answered map[string]bool
}

// stageAnswer is the answer (secagg.Answer) each stage takes; stageNames
// the stages in order.
var (
	stageAnswer = map[string]int{StageSetup: secagg.AnswerPublicKeys, StageShareKeys: secagg.AnswerShares,
		StageCollect: secagg.AnswerMaskedVector, StageUnmask: secagg.AnswerUnmask}
	stageNames = []string{StageSetup, StageShareKeys, StageCollect, StageUnmask}
)

// SecAggTask is what a client of a secure-aggregation round gets in the
// current stage.
type SecAggTask struct {
	Stage   string
	Message []byte
	// MaxWeight is the spec's (the collect stage weights the vector).
	MaxWeight float64
}

// secAggRoundID binds a round's messages to the job, round and attempt.
func (c *Coordinator) secAggRoundID(round, attempt int) uint64 {
	h := sha256.Sum256(fmt.Appendf(nil, "edgefleet/fl/secagg-round/v1\x00%s\x00%d\x00%d", c.st.Job, round, attempt))
	return binary.LittleEndian.Uint64(h[:8])
}

// openSecAgg starts the setup stage of round r; an error fails the round.
func (c *Coordinator) openSecAgg(now time.Time, r *Round) error {
	a := c.spec.SecAgg
	seed := c.noiseSeed(r.Round, r.Attempt)
	seed[0] ^= 0x5a // not the DP noise's stream
	srv, err := secagg.NewServer(a.config(), c.secAggRoundID(r.Round, r.Attempt), r.Selected, c.spec.Arch.NumParams()+1, mrand.NewChaCha8(seed))
	if err != nil {
		return err
	}
	c.sa = &saRound{srv: srv, out: map[string][]byte{}, answered: map[string]bool{}}
	for name, m := range srv.Setup() {
		c.sa.out[name] = m.Marshal()
	}
	r.SecAgg = &SecAggState{Stage: StageSetup, StageDeadline: c.stageDeadline(now, r)}
	return nil
}

func (c *Coordinator) stageDeadline(now time.Time, r *Round) time.Time {
	d := now.Add(time.Duration(c.spec.SecAgg.StageTimeout))
	if r.Deadline.Before(d) {
		return r.Deadline
	}
	return d
}

// SecAggTask returns agent's message of the current stage, if it is a
// client of a secure-aggregation round that waits for its answer.
func (c *Coordinator) SecAggTask(agent string) (SecAggTask, bool) {
	r := c.st.Current
	if c.sa == nil || r == nil || r.SecAgg == nil || c.Finished() || c.sa.answered[agent] {
		return SecAggTask{}, false
	}
	m, ok := c.sa.out[agent]
	if !ok {
		return SecAggTask{}, false
	}
	return SecAggTask{Stage: r.SecAgg.Stage, Message: m, MaxWeight: c.spec.SecAgg.MaxWeight}, true
}

// offerSecAgg takes a client's answer to the current stage.
func (c *Coordinator) offerSecAgg(now time.Time, r *Round, s Submission, refuse func(kind, why string) []Event) []Event {
	st := r.SecAgg
	if len(s.SecAgg) < 6 {
		return refuse(RefusedInvalid, fmt.Sprintf("secure aggregation round %d attempt %d takes stage %s messages; the update carries none", r.Round, r.Attempt, st.Stage))
	}
	if got, want := secagg.Answer(s.SecAgg), stageAnswer[st.Stage]; got != 0 && got < want {
		return refuse(RefusedLate, fmt.Sprintf("an answer to stage %s of round %d attempt %d, which is in stage %s", stageNames[got-1], r.Round, r.Attempt, st.Stage))
	}
	if _, asked := c.sa.out[s.Agent]; !asked {
		return refuse(RefusedNotSelected, fmt.Sprintf("agent %s has no part in stage %s of round %d attempt %d", s.Agent, st.Stage, r.Round, r.Attempt))
	}
	if c.sa.answered[s.Agent] {
		return refuse(RefusedReplayed, fmt.Sprintf("agent %s already answered stage %s of round %d attempt %d", s.Agent, st.Stage, r.Round, r.Attempt))
	}
	var err error
	switch st.Stage {
	case StageSetup:
		var m secagg.PublicKeys
		if err = m.Unmarshal(s.SecAgg); err == nil {
			err = c.sa.srv.AddPublicKeys(s.Agent, m)
		}
	case StageShareKeys:
		var m secagg.Shares
		if err = m.Unmarshal(s.SecAgg); err == nil {
			err = c.sa.srv.AddShares(s.Agent, m)
		}
	case StageCollect:
		var m secagg.MaskedVector
		if err = m.Unmarshal(s.SecAgg); err == nil {
			err = c.sa.srv.AddMaskedVector(s.Agent, m)
		}
	case StageUnmask:
		var m secagg.UnmaskResponse
		if err = m.Unmarshal(s.SecAgg); err == nil {
			err = c.sa.srv.AddUnmask(s.Agent, m)
		}
	}
	if err != nil {
		return refuse(RefusedInvalid, fmt.Sprintf("stage %s: %v", st.Stage, err))
	}
	c.sa.answered[s.Agent] = true
	switch st.Stage {
	case StageSetup:
		st.Keys++
	case StageShareKeys:
		st.Shares++
	case StageCollect:
		st.Vectors++
		r.Reported = append(r.Reported, s.Agent)
		r.Phase = RoundCollecting
	case StageUnmask:
		st.Unmasked++
	}
	ev := []Event{{Kind: EvUpdateAccepted, Round: cloneRound(*r), Agent: s.Agent}}
	want := len(c.sa.out)
	if st.Stage == StageCollect && c.spec.MinReport > 0 {
		want = min(want, c.spec.MinReport)
	}
	if len(c.sa.answered) >= want {
		ev = append(ev, c.nextStage(now)...)
	}
	return ev
}

// nextStage closes the current stage and opens the next, or ends the
// round after the unmask stage.
func (c *Coordinator) nextStage(now time.Time) []Event {
	r := c.st.Current
	st := r.SecAgg
	fail := func(err error) []Event {
		r.Closed = now
		return c.failRound(now, fmt.Sprintf("secure aggregation, stage %s: %v", st.Stage, err))
	}
	var (
		out  map[string][]byte
		next string
		err  error
	)
	switch st.Stage {
	case StageSetup:
		out, err = marshalAll(c.sa.srv.KeysRequests())
		next = StageShareKeys
	case StageShareKeys:
		out, err = marshalAll(c.sa.srv.CollectRequests())
		next = StageCollect
	case StageCollect:
		need := int(math.Ceil(c.spec.MinCompletion * float64(len(r.Selected))))
		if len(r.Reported) == 0 || len(r.Reported) < need {
			r.Closed = now
			return c.failRound(now, fmt.Sprintf("%d of %d selected clients sent a masked vector, %d needed", len(r.Reported), len(r.Selected), max(need, 1)))
		}
		out, err = marshalAll(c.sa.srv.UnmaskRequests())
		next = StageUnmask
	case StageUnmask:
		res, err := c.sa.srv.Result()
		if err != nil {
			return fail(err)
		}
		return c.closeSecAgg(now, res)
	}
	if err != nil {
		return fail(err)
	}
	c.sa.out, c.sa.answered = out, map[string]bool{}
	st.Stage = next
	if next == StageCollect {
		st.StageDeadline = r.Deadline
	} else {
		st.StageDeadline = c.stageDeadline(now, r)
		if next == StageUnmask {
			// The unmask stage gets its own time after a collect stage
			// that ran to the round's deadline.
			st.StageDeadline = now.Add(time.Duration(c.spec.SecAgg.StageTimeout))
		}
	}
	return []Event{{Kind: EvSecAggStage, Round: cloneRound(*r)}}
}

// marshalAll encodes a stage's message for each client.
func marshalAll[M any, PM interface {
	*M
	Marshal() []byte
}](reqs map[string]M, err error) (map[string][]byte, error) {
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(reqs))
	for n, m := range reqs {
		out[n] = PM(&m).Marshal()
	}
	return out, nil
}

// closeSecAgg aggregates the unmasked sum: the mean of r·Δ over the sum
// of the weights r.
func (c *Coordinator) closeSecAgg(now time.Time, res secagg.Result) []Event {
	r := c.st.Current
	r.Closed = now
	r.SecAgg.Dropped = res.Dropped
	r.Reported = slices.Clone(res.Clients)
	weight := res.Sum[0]
	if !(weight > 0) {
		return c.failRound(now, fmt.Sprintf("secure aggregation: the clients' weights sum to %v", weight))
	}
	mean := make([]float64, len(res.Sum)-1)
	for i := range mean {
		mean[i] = res.Sum[i+1] / weight
	}
	r.Examples = int(math.Round(weight * c.spec.SecAgg.MaxWeight))
	global, err := c.strat.(strategy.MeanApplier).ApplyMean(c.st.Global, mean)
	if err != nil {
		return c.failRound(now, "aggregation: "+err.Error())
	}
	return c.aggregated(now, r, global, "")
}

// tickSecAgg closes a stage whose deadline passed.
func (c *Coordinator) tickSecAgg(now time.Time) []Event {
	r := c.st.Current
	if c.saLost || c.sa == nil {
		r.Closed = now
		return c.failRound(now, ReasonSecAggRestart)
	}
	if now.Before(r.SecAgg.StageDeadline) {
		return nil
	}
	return c.nextStage(now)
}

// ParseSecAgg reads secure aggregation's parameters from a flag:
// "key=value[,key=value...]" with the keys num_shares, reconstruction_threshold
// (or threshold), clipping_range, quantization_range, modulus_range,
// max_weight and stage_timeout (a duration). num_shares and
// reconstruction_threshold are required; Spec.Resolve checks the ranges.
func ParseSecAgg(s string) (*SecAgg, error) {
	fail := func(format string, args ...any) (*SecAgg, error) {
		return nil, fmt.Errorf("%w: secagg %q: %s", ErrSpec, s, fmt.Sprintf(format, args...))
	}
	a := &SecAgg{}
	seen := map[string]bool{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || v == "" {
			return fail("%q is not key=value", kv)
		}
		if k == "threshold" {
			k = "reconstruction_threshold"
		}
		if seen[k] {
			return fail("%s given twice", k)
		}
		seen[k] = true
		var err error
		switch k {
		case "num_shares":
			a.NumShares, err = parseFinite(v)
		case "reconstruction_threshold":
			a.ReconstructionThreshold, err = parseFinite(v)
		case "clipping_range":
			a.ClippingRange, err = parseFinite(v)
		case "max_weight":
			a.MaxWeight, err = parseFinite(v)
		case "quantization_range":
			a.QuantizationRange, err = strconv.ParseUint(v, 10, 64)
		case "modulus_range":
			a.ModulusRange, err = strconv.ParseUint(v, 10, 64)
		case "stage_timeout":
			var d time.Duration
			d, err = time.ParseDuration(v)
			a.StageTimeout = fedlearn.Duration(d)
		default:
			return fail("unknown key %q (want num_shares, reconstruction_threshold, clipping_range, quantization_range, modulus_range, max_weight, stage_timeout)", k)
		}
		if err != nil {
			return fail("%s: %q: %v", k, v, err)
		}
	}
	if !seen["num_shares"] || !seen["reconstruction_threshold"] {
		return fail("num_shares and reconstruction_threshold are required")
	}
	return a, nil
}

// parseFinite reads a finite number.
func parseFinite(v string) (float64, error) {
	x, err := strconv.ParseFloat(v, 64)
	if err == nil && (math.IsNaN(x) || math.IsInf(x, 0)) {
		err = errors.New("not finite")
	}
	return x, err
}
