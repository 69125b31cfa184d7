package greensched

import (
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

var t0 = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)

func hour(k int) time.Time { return t0.Add(time.Duration(k) * time.Hour) }

func handGrid() Grid {
	nan := math.NaN()
	return Grid{Start: t0, Step: time.Hour, Values: []float64{5, 3, 4, 1, 1, 6, 2, nan, 0, 9}}
}

func TestPlannerHandComputed(t *testing.T) {
	for _, c := range []struct {
		name      string
		job       Job
		slots     []int
		intensity float64
	}{
		// starts 0..5, two-slot sums 8 7 5 2 7 8: start 3
		{"window", Job{Arrival: hour(0), Duration: 2 * time.Hour, Latest: hour(5), EnergyWh: 500}, []int{3, 4}, 1},
		// start 6 and 7 touch the unknown slot 7; start 8 sums 9
		{"window past a gap", Job{Arrival: hour(0), Duration: 2 * time.Hour, Latest: hour(8)}, []int{3, 4}, 1},
		// from 05:00, done by 10:00: starts 5 (6+2) and 8 (0+9)
		{"deadline", Job{Arrival: hour(5), Duration: 2 * time.Hour, Deadline: hour(10)}, []int{5, 6}, 4},
		// a 90-minute job takes two hourly slots
		{"partial slot", Job{Arrival: hour(5), Duration: 90 * time.Minute, Deadline: hour(10)}, []int{5, 6}, 4},
		// interruptible, span [0, 6+3): cheapest three known slots 8, 3, 4
		{"interruptible", Job{Arrival: hour(0), Duration: 3 * time.Hour, Latest: hour(6), Interruptible: true}, []int{3, 4, 8}, 2.0 / 3},
		// an earliest start between slots rounds up
		{"earliest mid-slot", Job{Arrival: hour(0), Earliest: hour(3).Add(time.Minute), Duration: time.Hour, Latest: hour(6)}, []int{4}, 1},
		// before the arrival, when the window allows it; of the equal
		// slots 3 and 4, the one nearer the arrival
		{"before arrival", Job{Arrival: hour(6), Duration: time.Hour}.Window(3*time.Hour, time.Hour), []int{4}, 1},
		{"before arrival, earlier", Job{Arrival: hour(2), Duration: time.Hour}.Window(2*time.Hour, 0), []int{1}, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := NewPlanner(handGrid(), 1)
			if err != nil {
				t.Fatal(err)
			}
			pl, err := p.Best(c.job)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(pl.Slots, c.slots) || math.Abs(pl.Intensity-c.intensity) > 1e-12 || !pl.Start.Equal(hour(c.slots[0])) {
				t.Fatalf("got slots %v intensity %v start %v, want %v %v", pl.Slots, pl.Intensity, pl.Start, c.slots, c.intensity)
			}
			if want := c.job.EnergyWh / 1000 * c.intensity; math.Abs(pl.Grams-want) > 1e-12 {
				t.Fatalf("grams %v, want %v", pl.Grams, want)
			}
		})
	}
}

func TestPlannerCapacityAndTies(t *testing.T) {
	p, _ := NewPlanner(handGrid(), 1)
	j := Job{Arrival: hour(0), Duration: 2 * time.Hour, Latest: hour(5)}
	first, err := p.Place(j)
	if err != nil || !reflect.DeepEqual(first.Slots, []int{3, 4}) {
		t.Fatalf("first %v %v", first.Slots, err)
	}
	// slots 3 and 4 full: starts 0 (8), 1 (7), 5 (8)
	second, err := p.Place(j)
	if err != nil || !reflect.DeepEqual(second.Slots, []int{1, 2}) || second.Intensity != 3.5 {
		t.Fatalf("second %v %v %v", second.Slots, second.Intensity, err)
	}
	// with capacity 2 the second job shares the best slots
	p2, _ := NewPlanner(handGrid(), 2)
	p2.Place(j)
	if pl, _ := p2.Place(j); !reflect.DeepEqual(pl.Slots, []int{3, 4}) {
		t.Fatalf("capacity 2: %v", pl.Slots)
	}
	// nothing left: every start blocked
	p3, _ := NewPlanner(Grid{Start: t0, Step: time.Hour, Values: []float64{1, 2}}, 1)
	p3.Place(Job{Arrival: hour(0), Duration: 2 * time.Hour})
	if _, err := p3.Place(Job{Arrival: hour(0), Duration: time.Hour}); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("full grid: %v", err)
	}
	// equal intensities: the slot nearest the arrival, then the earlier
	flat := Grid{Start: t0, Step: time.Hour, Values: []float64{2, 2, 2, 2, 2}}
	p4, _ := NewPlanner(flat, 1)
	if pl, _ := p4.Best(Job{Arrival: hour(2), Earliest: hour(0), Duration: time.Hour}); pl.Slots[0] != 2 {
		t.Fatalf("tie: %v, want the arrival slot 2", pl.Slots)
	}
	p4.Place(Job{Arrival: hour(2), Earliest: hour(0), Duration: time.Hour})
	if pl, _ := p4.Best(Job{Arrival: hour(2), Earliest: hour(0), Duration: time.Hour}); pl.Slots[0] != 1 {
		t.Fatalf("tie: %v, want slot 1", pl.Slots)
	}
}

func TestPlannerRefuses(t *testing.T) {
	p, _ := NewPlanner(handGrid(), 1)
	for _, j := range []Job{
		{ID: "a", Arrival: hour(0), Duration: 0},
		{ID: "b", Arrival: hour(0), Duration: time.Hour, EnergyWh: math.NaN()},
		{ID: "c", Arrival: hour(3), Duration: time.Hour, Latest: hour(2)},
		{ID: "d", Arrival: hour(3), Duration: 2 * time.Hour, Deadline: hour(4)},
	} {
		if _, err := p.Best(j); err == nil || errors.Is(err, ErrNoSlot) {
			t.Errorf("job %s: err %v, want a validation error", j.ID, err)
		}
	}
	if _, err := p.Best(Job{Arrival: hour(20), Duration: time.Hour}); !errors.Is(err, ErrNoSlot) {
		t.Errorf("past the grid: %v", err)
	}
	if _, err := NewPlanner(handGrid(), 0); err == nil {
		t.Error("capacity 0 accepted")
	}
}

// bruteBest enumerates every start, or every set of n slots for an
// interruptible job, and returns the least sum of forecast intensities.
func bruteBest(g Grid, used []int, capacity int, j Job) (float64, []int, bool) {
	n := int((j.Duration + g.Step - 1) / g.Step)
	ok := func(k int) bool {
		return k >= 0 && k < len(g.Values) && used[k] < capacity && !math.IsNaN(g.Values[k]) &&
			!g.Time(k).Before(j.earliest()) &&
			(j.Latest.IsZero() || g.Time(k).Before(j.Latest.Add(time.Duration(n)*g.Step))) &&
			(j.Deadline.IsZero() || !g.Time(k+1).After(j.Deadline))
	}
	best, found := math.Inf(1), false
	var bestSlots []int
	if !j.Interruptible {
		arr, _ := g.Slot(j.Arrival)
		bestDist := 0
		for s := 0; s+n <= len(g.Values); s++ {
			if !g.Time(s).Before(j.earliest()) && (j.Latest.IsZero() || !g.Time(s).After(j.Latest)) {
				sum, good := 0.0, true
				for k := s; k < s+n; k++ {
					good = good && ok(k)
					if good {
						sum += g.Values[k]
					}
				}
				if good && (!found || sum < best || (sum == best && absInt(s-arr) < bestDist)) {
					best, bestDist, found = sum, absInt(s-arr), true
					bestSlots = nil
					for k := s; k < s+n; k++ {
						bestSlots = append(bestSlots, k)
					}
				}
			}
		}
		return best, bestSlots, found
	}
	var cand []int
	for k := range g.Values {
		if ok(k) {
			cand = append(cand, k)
		}
	}
	var rec func(i int, chosen []int, sum float64)
	rec = func(i int, chosen []int, sum float64) {
		if len(chosen) == n {
			if sum < best {
				best, found = sum, true
			}
			return
		}
		if i == len(cand) {
			return
		}
		rec(i+1, append(chosen, cand[i]), sum+g.Values[cand[i]])
		rec(i+1, chosen, sum)
	}
	rec(0, nil, 0)
	return best, nil, found
}

// TestPlannerAgainstBruteForce places random job sequences on random grids
// and checks each placement against exhaustive search under the same
// capacity use.
func TestPlannerAgainstBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for trial := 0; trial < 3000; trial++ {
		n := 1 + rng.IntN(16)
		g := Grid{Start: t0, Step: 15 * time.Minute, Values: make([]float64, n)}
		for k := range g.Values {
			switch r := rng.IntN(10); {
			case r == 0:
				g.Values[k] = math.NaN()
			case r < 6:
				g.Values[k] = float64(rng.IntN(5)) // ties
			default:
				g.Values[k] = rng.Float64() * 500
			}
		}
		capacity := 1 + rng.IntN(3)
		p, err := NewPlanner(g, capacity)
		if err != nil {
			t.Fatal(err)
		}
		used := make([]int, n)
		for jn := 0; jn < 1+rng.IntN(6); jn++ {
			j := Job{
				Arrival:       g.Time(rng.IntN(n)),
				Duration:      time.Duration(1+rng.IntN(4*15)) * time.Minute,
				Interruptible: rng.IntN(3) == 0,
			}
			switch rng.IntN(3) {
			case 0:
				j = j.Window(time.Duration(rng.IntN(5))*15*time.Minute, time.Duration(rng.IntN(5))*15*time.Minute)
			case 1:
				j.Deadline = j.Arrival.Add(j.Duration).Add(time.Duration(rng.IntN(8)) * 15 * time.Minute)
			}
			want, wantSlots, found := bruteBest(g, used, capacity, j)
			pl, err := p.Best(j)
			if !found {
				if !errors.Is(err, ErrNoSlot) {
					t.Fatalf("trial %d job %+v: brute force finds nothing, planner %v %v", trial, j, pl.Slots, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("trial %d job %+v: brute force %v, planner %v", trial, j, want, err)
			}
			var sum float64
			for _, k := range pl.Slots {
				sum += g.Values[k]
			}
			if math.Abs(sum-want) > 1e-9*math.Max(1, want) {
				t.Fatalf("trial %d job %+v grid %v used %v: planner %v (sum %v), brute force sum %v", trial, j, g.Values, used, pl.Slots, sum, want)
			}
			if !j.Interruptible && !reflect.DeepEqual(pl.Slots, wantSlots) && !nearlyTied(g, pl.Slots, wantSlots) {
				t.Fatalf("trial %d: tie broken differently: planner %v, brute force %v", trial, pl.Slots, wantSlots)
			}
			// the placement must be feasible under the brute force's rules
			for _, k := range pl.Slots {
				if used[k] >= capacity || math.IsNaN(g.Values[k]) {
					t.Fatalf("trial %d: slot %d full or unknown", trial, k)
				}
				used[k]++
			}
			p.Commit(pl)
		}
	}
}

// nearlyTied: two starts whose sums differ by rounding only.
func nearlyTied(g Grid, a, b []int) bool {
	var sa, sb float64
	for i := range a {
		sa += g.Values[a[i]]
		sb += g.Values[b[i]]
	}
	return math.Abs(sa-sb) <= 1e-9*math.Max(1, math.Abs(sa))
}

func TestFleetPlace(t *testing.T) {
	dirty := Grid{Start: t0, Step: time.Hour, Values: []float64{400, 300, 350, 380}}
	clean := Grid{Start: t0, Step: time.Hour, Values: []float64{60, 50, 40, 70}}
	grids := map[string]Grid{"DE": dirty, "FR": clean}
	prof := Profile{Name: "pi", IdleW: 2, MaxW: 6, BatteryWh: 40}
	mains := Battery{Present: false, Level: 1, Charging: true}
	agents := []Agent{
		{ID: "de-1", Zone: "DE", Profile: prof, Battery: mains, Capacity: 1},
		{ID: "fr-1", Zone: "FR", Profile: prof, Battery: Battery{Present: true, Level: 0.5}, MinBattery: 0.3, Capacity: 1},
	}
	f, err := NewFleet(agents, grids)
	if err != nil {
		t.Fatal(err)
	}
	j := FleetJob{Job: Job{ID: "train", Arrival: t0, Duration: time.Hour, Latest: hour(3)}, Utilisation: 1}
	// 6 W for an hour = 6 Wh; FR at 40 g/kWh beats DE at 300
	pl, err := f.Place(j)
	if err != nil || pl.Agent != "fr-1" || pl.Slots[0] != 2 || math.Abs(pl.Grams-0.006*40) > 1e-12 {
		t.Fatalf("first: %+v %v", pl, err)
	}
	// the battery paid 6 of 40 Wh: 0.5 -> 0.35
	if a, _ := f.Agent("fr-1"); math.Abs(a.Battery.Level-0.35) > 1e-12 {
		t.Fatalf("fr-1 battery %v, want 0.35", a.Battery.Level)
	}
	// another 6 Wh would take fr-1 to 0.2, below its minimum 0.3, and it
	// is not charging: DE gets the job
	if pl, err := f.Place(j); err != nil || pl.Agent != "de-1" || pl.Slots[0] != 1 {
		t.Fatalf("second: %+v %v", pl, err)
	}
	// restricted to fr-1 only: battery refuses
	if _, err := f.Place(FleetJob{Job: j.Job, Agents: []string{"fr-1"}, Utilisation: 1}); !errors.Is(err, ErrBattery) {
		t.Fatalf("restricted: %v", err)
	}
	if _, err := f.Place(FleetJob{Job: j.Job, Agents: []string{"nobody"}}); err == nil {
		t.Fatal("no eligible agent accepted")
	}
	// a charging fr-1 runs anyway; capacity 1 keeps it off slot 2
	agents[1].Battery = Battery{Present: true, Level: 0.1, Charging: true}
	f, _ = NewFleet(agents, grids)
	f.Place(j)
	if pl, err := f.Place(j); err != nil || pl.Agent != "fr-1" || pl.Slots[0] != 1 {
		t.Fatalf("charging: %+v %v", pl, err)
	}
	if _, err := NewFleet([]Agent{{ID: "x", Zone: "GB", Capacity: 1}}, grids); err == nil {
		t.Fatal("agent without a grid accepted")
	}
}
