package coord

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn/privacy"
	"github.com/edgefleet/edgefleet/fedlearn/strategy"
)

// independentEpsilon is the (ε, δ) of T rounds of the Poisson-subsampled
// Gaussian mechanism (q, z), written here apart from fedlearn/privacy:
// RDP(α) = ln A_α/(α−1) with A_α = Σ_i C(α,i) q^i (1−q)^(α−i)
// e^{(i²−i)/(2z²)} (Mironov et al. 2019), and at q = 1 the closed form
// α/(2z²); ε = min over integer α in 2..512 of T·RDP(α) + ln(1/δ)/(α−1).
func independentEpsilon(q, z float64, T int, delta float64) float64 {
	best := math.Inf(1)
	for a := 2; a <= 512; a++ {
		var rdp float64
		if q == 1 {
			rdp = float64(a) / (2 * z * z)
		} else {
			// log-sum-exp over the terms; log C(α,i) built up term by term.
			terms := make([]float64, a+1)
			logC, hi := 0.0, math.Inf(-1)
			for i := 0; i <= a; i++ {
				if i > 0 {
					logC += math.Log(float64(a-i+1)) - math.Log(float64(i))
				}
				terms[i] = logC + float64(i)*math.Log(q) + float64(a-i)*math.Log(1-q) + float64(i*i-i)/(2*z*z)
				hi = max(hi, terms[i])
			}
			sum := 0.0
			for _, x := range terms {
				sum += math.Exp(x - hi)
			}
			rdp = (hi + math.Log(sum)) / float64(a-1)
		}
		best = min(best, float64(T)*rdp+math.Log(1/delta)/float64(a-1))
	}
	return best
}

func dpSpec(mode string, z, clip, budget float64, rounds int) Spec {
	sp := testSpec()
	sp.Rounds = rounds
	sp.DP = &DP{Mode: mode, NoiseMultiplier: z, Clip: clip, Budget: budget}
	return sp
}

// runRound opens a round with the agents available, lets every selected
// client report d and returns the events of the last update.
func runRound(t *testing.T, c *Coordinator, at time.Time, avail []string, d []float32) []Event {
	t.Helper()
	ev := c.Tick(at, avail)
	if len(ev) == 0 || ev[0].Kind != EvRoundOpened {
		return ev
	}
	r := ev[0].Round
	for _, a := range r.Selected {
		ev = c.Offer(at, Submission{Agent: a, Round: r.Round, Attempt: r.Attempt, Delta: d, Examples: 1})
	}
	return ev
}

// TestDPEpsilonMatchesIndependent: a central-DP job of 50 rounds with
// every client selected (q = 1), z = 5, δ = 1e-5 reports after each round
// the ε of an independent computation, 7.84 after round 50 (the issue's
// reference point); a job selecting 2 of 4 clients per round (q = 0.5)
// matches the independent binomial expansion.
func TestDPEpsilonMatchesIndependent(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fraction float64
		avail    []string
		q        float64
		rounds   int
	}{
		{"q=1", 1, []string{"a", "b", "c"}, 1, 50},
		{"q=0.5", 0.5, []string{"a", "b", "c", "d"}, 0.5, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sp := dpSpec(DPCentral, 5, 1, 0, tc.rounds)
			sp.Fraction, sp.MinFit, sp.MinAvailable = tc.fraction, 1, 3
			c, err := New("jdp", sp)
			if err != nil {
				t.Fatal(err)
			}
			at := t0
			for round := 1; round <= tc.rounds; round++ {
				ev := runRound(t, c, at, tc.avail, delta(0.01))
				agg := ev[len(ev)-1]
				if agg.Kind == EvJobFinished {
					agg = ev[len(ev)-2]
				}
				if agg.Kind != EvRoundAggregated {
					t.Fatalf("round %d: %v", round, kinds(ev))
				}
				want := independentEpsilon(tc.q, 5, round, 1e-5)
				if agg.Round.Q != tc.q || math.Abs(agg.Round.Epsilon-want) > 0.01*want {
					t.Fatalf("round %d: q %v ε %v, independent ε %v at q %v", round, agg.Round.Q, agg.Round.Epsilon, want, tc.q)
				}
				at = at.Add(time.Minute)
			}
			sp2, ok := c.Spent()
			st := c.State()
			want := independentEpsilon(tc.q, 5, tc.rounds, 1e-5)
			t.Logf("%s: after %d rounds ε = %.6f (order %d), independent %.6f", tc.name, tc.rounds, sp2.Epsilon, sp2.Order, want)
			if !ok || st.Status != JobDone || st.Privacy == nil || len(st.Privacy.Q) != tc.rounds || st.Privacy.Spent != sp2 ||
				math.Abs(sp2.Epsilon-want) > 0.01*want || sp2.Delta != 1e-5 {
				t.Fatalf("spent %+v (state %+v), want ε %v", sp2, st.Privacy, want)
			}
			if tc.q == 1 && math.Abs(sp2.Epsilon-7.84) > 0.01 {
				t.Fatalf("reference point: ε %v, want 7.84", sp2.Epsilon)
			}
		})
	}
}

// TestDPBudgetStopsJob: with a budget of ε = 3 the job stops, done, before
// the first round that would spend more, after as many rounds as the
// independent computation allows.
func TestDPBudgetStopsJob(t *testing.T) {
	want := 0
	for independentEpsilon(1, 5, want+1, 1e-5) <= 3 {
		want++
	}
	c, err := New("jb", dpSpec(DPCentral, 5, 1, 3, 50))
	if err != nil {
		t.Fatal(err)
	}
	at := t0
	var last []Event
	for i := 0; i < 50 && !c.Finished(); i++ {
		last = runRound(t, c, at, []string{"a", "b", "c"}, delta(0.01))
		at = at.Add(time.Minute)
	}
	st := c.State()
	t.Logf("stopped after %d rounds: %s (ε %.4f)", st.Done, st.Reason, st.Privacy.Spent.Epsilon)
	if st.Status != JobDone || st.Done != want || !strings.HasPrefix(st.Reason, ReasonBudget+": ") || st.Privacy.Spent.Epsilon > 3 {
		t.Fatalf("job %s after %d rounds (want %d): %s", st.Status, st.Done, want, st.Reason)
	}
	if len(last) != 1 || last[0].Kind != EvJobFinished || last[0].Status != JobDone {
		t.Fatalf("last events %v", kinds(last))
	}
}

// TestDPCentralClipsAndNoises: with negligible noise, deltas of norm
// 10·√6 are clipped to C = 1 and averaged with equal weights; with z = 1
// the noise is there, the same after a restart mid-round (seeded by job,
// round, attempt and noise key) and different under another noise key.
func TestDPCentralClipsAndNoises(t *testing.T) {
	c, err := New("jc", dpSpec(DPCentral, 1e-9, 1, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	g0 := c.State().Global
	ev := c.Tick(t0, []string{"a", "b", "c"})
	for i, a := range ev[0].Round.Selected {
		ev = c.Offer(t0, Submission{Agent: a, Round: 1, Delta: delta(10), Examples: 1 + 100*i})
	}
	g := ev[1].Global
	for i := range g {
		if d := g[i] - g0[i]; math.Abs(d-1/math.Sqrt(6)) > 1e-6 {
			t.Fatalf("global[%d] moved by %v, want the clipped mean 1/√6", i, d)
		}
	}

	play := func(key []byte, restartAfter int) []float64 {
		c, err := New("jn", dpSpec(DPCentral, 1, 1, 0, 2))
		if err != nil {
			t.Fatal(err)
		}
		if key != nil {
			if err := c.SetNoiseKey(key); err != nil {
				t.Fatal(err)
			}
		}
		runRound(t, c, t0, []string{"a", "b", "c"}, delta(0.1))
		ev := c.Tick(t0.Add(time.Minute), []string{"a", "b", "c"})
		sel := ev[0].Round.Selected
		var stored []strategy.Update
		for i, a := range sel {
			if i == restartAfter {
				st, _ := jsonState(t, c)
				if c, err = Restore(dpSpec(DPCentral, 1, 1, 0, 2), st, stored); err != nil {
					t.Fatal(err)
				}
			}
			d := delta(float32(i) / 10)
			ev = c.Offer(t0.Add(time.Minute), Submission{Agent: a, Round: 2, Delta: d, Examples: 1})
			stored = append(stored, strategy.Update{Client: a, Delta: d, Examples: 1})
		}
		if ev[1].Kind != EvRoundAggregated {
			t.Fatalf("events %v", kinds(ev))
		}
		if sp, _ := c.Spent(); len(c.State().Privacy.Q) != 2 || sp.Rounds != 2 {
			t.Fatalf("after a restart the accountant has %+v", sp)
		}
		return ev[1].Global
	}
	key := []byte("0123456789abcdef0123456789abcdef")
	straight := play(key, -1)
	if got := play(key, 2); !slices.Equal(got, straight) {
		t.Fatalf("after a restart mid-round %v, uninterrupted %v", got, straight)
	}
	if got := play([]byte("another key, 32 bytes long......"), -1); slices.Equal(got, straight) {
		t.Fatal("another noise key draws the same noise")
	}

	// The noise is σ = z·C/m = 1/3 times the job's seeded normal draws,
	// added to the mean of the (unclipped, short) deltas.
	c, err = New("jz", dpSpec(DPCentral, 1, 1, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	g0 = c.State().Global
	ev = c.Tick(t0, []string{"a", "b", "c"})
	var mean float64
	for i, a := range ev[0].Round.Selected {
		d := float32(i+1) / 10
		mean += float64(d) / 3
		ev = c.Offer(t0, Submission{Agent: a, Round: 1, Delta: delta(d), Examples: 1})
	}
	src := privacy.NewSource(c.noiseSeed(1, 0))
	for i, v := range ev[1].Global {
		if want := g0[i] + mean + src.NormFloat64()/3; math.Abs(v-want) > 1e-9 {
			t.Fatalf("global[%d] = %v, want %v (mean %v plus noise of σ 1/3)", i, v, want, mean)
		}
	}
}

// TestDPLocalCharges: under local DP an attempt that received an update
// spends privacy even when it fails (the update was released); under
// central DP only an aggregated one does.
func TestDPLocalCharges(t *testing.T) {
	for mode, want := range map[string]int{DPLocal: 1, DPCentral: 0} {
		sp := dpSpec(mode, 1, 1, 0, 1)
		sp.MinCompletion = 1
		c, err := New("jl", sp)
		if err != nil {
			t.Fatal(err)
		}
		ev := c.Tick(t0, []string{"a", "b", "c"})
		c.Offer(t0, Submission{Agent: ev[0].Round.Selected[0], Round: 1, Delta: delta(1), Examples: 1})
		ev = c.Tick(t0.Add(time.Hour), nil)
		if ev[0].Kind != EvRoundFailed {
			t.Fatalf("%s: %v", mode, kinds(ev))
		}
		got := 0
		if p := c.State().Privacy; p != nil {
			got = len(p.Q)
		}
		if got != want || (want == 1) != (ev[0].Round.Epsilon > 0) {
			t.Fatalf("%s: %d attempts charged (ε %v), want %d", mode, got, ev[0].Round.Epsilon, want)
		}
	}
}

func TestDPSpecErrors(t *testing.T) {
	for name, f := range map[string]func(*Spec){
		"mode":    func(s *Spec) { s.DP.Mode = "global" },
		"z":       func(s *Spec) { s.DP.NoiseMultiplier = 0 },
		"z inf":   func(s *Spec) { s.DP.NoiseMultiplier = math.Inf(1) },
		"clip":    func(s *Spec) { s.DP.Clip = -1 },
		"delta":   func(s *Spec) { s.DP.Delta = 1 },
		"budget":  func(s *Spec) { s.DP.Budget = -1 },
		"median":  func(s *Spec) { s.Strategy = strategy.Config{Name: "fedmedian"} },
		"trimmed": func(s *Spec) { s.Strategy = strategy.Config{Name: "fedtrimmedavg"} },
	} {
		sp := dpSpec(DPCentral, 1, 1, 0, 1)
		f(&sp)
		err := sp.Resolve()
		if err == nil || !strings.Contains(err.Error(), "dp.") {
			t.Errorf("%s: %v", name, err)
		}
	}
	sp := dpSpec(DPLocal, 1, 1, 0, 1)
	sp.Strategy = strategy.Config{Name: "fedmedian"}
	if err := sp.Resolve(); err != nil || sp.DP.Delta != DefaultDPDelta {
		t.Errorf("local DP with FedMedian: %v, delta %v", err, sp.DP.Delta)
	}
}

func TestParseDP(t *testing.T) {
	for in, want := range map[string]DP{
		"central:z=1.0,C=1.0":                 {Mode: DPCentral, NoiseMultiplier: 1, Clip: 1},
		"local:z=0.5,C=2,delta=1e-6,budget=8": {Mode: DPLocal, NoiseMultiplier: 0.5, Clip: 2, Delta: 1e-6, Budget: 8},
		"z=1.1,clip=0.1":                      {Mode: DPCentral, NoiseMultiplier: 1.1, Clip: 0.1},
	} {
		d, err := ParseDP(in)
		if err != nil || *d != want {
			t.Errorf("%q: %+v %v, want %+v", in, d, err, want)
		}
	}
	for _, in := range []string{"", "global:z=1,C=1", "central:z=1", "z=1,C=x", "z=1,C=1,eps=2", "z=1,z=2,C=1", "z"} {
		if d, err := ParseDP(in); err == nil {
			t.Errorf("%q parsed as %+v", in, d)
		}
	}
}
