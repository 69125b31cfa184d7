package coord

import (
	"maps"
	"math"
	"slices"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn"
)

// MaxCarbonWindow bounds Carbon.Window.
const MaxCarbonWindow = 7 * 24 * time.Hour

// Carbon makes a job's rounds carbon-aware: a ready round may wait up to
// Window for a greener start (within the job's deadline), and its clients
// are eligible agents (a battery at MinBattery or above or charging) taken
// in turn, those in cleaner zones first within Slack. The caller (the
// control plane, with greensched.PlanRound) decides when to tick a round
// open and passes the eligible agents ranked by the participation credit
// the coordinator keeps (State.Credit, Credit) and carbon; the coordinator
// takes the first of them instead of a seeded random draw and moves the
// credit.
type Carbon struct {
	// Window is how long a ready round may wait for a greener start;
	// 0 opens it when ready (the clients are still chosen by carbon).
	Window fedlearn.Duration `json:"window,omitempty"`
	// MinBattery (0..1) is the battery level a client must have unless it
	// is charging or mains powered.
	MinBattery float64 `json:"min_battery,omitempty"`
	// Slack (0..1) is the part of its turns over the job a client may
	// give up to clients in cleaner zones: with constant availability
	// every client is selected at least (1 − Slack) × rounds × fraction −
	// 1 times (greensched.PlanRound with SlackRounds). 0 rotates the
	// clients strictly (carbon only breaks ties). Default
	// DefaultCarbonSlack when absent.
	Slack *float64 `json:"slack,omitempty"`
}

// DefaultCarbonSlack is Carbon.Slack's default: at least 60 % of a
// client's share, about the fewest turns a seeded random draw gives a
// client of 36 over 50 rounds at fraction 0.5 (15 of 25 in the sim).
const DefaultCarbonSlack = 0.4

func (c *Carbon) resolve() error {
	if c == nil {
		return nil
	}
	if w := time.Duration(c.Window); w < 0 || w > MaxCarbonWindow {
		return specErr("carbon.window", "%s (want 0-%s)", w, MaxCarbonWindow)
	}
	if math.IsNaN(c.MinBattery) || c.MinBattery < 0 || c.MinBattery > 1 {
		return specErr("carbon.min_battery", "%v (want 0-1)", c.MinBattery)
	}
	if c.Slack == nil {
		v := DefaultCarbonSlack
		c.Slack = &v
	}
	if v := *c.Slack; !(v >= 0 && v <= 1) {
		return specErr("carbon.slack", "%v (want 0-1)", v)
	}
	return nil
}

// credit moves the participation credit as a round opens: each available
// agent is due len(sel)/len(avail) of it, each selected one received 1.
func (c *Coordinator) credit(avail, sel []string) {
	if c.st.Credit == nil {
		c.st.Credit = map[string]float64{}
	}
	share := float64(len(sel)) / float64(len(avail))
	for _, a := range avail {
		c.st.Credit[a] += share
	}
	for _, a := range sel {
		c.st.Credit[a]--
	}
}

// SlackRounds is greensched.RoundRequest.Slack for a round among
// available agents: Slack × the job's rounds × the fraction selected / 2,
// so that over the job a client falls at most Slack of its share (and 1)
// behind (PlanRound's bound: k×fraction − 1 − 2×SlackRounds turns in k
// rounds). 0 without a carbon option.
func (c *Coordinator) SlackRounds(available int) float64 {
	if c.spec.Carbon == nil || c.spec.Carbon.Slack == nil || available < 1 {
		return 0
	}
	f := float64(c.ClientCount(available)) / float64(available)
	return *c.spec.Carbon.Slack * float64(c.spec.Rounds) * f / 2
}

// Credit returns a copy of the agents' participation credit (State.Credit).
func (c *Coordinator) Credit() map[string]float64 { return maps.Clone(c.st.Credit) }

// NextRound is the number of the round the next attempt opens.
func (c *Coordinator) NextRound() int {
	if c.needStats() {
		return StatsRound
	}
	return c.st.Done + 1
}

// RoundDuration is the time a round takes from one opening to the next
// when nothing waits: the median length of the job's aggregated training
// rounds (State.RoundSeconds) plus the median time from a round's close
// to the driver's next tick (State.GapSeconds); the round timeout before
// any round. (In the sim, with a 100 ms tick, a plan over the round
// lengths alone ran out of green slots: its rounds opened 0.6-0.7 s
// apart, later than it had planned, and the last ones ran in the evening.)
func (c *Coordinator) RoundDuration() time.Duration {
	if len(c.st.RoundSeconds) == 0 {
		return time.Duration(c.spec.RoundTimeout)
	}
	m := median(c.st.RoundSeconds) + median(c.st.GapSeconds)
	return max(time.Duration(m*float64(time.Second)), time.Millisecond)
}

// median is the median of vs (0 for none).
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + m) / 2
	}
	return m
}

// RoundOpen reports whether a round attempt is in progress (between
// rounds, the next one is ready to open).
func (c *Coordinator) RoundOpen() bool { return c.st.Current != nil }

// between notes, for a carbon job, that the round attempt in progress
// closed at now (State.Ready).
func (c *Coordinator) between(now time.Time) {
	if c.spec.Carbon != nil {
		c.st.Ready = now
	}
}

// ReadySince is when the next round became ready to open: the close of
// the job's last round or attempt (State.Ready); zero before its first
// round (the caller counts from the job's creation), while a round is
// open, and for a job without a carbon option.
func (c *Coordinator) ReadySince() time.Time { return c.st.Ready }

// Remaining is the number of rounds still to aggregate.
func (c *Coordinator) Remaining() int { return c.spec.Rounds - c.st.Done }

// ClientCount is how many of n available agents a round selects.
func (c *Coordinator) ClientCount(n int) int {
	return min(n, max(c.spec.MinFit, int(math.Ceil(c.spec.Fraction*float64(n)))))
}
