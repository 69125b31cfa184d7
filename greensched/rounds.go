package greensched

import (
	"fmt"
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
	Deadline  time.Time
	Remaining int
	// Duration is a round's expected length (its timeout).
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
}

// RoundDecision is PlanRound's answer.
type RoundDecision struct {
	// Open is true when the round should open now; else Start is the
	// greener start it waits for (at the latest Latest).
	Open   bool
	Start  time.Time
	Latest time.Time
	// Clients are the eligible clients, cleanest zone first (at Start),
	// unknown intensities last, ties by id: a round takes the first
	// Select of them.
	Clients []string
	// Intensity is the mean intensity over the round of the first Select
	// clients' zones at Start, AtNow the same if it opened now (NaN when
	// unknown).
	Intensity float64
	AtNow     float64
	// Excluded names the clients left out and why.
	Excluded map[string]string
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
// remaining rounds before the deadline), one forecast step apart: the
// start where the Select cleanest eligible clients have the lowest mean
// intensity over the round, ties to the earliest (now). It is pure: the
// control plane calls it on every tick while a round is ready, with the
// latest heartbeats and forecasts, and opens the round when it says Open.
func PlanRound(r RoundRequest) (RoundDecision, error) {
	switch {
	case r.Select < 1:
		return RoundDecision{}, fmt.Errorf("greensched: round: select %d must be at least 1", r.Select)
	case r.Duration <= 0 || r.Window < 0:
		return RoundDecision{}, fmt.Errorf("greensched: round: duration %v must be positive and window %v not negative", r.Duration, r.Window)
	case math.IsNaN(r.MinBattery) || r.MinBattery < 0 || r.MinBattery > 1:
		return RoundDecision{}, fmt.Errorf("greensched: round: minimum battery %v outside [0, 1]", r.MinBattery)
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
	latest := r.Ready.Add(r.Window)
	if !r.Deadline.IsZero() {
		latest = minTime(latest, r.Deadline.Add(-time.Duration(max(r.Remaining, 1))*r.Duration))
	}
	if latest.Before(r.Now) {
		latest = r.Now
	}
	d.Latest = latest
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
	best, bestCost := 0, math.NaN()
	var bestRank []RoundClient
	for i, t := range starts {
		rank, cost := rankAt(eligible, r, t)
		if i == 0 {
			d.AtNow = cost
		}
		if i == 0 || (!math.IsNaN(cost) && (math.IsNaN(bestCost) || cost < bestCost-1e-9*math.Abs(bestCost))) {
			best, bestCost, bestRank = i, cost, rank
		}
	}
	d.Open = best == 0
	d.Start = starts[best]
	d.Intensity = bestCost
	for _, c := range bestRank {
		d.Clients = append(d.Clients, c.ID)
	}
	return d, nil
}

// rankAt orders the clients by their zone's mean intensity over [t,
// t+Duration) (unknown last, ties by id) and returns the mean of the
// first Select known ones (NaN: none known).
func rankAt(clients []RoundClient, r RoundRequest, t time.Time) ([]RoundClient, float64) {
	type scored struct {
		c RoundClient
		v float64
	}
	cache := map[string]float64{}
	sc := make([]scored, len(clients))
	for i, c := range clients {
		v, ok := cache[c.Zone]
		if !ok {
			v = zoneIntensity(r.Forecasts[c.Zone], c.Intensity, t, r.Duration)
			if _, has := r.Forecasts[c.Zone]; has {
				cache[c.Zone] = v
			}
		}
		sc[i] = scored{c, v}
	}
	sort.SliceStable(sc, func(i, j int) bool {
		a, b := sc[i], sc[j]
		if na, nb := math.IsNaN(a.v), math.IsNaN(b.v); na != nb {
			return nb
		} else if !na && a.v != b.v {
			return a.v < b.v
		}
		return a.c.ID < b.c.ID
	})
	out := make([]RoundClient, len(sc))
	var sum float64
	n := 0
	for i, s := range sc {
		out[i] = s.c
		if i < r.Select && !math.IsNaN(s.v) {
			sum += s.v
			n++
		}
	}
	if n == 0 {
		return out, math.NaN()
	}
	return out, sum / float64(n)
}

// zoneIntensity is the mean forecast intensity over [t, t+d) (the point
// in force at t when none falls inside), else the reported one.
func zoneIntensity(f Series, reported float64, t time.Time, d time.Duration) float64 {
	if len(f.Points) > 0 {
		if in := f.Between(t, t.Add(d)); len(in.Points) > 0 {
			return in.Mean()
		}
		i := sort.Search(len(f.Points), func(i int) bool { return f.Points[i].Time.After(t) }) - 1
		if i >= 0 && t.Sub(f.Points[i].Time) < max(f.Step, d) {
			return f.Points[i].Intensity
		}
	}
	return reported
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
