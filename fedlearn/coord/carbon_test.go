package coord

import (
	"maps"
	"math"
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
		"carbon.slack":       {Slack: ptr(-1.0)},
		"carbon.slack ":      {Slack: ptr(math.NaN())},
		"carbon.slack  ":     {Slack: ptr(1.5)},
	} {
		sp := testSpec()
		sp.Carbon = cb
		err := sp.Resolve()
		if err == nil || !strings.Contains(err.Error(), strings.TrimSpace(name)) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestCarbonCreditAndRoundSeconds: opening a carbon round moves each
// available agent's credit by its share and each selected one's by -1;
// aggregated rounds' lengths and the gaps from their close to the next
// tick give RoundDuration (median of each; the timeout before any); both
// survive State and Restore.
func TestCarbonCreditAndRoundSeconds(t *testing.T) {
	sp := testSpec()
	sp.Rounds, sp.MinAvailable, sp.MinFit, sp.Fraction = 4, 2, 1, 0.5
	sp.Carbon = &Carbon{}
	c, err := New("j", sp)
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Spec().Carbon.Slack; s == nil || *s != DefaultCarbonSlack {
		t.Fatalf("slack %v, want the default", s)
	}
	// 0.4 × 4 rounds × 2/4 selected / 2
	if s := c.SlackRounds(4); math.Abs(s-0.4) > 1e-12 {
		t.Fatalf("slack rounds %v, want 0.4", s)
	}
	if d := c.RoundDuration(); d != time.Minute {
		t.Fatalf("duration before any round %v, want the timeout", d)
	}
	run := func(now time.Time, secs int, avail ...string) {
		t.Helper()
		ev := c.Tick(now, avail)
		if len(ev) != 1 || ev[0].Kind != EvRoundOpened {
			t.Fatalf("events %v", kinds(ev))
		}
		for _, a := range ev[0].Round.Selected {
			c.Offer(now.Add(time.Duration(secs)*time.Second), Submission{Agent: a, Round: ev[0].Round.Round, Attempt: ev[0].Round.Attempt, Delta: delta(1), Examples: 1})
		}
		if c.RoundOpen() {
			t.Fatal("round did not aggregate")
		}
	}
	run(t0, 10, "d", "c", "b", "a") // selects d, c
	want := map[string]float64{"a": 0.5, "b": 0.5, "c": -0.5, "d": -0.5}
	if got := c.Credit(); !maps.Equal(got, want) {
		t.Fatalf("credit %v, want %v", got, want)
	}
	run(t0.Add(time.Minute), 30, "a", "b", "c") // selects a, b of three: due 2/3 each
	want = map[string]float64{"a": 0.5 + 2.0/3 - 1, "b": 0.5 + 2.0/3 - 1, "c": -0.5 + 2.0/3, "d": -0.5}
	for k, v := range want {
		if math.Abs(c.Credit()[k]-v) > 1e-12 {
			t.Fatalf("credit %v, want %v", c.Credit(), want)
		}
	}
	run(t0.Add(2*time.Minute), 20, "c", "a")
	// rounds of 10, 30, 20 s; the ticks after the first two came 50 and
	// 30 s after their close
	if d := c.RoundDuration(); d != 60*time.Second {
		t.Fatalf("median round 20 s + median gap 40 s: %v", d)
	}
	back, _ := jsonState(t, c)
	r, err := Restore(c.Spec(), back, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(r.Credit(), c.Credit()) || r.RoundDuration() != 60*time.Second || r.NextRound() != 4 {
		t.Fatalf("restored credit %v duration %v next %d", r.Credit(), r.RoundDuration(), r.NextRound())
	}
	// without the carbon option nothing is kept
	sp.Carbon = nil
	c2, _ := New("j", sp)
	c2.Tick(t0, []string{"a", "b"})
	if st := c2.State(); st.Credit != nil || st.RoundSeconds != nil || st.GapSeconds != nil {
		t.Fatalf("credit %v seconds %v gaps %v without carbon", st.Credit, st.RoundSeconds, st.GapSeconds)
	}
}

func ptr[T any](v T) *T { return &v }

// TestCarbonStatsRoundTakesNoTurn: the statistics round selects clients
// but trains nothing: it leaves the participation credit alone.
func TestCarbonStatsRoundTakesNoTurn(t *testing.T) {
	sp := testSpec()
	on := true
	sp.FederatedStats, sp.MinAvailable, sp.MinFit, sp.Fraction = &on, 2, 1, 0.5
	sp.Carbon = &Carbon{}
	c, err := New("j", sp)
	if err != nil {
		t.Fatal(err)
	}
	ev := c.Tick(t0, []string{"a", "b", "c", "d"})
	if len(ev) != 1 || !ev[0].Round.Stats() {
		t.Fatalf("events %v, want the statistics round opened", kinds(ev))
	}
	if cr := c.Credit(); len(cr) != 0 {
		t.Fatalf("credit %v after the statistics round opened", cr)
	}
}

// TestCarbonReadySince: a carbon job keeps when its next round became
// ready (the close of the last round or attempt, failed ones too) in its
// state, so that a restart does not start a waiting round's window again;
// zero while a round is open and for jobs without the carbon option.
func TestCarbonReadySince(t *testing.T) {
	sp := testSpec()
	sp.Rounds, sp.MinAvailable, sp.MinFit = 3, 2, 2
	sp.Carbon = &Carbon{}
	c, err := New("j", sp)
	if err != nil {
		t.Fatal(err)
	}
	if r := c.ReadySince(); !r.IsZero() {
		t.Fatalf("ready %v before the first round", r)
	}
	ev := c.Tick(t0, []string{"a", "b"})
	if len(ev) != 1 || ev[0].Kind != EvRoundOpened || !c.ReadySince().IsZero() {
		t.Fatalf("events %v, ready %v with a round open", kinds(ev), c.ReadySince())
	}
	closed := t0.Add(10 * time.Second)
	for _, a := range ev[0].Round.Selected {
		c.Offer(closed, Submission{Agent: a, Round: 1, Delta: delta(1), Examples: 1})
	}
	if r := c.ReadySince(); !r.Equal(closed) {
		t.Fatalf("ready %v after the round closed at %v", r, closed)
	}
	back, _ := jsonState(t, c)
	r, err := Restore(c.Spec(), back, nil)
	if err != nil || !r.ReadySince().Equal(closed) {
		t.Fatalf("restored ready %v (%v), want %v", r.ReadySince(), err, closed)
	}
	// the next round's attempt fails at its timeout: ready from then
	opened := t0.Add(time.Minute)
	if ev := c.Tick(opened, []string{"a", "b"}); len(ev) != 1 || ev[0].Kind != EvRoundOpened {
		t.Fatalf("events %v", kinds(ev))
	}
	failed := opened.Add(time.Duration(sp.RoundTimeout))
	if ev := c.Tick(failed, []string{"a", "b"}); len(ev) == 0 || ev[0].Kind != EvRoundFailed {
		t.Fatalf("events %v at the timeout", kinds(ev))
	}
	if r := c.ReadySince(); !r.Equal(failed) {
		t.Fatalf("ready %v after the attempt failed at %v", r, failed)
	}
	sp.Carbon = nil
	c2, _ := New("j", sp)
	ev = c2.Tick(t0, []string{"a", "b"})
	for _, a := range ev[0].Round.Selected {
		c2.Offer(closed, Submission{Agent: a, Round: 1, Delta: delta(1), Examples: 1})
	}
	if c2.RoundOpen() || !c2.ReadySince().IsZero() {
		t.Fatalf("open %v, ready %v without carbon", c2.RoundOpen(), c2.ReadySince())
	}
}
