package greensched

import (
	"errors"
	"fmt"
	"math"
)

// Agent is a device that can run jobs: its grid zone, power profile,
// battery, the battery level it must keep unless charging (0..1), and how
// many jobs it runs at once.
type Agent struct {
	ID         string
	Zone       string
	Profile    Profile
	Battery    Battery
	MinBattery float64
	Capacity   int
}

// FleetJob is a job for the fleet: Job plus the agents allowed to run it
// (none: all) and its utilisation, from which each agent's profile gives
// the energy when Job.EnergyWh is 0.
type FleetJob struct {
	Job
	Agents      []string
	Utilisation float64
}

// ErrBattery means every agent that could run the job is below its battery
// minimum (or would fall below it) and not charging.
var ErrBattery = errors.New("no eligible agent has enough battery or is charging")

// Fleet places jobs across agents in different zones: a job goes to the
// eligible agent (allowed by the job, battery permitting) whose greenest
// placement has the lowest expected emissions; ties go to the lower
// intensity, then to the agent listed first. Each agent plans on its zone's
// grid. Placing a job on an agent that is not charging debits its battery.
type Fleet struct {
	agents   []Agent
	planners []*Planner
}

// NewFleet makes a fleet of agents; grids holds each zone's forecast grid.
func NewFleet(agents []Agent, grids map[string]Grid) (*Fleet, error) {
	f := &Fleet{}
	seen := map[string]bool{}
	for _, a := range agents {
		if a.ID == "" || seen[a.ID] {
			return nil, fmt.Errorf("greensched: fleet: agent id %q empty or repeated", a.ID)
		}
		seen[a.ID] = true
		g, ok := grids[a.Zone]
		if !ok {
			return nil, fmt.Errorf("greensched: fleet: agent %q: no grid for zone %q", a.ID, a.Zone)
		}
		if err := a.Profile.Validate(); err != nil {
			return nil, fmt.Errorf("greensched: fleet: agent %q: %w", a.ID, err)
		}
		if math.IsNaN(a.MinBattery) || a.MinBattery < 0 || a.MinBattery > 1 {
			return nil, fmt.Errorf("greensched: fleet: agent %q: minimum battery %v outside [0, 1]", a.ID, a.MinBattery)
		}
		p, err := NewPlanner(g, a.Capacity)
		if err != nil {
			return nil, fmt.Errorf("greensched: fleet: agent %q: %w", a.ID, err)
		}
		f.agents = append(f.agents, a)
		f.planners = append(f.planners, p)
	}
	return f, nil
}

// Agent returns the current state of agent id (its battery after the jobs
// placed so far).
func (f *Fleet) Agent(id string) (Agent, bool) {
	for _, a := range f.agents {
		if a.ID == id {
			return a, true
		}
	}
	return Agent{}, false
}

// energy is j's energy on agent a.
func (j FleetJob) energy(a Agent) (float64, error) {
	if j.EnergyWh > 0 {
		return j.EnergyWh, nil
	}
	return a.Profile.EnergyWh(j.Utilisation, j.Duration)
}

func (j FleetJob) allows(id string) bool {
	if len(j.Agents) == 0 {
		return true
	}
	for _, a := range j.Agents {
		if a == id {
			return true
		}
	}
	return false
}

// Place picks the agent and time for j and commits it.
func (f *Fleet) Place(j FleetJob) (Placement, error) {
	best, bestIdx := Placement{}, -1
	var bestEnergy float64
	eligible, batteryOK := 0, 0
	for i, a := range f.agents {
		if !j.allows(a.ID) {
			continue
		}
		eligible++
		e, err := j.energy(a)
		if err != nil {
			return Placement{}, fmt.Errorf("greensched: job %q on agent %q: %w", j.ID, a.ID, err)
		}
		if !a.Battery.CanRun(a.Profile, e, a.MinBattery) {
			continue
		}
		batteryOK++
		job := j.Job
		job.EnergyWh = e
		pl, err := f.planners[i].Best(job)
		if errors.Is(err, ErrNoSlot) {
			continue
		}
		if err != nil {
			return Placement{}, err
		}
		if bestIdx < 0 || pl.Grams < best.Grams || (pl.Grams == best.Grams && pl.Intensity < best.Intensity) {
			best, bestIdx, bestEnergy = pl, i, e
		}
	}
	switch {
	case eligible == 0:
		return Placement{}, fmt.Errorf("greensched: job %q: no agent of the fleet is allowed to run it", j.ID)
	case batteryOK == 0:
		return Placement{}, fmt.Errorf("greensched: job %q: %w", j.ID, ErrBattery)
	case bestIdx < 0:
		return Placement{}, fmt.Errorf("greensched: job %q: %w", j.ID, ErrNoSlot)
	}
	f.planners[bestIdx].Commit(best)
	a := &f.agents[bestIdx]
	if a.Battery.Present && !a.Battery.Charging && a.Profile.BatteryWh > 0 {
		a.Battery.Level = max(a.Battery.Level-bestEnergy/a.Profile.BatteryWh, 0)
	}
	best.Agent = a.ID
	return best, nil
}
