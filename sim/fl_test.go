package sim

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn/coord"
	"github.com/edgefleet/edgefleet/fedlearn/datasets"
	"github.com/edgefleet/edgefleet/internal/testutil"
)

// flDataSets is the shared data directory; the test skips, saying so, when
// the data set it needs is absent.
func flDataSets(t *testing.T, file string) string {
	d := testutil.DataDir(t)
	if _, err := os.Stat(filepath.Join(d, file)); err != nil {
		t.Skipf("SKIP: data set not found (set EDGEFLEET_DATA): %v", err)
	}
	return d
}

// TestRunFLOccupancy is the federated simulation in small: four agents,
// each holding a contiguous slice of the occupancy training file sent by
// its device over MQTT, run four rounds of FedAvg LR; one agent is killed
// mid-round 2 and the control plane restarted mid-round 3. The job must
// finish with every round aggregated from every agent's update counted
// once, the global accuracy evaluated by the control plane must equal the
// sim's own evaluation of the registry's model and rise past 0.95 on
// datatest and datatest2.
func TestRunFLOccupancy(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a fleet and trains: skipped with -short")
	}
	sets := flDataSets(t, datasets.OccupancyTrainFile)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const agents, rounds = 4, 4
	rep, err := RunFL(ctx, FLOptions{
		Dataset: datasets.Occupancy, Agents: agents, Rounds: rounds, Seed: 1,
		KillDuringRound: true, RestartControlPlaneDuringRound: true,
		RoundTimeout: 2 * time.Minute,
		Reference:    map[string]float64{"datatest": 0.979, "datatest2": 0.992},
		DataSets:     sets, DataDir: t.TempDir(), Timeout: 2 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Rounds {
		t.Logf("round %d/%d %s: accuracy %v, %d/%d participants, %d failures, refused %v, %d examples, up %d B, down %d B, %.1f s",
			r.Round, r.Attempt, r.Phase, r.Accuracy, r.Participants, r.Selected, r.Failures, r.Refused, r.Examples, r.BytesUp, r.BytesDown, r.Seconds)
	}
	t.Logf("updates %+v; evaluation %+v; faults killed %+v restart %+v; job %.1f s", rep.Updates, rep.EvaluationCheck, rep.Faults.Killed, rep.Faults.ControlPlaneRestart, rep.JobSeconds)
	// Round 0 is the statistics round.
	if rep.Status != coord.JobDone || len(rep.Rounds) != rounds+1 || rep.Rounds[0].Kind != "stats" {
		t.Fatalf("job %s %s (%s) after %d round attempts, want done after the statistics round and %d", rep.Job, rep.Status, rep.Reason, len(rep.Rounds), rounds)
	}
	if d := rep.EvaluationCheck.SchemaMaxRelDiff; !(d < 1e-9) {
		t.Errorf("the federated normalisation differs from the central fit by %g (relative)", d)
	}
	for _, r := range rep.Rounds {
		if r.Phase != coord.RoundAggregated || r.Participants != agents || r.Examples != rep.Examples {
			t.Errorf("round %d: %s, %d participants, %d examples; want aggregated from %d agents' %d examples", r.Round, r.Phase, r.Participants, r.Examples, agents, rep.Examples)
		}
	}
	if k := rep.Faults.Killed; k == nil || k.Round < 1 || !k.Reported {
		t.Errorf("killed agent: %+v, want one killed mid-round whose update counted after its restart", k)
	}
	if rep.Faults.ControlPlaneRestart == nil {
		t.Error("the control plane was not restarted mid-round")
	}
	if u := rep.Updates; !u.CountedOnce || u.Accepted != agents*(rounds+1) {
		t.Errorf("updates %+v: want %d accepted, each counted once", u, agents*(rounds+1))
	}
	if !rep.EvaluationCheck.Match {
		t.Errorf("the control plane's evaluation %v differs from the sim's %v", rep.EvaluationCheck.ControlPlane, rep.EvaluationCheck.Sim)
	}
	// datatest2 separates the rounds: about 0.86 after one, 0.97 after four.
	first, last := rep.Rounds[1].Accuracy["datatest2"], rep.FinalAccuracy["datatest2"]
	if !(last >= 0.95) || !(last >= first+0.05) {
		t.Errorf("datatest2 accuracy %.4f after round 1, %.4f at the end: want rising by 0.05 or more to at least 0.95", first, last)
	}
	if acc := rep.FinalAccuracy["datatest"]; !(acc >= 0.95) {
		t.Errorf("datatest accuracy %.4f at the end, want at least 0.95", acc)
	}
}

func TestFLShares(t *testing.T) {
	sets := flDataSets(t, datasets.WISDMFile)
	p, err := datasets.Load(sets, datasets.WISDM, 0)
	if err != nil {
		t.Fatal(err)
	}
	users := len(p.RawTrain.ByUser())
	for _, n := range []int{users, 5} {
		shares, err := flShares(p, n)
		if err != nil {
			t.Fatal(err)
		}
		ex, tests, devs := 0, 0, 0
		seen := map[int]bool{}
		for _, s := range shares {
			ex += s.examples
			tests += s.tests
			devs += len(s.devices)
			for _, d := range s.devices {
				if seen[d.user] {
					t.Errorf("%d agents: user %d dealt twice", n, d.user)
				}
				seen[d.user] = true
			}
		}
		if ex != p.RawTrain.Len() || tests != p.Tests[0].Len() || devs != users {
			t.Errorf("%d agents: %d train and %d test examples over %d devices; want %d, %d, %d", n, ex, tests, devs, p.RawTrain.Len(), p.Tests[0].Len(), users)
		}
	}
	if _, err := flShares(p, users+1); err == nil {
		t.Errorf("%d agents for %d users: no error", users+1, users)
	}
}

func TestParseStrategy(t *testing.T) {
	c, err := ParseStrategy("multikrum:num_malicious_clients=4,num_clients_to_keep=32")
	if err != nil || c.Name != "multikrum" || *c.NumMalicious != 4 || *c.NumToKeep != 32 {
		t.Errorf("multikrum: %+v %v", c, err)
	}
	if c, err := ParseStrategy("fedtrimmedavg:beta=0.2"); err != nil || *c.Beta != 0.2 {
		t.Errorf("fedtrimmedavg: %+v %v", c, err)
	}
	for _, bad := range []string{"", "nosuch", "fedavg:beta=0.2", "fedtrimmedavg:beta", "fedtrimmedavg:beta=x", "multikrum:num_clients_to_keep=2.5", "krum:what=1"} {
		if _, err := ParseStrategy(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestRunFLFaultHooks: dropouts and a Byzantine agent reach the agents
// through agent.Deps.FLFaults. With one agent of four sending −10·Δ, FedAvg
// moves the model away from the others' updates and datatest2 accuracy
// collapses; the dropped tasks are exactly the selected clients that did
// not report.
func TestRunFLFaultHooks(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a fleet and trains: skipped with -short")
	}
	sets := flDataSets(t, datasets.OccupancyTrainFile)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := RunFL(ctx, FLOptions{
		Dataset: datasets.Occupancy, Agents: 4, Rounds: 4, Seed: 3,
		Dropout: 0.3, Byzantine: 1, ByzantineScale: -10,
		RoundTimeout: 5 * time.Second,
		Reference:    map[string]float64{"datatest": 0.979, "datatest2": 0.992},
		DataSets:     sets, DataDir: t.TempDir(), Timeout: 2 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	selected, reported := 0, 0
	for _, r := range rep.Rounds {
		t.Logf("round %d/%d %s: accuracy %v, %d/%d participants, %d failures %s", r.Round, r.Attempt, r.Phase, r.Accuracy, r.Participants, r.Selected, r.Failures, r.Reason)
		selected += r.Selected
		reported += r.Participants
	}
	t.Logf("faults %+v, updates %+v", rep.Faults, rep.Updates)
	if rep.Faults.Dropped == 0 || selected-reported != rep.Faults.Dropped {
		t.Errorf("%d tasks dropped, %d selected clients did not report: want the same, more than 0", rep.Faults.Dropped, selected-reported)
	}
	if len(rep.Faults.Byzantine) != 1 {
		t.Errorf("Byzantine agents %v, want one", rep.Faults.Byzantine)
	}
	if acc := rep.FinalAccuracy["datatest2"]; !(acc < 0.8) {
		t.Errorf("datatest2 accuracy %.4f with a Byzantine agent under FedAvg: want a collapse below 0.8", acc)
	}
}

// TestRunFLDP: --dp reaches the job: the control plane's accountant
// reports after each round the ε of the Gaussian mechanism with q = 1,
// computed here independently (Rényi DP at integer orders 2..512 of
// T Gaussian rounds, α/(2z²) each).
func TestRunFLDP(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a fleet and trains: skipped with -short")
	}
	sets := flDataSets(t, datasets.OccupancyTrainFile)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const z = 3.0
	rep, err := RunFL(ctx, FLOptions{
		Dataset: datasets.Occupancy, Agents: 3, Rounds: 3, Seed: 1,
		DP:        &coord.DP{Mode: coord.DPCentral, NoiseMultiplier: z, Clip: 1},
		Reference: map[string]float64{"datatest": 0.979, "datatest2": 0.992},
		DataSets:  sets, DataDir: t.TempDir(), Timeout: 2 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	independent := func(rounds int) float64 {
		best := math.Inf(1)
		for a := 2; a <= 512; a++ {
			best = min(best, float64(rounds)*float64(a)/(2*z*z)+math.Log(1/1e-5)/float64(a-1))
		}
		return best
	}
	n := 0
	for _, r := range rep.Rounds {
		if r.Kind == "stats" || r.Phase != coord.RoundAggregated {
			continue
		}
		n++
		if want := independent(n); math.Abs(r.Epsilon-want) > 0.01*want {
			t.Errorf("round %d: ε %.6g, independently %.6g", r.Round, r.Epsilon, want)
		}
	}
	if n != 3 || rep.Privacy == nil || rep.Privacy.Mode != coord.DPCentral || math.Abs(rep.Privacy.Epsilon-independent(3)) > 0.01*independent(3) {
		t.Fatalf("%d rounds, privacy %+v, want ε %.6g", n, rep.Privacy, independent(3))
	}
	t.Logf("ε after 3 rounds %.4f; final accuracy %v", rep.Privacy.Epsilon, rep.FinalAccuracy)
}

// TestRunFLSecAgg: --secagg runs every training round in SecAgg+'s four
// stages; agents that drop after sending their shares (the dropout
// fault strikes at training, in the collect stage) have their masks
// removed, and the job's accuracy is plain FedAvg's with the same
// faults within half a point.
func TestRunFLSecAgg(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a fleet and trains: skipped with -short")
	}
	sets := flDataSets(t, datasets.OccupancyTrainFile)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	run := func(sa *coord.SecAgg) FLReport {
		t.Helper()
		rep, err := RunFL(ctx, FLOptions{
			Dataset: datasets.Occupancy, Agents: 5, Rounds: 3, Seed: 1, Dropout: 0.2,
			RoundTimeout: 5 * time.Second, SecAgg: sa,
			Reference: map[string]float64{"datatest": 0.979, "datatest2": 0.992},
			DataSets:  sets, DataDir: t.TempDir(), Timeout: 2 * time.Minute,
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rep.Rounds {
			t.Logf("secagg=%v round %d/%d %s: accuracy %v, %d/%d participants, up %d B, down %d B, %.1f s, secagg %+v, reason %q",
				sa != nil, r.Round, r.Attempt, r.Phase, r.Accuracy, r.Participants, r.Selected, r.BytesUp, r.BytesDown, r.Seconds, r.SecAgg, r.Reason)
		}
		if rep.Status != coord.JobDone {
			t.Fatalf("job %s (%s)", rep.Status, rep.Reason)
		}
		return rep
	}
	sa, err := coord.ParseSecAgg("num_shares=5,reconstruction_threshold=3")
	if err != nil {
		t.Fatal(err)
	}
	secure := run(sa)
	plain := run(nil)
	dropped := 0
	for _, r := range secure.Rounds {
		if r.Kind == "stats" {
			if r.SecAgg != nil {
				t.Errorf("statistics round %d/%d under secure aggregation", r.Round, r.Attempt)
			}
			continue
		}
		if r.SecAgg == nil {
			t.Fatalf("training round %d/%d without secure aggregation", r.Round, r.Attempt)
		}
		if r.Phase == coord.RoundAggregated {
			if r.SecAgg.Vectors != r.Participants || r.SecAgg.Unmasked != r.Participants {
				t.Errorf("round %d: %d vectors, %d unmasked, %d participants", r.Round, r.SecAgg.Vectors, r.SecAgg.Unmasked, r.Participants)
			}
			dropped += len(r.SecAgg.Dropped)
		}
	}
	if !secure.Updates.CountedOnce {
		t.Errorf("updates not counted once: %+v", secure.Updates)
	}
	if dropped == 0 || secure.Faults.Dropped == 0 {
		t.Fatalf("no client dropped after its shares in an aggregated round (%d dropouts injected): the recovery went untested", secure.Faults.Dropped)
	}
	for part, acc := range plain.FinalAccuracy {
		if d := math.Abs(secure.FinalAccuracy[part] - acc); d > 0.005 {
			t.Errorf("%s: secure %.4f, plain %.4f: %.2f points apart", part, secure.FinalAccuracy[part], acc, 100*d)
		}
	}
	t.Logf("final accuracy secure %v plain %v; %d clients dropped after their shares; bytes up %d vs %d, down %d vs %d; job %.1f s vs %.1f s",
		secure.FinalAccuracy, plain.FinalAccuracy, dropped, secure.BytesUp, plain.BytesUp, secure.BytesDown, plain.BytesDown, secure.JobSeconds, plain.JobSeconds)
}
