package greenbench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/edgefleet/edgefleet/bench"
	"github.com/edgefleet/edgefleet/greensched"
)

// GreenOptions configure RunGreen. Zero values take the defaults.
type GreenOptions struct {
	// Jobs placed per run; 0 = 10,000.
	Jobs int
	// Slots of 15 minutes in the grid; 0 = 96 (a day).
	Slots int
	// Capacity is the jobs one slot holds at once; 0 = Jobs / 8 (binding:
	// the jobs need about 8.5 slot-uses each on average and crowd into the
	// green hours).
	Capacity int
	// Interruptible is the share of interruptible jobs; < 0 = none,
	// 0 = 0.2.
	Interruptible float64
	// Rounds of measurements, ours and baseline interleaved; medians are
	// reported. 0 = 5.
	Rounds int
	// Seed draws the grid and the jobs.
	Seed uint64
	// Now is the clock; nil = time.Now.
	Now func() time.Time
}

// RunGreen runs the green scheduling suite: Jobs jobs placed one after
// another on a grid of Slots quarter-hour slots with a per-slot capacity,
// by greensched.Planner (a sliding window over the starts; the cheapest
// slots by one sort for interruptible jobs) beside a brute-force planner
// in the same run (every start's window summed afresh with a capacity
// check of each slot; for interruptible jobs, n scans of the span for the
// cheapest free slot not yet taken). Both use the same tie rule (lower
// sum, then nearer the arrival, then earlier), and their placements are
// compared job by job before timing: a disagreement is an error, not a
// result.
//
// Results: the time to place all jobs (ms, ours and baseline) and the
// throughput (jobs/s, ratio ours / baseline, higher is better).
func RunGreen(ctx context.Context, opt GreenOptions) (bench.Report, error) {
	if opt.Jobs < 0 || opt.Slots < 0 || opt.Capacity < 0 || opt.Rounds < 0 || opt.Interruptible > 1 || math.IsNaN(opt.Interruptible) {
		return bench.Report{}, fmt.Errorf("bench: green: bad option in %+v", opt)
	}
	if opt.Jobs == 0 {
		opt.Jobs = 10000
	}
	if opt.Slots == 0 {
		opt.Slots = 96
	}
	if opt.Capacity == 0 {
		opt.Capacity = max(1, opt.Jobs/8)
	}
	if opt.Interruptible == 0 {
		opt.Interruptible = 0.2
	}
	opt.Interruptible = max(opt.Interruptible, 0)
	if opt.Rounds == 0 {
		opt.Rounds = 5
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	grid, jobs := greenWorkload(opt.Slots, opt.Jobs, opt.Interruptible, opt.Seed)

	ours, err := placeOurs(grid, opt.Capacity, jobs)
	if err != nil {
		return bench.Report{}, err
	}
	base := placeBrute(grid, opt.Capacity, jobs)
	placed := 0
	for i := range jobs {
		if !slices.Equal(ours[i], base[i]) {
			return bench.Report{}, fmt.Errorf("bench: green: planner and brute force disagree on job %d (%+v): %v vs %v", i, jobs[i], ours[i], base[i])
		}
		if ours[i] != nil {
			placed++
		}
	}

	var oursMS, baseMS []float64
	for round := 0; round < opt.Rounds; round++ {
		for k := 0; k < 2; k++ {
			if err := ctx.Err(); err != nil {
				return bench.Report{}, err
			}
			start := opt.Now()
			if (k == 0) == (round%2 == 0) {
				if _, err := placeOurs(grid, opt.Capacity, jobs); err != nil {
					return bench.Report{}, err
				}
				oursMS = append(oursMS, msSince(opt.Now, start))
			} else {
				placeBrute(grid, opt.Capacity, jobs)
				baseMS = append(baseMS, msSince(opt.Now, start))
			}
		}
	}
	o, b := bench.Median(oursMS), bench.Median(baseMS)
	rep := bench.Report{
		Suite: "green",
		Machine: bench.Machine(fmt.Sprintf("jobs=%d slots=%d (15m) capacity=%d interruptible=%.2f rounds=%d seed=%d placed=%d, one goroutine",
			opt.Jobs, opt.Slots, opt.Capacity, opt.Interruptible, opt.Rounds, opt.Seed, placed)),
	}
	rep.Results = append(rep.Results,
		bench.Result{Name: "place_all", Unit: "ms", Value: o},
		bench.Result{Name: "brute_force_all", Unit: "ms", Value: b},
	)
	r := bench.Result{Name: "place", Unit: "jobs/s", Value: float64(opt.Jobs) / (o / 1000), Baseline: &bench.Baseline{Name: "brute_force", Value: float64(opt.Jobs) / (b / 1000)}}
	if o <= 0 || b <= 0 {
		r.Value, r.Baseline.Value = 0, 0
	} else {
		r.Ratio = r.Value / r.Baseline.Value
	}
	rep.Results = append(rep.Results, r)
	return rep, nil
}

func msSince(now func() time.Time, start time.Time) float64 {
	return float64(now().Sub(start)) / float64(time.Millisecond)
}

// greenWorkload draws a day-shaped intensity curve (one decimal, as the
// traces' precision makes ties) and jobs of 15 min to 4 h with windows
// of up to 4 h before and 12 h after their arrival, or a deadline.
func greenWorkload(slots, n int, interruptible float64, seed uint64) (greensched.Grid, []greensched.Job) {
	rng := rand.New(rand.NewPCG(seed, 0x6772))
	start := time.Date(2020, 6, 1, 0, 0, 0, 0, time.UTC)
	g := greensched.Grid{Start: start, Step: 15 * time.Minute, Values: make([]float64, slots)}
	for k := range g.Values {
		day := 2 * math.Pi * float64(k%96) / 96
		v := 300 - 90*math.Sin(day-math.Pi/2) + 40*math.Sin(3*day) + 15*rng.NormFloat64()
		g.Values[k] = math.Round(max(v, 10)*10) / 10
	}
	jobs := make([]greensched.Job, n)
	for i := range jobs {
		arr := g.Time(rng.IntN(slots))
		j := greensched.Job{
			ID:            fmt.Sprintf("job-%05d", i),
			Arrival:       arr,
			Duration:      time.Duration(1+rng.IntN(16)) * 15 * time.Minute,
			Interruptible: rng.Float64() < interruptible,
			EnergyWh:      1 + rng.Float64()*20,
		}
		if rng.IntN(4) == 0 {
			j.Deadline = arr.Add(j.Duration).Add(time.Duration(rng.IntN(48)) * 15 * time.Minute)
		} else {
			j = j.Window(time.Duration(rng.IntN(17))*15*time.Minute, time.Duration(rng.IntN(49))*15*time.Minute)
		}
		jobs[i] = j
	}
	return g, jobs
}

// placeOurs places the jobs with greensched; nil slots for a job without
// room.
func placeOurs(g greensched.Grid, capacity int, jobs []greensched.Job) ([][]int, error) {
	p, err := greensched.NewPlanner(g, capacity)
	if err != nil {
		return nil, err
	}
	out := make([][]int, len(jobs))
	for i, j := range jobs {
		pl, err := p.Place(j)
		if errors.Is(err, greensched.ErrNoSlot) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("bench: green: %w", err)
		}
		out[i] = pl.Slots
	}
	return out, nil
}

// placeBrute is the brute-force planner: the same rules, computed the
// plain way.
func placeBrute(g greensched.Grid, capacity int, jobs []greensched.Job) [][]int {
	used := make([]int, len(g.Values))
	taken := make([]bool, len(g.Values))
	out := make([][]int, len(jobs))
	free := func(k int) bool { return used[k] < capacity && !math.IsNaN(g.Values[k]) }
	slotOf := func(t time.Time) int { // floor
		d := t.Sub(g.Start)
		k := int(d / g.Step)
		if d < 0 && d%g.Step != 0 {
			k--
		}
		return k
	}
	for i, j := range jobs {
		n := int((j.Duration + g.Step - 1) / g.Step)
		earliest := j.Earliest
		if earliest.IsZero() {
			earliest = j.Arrival
		}
		lo := slotOf(earliest)
		if g.Time(lo).Before(earliest) {
			lo++
		}
		lo = max(lo, 0)
		end := len(g.Values)
		if !j.Latest.IsZero() {
			end = min(end, slotOf(j.Latest)+n)
		}
		if !j.Deadline.IsZero() {
			end = min(end, slotOf(j.Deadline))
		}
		arr := slotOf(j.Arrival)
		dist := func(k int) int { return max(k-arr, arr-k) }
		var slots []int
		if j.Interruptible {
			for len(slots) < n {
				best := -1
				for k := lo; k < end; k++ {
					if !free(k) || taken[k] {
						continue
					}
					if best < 0 || g.Values[k] < g.Values[best] ||
						(g.Values[k] == g.Values[best] && (dist(k) < dist(best) || (dist(k) == dist(best) && k < best))) {
						best = k
					}
				}
				if best < 0 {
					for _, k := range slots {
						taken[k] = false
					}
					slots = nil
					break
				}
				taken[best] = true
				slots = append(slots, best)
			}
			for _, k := range slots {
				taken[k] = false
			}
			slices.Sort(slots)
		} else {
			best, bestSum := -1, 0.0
			for s := lo; s+n <= end; s++ {
				sum, ok := 0.0, true
				for k := s; k < s+n && ok; k++ {
					ok = free(k)
					sum += g.Values[k]
				}
				if !ok {
					continue
				}
				const eps = 1e-12 // equal up to rounding: a tie
				if best < 0 || sum < bestSum-eps*max(sum, bestSum) ||
					(math.Abs(sum-bestSum) <= eps*max(sum, bestSum) && (dist(s) < dist(best) || (dist(s) == dist(best) && s < best))) {
					best, bestSum = s, sum
				}
			}
			if best >= 0 {
				for k := best; k < best+n; k++ {
					slots = append(slots, k)
				}
			}
		}
		for _, k := range slots {
			used[k]++
		}
		out[i] = slots
	}
	return out
}
