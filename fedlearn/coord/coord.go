package coord

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

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
	Round    int       `json:"round"`
	Attempt  int       `json:"attempt"`
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
}

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
}

// Event kinds.
const (
	EvRoundOpened     = "round_opened"
	EvUpdateAccepted  = "update_accepted"
	EvUpdateRefused   = "update_refused"
	EvRoundAggregated = "round_aggregated"
	EvRoundFailed     = "round_failed"
	EvJobFinished     = "job_finished"
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
}

// Submission is one agent's update for a round attempt.
type Submission struct {
	Agent    string
	Round    int
	Attempt  int
	Delta    []float32
	Examples int
}

// Coordinator runs one job. It is not safe for concurrent use.
type Coordinator struct {
	spec   Spec
	strat  strategy.Strategy
	st     State
	deltas map[string]strategy.Update // the current attempt's accepted updates
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
// updates of its current attempt (the deltas the state does not hold).
// Updates of agents the state does not list as reported are refused: the
// store and the state disagree.
func Restore(spec Spec, st State, updates []strategy.Update) (*Coordinator, error) {
	if err := spec.Resolve(); err != nil {
		return nil, err
	}
	strat, err := strategy.New(spec.Strategy)
	if err != nil {
		return nil, fmt.Errorf("coord: %w", err)
	}
	if len(st.Global) != spec.Arch.NumParams() {
		return nil, fmt.Errorf("coord: restoring job %s: global model has %d values, the architecture %d", st.Job, len(st.Global), spec.Arch.NumParams())
	}
	c := &Coordinator{spec: spec, strat: strat, st: st, deltas: map[string]strategy.Update{}}
	if fo, ok := strat.(*strategy.FedOpt); ok && st.Optimizer != nil {
		if err := fo.SetState(*st.Optimizer); err != nil {
			return nil, fmt.Errorf("coord: restoring job %s: %w", st.Job, err)
		}
	}
	for _, u := range updates {
		if c.st.Current == nil || !slices.Contains(c.st.Current.Reported, u.Client) {
			return nil, fmt.Errorf("coord: restoring job %s: stored update of %s is not in the round's state", st.Job, u.Client)
		}
		if err := strategy.CheckUpdate(len(st.Global), u); err != nil {
			return nil, fmt.Errorf("coord: restoring job %s: %w", st.Job, err)
		}
		c.deltas[u.Client] = u
	}
	if c.st.Current != nil && len(c.deltas) != len(c.st.Current.Reported) {
		return nil, fmt.Errorf("coord: restoring job %s: %d stored updates, the round's state lists %d", st.Job, len(c.deltas), len(c.st.Current.Reported))
	}
	return c, nil
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
	return st
}

func cloneRound(r Round) Round {
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
	if r == nil || c.Finished() || !slices.Contains(r.Selected, agent) || slices.Contains(r.Reported, agent) {
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
		c.st.Current = nil
		clear(c.deltas)
	}
	c.st.Status, c.st.Reason = status, reason
	return append(ev, Event{Kind: EvJobFinished, Status: status, Reason: reason})
}

// Tick advances the job at now: the job deadline, the round timeout, and
// opening the next round when enough agents are available. available are
// the eligible agents (matching the selector, reachable); the order does
// not matter, except with Spec.Carbon, where the caller ranks them
// (cleanest first) and the round takes the first ones.
func (c *Coordinator) Tick(now time.Time, available []string) []Event {
	if c.Finished() {
		return nil
	}
	if !c.spec.Deadline.IsZero() && !now.Before(c.spec.Deadline) {
		return c.finish(now, JobFailed, fmt.Sprintf("job deadline %s passed after %d of %d rounds", c.spec.Deadline.UTC().Format(time.RFC3339), c.st.Done, c.spec.Rounds))
	}
	if r := c.st.Current; r != nil {
		if now.Before(r.Deadline) {
			return nil
		}
		return c.close(now, "round timeout")
	}
	var avail []string
	if c.spec.Carbon != nil {
		// ranked by the caller, cleanest first: keep the order
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
	round, attempt := c.st.Done+1, c.st.Retries
	n := c.ClientCount(len(avail))
	if c.spec.Carbon == nil {
		rng := rand.New(rand.NewPCG(c.spec.Seed, uint64(round)<<20|uint64(attempt)))
		rng.Shuffle(len(avail), func(i, j int) { avail[i], avail[j] = avail[j], avail[i] })
	}
	sel := avail[:n]
	slices.Sort(sel)
	r := &Round{Round: round, Attempt: attempt, Phase: RoundOpen, Opened: now,
		Deadline: now.Add(time.Duration(c.spec.RoundTimeout)), Selected: sel, Reported: []string{}}
	c.st.Current = r
	clear(c.deltas)
	return []Event{{Kind: EvRoundOpened, Round: cloneRound(*r)}}
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
	case slices.Contains(r.Reported, s.Agent):
		return refuse(RefusedReplayed, fmt.Sprintf("agent %s already reported for round %d attempt %d", s.Agent, r.Round, r.Attempt))
	case !now.Before(r.Deadline):
		return refuse(RefusedLate, fmt.Sprintf("round %d attempt %d timed out at %s", r.Round, r.Attempt, r.Deadline.UTC().Format(time.RFC3339)))
	}
	u := strategy.Update{Client: s.Agent, Delta: s.Delta, Examples: s.Examples}
	if err := strategy.CheckUpdate(len(c.st.Global), u); err != nil {
		return refuse(RefusedInvalid, err.Error())
	}
	c.deltas[s.Agent] = u
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
	updates := make([]strategy.Update, 0, len(c.deltas))
	for _, u := range c.deltas {
		updates = append(updates, u)
	}
	global, err := c.strat.Aggregate(c.st.Global, updates)
	if err != nil {
		return c.failRound(now, "aggregation: "+err.Error())
	}
	r.Phase, r.Reason = RoundAggregated, why
	c.st.Global = global
	if fo, ok := c.strat.(*strategy.FedOpt); ok {
		os := fo.State()
		c.st.Optimizer = &os
	}
	c.st.Done++
	c.st.Retries = 0
	c.st.Current = nil
	clear(c.deltas)
	ev := []Event{{Kind: EvRoundAggregated, Round: cloneRound(*r), Global: slices.Clone(global)}}
	if c.st.Done >= c.spec.Rounds {
		c.st.Status = JobDone
		ev = append(ev, Event{Kind: EvJobFinished, Status: JobDone})
	}
	return ev
}

func (c *Coordinator) failRound(now time.Time, reason string) []Event {
	r := c.st.Current
	r.Phase, r.Reason = RoundFailed, reason
	c.st.Current = nil
	clear(c.deltas)
	c.st.Retries++
	retry := c.st.Retries <= c.spec.MaxRetries
	ev := []Event{{Kind: EvRoundFailed, Round: cloneRound(*r), Reason: reason, Retry: retry}}
	if !retry {
		c.st.Status, c.st.Reason = JobFailed, fmt.Sprintf("round %d failed %d times: %s", r.Round, c.st.Retries, reason)
		ev = append(ev, Event{Kind: EvJobFinished, Status: JobFailed, Reason: c.st.Reason})
	}
	return ev
}
