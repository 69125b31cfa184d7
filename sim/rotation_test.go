package sim

import (
	"testing"

	"github.com/edgefleet/edgefleet/agent"
)

// TestClassifyViews: a member seen dead, left or not at all splits the
// sample; a suspect one only marks it suspect.
func TestClassifyViews(t *testing.T) {
	view := func(states ...string) []agent.Member {
		var v []agent.Member
		for _, s := range states {
			v = append(v, agent.Member{State: s})
		}
		return v
	}
	all := view("alive", "alive", "alive")
	for _, c := range []struct {
		name           string
		views          [][]agent.Member
		split, suspect bool
		least          int
	}{
		{"one cluster", [][]agent.Member{all, all, all}, false, false, 3},
		{"a suspect", [][]agent.Member{all, view("alive", "suspect", "alive"), all}, false, true, 2},
		{"a dead member", [][]agent.Member{all, view("alive", "dead", "alive"), all}, true, false, 2},
		{"a member left", [][]agent.Member{view("alive", "alive", "left"), all, all}, true, false, 2},
		{"a member unknown", [][]agent.Member{all, view("alive", "alive"), all}, true, false, 2},
		{"dead and suspect", [][]agent.Member{view("alive", "suspect", "dead"), all, all}, true, true, 1},
	} {
		split, suspect, least := classifyViews(c.views, 3)
		if split != c.split || suspect != c.suspect || least != c.least {
			t.Errorf("%s: split %v suspect %v least %d, want %v %v %d", c.name, split, suspect, least, c.split, c.suspect, c.least)
		}
	}
}
