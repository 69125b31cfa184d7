package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/coord"
	"github.com/edgefleet/edgefleet/fedlearn/strategy"
)

// TestFLJobsCommands: create (from a file and from standard input), list,
// get, rounds, cancel and watch against a real control plane with no
// agent (the job waits for its clients); a bad spec is refused naming the
// field; the writes are audited.
func TestFLJobsCommands(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	a, _ := fedlearn.ParseArch("lr", 2, 2)
	spec := coord.Spec{
		Model: "occ-fl", Arch: a, Labels: []string{"empty", "occupied"},
		Schema: fedlearn.Schema{Features: []fedlearn.Feature{
			{Name: "t", Metric: "temperature", Agg: fedlearn.AggLatest, Std: 1},
			{Name: "c", Metric: "co2", Agg: fedlearn.AggLatest, Std: 1},
		}, Label: fedlearn.Label{Metric: "occupancy"}},
		Strategy: strategy.Config{Name: "fedavg"}, Rounds: 3, MinAvailable: 2, MinFit: 2,
	}
	b, _ := json.Marshal(spec)
	path := filepath.Join(t.TempDir(), "job.json")
	os.WriteFile(path, b, 0o644)

	if out := e.must("fl", "jobs", "list"); !strings.Contains(out, "No federated jobs.") {
		t.Fatalf("empty list: %s", out)
	}
	j := decodeJSON[cpapi.FLJob](t, e.must("fl", "jobs", "create", "--file", path, "--rounds", "4", "--selector", "site=a", "--json"))
	if sp := flSpec(j); j.Status != coord.JobRunning || sp.Rounds != 4 || sp.Selector != "site=a" || sp.Strategy.Name != "fedavg" {
		t.Fatalf("created %+v", j)
	}
	if out := e.must("fl", "jobs", "list"); !strings.Contains(out, j.ID) || !strings.Contains(out, "0/4") {
		t.Fatalf("list: %s", out)
	}
	if out := e.must("fl", "jobs", "get", j.ID); !strings.Contains(out, "Status:    running") || !strings.Contains(out, "site=a") {
		t.Fatalf("get: %s", out)
	}
	if out := e.must("fl", "rounds", j.ID); !strings.Contains(out, "No rounds yet.") {
		t.Fatalf("rounds: %s", out)
	}
	// A spec with a bad field is refused naming it.
	bad := strings.Replace(string(b), `"name":"fedavg"`, `"name":"fedfoo"`, 1)
	r := e.runWith(t.Context(), strings.NewReader(bad), "fl", "jobs", "create", "--file", "-")
	if r.code == 0 || !strings.Contains(r.stderr, "strategy") || !strings.Contains(r.stderr, "fedfoo") {
		t.Fatalf("bad spec: exit %d, %s", r.code, r.stderr)
	}
	if out := e.must("fl", "jobs", "cancel", j.ID, "--reason", "test"); !strings.Contains(out, "canceled") {
		t.Fatalf("cancel: %s", out)
	}
	if r := e.run("fl", "jobs", "cancel", j.ID); r.code == 0 || !strings.Contains(r.stderr, "canceled already") {
		t.Fatalf("second cancel: exit %d, %s", r.code, r.stderr)
	}
	r = e.run("fl", "jobs", "watch", j.ID, "--interval", "10ms")
	if r.code == 0 || !strings.Contains(r.stdout, "canceled after 0 rounds") {
		t.Fatalf("watch of a canceled job: exit %d, %s %s", r.code, r.stdout, r.stderr)
	}
	got := decodeJSON[cpapi.FLJob](t, e.must("fl", "jobs", "get", j.ID, "--json"))
	if got.Status != coord.JobCanceled || !strings.Contains(got.Reason, "test") || got.Finished == nil {
		t.Fatalf("after cancel: %+v", got)
	}
	recs, err := e.admin.ListAudit(t.Context(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, rec := range recs.Records {
		if strings.HasPrefix(rec.Action, "fl.") {
			actions = append(actions, rec.Action+" "+rec.Target+" "+strings.SplitN(rec.Result, ":", 2)[0])
		}
	}
	// The refused create and cancel are recorded too.
	if len(actions) != 4 || actions[0] != "fl.job.create "+j.ID+" ok" || !strings.HasPrefix(actions[1], "fl.job.create ") ||
		!strings.HasSuffix(actions[1], " error 400") || actions[2] != "fl.job.cancel "+j.ID+" ok" || actions[3] != "fl.job.cancel "+j.ID+" error 409" {
		t.Errorf("audit %q", actions)
	}
}

// TestFLJobsCreateDP: --dp sets the job's differential privacy, shown by
// get and in the job's JSON; a bad --dp is a usage error naming what is
// wrong; a schema without normalisation gets a statistics round.
func TestFLJobsCreateDP(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	a, _ := fedlearn.ParseArch("lr", 1, 2)
	spec := coord.Spec{
		Model: "occ-dp", Arch: a, Labels: []string{"empty", "occupied"},
		Schema:   fedlearn.Schema{Features: []fedlearn.Feature{{Name: "c", Metric: "co2", Agg: fedlearn.AggLatest}}, Label: fedlearn.Label{Metric: "occupancy"}},
		Strategy: strategy.Config{Name: "fedavg"}, Rounds: 3, MinAvailable: 2, MinFit: 2,
	}
	b, _ := json.Marshal(spec)
	path := filepath.Join(t.TempDir(), "job.json")
	os.WriteFile(path, b, 0o644)
	j := decodeJSON[cpapi.FLJob](t, e.must("fl", "jobs", "create", "--file", path, "--dp", "central:z=1.0,C=0.5,budget=8", "--json"))
	sp := flSpec(j)
	if sp.DP == nil || *sp.DP != (coord.DP{Mode: "central", NoiseMultiplier: 1, Clip: 0.5, Delta: 1e-5, Budget: 8}) ||
		j.Privacy == nil || j.Privacy.Mode != "central" || j.Privacy.Budget != 8 || j.Privacy.Epsilon != 0 {
		t.Fatalf("created %+v %+v", sp.DP, j.Privacy)
	}
	if sp.FederatedStats == nil || !*sp.FederatedStats {
		t.Fatalf("federated_stats %v for a schema without normalisation", sp.FederatedStats)
	}
	out := e.must("fl", "jobs", "get", j.ID)
	if !strings.Contains(out, "Privacy:   central:z=1,C=0.5,delta=1e-05,budget=8") || !strings.Contains(out, "statistics round (round 0) pending") {
		t.Fatalf("get: %s", out)
	}
	if out := e.must("fl", "jobs", "list"); !strings.Contains(out, "EPSILON") || !strings.Contains(out, "0 (central)") {
		t.Fatalf("list: %s", out)
	}
	for _, bad := range []string{"global:z=1,C=1", "central:z=1", "central:z=1,C=1,eps=3"} {
		r := e.run("fl", "jobs", "create", "--file", path, "--dp", bad)
		if r.code == 0 || !strings.Contains(r.stderr, "--dp") {
			t.Errorf("--dp %s: exit %d, %s", bad, r.code, r.stderr)
		}
	}
	// Ranges are the control plane's: a clipping norm of 0 is refused there.
	if r := e.run("fl", "jobs", "create", "--file", path, "--dp", "local:z=1,C=0"); r.code == 0 || !strings.Contains(r.stderr, "dp.clip") {
		t.Errorf("--dp with C=0: exit %d, %s", r.code, r.stderr)
	}
}

// TestFLJobsCreateSecAgg: --secagg sets the job's secure aggregation,
// resolved by the control plane; bad parameters are named.
func TestFLJobsCreateSecAgg(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	a, _ := fedlearn.ParseArch("lr", 1, 2)
	spec := coord.Spec{
		Model: "occ-sa", Arch: a, Labels: []string{"empty", "occupied"},
		Schema:   fedlearn.Schema{Features: []fedlearn.Feature{{Name: "c", Metric: "co2", Agg: fedlearn.AggLatest, Std: 1}}, Label: fedlearn.Label{Metric: "occupancy"}},
		Strategy: strategy.Config{Name: "fedavg"}, Rounds: 3, MinAvailable: 3, MinFit: 3,
	}
	b, _ := json.Marshal(spec)
	path := filepath.Join(t.TempDir(), "job.json")
	os.WriteFile(path, b, 0o644)
	j := decodeJSON[cpapi.FLJob](t, e.must("fl", "jobs", "create", "--file", path, "--secagg", "num_shares=3,reconstruction_threshold=2", "--json"))
	sp := flSpec(j)
	if sp.SecAgg == nil || sp.SecAgg.NumShares != 3 || sp.SecAgg.ReconstructionThreshold != 2 || sp.SecAgg.MaxWeight != coord.DefaultSecAggMaxWeight || sp.SecAgg.StageTimeout <= 0 {
		t.Fatalf("created %+v", sp.SecAgg)
	}
	if out := e.must("fl", "jobs", "get", j.ID); !strings.Contains(out, "SecAgg:    SecAgg+ num_shares=3, reconstruction_threshold=2, max_weight=1000") {
		t.Fatalf("get: %s", out)
	}
	if r := e.run("fl", "jobs", "create", "--file", path, "--secagg", "num_shares=3"); r.code == 0 || !strings.Contains(r.stderr, "--secagg") {
		t.Errorf("--secagg without a threshold: exit %d, %s", r.code, r.stderr)
	}
	// Ranges are the control plane's: a threshold above the shares is refused there.
	if r := e.run("fl", "jobs", "create", "--file", path, "--secagg", "num_shares=3,reconstruction_threshold=5"); r.code == 0 || !strings.Contains(r.stderr, "secagg") {
		t.Errorf("threshold 5 of 3: exit %d, %s", r.code, r.stderr)
	}
	// Robust strategies need every update: refused with the reason.
	spec.Strategy = strategy.Config{Name: "fedmedian"}
	b, _ = json.Marshal(spec)
	os.WriteFile(path, b, 0o644)
	if r := e.run("fl", "jobs", "create", "--file", path, "--secagg", "num_shares=3,reconstruction_threshold=2"); r.code == 0 || !strings.Contains(r.stderr, "averages") {
		t.Errorf("fedmedian under secagg: exit %d, %s", r.code, r.stderr)
	}
}
