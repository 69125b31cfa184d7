package greensched

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"sort"
	"time"
)

// RoundClient is an agent a federated round may select, as the control
// plane knows it from the agent's heartbeats.
type RoundClient struct {
	ID   string
	Zone string
	// Intensity is the zone's intensity the agent reported (gCO2eq/kWh);
	// NaN when unknown.
	Intensity float64
	// Battery is the reported battery; nil when unknown (an agent that
	// does not report one is taken as mains powered).
	Battery *Battery
}

// RoundRequest asks when a ready federated round should open and which
// clients it should take.
type RoundRequest struct {
	Now time.Time
	// Ready is when the round could first have opened (the previous
	// round's end, or the job's start); Window how long after Ready it
	// may wait for a greener start.
	Ready  time.Time
	Window time.Duration
	// Deadline is the job's (zero: none): the round may wait only as long
	// as Remaining rounds of Duration each still fit before it.
	Deadline time.Time
	// Remaining is the number of rounds the job still has to aggregate,
	// this one included (0 counts as 1).
	Remaining int
	// Duration is a round's expected length: the control plane passes the
	// median of the job's aggregated rounds, its round timeout before any.
	Duration time.Duration
	Clients  []RoundClient
	// Select is how many clients the round takes (at least 1).
	Select int
	// MinBattery (0..1): a client below it that is not charging is not
	// eligible.
	MinBattery float64
	// Forecasts holds zones' forecasts; a zone without one is taken to
	// stay at its clients' reported intensity.
	Forecasts map[string]Series
	// Credit is each client's participation credit: the rounds it was
	// due (Select/eligible clients per round it was eligible for) minus
	// the rounds it was selected for; missing means 0. The client with
	// more credit comes first, so that every client takes its turn.
	Credit map[string]float64
	// Slack (>= 0) is how much credit carbon may outweigh, in rounds: a
	// client's rank key is its credit minus Slack × how much dirtier than
	// the fleet's usual its zone is over the round, on a scale of -1 to 1.
	// 0 is a strict rotation in which carbon only breaks ties. See
	// PlanRound.
	Slack float64
	// Seed and Round break the remaining ties: a hash of seed, round and
	// client id, so that no client is always first.
	Seed  uint64
	Round int
}

// RoundDecision is PlanRound's answer.
type RoundDecision struct {
	// Open is true when the round should open now; else Start is the
	// greener start it waits for (at the latest Latest).
	Open   bool
	Start  time.Time
	Latest time.Time
	// Clients are the eligible clients in the order a round takes them
	// (at Start): see PlanRound. A round takes the first Select.
	Clients []string
	// Intensity is the mean intensity over the round of the first Select
	// clients' zones at Start, AtNow the same if it opened now (NaN when
	// unknown).
	Intensity float64
	AtNow     float64
	// Expected is the mean intensity per round over the job's remaining
	// rounds if this one starts at Start (the quantity the start
	// minimises), ExpectedNow the same if it opened now.
	Expected    float64
	ExpectedNow float64
	// Excluded names the clients left out and why.
	Excluded map[string]string
}

// MaxRoundHorizon bounds the span PlanRound looks ahead over the job's
// remaining rounds.
const MaxRoundHorizon = 24 * time.Hour

// MinWaitGain is the least a later start must save, as a fraction of the
// expected intensity of opening now, for a round to wait for it: every
// wait delays all the job's later rounds, which then plan again, so a
// job waiting for small gains drifts far from its creation (in the sim,
// 2020-03-02 from 00:00 drifted 40 trace hours into dirtier days).
const MinWaitGain = 0.05

// DeadlineMargin is the part of the remaining rounds' expected time a job
// with a deadline keeps in hand: its rounds are planned as if each took
// 1 + DeadlineMargin times the expected length, so that a few slow rounds
// do not fail the job at its deadline.
const DeadlineMargin = 0.25

// MaxDeadlineSlots bounds the round slots PlanRound weighs before a
// deadline; further apart deadlines group several rounds in a slot.
const MaxDeadlineSlots = 4096

// paddedRounds is the time n rounds of d take, DeadlineMargin included.
func paddedRounds(n int, d time.Duration) time.Duration {
	return time.Duration(float64(n) * float64(d) * (1 + DeadlineMargin))
}

// Eligible reports whether a client's battery lets it train: unknown
// batteries, mains power and charging devices always; otherwise a level
// of at least minBattery.
func (c RoundClient) Eligible(minBattery float64) bool {
	b := c.Battery
	return b == nil || !b.Present || b.Charging || b.Level >= minBattery
}

// PlanRound decides when a ready federated round opens, among the starts
// from now to the latest (Ready + Window, and early enough for the
// remaining rounds before the deadline), one forecast step apart, and
// which clients it takes.
//
// Clients: the eligible ones (battery at MinBattery or above, charging or
// mains powered), ordered by rank key (highest first), then by their
// zone's intensity over the round (lowest first, unknown last), then by a
// hash of Seed, Round and id. The key is Credit − Slack × dev, where dev
// is how much dirtier than the fleet's usual the client's zone is over the
// round: (its mean intensity over [start, start+Duration) − m) / h,
// clamped to [-1, 1] (0 when unknown), where m is the mean over the
// eligible clients of their zones' usual intensity (the mean from now to
// the latest start + H, see below) and h half the range of those usual
// intensities (m when they are all equal): the cleanest zone usually sits
// near -1, the dirtiest near +1, and a zone moves with its intensity.
// Credit makes every client take its turn; Slack lets a client
// of a cleaner zone, or of a zone cleaner than usual, go before one that
// is up to Slack × 2 rounds of credit further behind. With constant
// eligibility a client's credit stays at most 1 + 2×Slack
// (TestSelectionKeepsEveryClientsShare): over k rounds it is selected at
// least k×Select/N − 1 − 2×Slack times.
//
// Start: the one with the lowest expected mean intensity per round over
// the job's remaining rounds H = min(Remaining × Duration,
// MaxRoundHorizon): the round's first Select clients over [t,
// t+Duration), then all eligible clients alike (each takes its share)
// over [t+Duration, t+H), ties to the earliest (now); a later start only
// when it saves at least MinWaitGain of opening now. Looking past the
// round keeps a wait from pushing the later rounds into a dirtier time.
//
// With a Deadline the job's rounds are placed like an interruptible job's
// slots instead: the span from now to the deadline is cut into slots of
// one round (Duration) each, the remaining rounds take the greenest slots
// (each at the mean intensity of all eligible clients' zones over it: the
// rotation gives every client its share, so which clients a later round
// takes is not known now, and pricing later rounds by the clients ranked
// first today would defer the owed clients of dirty zones into a crunch
// before the deadline; ties to the earliest), and the round opens now
// when the slot now is among
// them, else Start is the first chosen slot, waiting at most until the
// latest start (Ready + Window, and the time the remaining rounds need
// before the deadline, with DeadlineMargin in hand; when the first chosen
// slot is later, the greenest slot up to the latest start, now on ties).
// Expected is then the
// mean over the chosen slots. No MinWaitGain: the deadline, not the gain,
// keeps the job from drifting.
//
// It is pure: the control plane calls it on every tick while a round is
// ready, with the latest heartbeats and forecasts, and opens the round
// when it says Open.
func PlanRound(r RoundRequest) (RoundDecision, error) {
	switch {
	case r.Select < 1:
		return RoundDecision{}, fmt.Errorf("greensched: round: select %d must be at least 1", r.Select)
	case r.Duration <= 0 || r.Window < 0:
		return RoundDecision{}, fmt.Errorf("greensched: round: duration %v must be positive and window %v not negative", r.Duration, r.Window)
	case math.IsNaN(r.MinBattery) || r.MinBattery < 0 || r.MinBattery > 1:
		return RoundDecision{}, fmt.Errorf("greensched: round: minimum battery %v outside [0, 1]", r.MinBattery)
	case math.IsNaN(r.Slack) || math.IsInf(r.Slack, 0) || r.Slack < 0:
		return RoundDecision{}, fmt.Errorf("greensched: round: slack %v must be a finite number >= 0", r.Slack)
	}
	for id, c := range r.Credit {
		if math.IsNaN(c) || math.IsInf(c, 0) {
			return RoundDecision{}, fmt.Errorf("greensched: round: credit %v of client %q is not a finite number", c, id)
		}
	}
	d := RoundDecision{Excluded: map[string]string{}}
	var eligible []RoundClient
	for _, c := range r.Clients {
		if c.Eligible(r.MinBattery) {
			eligible = append(eligible, c)
		} else {
			d.Excluded[c.ID] = fmt.Sprintf("battery %.0f %% below the minimum %.0f %% and not charging", 100*c.Battery.Level, 100*r.MinBattery)
		}
	}
	rounds := max(r.Remaining, 1)
	latest := r.Ready.Add(r.Window)
	if !r.Deadline.IsZero() {
		latest = minTime(latest, r.Deadline.Add(-paddedRounds(rounds, r.Duration)))
	}
	if latest.Before(r.Now) {
		latest = r.Now
	}
	d.Latest = latest
	horizon := r.Duration * time.Duration(rounds)
	if horizon > MaxRoundHorizon || horizon/time.Duration(rounds) != r.Duration {
		horizon = max(MaxRoundHorizon, r.Duration)
	}
	// candidate starts: now, then every forecast step up to the latest
	step := time.Duration(0)
	for _, c := range eligible {
		if f, ok := r.Forecasts[c.Zone]; ok && f.Step > 0 && (step == 0 || f.Step < step) {
			step = f.Step
		}
	}
	starts := []time.Time{r.Now}
	if step > 0 {
		for t := r.Now.Add(step); !t.After(latest); t = t.Add(step) {
			starts = append(starts, t)
		}
	}
	if !r.Deadline.IsZero() {
		p := newRoundPlan(eligible, r, max(r.Deadline.Sub(r.Now), r.Duration))
		p.beforeDeadline(&d, rounds, latest)
		return d, nil
	}
	p := newRoundPlan(eligible, r, latest.Sub(r.Now)+horizon)
	best, bestCost := 0, math.NaN()
	var bestRank []RoundClient
	for i, t := range starts {
		rank, round := p.rankAt(t)
		cost := p.expected(t, round, horizon)
		if i == 0 {
			d.AtNow, d.ExpectedNow = round, cost
		}
		if i == 0 || (!math.IsNaN(cost) && (math.IsNaN(bestCost) || cost < bestCost-1e-9*math.Abs(bestCost))) {
			if i > 0 && !math.IsNaN(d.ExpectedNow) && cost > (1-MinWaitGain)*d.ExpectedNow {
				continue
			}
			best, bestCost, bestRank = i, cost, rank
			d.Intensity = round
		}
	}
	d.Open = best == 0
	d.Start = starts[best]
	d.Expected = bestCost
	for _, c := range bestRank {
		d.Clients = append(d.Clients, c.ID)
	}
	return d, nil
}

// beforeDeadline fills d for a job with a deadline (see PlanRound): the
// rounds remaining take the greenest round slots before the deadline.
func (p *roundPlan) beforeDeadline(d *RoundDecision, rounds int, latest time.Time) {
	r := p.r
	span := r.Deadline.Sub(r.Now)
	width, per := r.Duration, 1
	if n := span / r.Duration; n > MaxDeadlineSlots {
		per = int((n + MaxDeadlineSlots - 1) / MaxDeadlineSlots)
		width = time.Duration(per) * r.Duration
	}
	type slot struct {
		i    int
		cost float64
	}
	var slots []slot
	for i := 0; i == 0 || !r.Now.Add(time.Duration(i)*width+r.Duration).After(r.Deadline); i++ {
		slots = append(slots, slot{i, p.fleetMean(r.Now.Add(time.Duration(i)*width), r.Duration)})
	}
	now := slots[0]
	sort.SliceStable(slots, func(a, b int) bool {
		ca, cb := slots[a].cost, slots[b].cost
		if na, nb := math.IsNaN(ca), math.IsNaN(cb); na != nb {
			return nb // unknown last
		} else if !na && ca != cb {
			return ca < cb
		}
		return slots[a].i < slots[b].i
	})
	// take fills the remaining rounds, per rounds a slot, from the slots
	// in order (each slot once); it returns the mean cost per round (NaN:
	// none known), whether the slot now is taken and the earliest taken
	take := func(order []slot) (mean float64, now bool, first slot) {
		var sum float64
		n, left, seen := 0, rounds, map[int]bool{}
		first = order[0]
		for _, s := range order {
			if left <= 0 {
				break
			}
			if seen[s.i] {
				continue
			}
			seen[s.i] = true
			now = now || s.i == 0
			if s.i < first.i {
				first = s
			}
			k := min(per, left)
			left -= k
			if !math.IsNaN(s.cost) {
				sum += float64(k) * s.cost
				n += k
			}
		}
		if n == 0 {
			return math.NaN(), now, first
		}
		return sum / float64(n), now, first
	}
	var open bool
	var first slot
	d.Expected, open, first = take(slots)
	// what opening now would cost: the slot now, then the greenest others
	d.ExpectedNow, _, _ = take(append([]slot{now}, slots...))
	start := r.Now.Add(time.Duration(first.i) * width)
	rank, atNow := p.rankAt(r.Now)
	d.AtNow = atNow
	switch {
	case open || !latest.After(r.Now):
		first, start = now, r.Now
	case start.After(latest):
		// the first chosen slot is past the latest start: the greenest
		// slot up to it instead (now on ties)
		first = now
		for _, s := range slots {
			if t := r.Now.Add(time.Duration(s.i) * width); !t.After(latest) && !math.IsNaN(s.cost) && (math.IsNaN(first.cost) || s.cost < first.cost) {
				first = s
			}
		}
		start = r.Now.Add(time.Duration(first.i) * width)
	}
	d.Open = first.i == 0
	d.Start, d.Intensity = start, atNow
	if !d.Open {
		rank, d.Intensity = p.rankAt(start)
	}
	for _, c := range rank {
		d.Clients = append(d.Clients, c.ID)
	}
}

// fleetMean is the mean over the eligible clients of their zones'
// intensity over [t, t+d) (NaN: none known): a round's expected intensity
// when the rotation gives every client its share.
func (p *roundPlan) fleetMean(t time.Time, d time.Duration) float64 {
	var sum float64
	n := 0
	for _, c := range p.clients {
		if v := p.intensity(c, t, d); !math.IsNaN(v) {
			sum += v
			n++
		}
	}
	if n == 0 {
		return math.NaN()
	}
	return sum / float64(n)
}

// roundPlan holds what PlanRound computes once per request.
type roundPlan struct {
	r       RoundRequest
	clients []RoundClient
	// mid is the mean over the clients of their zones' usual intensity
	// (the mean over the span any candidate's remaining rounds cover),
	// half half the range of the usual intensities (NaN: unknown).
	mid, half float64
	tie       []uint64
}

func newRoundPlan(clients []RoundClient, r RoundRequest, span time.Duration) *roundPlan {
	p := &roundPlan{r: r, clients: clients, mid: math.NaN(), half: math.NaN(), tie: make([]uint64, len(clients))}
	var sum, lo, hi float64
	n := 0
	for i, c := range clients {
		if v := p.intensity(c, r.Now, span); !math.IsNaN(v) {
			if n == 0 || v < lo {
				lo = v
			}
			if n == 0 || v > hi {
				hi = v
			}
			sum += v
			n++
		}
		p.tie[i] = tieHash(r.Seed, r.Round, c.ID)
	}
	if n > 0 {
		p.mid = sum / float64(n)
		p.half = (hi - lo) / 2
		if p.half <= 0 {
			// one zone, or zones alike: deviations relative to the mean
			p.half = p.mid
		}
		if !(p.half > 0) {
			p.half = math.NaN()
		}
	}
	return p
}

// intensity is client c's zone's mean over [t, t+d).
func (p *roundPlan) intensity(c RoundClient, t time.Time, d time.Duration) float64 {
	return zoneIntensity(p.r.Forecasts[c.Zone], c.Intensity, t, d)
}

// rankAt orders the clients for a round starting at t (see PlanRound) and
// returns the mean intensity over the round of the first Select known ones
// (NaN: none known).
func (p *roundPlan) rankAt(t time.Time) ([]RoundClient, float64) {
	type scored struct {
		c      RoundClient
		key, v float64
		tie    uint64
	}
	sc := make([]scored, len(p.clients))
	for i, c := range p.clients {
		v := p.intensity(c, t, p.r.Duration)
		dev := 0.0
		if !math.IsNaN(v) && !math.IsNaN(p.half) {
			dev = max(-1, min(1, (v-p.mid)/p.half))
		}
		// rounded so that credits equal but for float error tie
		key := math.Round((p.r.Credit[c.ID]-p.r.Slack*dev)*1e9) / 1e9
		sc[i] = scored{c, key, v, p.tie[i]}
	}
	sort.SliceStable(sc, func(i, j int) bool {
		a, b := sc[i], sc[j]
		if a.key != b.key {
			return a.key > b.key
		}
		if na, nb := math.IsNaN(a.v), math.IsNaN(b.v); na != nb {
			return nb
		} else if !na && a.v != b.v {
			return a.v < b.v
		}
		if a.tie != b.tie {
			return a.tie < b.tie
		}
		return a.c.ID < b.c.ID
	})
	out := make([]RoundClient, len(sc))
	var sum float64
	n := 0
	for i, s := range sc {
		out[i] = s.c
		if i < p.r.Select && !math.IsNaN(s.v) {
			sum += s.v
			n++
		}
	}
	if n == 0 {
		return out, math.NaN()
	}
	return out, sum / float64(n)
}

// expected is the mean intensity per round over the horizon if the round
// starts at t with mean intensity round: the rounds after it are taken to
// run back to back, every eligible client alike.
func (p *roundPlan) expected(t time.Time, round float64, horizon time.Duration) float64 {
	rest := horizon - p.r.Duration
	if rest <= 0 || len(p.clients) == 0 {
		return round
	}
	later := p.fleetMean(t.Add(p.r.Duration), rest)
	if math.IsNaN(later) {
		return round
	}
	if math.IsNaN(round) {
		return later
	}
	w := float64(p.r.Duration) / float64(horizon)
	return w*round + (1-w)*later
}

// tieHash orders clients that tie on credit and intensity: the same seed,
// round and id give the same order, after a restart too.
func tieHash(seed uint64, round int, id string) uint64 {
	h := fnv.New64a()
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:], seed)
	binary.LittleEndian.PutUint64(b[8:], uint64(round))
	h.Write(b[:])
	h.Write([]byte(id))
	return h.Sum64()
}

// zoneIntensity is the mean forecast intensity over [t, t+d) (the point
// in force at t when none falls inside). Past the forecast's end, it is
// the forecast's at the same time a whole number of days earlier (as a
// persistence forecast would say; a provider's forecast often reaches
// 24 h while a job's deadline is further), else the reported one.
func zoneIntensity(f Series, reported float64, t time.Time, d time.Duration) float64 {
	if len(f.Points) == 0 {
		return reported
	}
	if end := f.Points[len(f.Points)-1].Time.Add(max(f.Step, d)); !t.Before(end) {
		back := (t.Sub(end)/day + 1) * day
		if !t.Add(-back).Before(f.Points[0].Time) {
			t = t.Add(-back)
		}
	}
	if in := f.Between(t, t.Add(d)); len(in.Points) > 0 {
		return in.Mean()
	}
	i := sort.Search(len(f.Points), func(i int) bool { return f.Points[i].Time.After(t) }) - 1
	if i >= 0 && t.Sub(f.Points[i].Time) < max(f.Step, d) {
		return f.Points[i].Intensity
	}
	return reported
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
