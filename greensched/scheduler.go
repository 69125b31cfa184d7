package greensched

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"time"
)

// Job is deferrable work to place in time.
type Job struct {
	ID string
	// Arrival is when the job became ready; ties between equally green
	// placements go to the one nearest to it.
	Arrival  time.Time
	Duration time.Duration
	// Earliest and Latest bound the start (inclusive). A zero Earliest
	// means Arrival; a zero Latest means no bound but Deadline and the
	// forecast's end.
	Earliest, Latest time.Time
	// Deadline, if set, is when the job must have finished.
	Deadline time.Time
	// Interruptible jobs may run in any slots of their span (from the
	// earliest start to the latest start + Duration, or the deadline), not
	// necessarily adjacent.
	Interruptible bool
	// EnergyWh is the job's estimated energy; expected emissions are
	// EnergyWh / 1000 × the mean forecast intensity of its slots.
	EnergyWh float64
}

// Window returns j with the start bounded to arrival − before ..
// arrival + after.
func (j Job) Window(before, after time.Duration) Job {
	j.Earliest, j.Latest = j.Arrival.Add(-before), j.Arrival.Add(after)
	return j
}

func (j Job) validate() error {
	switch {
	case j.Duration <= 0:
		return fmt.Errorf("greensched: job %q: duration %v must be positive", j.ID, j.Duration)
	case math.IsNaN(j.EnergyWh) || math.IsInf(j.EnergyWh, 0) || j.EnergyWh < 0:
		return fmt.Errorf("greensched: job %q: energy %v Wh must be finite and >= 0", j.ID, j.EnergyWh)
	case !j.Latest.IsZero() && j.Latest.Before(j.earliest()):
		return fmt.Errorf("greensched: job %q: latest start %s before earliest %s", j.ID, j.Latest.Format(time.DateTime), j.earliest().Format(time.DateTime))
	case !j.Deadline.IsZero() && j.Deadline.Before(j.earliest().Add(j.Duration)):
		return fmt.Errorf("greensched: job %q: deadline %s leaves no time to run %v", j.ID, j.Deadline.Format(time.DateTime), j.Duration)
	}
	return nil
}

func (j Job) earliest() time.Time {
	if j.Earliest.IsZero() {
		return j.Arrival
	}
	return j.Earliest
}

// Placement is where a job runs.
type Placement struct {
	JobID string `json:"job"`
	// Agent is set by Fleet.Place.
	Agent string `json:"agent,omitempty"`
	// Start is the first slot's start; Slots are the indices of the grid
	// slots the job occupies (adjacent unless the job is interruptible).
	Start time.Time `json:"start"`
	Slots []int     `json:"slots"`
	// Intensity is the mean forecast intensity of the slots (gCO2eq/kWh)
	// and Grams the expected emissions (EnergyWh / 1000 × Intensity).
	Intensity float64 `json:"intensity"`
	Grams     float64 `json:"grams"`
}

// ErrNoSlot means no start (or set of slots) of the job's window has a
// known intensity and free capacity.
var ErrNoSlot = errors.New("no slot with a known intensity and free capacity in the job's window")

// Planner places jobs on one device's grid. Each slot holds at most
// Capacity jobs at once. Jobs are placed one at a time, in the order they
// are given, each at its greenest feasible placement given the jobs placed
// before it (greedy, deterministic; not a joint optimum across jobs).
type Planner struct {
	grid     Grid
	capacity int
	used     []int32
	order    []int // scratch for interruptible jobs
}

// NewPlanner plans on g (NaN slots are unusable) with capacity concurrent
// jobs per slot.
func NewPlanner(g Grid, capacity int) (*Planner, error) {
	if g.Step <= 0 {
		return nil, fmt.Errorf("greensched: planner: grid step %v must be positive", g.Step)
	}
	if capacity < 1 {
		return nil, fmt.Errorf("greensched: planner: capacity %d must be at least 1", capacity)
	}
	return &Planner{grid: g, capacity: capacity, used: make([]int32, len(g.Values))}, nil
}

// Grid returns the planner's grid.
func (p *Planner) Grid() Grid { return p.grid }

// Used returns how many placed jobs occupy slot k.
func (p *Planner) Used(k int) int { return int(p.used[k]) }

// span returns the job's slot count n and the range of slot indices it may
// occupy: starts in [lo, hiStart], all slots in [lo, end).
func (p *Planner) span(j Job) (n, lo, hiStart, end int) {
	g := p.grid
	n = int((j.Duration + g.Step - 1) / g.Step)
	lo, exact := g.Slot(j.earliest())
	if !exact {
		lo++
	}
	lo = max(lo, 0)
	end = len(g.Values)
	if !j.Latest.IsZero() {
		k, _ := g.Slot(j.Latest)
		end = min(end, k+n)
	}
	if !j.Deadline.IsZero() {
		// the job's n slots must end by the deadline
		k, _ := g.Slot(j.Deadline)
		end = min(end, k)
	}
	return n, lo, end - n, end
}

func (p *Planner) free(k int) bool {
	return p.used[k] < int32(p.capacity) && !math.IsNaN(p.grid.Values[k])
}

// Best returns the greenest placement of j without committing it.
func (p *Planner) Best(j Job) (Placement, error) {
	if err := j.validate(); err != nil {
		return Placement{}, err
	}
	n, lo, hiStart, end := p.span(j)
	if hiStart < lo {
		return Placement{}, fmt.Errorf("greensched: job %q: %w", j.ID, ErrNoSlot)
	}
	arr, _ := p.grid.Slot(j.Arrival)
	var pl Placement
	var ok bool
	if j.Interruptible {
		pl, ok = p.bestSlots(n, lo, end, arr)
	} else {
		pl, ok = p.bestStart(n, lo, hiStart, arr)
	}
	if !ok {
		return Placement{}, fmt.Errorf("greensched: job %q: %w", j.ID, ErrNoSlot)
	}
	pl.JobID = j.ID
	pl.Start = p.grid.Time(pl.Slots[0])
	pl.Grams = j.EnergyWh / 1000 * pl.Intensity
	return pl, nil
}

// tieEps: sums closer than this (relative) are equal, so that rounding in
// the sliding sum does not decide between equally green starts.
const tieEps = 1e-12

// better reports whether (sum, dist, k) beats (bestSum, bestDist, bestK):
// a lower sum, then nearer the arrival, then earlier.
func better(sum float64, dist, k int, bestSum float64, bestDist, bestK int) bool {
	tol := tieEps * (math.Abs(sum) + math.Abs(bestSum))
	if sum < bestSum-tol {
		return true
	}
	if sum > bestSum+tol {
		return false
	}
	if dist != bestDist {
		return dist < bestDist
	}
	return k < bestK
}

func absInt(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// bestStart slides an n-slot window over starts lo..hiStart.
func (p *Planner) bestStart(n, lo, hiStart, arr int) (Placement, bool) {
	v := p.grid.Values
	var sum float64
	blocked := 0 // unusable slots in the window
	for k := lo; k < lo+n; k++ {
		if p.free(k) {
			sum += v[k]
		} else {
			blocked++
		}
	}
	best, bestSum, bestDist := -1, 0.0, 0
	for s := lo; ; s++ {
		if blocked == 0 {
			if d := absInt(s - arr); best < 0 || better(sum, d, s, bestSum, bestDist, best) {
				best, bestSum, bestDist = s, sum, d
			}
		}
		if s == hiStart {
			break
		}
		if p.free(s) {
			sum -= v[s]
		} else {
			blocked--
		}
		if p.free(s + n) {
			sum += v[s+n]
		} else {
			blocked++
		}
		if blocked == 0 && n > 64 && (s-lo)%64 == 63 {
			sum = 0 // long windows: recompute now and then against drift
			for k := s + 1; k <= s+n; k++ {
				sum += v[k]
			}
		}
	}
	if best < 0 {
		return Placement{}, false
	}
	slots := make([]int, n)
	var exact float64
	for i := range slots {
		slots[i] = best + i
		exact += v[best+i]
	}
	return Placement{Slots: slots, Intensity: exact / float64(n)}, true
}

// bestSlots picks the n greenest free slots in [lo, end): lowest intensity,
// then nearest the arrival, then earliest. It keeps the n best seen so far
// in order (insertion), which for short jobs costs about one comparison
// per slot.
func (p *Planner) bestSlots(n, lo, end, arr int) (Placement, bool) {
	v := p.grid.Values
	less := func(a, b int) bool {
		if v[a] != v[b] {
			return v[a] < v[b]
		}
		if da, db := absInt(a-arr), absInt(b-arr); da != db {
			return da < db
		}
		return a < b
	}
	top := p.order[:0]
	for k := lo; k < end; k++ {
		if !p.free(k) {
			continue
		}
		if len(top) == n {
			if !less(k, top[n-1]) {
				continue
			}
			top = top[:n-1]
		}
		i := len(top)
		top = append(top, k)
		for ; i > 0 && less(k, top[i-1]); i-- {
			top[i] = top[i-1]
		}
		top[i] = k
	}
	p.order = top
	if len(top) < n {
		return Placement{}, false
	}
	slots := append([]int(nil), top...)
	sort.Ints(slots)
	var sum float64
	for _, k := range slots {
		sum += v[k]
	}
	return Placement{Slots: slots, Intensity: sum / float64(n)}, true
}

// Commit occupies the placement's slots.
func (p *Planner) Commit(pl Placement) {
	for _, k := range pl.Slots {
		p.used[k]++
	}
}

// Place finds j's greenest placement and commits it.
func (p *Planner) Place(j Job) (Placement, error) {
	pl, err := p.Best(j)
	if err != nil {
		return Placement{}, err
	}
	p.Commit(pl)
	return pl, nil
}

// Plan places jobs in order on a fresh planner over g; a job that cannot
// be placed is an error naming it.
func Plan(g Grid, capacity int, jobs []Job) ([]Placement, error) {
	p, err := NewPlanner(g, capacity)
	if err != nil {
		return nil, err
	}
	out := make([]Placement, 0, len(jobs))
	for _, j := range jobs {
		pl, err := p.Place(j)
		if err != nil {
			return nil, err
		}
		out = append(out, pl)
	}
	return out, nil
}
