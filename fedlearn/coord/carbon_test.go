package coord

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn"
)

// TestCarbonSelectsInGivenOrder: with a carbon option the round takes the
// first agents of the ranked list it is given (cleanest first) instead of
// a seeded random draw.
func TestCarbonSelectsInGivenOrder(t *testing.T) {
	sp := testSpec()
	sp.MinAvailable, sp.MinFit, sp.Fraction = 2, 2, 0.4
	sp.Carbon = &Carbon{Window: fedlearn.Duration(2 * time.Hour), MinBattery: 0.3}
	c, err := New("j", sp)
	if err != nil {
		t.Fatal(err)
	}
	if c.RoundOpen() || c.Remaining() != 2 || c.ClientCount(10) != 4 {
		t.Fatalf("open %v remaining %d count %d", c.RoundOpen(), c.Remaining(), c.ClientCount(10))
	}
	ranked := []string{"j", "c", "c", "a", "h", "b", "d", "e", "f", "g", "i"}
	ev := c.Tick(t0, ranked)
	if len(ev) != 1 || ev[0].Kind != EvRoundOpened {
		t.Fatalf("events %v", kinds(ev))
	}
	if got, want := ev[0].Round.Selected, []string{"a", "c", "h", "j"}; !slices.Equal(got, want) {
		t.Fatalf("selected %v, want %v (the first four of the ranking)", got, want)
	}
	if !c.RoundOpen() {
		t.Fatal("round not open")
	}
	// without the option the same list draws at random
	sp.Carbon = nil
	c2, _ := New("j", sp)
	if got := c2.Tick(t0, ranked)[0].Round.Selected; slices.Equal(got, []string{"a", "c", "h", "j"}) {
		t.Logf("seeded draw happened to pick the same clients %v", got)
	}
}

func TestCarbonSpecErrors(t *testing.T) {
	for name, cb := range map[string]*Carbon{
		"carbon.window":      {Window: fedlearn.Duration(-time.Minute)},
		"carbon.window ":     {Window: fedlearn.Duration(MaxCarbonWindow + time.Second)},
		"carbon.min_battery": {MinBattery: 1.5},
	} {
		sp := testSpec()
		sp.Carbon = cb
		err := sp.Resolve()
		if err == nil || !strings.Contains(err.Error(), strings.TrimSpace(name)) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
