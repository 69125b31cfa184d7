package coord

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/privacy"
	"github.com/edgefleet/edgefleet/fedlearn/strategy"
)

// Job states.
const (
	JobRunning  = "running"
	JobDone     = "done"
	JobFailed   = "failed"
	JobCanceled = "canceled"
)

// Round phases: open (clients selected, nothing received), collecting (at
// least one update received), then aggregated or failed.
const (
	RoundOpen       = "open"
	RoundCollecting = "collecting"
	RoundAggregated = "aggregated"
	RoundFailed     = "failed"
)

// Round kinds: round 0 of a job with federated statistics is a
// statistics round, the others train.
const (
	RoundTrain = "train"
	RoundStats = "stats"
)

// StatsRound is the number of the statistics round.
const StatsRound = 0

// Reason prefix of a job stopped by its ε budget.
const ReasonBudget = "epsilon budget"

// Refusal reasons, the keys of Round.Refused.
const (
	RefusedNotSelected = "not_selected"
	RefusedClosed      = "closed_round"
	RefusedReplayed    = "replayed"
	RefusedInvalid     = "invalid" // wrong shape, NaN/Inf, no examples
	RefusedLate        = "late"
	RefusedUnsealed    = "unsealed"
	RefusedUnsigned    = "unsigned"
)

// Round is one attempt at a round.
type Round struct {
	Round   int `json:"round"`
	Attempt int `json:"attempt"`
	// Kind is RoundTrain or RoundStats ("" reads as train).
	Kind     string    `json:"kind,omitempty"`
	Phase    string    `json:"phase"`
	Opened   time.Time `json:"opened"`
	Deadline time.Time `json:"deadline"`
	Closed   time.Time `json:"closed,omitzero"`
	Selected []string  `json:"selected"`
	// Reported are the agents whose update was accepted, in arrival order.
	Reported []string `json:"reported"`
	Examples int      `json:"examples"`
	// Refused counts refused updates by reason.
	Refused map[string]int `json:"refused,omitempty"`
	Reason  string         `json:"reason,omitempty"`
	// Q is the fraction of the available clients the attempt selected:
	// the sampling rate the accountant charges it with (a DP job).
	Q float64 `json:"q,omitempty"`
	// Epsilon is the ε spent after the attempt closed (a DP job).
	Epsilon float64 `json:"epsilon,omitempty"`
	// SecAgg is the progress of a secure-aggregation round (Spec.SecAgg).
	SecAgg *SecAggState `json:"secagg,omitempty"`
}

// Stats reports whether r is the statistics round.
func (r *Round) Stats() bool { return r.Kind == RoundStats }

// Failures is the number of selected clients that did not report plus
// the refused updates.
func (r *Round) Failures() int {
	n := len(r.Selected) - len(r.Reported)
	for _, c := range r.Refused {
		n += c
	}
	return n
}

// State is everything the core holds but the updates' deltas: the caller
// persists it (JSON) and restores it with Restore.
type State struct {
	Job    string `json:"job"`
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
	// Done is the number of aggregated rounds; Global the model after it.
	Done    int       `json:"done"`
	Global  []float64 `json:"global"`
	Retries int       `json:"retries"`
	// Current is the round attempt in progress; nil between rounds.
	Current *Round `json:"current,omitempty"`
	// Optimizer is the server optimiser's state of FedAdam, FedYogi and
	// FedAdagrad after the last aggregated round.
	Optimizer *strategy.FedOptState `json:"optimizer,omitempty"`
	// Schema is the spec's schema with the statistics round's
	// normalisation, once that round aggregated.
	Schema *fedlearn.Schema `json:"schema,omitempty"`
	// Privacy is what a DP job has spent.
	Privacy *Privacy `json:"privacy,omitempty"`
	// NoiseKey is a secret mixed into the seed of the central noise, so
	// that knowing the spec's seed is not knowing the noise; empty means
	// the seed alone. The caller keeps the state from the job's readers.
	NoiseKey []byte `json:"noise_key,omitempty"`
	// Credit is each agent's participation credit in a carbon job: the
	// training rounds it was due (selected/available per training round
	// opened while it was available) minus those it was selected for. The caller ranks
	// agents with more credit first (greensched.PlanRound), so that a
	// fraction below 1 rotates the clients.
	Credit map[string]float64 `json:"credit,omitempty"`
	// RoundSeconds are the lengths of a carbon job's aggregated training
	// rounds, in order (RoundDuration).
	RoundSeconds []float64 `json:"round_seconds,omitempty"`
	// GapSeconds are, for the same rounds, the time from a round's close
	// to the driver's next tick (when the next round could open);
	// LastClosed is the close of the last aggregated round until that
	// tick.
	GapSeconds []float64 `json:"gap_seconds,omitempty"`
	LastClosed time.Time `json:"last_closed,omitzero"`
	// Ready is, for a carbon job between rounds, when the next round
	// became ready to open: the close of the last round or attempt; zero
	// before the first and while a round is open (ReadySince). Stored,
	// so that a round waiting for a greener start keeps its window
	// across a restart.
	Ready time.Time `json:"ready,omitzero"`
}

// Privacy is the privacy a DP job has spent.
type Privacy struct {
	// Q is the sampling rate of every attempt charged so far, in order:
	// the aggregated rounds (central), or every attempt that received an
	// update (local: the clients' noisy updates were released to the
	// coordinator whether or not the round aggregated).
	Q     []float64     `json:"q"`
	Spent privacy.Spent `json:"spent"`
}

// Event kinds.
const (
	EvRoundOpened     = "round_opened"
	EvUpdateAccepted  = "update_accepted"
	EvUpdateRefused   = "update_refused"
	EvRoundAggregated = "round_aggregated"
	EvRoundFailed     = "round_failed"
	EvJobFinished     = "job_finished"
	// EvStatsAggregated: the statistics round closed and set the schema.
	EvStatsAggregated = "stats_aggregated"
	// EvSecAggStage: a secure-aggregation round moved to its next stage
	// (Round.SecAgg.Stage): its clients have a new task.
	EvSecAggStage = "secagg_stage"
)

// Event is one thing that happened; Round is a copy of the attempt it
// concerns.
type Event struct {
	Kind   string
	Round  Round
	Agent  string
	Reason string
	// Global is the new global model (EvRoundAggregated).
	Global []float64
	// Retry is true when a failed round is tried again.
	Retry bool
	// Status is the job's final state (EvJobFinished).
	Status string
	// Schema is the schema with the federated normalisation
	// (EvStatsAggregated).
	Schema *fedlearn.Schema
}

// Submission is one agent's update for a round attempt: a delta for a
// training round, feature statistics for the statistics round.
type Submission struct {
	Agent    string
	Round    int
	Attempt  int
	Delta    []float32
	Examples int
	Stats    *fedlearn.FeatureStats
	// SecAgg is a secure-aggregation round's stage message
	// (fedlearn/secagg's encoding); Delta, Examples and Stats are empty.
	SecAgg []byte
}

// Coordinator runs one job. It is not safe for concurrent use.
type Coordinator struct {
	spec   Spec
	strat  strategy.Strategy
	st     State
	deltas map[string]strategy.Update       // the current attempt's accepted updates
	stats  map[string]fedlearn.FeatureStats // the statistics round's
	acct   *privacy.Accountant              // nil without DP
	sa     *saRound                         // a secure-aggregation round's memory
	// saLost: restored while a secure-aggregation round was open; the
	// next Tick fails it.
	saLost bool
}

// New starts job id with a spec (resolved here).
func New(id string, spec Spec) (*Coordinator, error) {
	if err := spec.Resolve(); err != nil {
		return nil, err
	}
	st := State{Job: id, Status: JobRunning, Global: spec.InitialWeights()}
	return Restore(spec, st, nil)
}

// Restore rebuilds a coordinator from a persisted state and the accepted
// updates of its current training attempt (the deltas the state does not
// hold). Updates of agents the state does not list as reported are
// refused: the store and the state disagree.
func Restore(spec Spec, st State, updates []strategy.Update) (*Coordinator, error) {
	subs := make([]Submission, len(updates))
	for i, u := range updates {
		subs[i] = Submission{Agent: u.Client, Delta: u.Delta, Examples: u.Examples}
	}
	return RestoreSubmissions(spec, st, subs)
}

// RestoreSubmissions is Restore with the current attempt's accepted
// submissions of either kind: deltas of a training round, statistics of
// the statistics round. Their Round and Attempt are not read.
func RestoreSubmissions(spec Spec, st State, subs []Submission) (*Coordinator, error) {
	// A job stored before statistics rounds existed has no
	// federated_stats; once it trained it must not start one.
	legacy := spec.FederatedStats == nil && (st.Done > 0 || (st.Current != nil && !st.Current.Stats()))
	if err := spec.Resolve(); err != nil {
		return nil, err
	}
	if legacy {
		off := false
		spec.FederatedStats = &off
	}
	strat, err := strategy.New(spec.Strategy)
	if err != nil {
		return nil, fmt.Errorf("coord: %w", err)
	}
	if len(st.Global) != spec.Arch.NumParams() {
		return nil, fmt.Errorf("coord: restoring job %s: global model has %d values, the architecture %d", st.Job, len(st.Global), spec.Arch.NumParams())
	}
	c := &Coordinator{spec: spec, strat: strat, st: st, deltas: map[string]strategy.Update{}, stats: map[string]fedlearn.FeatureStats{}}
	if fo, ok := strat.(*strategy.FedOpt); ok && st.Optimizer != nil {
		if err := fo.SetState(*st.Optimizer); err != nil {
			return nil, fmt.Errorf("coord: restoring job %s: %w", st.Job, err)
		}
	}
	if st.Schema != nil {
		if err := st.Schema.Validate(); err != nil || len(st.Schema.Features) != len(spec.Schema.Features) {
			return nil, fmt.Errorf("coord: restoring job %s: the state's schema does not fit the spec's (%v)", st.Job, err)
		}
	}
	if d := spec.DP; d != nil {
		acct, err := privacy.NewAccountant(d.Delta, d.Budget)
		if err != nil {
			return nil, fmt.Errorf("coord: restoring job %s: %w", st.Job, err)
		}
		if st.Privacy != nil {
			for _, q := range st.Privacy.Q {
				if err := acct.Add(q, d.NoiseMultiplier, 1); err != nil {
					return nil, fmt.Errorf("coord: restoring job %s: %w", st.Job, err)
				}
			}
		}
		c.acct = acct
	}
	if r := c.st.Current; r != nil && r.SecAgg != nil {
		// Nothing of a secure-aggregation round is stored: its key
		// material was in memory. The next Tick fails it.
		c.saLost = true
		return c, nil
	}
	for _, s := range subs {
		if c.st.Current == nil || !slices.Contains(c.st.Current.Reported, s.Agent) {
			return nil, fmt.Errorf("coord: restoring job %s: stored update of %s is not in the round's state", st.Job, s.Agent)
		}
		if err := c.accept(c.st.Current, s); err != nil {
			return nil, fmt.Errorf("coord: restoring job %s: stored update of %s: %w", st.Job, s.Agent, err)
		}
	}
	if r := c.st.Current; r != nil && len(c.deltas)+len(c.stats) != len(r.Reported) {
		return nil, fmt.Errorf("coord: restoring job %s: %d stored updates, the round's state lists %d", st.Job, len(c.deltas)+len(c.stats), len(r.Reported))
	}
	return c, nil
}

// SetNoiseKey sets the secret mixed into the seed of the central noise
// (State.NoiseKey); only before the job's first round opens.
func (c *Coordinator) SetNoiseKey(key []byte) error {
	if len(key) < 16 {
		return fmt.Errorf("coord: noise key of %d bytes, want at least 16", len(key))
	}
	if c.st.Current != nil || c.st.Done > 0 || c.st.Schema != nil || c.st.Retries > 0 {
		return fmt.Errorf("coord: job %s: the noise key is set before the first round", c.st.Job)
	}
	c.st.NoiseKey = slices.Clone(key)
	return nil
}

// Schema is the schema the job's clients use: the spec's, with the
// statistics round's normalisation once it aggregated.
func (c *Coordinator) Schema() fedlearn.Schema {
	if c.st.Schema != nil {
		return cloneSchema(*c.st.Schema)
	}
	return cloneSchema(c.spec.Schema)
}

func cloneSchema(s fedlearn.Schema) fedlearn.Schema {
	s.Features = slices.Clone(s.Features)
	return s
}

// Spent is the privacy spent so far; ok is false without DP.
func (c *Coordinator) Spent() (privacy.Spent, bool) {
	if c.acct == nil {
		return privacy.Spent{}, false
	}
	return c.acct.Spent(), true
}

// needStats reports whether the statistics round is still to run.
func (c *Coordinator) needStats() bool {
	return c.spec.FederatedStats != nil && *c.spec.FederatedStats && c.st.Schema == nil
}

// checkStats checks a client's feature statistics: one count, sum and sum
// of squares per feature, finite, the counts whole numbers between 0 and
// the client's examples, the sums of squares not negative.
func checkStats(features int, s Submission) error {
	f := s.Stats
	if len(f.Count) != features || len(f.Sum) != features || len(f.SumSq) != features {
		return fmt.Errorf("statistics of %d, %d and %d values, the schema has %d features", len(f.Count), len(f.Sum), len(f.SumSq), features)
	}
	if s.Examples < 1 {
		return fmt.Errorf("%d examples (want ≥ 1)", s.Examples)
	}
	for i := range features {
		n, sum, sq := f.Count[i], f.Sum[i], f.SumSq[i]
		for _, v := range []float64{n, sum, sq} {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return fmt.Errorf("feature %d: statistic %v", i, v)
			}
		}
		if n < 0 || n > float64(s.Examples) || n != math.Trunc(n) {
			return fmt.Errorf("feature %d: count %v (want a whole number 0-%d)", i, n, s.Examples)
		}
		if sq < 0 {
			return fmt.Errorf("feature %d: sum of squares %v is negative", i, sq)
		}
	}
	return nil
}

// accept checks a submission against the kind of round r and keeps it.
func (c *Coordinator) accept(r *Round, s Submission) error {
	if r.Stats() {
		if s.Stats == nil {
			return errors.New("round 0 collects feature statistics; the update carries a delta")
		}
		if err := checkStats(len(c.spec.Schema.Features), s); err != nil {
			return err
		}
		c.stats[s.Agent] = fedlearn.FeatureStats{Count: slices.Clone(s.Stats.Count), Sum: slices.Clone(s.Stats.Sum), SumSq: slices.Clone(s.Stats.SumSq)}
		return nil
	}
	if s.Stats != nil {
		return fmt.Errorf("round %d trains; the update carries feature statistics", r.Round)
	}
	if s.SecAgg != nil {
		return fmt.Errorf("round %d takes plain updates; the update carries a secure-aggregation message", r.Round)
	}
	u := strategy.Update{Client: s.Agent, Delta: s.Delta, Examples: s.Examples}
	if err := strategy.CheckUpdate(len(c.st.Global), u); err != nil {
		return err
	}
	c.deltas[s.Agent] = u
	return nil
}

// Spec is the resolved spec.
func (c *Coordinator) Spec() Spec { return c.spec }

// State returns a copy of the state.
func (c *Coordinator) State() State {
	st := c.st
	st.Global = slices.Clone(st.Global)
	if st.Optimizer != nil {
		os := strategy.FedOptState{Round: st.Optimizer.Round, M: slices.Clone(st.Optimizer.M), V: slices.Clone(st.Optimizer.V)}
		st.Optimizer = &os
	}
	if st.Current != nil {
		r := cloneRound(*st.Current)
		st.Current = &r
	}
	if st.Schema != nil {
		sc := cloneSchema(*st.Schema)
		st.Schema = &sc
	}
	if st.Privacy != nil {
		p := Privacy{Q: slices.Clone(st.Privacy.Q), Spent: st.Privacy.Spent}
		st.Privacy = &p
	}
	st.NoiseKey = slices.Clone(st.NoiseKey)
	st.Credit = maps.Clone(st.Credit)
	st.RoundSeconds = slices.Clone(st.RoundSeconds)
	st.GapSeconds = slices.Clone(st.GapSeconds)
	return st
}

func cloneRound(r Round) Round {
	if r.SecAgg != nil {
		sa := *r.SecAgg
		sa.Dropped = slices.Clone(sa.Dropped)
		r.SecAgg = &sa
	}
	r.Selected = slices.Clone(r.Selected)
	r.Reported = slices.Clone(r.Reported)
	if r.Refused != nil {
		m := make(map[string]int, len(r.Refused))
		for k, v := range r.Refused {
			m[k] = v
		}
		r.Refused = m
	}
	return r
}

// Finished reports whether the job has ended.
func (c *Coordinator) Finished() bool { return c.st.Status != JobRunning }

// Selected reports whether agent is a client of the current attempt that
// has not reported yet, and the attempt.
func (c *Coordinator) Selected(agent string) (Round, bool) {
	r := c.st.Current
	if r == nil || c.Finished() || !slices.Contains(r.Selected, agent) {
		return Round{}, false
	}
	if r.SecAgg != nil {
		if _, ok := c.SecAggTask(agent); !ok {
			return Round{}, false
		}
	} else if slices.Contains(r.Reported, agent) {
		return Round{}, false
	}
	return cloneRound(*r), true
}

// Cancel ends a running job.
func (c *Coordinator) Cancel(now time.Time, reason string) []Event {
	if c.Finished() {
		return nil
	}
	return c.finish(now, JobCanceled, reason)
}

func (c *Coordinator) finish(now time.Time, status, reason string) []Event {
	var ev []Event
	if r := c.st.Current; r != nil {
		r.Phase, r.Closed, r.Reason = RoundFailed, now, reason
		ev = append(ev, Event{Kind: EvRoundFailed, Round: cloneRound(*r), Reason: reason})
		c.charge(r)
		c.st.Current = nil
		c.clearUpdates()
	}
	c.st.Status, c.st.Reason = status, reason
	return append(ev, Event{Kind: EvJobFinished, Status: status, Reason: reason})
}

// Tick advances the job at now: the job deadline, the round timeout, and
// opening the next round when enough agents are available. available are
// the eligible agents (matching the selector, reachable); the order does
// not matter, except with Spec.Carbon, where the caller ranks them
// (greensched.PlanRound: participation credit and carbon) and the round
// takes the first ones.
func (c *Coordinator) Tick(now time.Time, available []string) []Event {
	if c.Finished() {
		return nil
	}
	if !c.spec.Deadline.IsZero() && !now.Before(c.spec.Deadline) {
		return c.finish(now, JobFailed, fmt.Sprintf("job deadline %s passed after %d of %d rounds", c.spec.Deadline.UTC().Format(time.RFC3339), c.st.Done, c.spec.Rounds))
	}
	if r := c.st.Current; r != nil {
		if r.SecAgg != nil {
			return c.tickSecAgg(now)
		}
		if now.Before(r.Deadline) {
			return nil
		}
		return c.close(now, "round timeout")
	}
	if c.spec.Carbon != nil && !c.st.LastClosed.IsZero() {
		// the first tick after a round closed (RoundDuration)
		c.st.GapSeconds = append(c.st.GapSeconds, max(now.Sub(c.st.LastClosed), 0).Seconds())
		c.st.LastClosed = time.Time{}
	}
	var avail []string
	if c.spec.Carbon != nil {
		// ranked by the caller: keep the order
		seen := map[string]bool{}
		for _, a := range available {
			if !seen[a] {
				seen[a] = true
				avail = append(avail, a)
			}
		}
	} else {
		avail = slices.Clone(available)
		slices.Sort(avail)
		avail = slices.Compact(avail)
	}
	if len(avail) < c.spec.MinAvailable {
		return nil
	}
	round, attempt, kind := c.st.Done+1, c.st.Retries, RoundTrain
	if c.needStats() {
		round, kind = StatsRound, RoundStats
	}
	n := c.ClientCount(len(avail))
	q := float64(n) / float64(len(avail))
	if c.acct != nil && kind == RoundTrain {
		if _, err := c.acct.Check(q, c.spec.DP.NoiseMultiplier, 1); errors.Is(err, privacy.ErrBudgetExceeded) {
			sp := c.acct.Spent()
			return c.finish(now, JobDone, fmt.Sprintf("%s: round %d would spend more than ε=%g (spent ε=%.4g at δ=%g after %d rounds)",
				ReasonBudget, round, c.spec.DP.Budget, sp.Epsilon, sp.Delta, c.st.Done))
		}
	}
	if c.spec.Carbon == nil {
		rng := rand.New(rand.NewPCG(c.spec.Seed, uint64(round)<<20|uint64(attempt)))
		rng.Shuffle(len(avail), func(i, j int) { avail[i], avail[j] = avail[j], avail[i] })
	}
	sel := avail[:n]
	if c.spec.Carbon != nil && kind == RoundTrain {
		// training turns only: the statistics round trains nothing
		c.credit(avail, sel)
	}
	sel = slices.Clone(sel)
	slices.Sort(sel)
	r := &Round{Round: round, Attempt: attempt, Kind: kind, Phase: RoundOpen, Opened: now,
		Deadline: now.Add(time.Duration(c.spec.RoundTimeout)), Selected: sel, Reported: []string{}}
	if c.acct != nil && kind == RoundTrain {
		r.Q = q
	}
	c.st.Current = r
	c.st.Ready = time.Time{}
	c.clearUpdates()
	if c.spec.SecAgg != nil && kind == RoundTrain {
		if err := c.openSecAgg(now, r); err != nil {
			ev := []Event{{Kind: EvRoundOpened, Round: cloneRound(*r)}}
			r.Closed = now
			return append(ev, c.failRound(now, "secure aggregation: "+err.Error())...)
		}
	}
	return []Event{{Kind: EvRoundOpened, Round: cloneRound(*r)}}
}

func (c *Coordinator) clearUpdates() {
	clear(c.deltas)
	clear(c.stats)
	c.sa, c.saLost = nil, false
}

// charge records the privacy an attempt spends as it closes: an
// aggregated one under central DP, one that received any update under
// local DP (the clients released their noisy updates). It sets the
// attempt's Epsilon.
func (c *Coordinator) charge(r *Round) {
	if c.acct == nil || r.Stats() {
		return
	}
	if (c.spec.DP.Mode == DPCentral && r.Phase == RoundAggregated) || (c.spec.DP.Mode == DPLocal && len(r.Reported) > 0) {
		// q and z were checked when the spec resolved and the round opened.
		_ = c.acct.Add(r.Q, c.spec.DP.NoiseMultiplier, 1)
		if c.st.Privacy == nil {
			c.st.Privacy = &Privacy{Q: []float64{}}
		}
		c.st.Privacy.Q = append(c.st.Privacy.Q, r.Q)
		c.st.Privacy.Spent = c.acct.Spent()
	}
	r.Epsilon = c.acct.Spent().Epsilon
}

// noiseSeed is the seed of the central noise of an attempt: the same job,
// round and attempt draw the same noise, after a restart too.
func (c *Coordinator) noiseSeed(round, attempt int) [32]byte {
	h := sha256.New()
	h.Write([]byte("edgefleet/fl/dp-noise/v1\x00" + c.st.Job + "\x00"))
	var b [24]byte
	binary.LittleEndian.PutUint64(b[:], c.spec.Seed)
	binary.LittleEndian.PutUint64(b[8:], uint64(round))
	binary.LittleEndian.PutUint64(b[16:], uint64(attempt))
	h.Write(b[:])
	h.Write(c.st.NoiseKey)
	var seed [32]byte
	copy(seed[:], h.Sum(nil))
	return seed
}

// Refuse counts an update refused before it reached Offer (unsealed,
// unsigned) against the current attempt.
func (c *Coordinator) Refuse(agent, reason string) Event {
	if r := c.st.Current; r != nil {
		if r.Refused == nil {
			r.Refused = map[string]int{}
		}
		r.Refused[reason]++
		return Event{Kind: EvUpdateRefused, Round: cloneRound(*r), Agent: agent, Reason: reason}
	}
	return Event{Kind: EvUpdateRefused, Agent: agent, Reason: reason}
}

// Offer receives one update at now. A refused update is counted with a
// reason (Round.Refused) and the round goes on; the events say what
// happened, the first being EvUpdateAccepted or EvUpdateRefused (with its
// Reason naming what was wrong).
func (c *Coordinator) Offer(now time.Time, s Submission) []Event {
	r := c.st.Current
	refuse := func(kind, why string) []Event {
		e := c.Refuse(s.Agent, kind)
		e.Reason = kind + ": " + why
		return []Event{e}
	}
	switch {
	case c.Finished():
		return refuse(RefusedClosed, fmt.Sprintf("job %s is %s", c.st.Job, c.st.Status))
	case r == nil || s.Round != r.Round || s.Attempt != r.Attempt:
		cur := "no round is open"
		if r != nil {
			cur = fmt.Sprintf("round %d attempt %d is open", r.Round, r.Attempt)
		}
		return refuse(RefusedClosed, fmt.Sprintf("update for round %d attempt %d; %s", s.Round, s.Attempt, cur))
	case !slices.Contains(r.Selected, s.Agent):
		return refuse(RefusedNotSelected, fmt.Sprintf("agent %s is not a client of round %d attempt %d", s.Agent, r.Round, r.Attempt))
	case r.SecAgg != nil:
		if c.saLost || c.sa == nil {
			return refuse(RefusedClosed, fmt.Sprintf("round %d attempt %d: %s", r.Round, r.Attempt, ReasonSecAggRestart))
		}
		if !now.Before(r.SecAgg.StageDeadline) {
			return refuse(RefusedLate, fmt.Sprintf("stage %s of round %d attempt %d timed out at %s", r.SecAgg.Stage, r.Round, r.Attempt, r.SecAgg.StageDeadline.UTC().Format(time.RFC3339)))
		}
		return c.offerSecAgg(now, r, s, refuse)
	case slices.Contains(r.Reported, s.Agent):
		return refuse(RefusedReplayed, fmt.Sprintf("agent %s already reported for round %d attempt %d", s.Agent, r.Round, r.Attempt))
	case !now.Before(r.Deadline):
		return refuse(RefusedLate, fmt.Sprintf("round %d attempt %d timed out at %s", r.Round, r.Attempt, r.Deadline.UTC().Format(time.RFC3339)))
	}
	if err := c.accept(r, s); err != nil {
		return refuse(RefusedInvalid, err.Error())
	}
	r.Reported = append(r.Reported, s.Agent)
	r.Examples += s.Examples
	r.Phase = RoundCollecting
	ev := []Event{{Kind: EvUpdateAccepted, Round: cloneRound(*r), Agent: s.Agent}}
	want := len(r.Selected)
	if c.spec.MinReport > 0 {
		want = min(want, c.spec.MinReport)
	}
	if len(r.Reported) >= want {
		ev = append(ev, c.close(now, "")...)
	}
	return ev
}

// close ends the current attempt: aggregated when enough clients
// reported, else failed and retried (or the job failed).
func (c *Coordinator) close(now time.Time, why string) []Event {
	r := c.st.Current
	r.Closed = now
	need := int(math.Ceil(c.spec.MinCompletion * float64(len(r.Selected))))
	if len(r.Reported) == 0 || len(r.Reported) < need {
		reason := fmt.Sprintf("%d of %d selected clients reported, %d needed", len(r.Reported), len(r.Selected), max(need, 1))
		if why != "" {
			reason = why + ": " + reason
		}
		return c.failRound(now, reason)
	}
	if r.Stats() {
		return c.closeStats(now, why)
	}
	updates := make([]strategy.Update, 0, len(c.deltas))
	for _, u := range c.deltas {
		updates = append(updates, u)
	}
	agg := c.strat
	if d := c.spec.DP; d != nil && d.Mode == DPCentral {
		// Resolve checked that the strategy applies a mean.
		agg = &privacy.Central{Clip: d.Clip, NoiseMultiplier: d.NoiseMultiplier, Next: c.strat.(strategy.MeanApplier),
			Source: privacy.NewSource(c.noiseSeed(r.Round, r.Attempt))}
	}
	global, err := agg.Aggregate(c.st.Global, updates)
	if err != nil {
		return c.failRound(now, "aggregation: "+err.Error())
	}
	return c.aggregated(now, r, global, why)
}

// aggregated ends attempt r with the new global model.
func (c *Coordinator) aggregated(now time.Time, r *Round, global []float64, why string) []Event {
	r.Phase, r.Reason = RoundAggregated, why
	c.charge(r)
	c.st.Global = global
	if fo, ok := c.strat.(*strategy.FedOpt); ok {
		os := fo.State()
		c.st.Optimizer = &os
	}
	if c.spec.Carbon != nil {
		c.st.RoundSeconds = append(c.st.RoundSeconds, r.Closed.Sub(r.Opened).Seconds())
		c.st.LastClosed = r.Closed
	}
	c.between(now)
	c.st.Done++
	c.st.Retries = 0
	c.st.Current = nil
	c.clearUpdates()
	ev := []Event{{Kind: EvRoundAggregated, Round: cloneRound(*r), Global: slices.Clone(global)}}
	if c.st.Done >= c.spec.Rounds {
		c.st.Status = JobDone
		ev = append(ev, Event{Kind: EvJobFinished, Status: JobDone})
	}
	return ev
}

// closeStats ends the statistics round: the clients' counts, sums and sums
// of squares are added up (in the order of the agents' names), and the
// schema gets each feature's mean as its mean and impute value and its
// population standard deviation as its std (1 where it is 0).
func (c *Coordinator) closeStats(now time.Time, why string) []Event {
	r := c.st.Current
	n := len(c.spec.Schema.Features)
	total := fedlearn.NewFeatureStats(n)
	agents := make([]string, 0, len(c.stats))
	for a := range c.stats {
		agents = append(agents, a)
	}
	slices.Sort(agents)
	for _, a := range agents {
		s := c.stats[a]
		for i := range n {
			total.Count[i] += s.Count[i]
			total.Sum[i] += s.Sum[i]
			total.SumSq[i] += s.SumSq[i]
		}
	}
	schema := cloneSchema(c.spec.Schema)
	if err := total.Apply(&schema); err != nil {
		return c.failRound(now, "statistics: "+err.Error())
	}
	for i := range schema.Features {
		if schema.Features[i].Std == 0 {
			schema.Features[i].Std = 1
		}
	}
	if err := schema.Validate(); err != nil {
		return c.failRound(now, "statistics: "+err.Error())
	}
	r.Phase, r.Reason = RoundAggregated, why
	c.st.Schema = &schema
	c.between(now)
	c.st.Retries = 0
	c.st.Current = nil
	c.clearUpdates()
	sc := cloneSchema(schema)
	return []Event{{Kind: EvStatsAggregated, Round: cloneRound(*r), Schema: &sc}}
}

func (c *Coordinator) failRound(now time.Time, reason string) []Event {
	r := c.st.Current
	r.Phase, r.Reason = RoundFailed, reason
	c.charge(r)
	c.between(now)
	c.st.Current = nil
	c.clearUpdates()
	c.st.Retries++
	retry := c.st.Retries <= c.spec.MaxRetries
	ev := []Event{{Kind: EvRoundFailed, Round: cloneRound(*r), Reason: reason, Retry: retry}}
	if !retry {
		c.st.Status, c.st.Reason = JobFailed, fmt.Sprintf("round %d failed %d times: %s", r.Round, c.st.Retries, reason)
		ev = append(ev, Event{Kind: EvJobFinished, Status: JobFailed, Reason: c.st.Reason})
	}
	return ev
}
