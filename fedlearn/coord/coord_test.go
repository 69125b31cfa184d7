package coord

import (
	"encoding/json"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/strategy"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// testSpec is LR 2 -> 2: 6 parameters, its schema normalised (no
// statistics round).
func testSpec() Spec {
	return Spec{
		Model: "occ", Arch: fedlearn.Arch{Kind: fedlearn.KindLR, Inputs: 2, Classes: 2},
		Schema: fedlearn.Schema{Features: []fedlearn.Feature{{Name: "a", Metric: "a", Agg: fedlearn.AggLatest, Std: 1}, {Name: "b", Metric: "b", Agg: fedlearn.AggLatest, Std: 1}}, Label: fedlearn.Label{Metric: "y"}},
		Labels: []string{"no", "yes"}, Strategy: strategy.Config{Name: "fedavg"}, Rounds: 2,
		MinAvailable: 3, MinFit: 3, RoundTimeout: fedlearn.Duration(time.Minute), Seed: 7,
	}
}

func delta(v float32) []float32 { return []float32{v, v, v, v, v, v} }

func kinds(ev []Event) []string {
	var out []string
	for _, e := range ev {
		out = append(out, e.Kind)
	}
	return out
}

func TestRoundsFedAvg(t *testing.T) {
	c, err := New("j1", testSpec())
	if err != nil {
		t.Fatal(err)
	}
	g0 := c.State().Global
	if ev := c.Tick(t0, []string{"a", "b"}); len(ev) != 0 {
		t.Fatalf("opened a round with 2 of 3 available: %v", kinds(ev))
	}
	ev := c.Tick(t0, []string{"c", "a", "b", "d"})
	if len(ev) != 1 || ev[0].Kind != EvRoundOpened {
		t.Fatalf("events %v", kinds(ev))
	}
	sel := ev[0].Round.Selected
	if len(sel) != 4 { // fraction 1 of 4
		t.Fatalf("selected %v", sel)
	}
	// Hand-computed: examples 1,1,2 with deltas 1,2,4 and one missing:
	// closes only at the timeout with 3 of 4 (min completion 0.5).
	for i, s := range []Submission{{sel[0], 1, 0, delta(1), 1, nil, nil}, {sel[1], 1, 0, delta(2), 1, nil, nil}, {sel[2], 1, 0, delta(4), 2, nil, nil}} {
		ev := c.Offer(t0.Add(time.Second), s)
		if ev[0].Kind != EvUpdateAccepted || len(ev) != 1 {
			t.Fatalf("update %d: %v %s", i, kinds(ev), ev[0].Reason)
		}
	}
	for _, tc := range []struct {
		s    Submission
		want string
	}{
		{Submission{sel[0], 1, 0, delta(1), 1, nil, nil}, RefusedReplayed},
		{Submission{"zz", 1, 0, delta(1), 1, nil, nil}, RefusedNotSelected},
		{Submission{sel[3], 2, 0, delta(1), 1, nil, nil}, RefusedClosed},
		{Submission{sel[3], 1, 0, []float32{1, 2}, 1, nil, nil}, RefusedInvalid},
		{Submission{sel[3], 1, 0, []float32{1, 2, 3, float32(math.NaN()), 5, 6}, 1, nil, nil}, RefusedInvalid},
		{Submission{sel[3], 1, 0, []float32{1, 2, 3, float32(math.Inf(1)), 5, 6}, 1, nil, nil}, RefusedInvalid},
	} {
		ev := c.Offer(t0.Add(2*time.Second), tc.s)
		if len(ev) != 1 || ev[0].Kind != EvUpdateRefused || !strings.HasPrefix(ev[0].Reason, tc.want+": ") {
			t.Fatalf("%+v: %v %q, want refused %s", tc.s.Agent, kinds(ev), ev[0].Reason, tc.want)
		}
	}
	if ev := c.Tick(t0.Add(59*time.Second), nil); len(ev) != 0 {
		t.Fatalf("closed before the timeout: %v", kinds(ev))
	}
	ev = c.Tick(t0.Add(time.Minute), nil)
	if len(ev) != 1 || ev[0].Kind != EvRoundAggregated {
		t.Fatalf("at timeout: %v", kinds(ev))
	}
	r := ev[0].Round
	if r.Failures() != 1+6 || len(r.Reported) != 3 || r.Examples != 4 {
		t.Fatalf("round %+v failures %d", r, r.Failures())
	}
	// (1·1 + 1·2 + 2·4) / 4 = 2.75
	for i, v := range ev[0].Global {
		if math.Abs(v-(g0[i]+2.75)) > 1e-12 {
			t.Fatalf("global[%d] = %v, want %v", i, v, g0[i]+2.75)
		}
	}
	// A late update for the closed round is refused as closed.
	if ev := c.Offer(t0.Add(61*time.Second), Submission{sel[3], 1, 0, delta(1), 1, nil, nil}); ev[0].Kind != EvUpdateRefused {
		t.Fatalf("late update: %v", kinds(ev))
	}
	// Round 2: all three report, it closes at once and the job is done.
	ev = c.Tick(t0.Add(2*time.Minute), []string{"a", "b", "c"})
	sel = ev[0].Round.Selected
	for i, a := range sel {
		ev = c.Offer(t0.Add(2*time.Minute+time.Second), Submission{a, 2, 0, delta(0), 1, nil, nil})
		if i < 2 && len(ev) != 1 {
			t.Fatalf("closed early: %v", kinds(ev))
		}
	}
	if !slices.Equal(kinds(ev), []string{EvUpdateAccepted, EvRoundAggregated, EvJobFinished}) || !c.Finished() || c.State().Status != JobDone {
		t.Fatalf("last update: %v, state %s", kinds(ev), c.State().Status)
	}
}

func TestRoundFailsAndRetries(t *testing.T) {
	sp := testSpec()
	sp.MinCompletion, sp.MaxRetries = 1, 1
	c, err := New("j", sp)
	if err != nil {
		t.Fatal(err)
	}
	ev := c.Tick(t0, []string{"a", "b", "c"})
	c.Offer(t0, Submission{"a", 1, 0, delta(1), 1, nil, nil})
	// A late update is refused and counted.
	ev = c.Offer(t0.Add(time.Minute), Submission{"b", 1, 0, delta(1), 1, nil, nil})
	if ev[0].Reason == "" || !strings.HasPrefix(ev[0].Reason, RefusedLate) {
		t.Fatalf("late: %v %q", kinds(ev), ev[0].Reason)
	}
	ev = c.Tick(t0.Add(time.Minute), nil)
	if len(ev) != 1 || ev[0].Kind != EvRoundFailed || !ev[0].Retry || ev[0].Round.Refused[RefusedLate] != 1 {
		t.Fatalf("timeout: %+v", ev)
	}
	ev = c.Tick(t0.Add(2*time.Minute), []string{"a", "b", "c"})
	if ev[0].Round.Round != 1 || ev[0].Round.Attempt != 1 {
		t.Fatalf("retry: %+v", ev[0].Round)
	}
	// An update for the failed attempt is refused.
	if ev := c.Offer(t0.Add(2*time.Minute), Submission{"c", 1, 0, delta(1), 1, nil, nil}); ev[0].Kind != EvUpdateRefused {
		t.Fatalf("old attempt accepted: %v", kinds(ev))
	}
	ev = c.Tick(t0.Add(3*time.Minute), nil)
	if !slices.Equal(kinds(ev), []string{EvRoundFailed, EvJobFinished}) || c.State().Status != JobFailed {
		t.Fatalf("second failure: %v %s", kinds(ev), c.State().Status)
	}
}

func TestSelectionSeeded(t *testing.T) {
	sp := testSpec()
	sp.Fraction = 0.5
	avail := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}
	pick := func(seed uint64, order []string) []string {
		s := sp
		s.Seed = seed
		c, err := New("j", s)
		if err != nil {
			t.Fatal(err)
		}
		return c.Tick(t0, order)[0].Round.Selected
	}
	a := pick(1, avail)
	rev := slices.Clone(avail)
	slices.Reverse(rev)
	if b := pick(1, rev); !slices.Equal(a, b) || len(a) != 5 {
		t.Fatalf("same seed, other order: %v vs %v", a, b)
	}
	if b := pick(2, avail); slices.Equal(a, b) {
		t.Fatalf("seeds 1 and 2 select the same clients %v", a)
	}
}

func TestRestoreMidRound(t *testing.T) {
	c, err := New("j", testSpec())
	if err != nil {
		t.Fatal(err)
	}
	sel := c.Tick(t0, []string{"a", "b", "c"})[0].Round.Selected
	c.Offer(t0, Submission{sel[0], 1, 0, delta(1), 1, nil, nil})
	st, _ := jsonState(t, c)
	stored := []strategy.Update{{Client: sel[0], Delta: delta(1), Examples: 1}}
	r, err := Restore(testSpec(), st, stored)
	if err != nil {
		t.Fatal(err)
	}
	if ev := r.Offer(t0, Submission{sel[0], 1, 0, delta(1), 1, nil, nil}); ev[0].Kind != EvUpdateRefused {
		t.Fatalf("replay after restore accepted")
	}
	r.Offer(t0, Submission{sel[1], 1, 0, delta(3), 1, nil, nil})
	ev := r.Offer(t0, Submission{sel[2], 1, 0, delta(5), 1, nil, nil})
	if ev[len(ev)-1].Kind != EvRoundAggregated || ev[len(ev)-1].Round.Examples != 3 {
		t.Fatalf("after restore: %v", kinds(ev))
	}
	if _, err := Restore(testSpec(), st, nil); err == nil {
		t.Fatal("restore without the stored update succeeded")
	}
}

func TestSpecErrors(t *testing.T) {
	for name, f := range map[string]func(*Spec){
		"model":         func(s *Spec) { s.Model = "" },
		"labels":        func(s *Spec) { s.Labels = []string{"x"} },
		"initial":       func(s *Spec) { s.Initial = []float64{1} },
		"strategy":      func(s *Spec) { s.Strategy.Name = "fedfoo" },
		"fraction_fit":  func(s *Spec) { s.Fraction = 2 },
		"learn_rate":    func(s *Spec) { s.LearnRate = math.NaN() },
		"solver":        func(s *Spec) { s.Solver = "rmsprop" },
		"min_fit":       func(s *Spec) { s.MinFit = 5 },
		"to":            func(s *Spec) { s.From, s.To = t0, t0 },
		"round_timeout": func(s *Spec) { s.RoundTimeout = -1 },
	} {
		sp := testSpec()
		f(&sp)
		if err := sp.Resolve(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestFedAdamStateSurvivesRestore: a FedAdam job restored from its JSON
// state between rounds aggregates round 2 exactly as the uninterrupted
// job (the server optimiser's moments are in the state).
func TestFedAdamStateSurvivesRestore(t *testing.T) {
	sp := testSpec()
	sp.Strategy = strategy.Config{Name: "fedadam"}
	play := func(c *Coordinator, round int, at time.Time) []float64 {
		sel := c.Tick(at, []string{"a", "b", "c"})[0].Round.Selected
		var ev []Event
		for i, a := range sel {
			ev = c.Offer(at, Submission{a, round, 0, delta(float32(i+round) / 10), i + 1, nil, nil})
		}
		for _, e := range ev {
			if e.Kind == EvRoundAggregated {
				return e.Global
			}
		}
		return nil
	}
	straight, err := New("j", sp)
	if err != nil {
		t.Fatal(err)
	}
	if straight.Spec().LearnRate != 0.1 {
		t.Errorf("client learning rate %v, want FedAdam's eta_l 0.1", straight.Spec().LearnRate)
	}
	play(straight, 1, t0)
	b, _ := json.Marshal(straight.State())
	want := play(straight, 2, t0.Add(time.Minute))

	var st State
	json.Unmarshal(b, &st)
	restored, err := Restore(sp, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(want) == 0 {
		t.Fatal("round 2 did not aggregate")
	}
	if got := play(restored, 2, t0.Add(time.Minute)); !slices.Equal(got, want) {
		t.Fatalf("round 2 after restore %v, uninterrupted %v", got, want)
	}
	st.Optimizer = nil
	fresh, _ := Restore(sp, st, nil)
	if got := play(fresh, 2, t0.Add(time.Minute)); slices.Equal(got, want) {
		t.Fatal("round 2 without the optimiser state equals the uninterrupted one: the test cannot tell")
	}
}

func TestFedProxMuReachesClients(t *testing.T) {
	sp := testSpec()
	mu := 0.5
	sp.Strategy = strategy.Config{Name: "fedprox", ProximalMu: &mu}
	c, err := New("j", sp)
	if err != nil {
		t.Fatal(err)
	}
	if c.Spec().Mu != 0.5 {
		t.Fatalf("mu %v", c.Spec().Mu)
	}
}
