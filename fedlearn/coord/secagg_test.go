package coord

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/secagg"
	"github.com/edgefleet/edgefleet/fedlearn/strategy"
)

// secAggSpec is an MLP of 10 inputs, 32 hidden units and 3 classes (451
// parameters) under SecAgg+ with 5 shares of threshold 3 and clipping
// range 1.
func secAggSpec(clients int) Spec {
	feats := make([]fedlearn.Feature, 10)
	for i := range feats {
		feats[i] = fedlearn.Feature{Name: fmt.Sprintf("f%d", i), Metric: fmt.Sprintf("f%d", i), Agg: fedlearn.AggLatest, Std: 1}
	}
	return Spec{
		Model: "sa", Arch: fedlearn.Arch{Kind: fedlearn.KindMLP, Inputs: 10, Hidden: []int{32}, Classes: 3},
		Schema: fedlearn.Schema{Features: feats, Label: fedlearn.Label{Metric: "y"}},
		Labels: []string{"a", "b", "c"}, Strategy: strategy.Config{Name: "fedavg"}, Rounds: 3,
		MinAvailable: clients, MinFit: clients, RoundTimeout: fedlearn.Duration(time.Minute), Seed: 3,
		SecAgg: &SecAgg{NumShares: 5, ReconstructionThreshold: 3, ClippingRange: 1},
	}
}

// saClient is one agent's side: its secagg.Client, its Δ and examples.
type saClient struct {
	c        *secagg.Client
	delta    []float32
	examples int
}

// answer computes a client's answer to its task of the current stage, as
// the agent does (the collect stage masks [r, r·Δ]).
func (sc *saClient) answer(t *testing.T, task SecAggTask) []byte {
	t.Helper()
	b, err := sc.c.Respond(task.Message, func() ([]float32, error) {
		return secagg.Weighted(sc.delta, sc.examples, task.MaxWeight), nil
	})
	if err != nil {
		t.Fatalf("stage %s: %v", task.Stage, err)
	}
	return b
}

// runSecAggRound opens a round over names and plays it: every client
// answers every stage, except those in dropAfterShares, which answer
// setup and share_keys and then go silent. It returns the events of the
// last step and the clients.
func runSecAggRound(t *testing.T, c *Coordinator, at time.Time, names []string, dropAfterShares map[string]bool, rng *mrand.Rand) ([]Event, map[string]*saClient) {
	t.Helper()
	ev := c.Tick(at, names)
	if len(ev) != 1 || ev[0].Kind != EvRoundOpened || ev[0].Round.SecAgg == nil || ev[0].Round.SecAgg.Stage != StageSetup {
		t.Fatalf("open: %v %+v", kinds(ev), ev)
	}
	r := ev[0].Round
	clients := map[string]*saClient{}
	for _, n := range r.Selected {
		d := make([]float32, c.Spec().Arch.NumParams())
		for i := range d {
			d[i] = float32(rng.NormFloat64() * 0.01)
		}
		clients[n] = &saClient{c: secagg.NewClient(n, rand.Reader), delta: d, examples: 200 + rng.IntN(1500)}
	}
	var last []Event
	var prev []byte // the first client's answer to the stage before
	for _, stage := range []string{StageSetup, StageShareKeys, StageCollect, StageUnmask} {
		if prev != nil {
			// An answer to a stage that has closed is late, not malformed.
			ev := c.Offer(at, Submission{Agent: r.Selected[0], Round: r.Round, Attempt: r.Attempt, SecAgg: prev})
			if ev[0].Kind != EvUpdateRefused || !strings.HasPrefix(ev[0].Reason, RefusedLate) {
				t.Fatalf("stage %s: the previous stage's answer: %v %q", stage, kinds(ev), ev[0].Reason)
			}
		}
		for i, n := range r.Selected {
			if dropAfterShares[n] && (stage == StageCollect || stage == StageUnmask) {
				continue
			}
			task, ok := c.SecAggTask(n)
			if !ok {
				t.Fatalf("stage %s: no task for %s", stage, n)
			}
			if task.Stage != stage {
				t.Fatalf("%s got stage %s, want %s", n, task.Stage, stage)
			}
			if _, sel := c.Selected(n); !sel {
				t.Fatalf("stage %s: %s not selected while its task waits", stage, n)
			}
			ans := clients[n].answer(t, task)
			if i == 0 {
				prev = ans
			}
			last = c.Offer(at, Submission{Agent: n, Round: r.Round, Attempt: r.Attempt, SecAgg: ans})
			if last[0].Kind != EvUpdateAccepted {
				t.Fatalf("stage %s, %s: %v %s", stage, n, kinds(last), last[0].Reason)
			}
			if t2, again := c.SecAggTask(n); again && t2.Stage == stage {
				t.Fatalf("stage %s: %s has a task after answering", stage, n)
			}
		}
		if stage == StageCollect && len(dropAfterShares) > 0 {
			// The dropped never send: the stage closes at its deadline,
			// the round's.
			at = c.State().Current.Deadline
			if ev := c.Tick(at.Add(-time.Millisecond), nil); len(ev) != 0 {
				t.Fatalf("collect closed before its deadline: %v", kinds(ev))
			}
			last = c.Tick(at, nil)
			if len(last) != 1 || last[0].Kind != EvSecAggStage || last[0].Round.SecAgg.Stage != StageUnmask {
				t.Fatalf("collect deadline: %v", kinds(last))
			}
		}
	}
	return last, clients
}

// TestSecAggRoundMatchesPlainFedAvg: a round of 10 clients, 2 of which
// drop after sending their shares (their pairwise masks are in the
// others' vectors): the new global model equals the survivors' FedAvg
// with Flower's weights (min(examples/max_weight, 1)) within the
// quantisation error, relative 1e-4.
func TestSecAggRoundMatchesPlainFedAvg(t *testing.T) {
	names := []string{"a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9"}
	c, err := New("jsa", secAggSpec(len(names)))
	if err != nil {
		t.Fatal(err)
	}
	g0 := c.State().Global
	drop := map[string]bool{"a3": true, "a8": true}
	ev, clients := runSecAggRound(t, c, t0, names, drop, mrand.New(mrand.NewPCG(1, 2)))
	if kinds(ev)[len(ev)-1] != EvRoundAggregated {
		t.Fatalf("round did not aggregate: %v %+v", kinds(ev), ev)
	}
	r := ev[len(ev)-1].Round
	if len(r.Reported) != 8 || strings.Join(r.SecAgg.Dropped, ",") != "a3,a8" {
		t.Fatalf("reported %v, dropped %v", r.Reported, r.SecAgg.Dropped)
	}
	// Plain FedAvg of the survivors' clipped deltas with the same weights.
	maxW := c.Spec().SecAgg.MaxWeight
	n := len(g0)
	num, den := make([]float64, n), 0.0
	wantExamples := 0.0
	for name, sc := range clients {
		if drop[name] {
			continue
		}
		w := math.Min(float64(sc.examples)/maxW, 1)
		den += w
		wantExamples += w * maxW
		for i, d := range sc.delta {
			num[i] += math.Max(-1, math.Min(1, w*float64(d)))
		}
	}
	got := ev[len(ev)-1].Global
	var errSq, normSq float64
	for i := range n {
		want := num[i] / den
		diff := (got[i] - g0[i]) - want
		errSq += diff * diff
		normSq += want * want
	}
	rel := math.Sqrt(errSq / normSq)
	t.Logf("relative error of the unmasked mean: %.2e (dropped after shares: 2 of 10)", rel)
	if rel > 1e-4 {
		t.Fatalf("relative error %.2e > 1e-4", rel)
	}
	if math.Abs(float64(r.Examples)-wantExamples) > 1 {
		t.Fatalf("examples %d, want about %.0f", r.Examples, wantExamples)
	}
	// The next round runs with the new model.
	ev, _ = runSecAggRound(t, c, t0.Add(time.Hour), names, nil, mrand.New(mrand.NewPCG(3, 4)))
	if kinds(ev)[len(ev)-1] != EvRoundAggregated || c.State().Done != 2 {
		t.Fatalf("second round: %v, done %d", kinds(ev), c.State().Done)
	}
}

// TestSecAggRefusals: stage messages that do not fit are refused with a
// reason and the round goes on.
func TestSecAggRefusals(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e"}
	c, err := New("jsa", secAggSpec(len(names)))
	if err != nil {
		t.Fatal(err)
	}
	c.Tick(t0, names)
	r := c.State().Current
	sa := &saClient{c: secagg.NewClient("a", rand.Reader), delta: make([]float32, c.Spec().Arch.NumParams()), examples: 10}
	task, _ := c.SecAggTask("a")
	good := sa.answer(t, task)
	for _, tc := range []struct {
		s    Submission
		want string
	}{
		{Submission{Agent: "a", Round: r.Round, Attempt: r.Attempt, Delta: make([]float32, c.Spec().Arch.NumParams()), Examples: 3}, RefusedInvalid},
		{Submission{Agent: "a", Round: r.Round, Attempt: r.Attempt, SecAgg: []byte("EFSA\x01\x06garbage")}, RefusedInvalid},
		{Submission{Agent: "zz", Round: r.Round, Attempt: r.Attempt, SecAgg: good}, RefusedNotSelected},
		{Submission{Agent: "b", Round: r.Round, Attempt: r.Attempt, SecAgg: good}, RefusedInvalid}, // a's keys, sent as b
		{Submission{Agent: "a", Round: r.Round + 1, Attempt: r.Attempt, SecAgg: good}, RefusedClosed},
	} {
		ev := c.Offer(t0, tc.s)
		if ev[0].Kind != EvUpdateRefused || !strings.HasPrefix(ev[0].Reason, tc.want) {
			t.Fatalf("%+v: %v %q, want %s", tc.s.Agent, kinds(ev), ev[0].Reason, tc.want)
		}
	}
	if ev := c.Offer(t0, Submission{Agent: "a", Round: r.Round, Attempt: r.Attempt, SecAgg: good}); ev[0].Kind != EvUpdateAccepted {
		t.Fatalf("good answer: %s", ev[0].Reason)
	}
	if ev := c.Offer(t0, Submission{Agent: "a", Round: r.Round, Attempt: r.Attempt, SecAgg: good}); !strings.HasPrefix(ev[0].Reason, RefusedReplayed) {
		t.Fatalf("replay: %q", ev[0].Reason)
	}
	// The setup stage closes at its timeout with the one answer: too few
	// clients for the threshold; the round fails and is retried.
	dl := c.State().Current.SecAgg.StageDeadline
	if ev := c.Offer(dl, Submission{Agent: "b", Round: r.Round, Attempt: r.Attempt, SecAgg: good}); !strings.HasPrefix(ev[0].Reason, RefusedLate) {
		t.Fatalf("late: %q", ev[0].Reason)
	}
	ev := c.Tick(dl, names)
	if len(ev) != 1 || ev[0].Kind != EvRoundFailed || !ev[0].Retry || !strings.Contains(ev[0].Reason, "secure aggregation, stage setup") {
		t.Fatalf("setup timeout: %v %+v", kinds(ev), ev)
	}
	if got := c.State().Retries; got != 1 {
		t.Fatalf("retries %d", got)
	}
}

// TestSecAggRestoreFailsTheRound: a coordinator restored from a state
// saved mid-round fails that round (its key material was in memory) and
// runs it again.
func TestSecAggRestoreFailsTheRound(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e"}
	spec := secAggSpec(len(names))
	c, err := New("jsa", spec)
	if err != nil {
		t.Fatal(err)
	}
	c.Tick(t0, names)
	b, _ := json.Marshal(c.State())
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if st.Current == nil || st.Current.SecAgg == nil || st.Current.SecAgg.Stage != StageSetup {
		t.Fatalf("stored state lacks the round's stage: %+v", st.Current)
	}
	r, err := Restore(c.Spec(), st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.SecAggTask("a"); ok {
		t.Fatal("a restored coordinator hands out a stage task")
	}
	ev := r.Tick(t0.Add(time.Second), names)
	if len(ev) != 1 || ev[0].Kind != EvRoundFailed || ev[0].Reason != ReasonSecAggRestart || !ev[0].Retry {
		t.Fatalf("restored: %v %+v", kinds(ev), ev)
	}
	ev = r.Tick(t0.Add(2*time.Second), names)
	if len(ev) != 1 || ev[0].Kind != EvRoundOpened || ev[0].Round.Attempt != 1 {
		t.Fatalf("re-run: %v", kinds(ev))
	}
}

// TestSecAggSpecErrors: strategies that need every update, central DP.
func TestSecAggSpecErrors(t *testing.T) {
	for _, tc := range []struct {
		mod  func(*Spec)
		want string
	}{
		{func(s *Spec) { s.Strategy = strategy.Config{Name: "fedmedian"} }, "needs a strategy that averages"},
		{func(s *Spec) { s.DP = &DP{Mode: DPCentral, NoiseMultiplier: 1, Clip: 1} }, "use local DP"},
		{func(s *Spec) { s.SecAgg.ReconstructionThreshold = 9 }, "secagg"},
		{func(s *Spec) { s.SecAgg.StageTimeout = fedlearn.Duration(time.Hour) }, "stage_timeout"},
		{func(s *Spec) { s.SecAgg.MaxWeight = 0.5 }, "max_weight"},
	} {
		sp := secAggSpec(5)
		tc.mod(&sp)
		if _, err := New("j", sp); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want %q, got %v", tc.want, err)
		}
	}
	sp := secAggSpec(5)
	sp.DP = &DP{Mode: DPLocal, NoiseMultiplier: 1, Clip: 1}
	if _, err := New("j", sp); err != nil {
		t.Errorf("secagg with local DP: %v", err)
	}
}

func TestParseSecAgg(t *testing.T) {
	a, err := ParseSecAgg("num_shares=0.5,threshold=3,clipping_range=1,quantization_range=1024,modulus_range=65536,max_weight=50,stage_timeout=5s")
	if err != nil {
		t.Fatal(err)
	}
	want := SecAgg{NumShares: 0.5, ReconstructionThreshold: 3, ClippingRange: 1, QuantizationRange: 1024, ModulusRange: 65536, MaxWeight: 50, StageTimeout: fedlearn.Duration(5 * time.Second)}
	if *a != want {
		t.Fatalf("%+v", *a)
	}
	for _, bad := range []string{"", "num_shares=3", "num_shares=3,threshold=x", "num_shares=3,threshold=2,foo=1", "num_shares=3,threshold=2,threshold=2",
		"num_shares=NaN,threshold=2", "num_shares=3,threshold=2,quantization_range=-1", "num_shares=3,threshold=2,stage_timeout=5"} {
		if _, err := ParseSecAgg(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
