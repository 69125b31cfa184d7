package coord

import (
	"math"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn"
)

// MaxCarbonWindow bounds Carbon.Window.
const MaxCarbonWindow = 7 * 24 * time.Hour

// Carbon makes a job's rounds carbon-aware: a ready round may wait up to
// Window for the greenest start (within the job's deadline), and its
// clients are the eligible agents whose zones are cleanest, a battery at
// MinBattery or above or charging. The caller (the control plane, with
// greensched.PlanRound) decides when to tick a round open and passes the
// eligible agents ranked cleanest first; the coordinator then takes the
// first of them instead of a seeded random draw.
type Carbon struct {
	// Window is how long a ready round may wait for a greener start;
	// 0 opens it when ready (the clients are still chosen by carbon).
	Window fedlearn.Duration `json:"window,omitempty"`
	// MinBattery (0..1) is the battery level a client must have unless it
	// is charging or mains powered.
	MinBattery float64 `json:"min_battery,omitempty"`
}

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
	return nil
}

// RoundOpen reports whether a round attempt is in progress (between
// rounds, the next one is ready to open).
func (c *Coordinator) RoundOpen() bool { return c.st.Current != nil }

// Remaining is the number of rounds still to aggregate.
func (c *Coordinator) Remaining() int { return c.spec.Rounds - c.st.Done }

// ClientCount is how many of n available agents a round selects.
func (c *Coordinator) ClientCount(n int) int {
	return min(n, max(c.spec.MinFit, int(math.Ceil(c.spec.Fraction*float64(n)))))
}
