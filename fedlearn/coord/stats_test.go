package coord

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn"
)

// jsonState is c's state after a trip through JSON, as a store keeps it,
// and its JSON.
func jsonState(t *testing.T, c *Coordinator) (State, []byte) {
	t.Helper()
	b, err := json.Marshal(c.State())
	if err != nil {
		t.Fatal(err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st, b
}

// statsSpec is testSpec without normalisation: round 0 collects the
// feature statistics.
func statsSpec() Spec {
	sp := testSpec()
	sp.Schema.Features = slices.Clone(sp.Schema.Features)
	for i := range sp.Schema.Features {
		sp.Schema.Features[i].Std = 0
	}
	return sp
}

func fstats(count, sum, sq []float64) *fedlearn.FeatureStats {
	return &fedlearn.FeatureStats{Count: count, Sum: sum, SumSq: sq}
}

// openStats starts a statistics job and opens round 0 with three agents.
func openStats(t *testing.T, sp Spec) (*Coordinator, []string) {
	t.Helper()
	c, err := New("js", sp)
	if err != nil {
		t.Fatal(err)
	}
	if sp := c.Spec(); sp.FederatedStats == nil || !*sp.FederatedStats {
		t.Fatalf("federated_stats resolved to %v for a schema without normalisation", sp.FederatedStats)
	}
	ev := c.Tick(t0, []string{"a", "b", "c"})
	if len(ev) != 1 || ev[0].Kind != EvRoundOpened || ev[0].Round.Round != StatsRound || ev[0].Round.Kind != RoundStats {
		t.Fatalf("first round: %v %+v", kinds(ev), ev)
	}
	return c, ev[0].Round.Selected
}

// TestStatsRoundHandComputed: three clients' counts, sums and sums of
// squares, with missing values (the per-feature counts differ), give the
// mean and population std computed by hand; deltas are refused in round
// 0 and statistics in round 1, which trains with the new schema.
//
//	a: feature 0 values 1, 3; feature 1 value 3 (one missing)
//	b: feature 0 values 2, 4; feature 1 values 1, 1
//	c: feature 0 value 5;     feature 1 missing
//	feature 0: n 5, Σ 15, Σx² 55: mean 3, std √(55/5 − 9) = √2
//	feature 1: n 3, Σ 5,  Σx² 11: mean 5/3, std √(11/3 − 25/9) = √8/3
func TestStatsRoundHandComputed(t *testing.T) {
	c, sel := openStats(t, statsSpec())
	if ev := c.Offer(t0, Submission{Agent: "a", Round: 0, Delta: delta(1), Examples: 2}); ev[0].Kind != EvUpdateRefused || !strings.HasPrefix(ev[0].Reason, RefusedInvalid) {
		t.Fatalf("a delta in the statistics round: %v %q", kinds(ev), ev[0].Reason)
	}
	for _, bad := range []*fedlearn.FeatureStats{
		fstats([]float64{1}, []float64{1}, []float64{1}),                    // one feature
		fstats([]float64{3, 1}, []float64{4, 3}, []float64{10, 9}),          // count > examples
		fstats([]float64{1.5, 1}, []float64{4, 3}, []float64{10, 9}),        // not whole
		fstats([]float64{2, 1}, []float64{math.NaN(), 3}, []float64{10, 9}), // NaN
		fstats([]float64{2, 1}, []float64{4, 3}, []float64{-1, 9}),          // negative Σx²
	} {
		if ev := c.Offer(t0, Submission{Agent: "a", Round: 0, Stats: bad, Examples: 2}); ev[0].Kind != EvUpdateRefused || !strings.HasPrefix(ev[0].Reason, RefusedInvalid) {
			t.Fatalf("bad statistics %+v: %v", bad, kinds(ev))
		}
	}
	subs := []Submission{
		{Agent: sel[0], Stats: fstats([]float64{2, 1}, []float64{4, 3}, []float64{10, 9}), Examples: 2},
		{Agent: sel[1], Stats: fstats([]float64{2, 2}, []float64{6, 2}, []float64{20, 2}), Examples: 2},
		{Agent: sel[2], Stats: fstats([]float64{1, 0}, []float64{5, 0}, []float64{25, 0}), Examples: 1},
	}
	var ev []Event
	for _, s := range subs {
		ev = c.Offer(t0, s)
		if ev[0].Kind != EvUpdateAccepted {
			t.Fatalf("%s: %v %q", s.Agent, kinds(ev), ev[0].Reason)
		}
	}
	if !slices.Equal(kinds(ev), []string{EvUpdateAccepted, EvStatsAggregated}) || ev[1].Schema == nil {
		t.Fatalf("last statistics: %v", kinds(ev))
	}
	want := []struct{ mean, std float64 }{{3, math.Sqrt2}, {5.0 / 3, math.Sqrt(8) / 3}}
	for _, sc := range []fedlearn.Schema{*ev[1].Schema, c.Schema(), *c.State().Schema} {
		for i, w := range want {
			f := sc.Features[i]
			if math.Abs(f.Mean-w.mean) > 1e-12 || math.Abs(f.Impute-w.mean) > 1e-12 || math.Abs(f.Std-w.std) > 1e-12 {
				t.Fatalf("feature %d: mean %v impute %v std %v, want %v and %v", i, f.Mean, f.Impute, f.Std, w.mean, w.std)
			}
		}
	}
	if c.State().Done != 0 || c.Spec().Schema.Features[0].Mean != 0 {
		t.Fatalf("the statistics round counted as a training round, or changed the spec")
	}
	ev = c.Tick(t0.Add(time.Second), []string{"a", "b", "c"})
	if len(ev) != 1 || ev[0].Round.Round != 1 || ev[0].Round.Kind != RoundTrain {
		t.Fatalf("after the statistics: %+v", ev)
	}
	if ev := c.Offer(t0.Add(time.Second), Submission{Agent: "a", Round: 1, Stats: subs[0].Stats, Examples: 2}); ev[0].Kind != EvUpdateRefused || !strings.HasPrefix(ev[0].Reason, RefusedInvalid) {
		t.Fatalf("statistics in a training round: %v", kinds(ev))
	}
}

// TestStatsConstantFeature: a feature every client saw with one value has
// std 0, stored as 1; a feature no client saw has mean 0 and std 1.
func TestStatsConstantFeature(t *testing.T) {
	c, sel := openStats(t, statsSpec())
	var ev []Event
	for _, a := range sel {
		ev = c.Offer(t0, Submission{Agent: a, Stats: fstats([]float64{2, 0}, []float64{14, 0}, []float64{98, 0}), Examples: 2})
	}
	f := ev[len(ev)-1].Schema.Features
	if f[0].Mean != 7 || f[0].Std != 1 || f[1].Mean != 0 || f[1].Std != 1 {
		t.Fatalf("features %+v", f)
	}
}

// TestStatsMatchCentralised: five clients of different sizes, with
// missing values at random, send the statistics of their rows; the
// federated mean and std equal fedlearn.Schema.Standardize's over the
// union of their rows (two passes, centralised) within 1e-9, relative.
func TestStatsMatchCentralised(t *testing.T) {
	sp := statsSpec()
	sp.MinAvailable, sp.MinFit = 5, 5
	c, err := New("jc", sp)
	if err != nil {
		t.Fatal(err)
	}
	sel := c.Tick(t0, []string{"a", "b", "c", "d", "e"})[0].Round.Selected
	rng := rand.New(rand.NewPCG(5, 6))
	var union [][]float64
	var ev []Event
	for k, a := range sel {
		n := 200 + 700*k // 200 .. 3000 rows
		st := fedlearn.NewFeatureStats(2)
		for range n {
			// CO2-like (ppm, a shift per client: non-IID) and
			// temperature-like values; 10 % missing.
			row := []float64{450 + 100*float64(k) + 250*rng.NormFloat64(), 21 + rng.NormFloat64()}
			for i := range row {
				if rng.Float64() < 0.1 {
					row[i] = math.NaN()
				}
			}
			st.Add(row)
			union = append(union, row)
		}
		ev = c.Offer(t0, Submission{Agent: a, Stats: &st, Examples: n})
	}
	if ev[len(ev)-1].Kind != EvStatsAggregated {
		t.Fatalf("events %v", kinds(ev))
	}
	want := statsSpec().Schema
	want.Standardize(union)
	got := c.Schema()
	rel := func(a, b float64) float64 { return math.Abs(a-b) / max(1, math.Abs(b)) }
	for i, w := range want.Features {
		g := got.Features[i]
		t.Logf("feature %d: federated mean %.12g std %.12g, centralised %.12g %.12g", i, g.Mean, g.Std, w.Mean, w.Std)
		if rel(g.Mean, w.Mean) > 1e-9 || rel(g.Std, w.Std) > 1e-9 || rel(g.Impute, w.Impute) > 1e-9 {
			t.Errorf("feature %d: federated %+v, centralised %+v", i, g, w)
		}
	}
}

// TestStatsRoundRestore: a restart after two of three clients reported
// their statistics resumes round 0 from the stored ones (a replay is
// refused, none is counted twice) and ends with the schema of the
// uninterrupted run; a store missing one, or holding a delta, is an error.
func TestStatsRoundRestore(t *testing.T) {
	subs := func(sel []string) []Submission {
		return []Submission{
			{Agent: sel[0], Stats: fstats([]float64{2, 1}, []float64{4, 3}, []float64{10, 9}), Examples: 2},
			{Agent: sel[1], Stats: fstats([]float64{2, 2}, []float64{6, 2}, []float64{20, 2}), Examples: 2},
			{Agent: sel[2], Stats: fstats([]float64{1, 0}, []float64{5, 0}, []float64{25, 0}), Examples: 1},
		}
	}
	straight, sel := openStats(t, statsSpec())
	for _, s := range subs(sel) {
		straight.Offer(t0, s)
	}
	want := straight.Schema()

	c, sel := openStats(t, statsSpec())
	ss := subs(sel)
	c.Offer(t0, ss[0])
	c.Offer(t0, ss[1])
	st, b := jsonState(t, c)
	if st.Current == nil || !st.Current.Stats() || len(st.Current.Reported) != 2 {
		t.Fatalf("state mid-round: %+v", st.Current)
	}
	if strings.Contains(string(b), `"sum"`) {
		t.Fatalf("the state holds a client's statistics in clear: %s", b)
	}
	if _, err := RestoreSubmissions(statsSpec(), st, ss[:1]); err == nil {
		t.Fatal("restored with one of the two stored statistics")
	}
	if _, err := RestoreSubmissions(statsSpec(), st, []Submission{ss[0], {Agent: sel[1], Delta: delta(1), Examples: 2}}); err == nil {
		t.Fatal("restored a statistics round from a delta")
	}
	r, err := RestoreSubmissions(statsSpec(), st, ss[:2])
	if err != nil {
		t.Fatal(err)
	}
	if ev := r.Offer(t0, ss[1]); ev[0].Kind != EvUpdateRefused || !strings.HasPrefix(ev[0].Reason, RefusedReplayed) {
		t.Fatalf("replay after the restore: %v %q", kinds(ev), ev[0].Reason)
	}
	ev := r.Offer(t0, ss[2])
	if ev[len(ev)-1].Kind != EvStatsAggregated || ev[len(ev)-1].Round.Examples != 5 {
		t.Fatalf("after the restore: %v %+v", kinds(ev), ev[len(ev)-1].Round)
	}
	if got := r.Schema(); !slices.Equal(got.Features, want.Features) {
		t.Fatalf("schema after the restore %+v, uninterrupted %+v", got.Features, want.Features)
	}
	// Restored between rounds, the job keeps its schema and trains.
	st2, _ := jsonState(t, r)
	r2, err := Restore(statsSpec(), st2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := r2.Schema(); !slices.Equal(got.Features, want.Features) {
		t.Fatalf("schema after a restore between rounds %+v", got.Features)
	}
	if ev := r2.Tick(t0, []string{"a", "b", "c"}); ev[0].Round.Round != 1 {
		t.Fatalf("after the restore: %+v", ev[0].Round)
	}
}

// TestStatsOptOut: federated_stats false trains from round 1 with the
// spec's schema as it is; a normalised schema needs no statistics.
func TestStatsOptOut(t *testing.T) {
	sp := statsSpec()
	off := false
	sp.FederatedStats = &off
	c, err := New("j", sp)
	if err != nil {
		t.Fatal(err)
	}
	if ev := c.Tick(t0, []string{"a", "b", "c"}); ev[0].Round.Round != 1 {
		t.Fatalf("opted out: %+v", ev[0].Round)
	}
	c, _ = New("j", testSpec())
	if on := c.Spec().FederatedStats; on == nil || *on {
		t.Fatalf("federated_stats %v for a normalised schema", on)
	}
}
