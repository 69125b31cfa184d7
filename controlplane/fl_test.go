package controlplane

import (
	"bytes"
	"math"
	"net/http"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/coord"
	"github.com/edgefleet/edgefleet/fedlearn/strategy"
)

// sendFLUpdate seals and signs a delta as an agent does and posts it.
func sendFLUpdate(t *testing.T, a *pqAgent, task cpapi.FLTask, delta []float32) error {
	t.Helper()
	return sendFLSealed(t, a, task, cpapi.FLUpdate{Examples: 10, Delta: delta})
}

// TestFLUpdateRefusals: through the real handlers with a manual clock,
// updates from an agent not selected, of the wrong shape, with NaN, a
// replay, one for a closed round and a late one are refused with their
// reason and counted; the round goes on and aggregates the good ones.
func TestFLUpdateRefusals(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true; c.FL.Tick = time.Hour })
	ctx := e.ctx()
	var agents []*pqAgent
	for i := range 3 {
		a := e.enrollPQ("fl-"+string(rune('a'+i)), map[string]string{"fl": "yes"}, byte(70+i))
		a.fetch(t, ctx)
		agents = append(agents, a)
	}
	arch := fedlearn.Arch{Kind: fedlearn.KindLR, Inputs: 1, Classes: 2}
	job, err := e.admin.CreateFLJob(ctx, coord.Spec{Model: "fl-test", Arch: arch, Labels: []string{"a", "b"},
		Schema:   fedlearn.Schema{Features: []fedlearn.Feature{{Name: "t", Metric: "t", Agg: fedlearn.AggLatest, Std: 1}}, Label: fedlearn.Label{Metric: "y"}},
		Strategy: strategy.Config{Name: "fedavg"}, Rounds: 2, MinAvailable: 3, MinFit: 2, Fraction: 0.5, MinCompletion: 1,
		RoundTimeout: fedlearn.Duration(time.Minute), Selector: "fl=yes", Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	e.srv.FLTick()
	var sel []*pqAgent
	var other *pqAgent
	var task cpapi.FLTask
	for _, a := range agents {
		r, err := a.client.WatchFLTask(ctx, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if r.Task == nil {
			other = a
			continue
		}
		if err := r.Task.Validate(); err != nil {
			t.Fatal(err)
		}
		sel, task = append(sel, a), *r.Task
	}
	if len(sel) != 2 || other == nil {
		t.Fatalf("%d agents have a task, want 2 of 3", len(sel))
	}
	good := []float32{0.1, 0.2, 0.3, 0.4}
	wantStatus(t, sendFLUpdate(t, other, task, good), http.StatusConflict)
	wantStatus(t, sendFLUpdate(t, sel[0], task, good[:3]), http.StatusBadRequest)
	wantStatus(t, sendFLUpdate(t, sel[0], task, []float32{0.1, float32(math.NaN()), 0, 0}), http.StatusBadRequest)
	wantStatus(t, sendFLUpdate(t, sel[0], task, []float32{0.1, float32(math.Inf(-1)), 0, 0}), http.StatusBadRequest)
	if err := sendFLUpdate(t, sel[0], task, good); err != nil {
		t.Fatal(err)
	}
	ae := wantStatus(t, sendFLUpdate(t, sel[0], task, good), http.StatusConflict)
	if want := "fl update refused: replayed: "; len(ae.Message) < len(want) || ae.Message[:len(want)] != want {
		t.Fatalf("replay answered %q", ae.Message)
	}
	if r, _ := sel[0].client.WatchFLTask(ctx, "", 0); r.Task != nil {
		t.Fatalf("agent that reported still has a task: %+v", r.Task.Key())
	}
	if err := sendFLUpdate(t, sel[1], task, good); err != nil {
		t.Fatal(err)
	}
	ae = wantStatus(t, sendFLUpdate(t, sel[1], task, good), http.StatusConflict)
	rs, err := e.admin.FLRounds(ctx, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	r1 := rs.Rounds[0]
	if r1.Phase != coord.RoundAggregated || r1.Participants != 2 || r1.Refused[coord.RefusedNotSelected] != 1 ||
		r1.Refused[coord.RefusedInvalid] != 3 || r1.Refused[coord.RefusedReplayed] != 1 {
		t.Fatalf("round 1 %+v", r1)
	}
	// Round 2: an update after the timeout is late; the round fails at
	// the next tick (min_completion 1) and is tried again.
	e.srv.FLTick()
	j, _ := e.admin.GetFLJob(ctx, job.ID)
	if j.Current == nil || j.Current.Round != 2 {
		t.Fatalf("round 2 not open: %+v", j.Current)
	}
	var late *pqAgent
	for _, a := range agents {
		if r, _ := a.client.WatchFLTask(ctx, "", 0); r.Task != nil {
			late, task = a, *r.Task
			break
		}
	}
	e.clock.Advance(2 * time.Minute)
	ae = wantStatus(t, sendFLUpdate(t, late, task, good), http.StatusConflict)
	e.srv.FLTick()
	rs, _ = e.admin.FLRounds(ctx, job.ID)
	r2 := rs.Rounds[len(rs.Rounds)-1]
	if r2.Round != 2 || r2.Phase != coord.RoundFailed || r2.Refused[coord.RefusedLate] != 1 {
		t.Fatalf("round 2 after its timeout: %+v (%s)", r2, ae.Message)
	}
	if j, _ := e.admin.GetFLJob(ctx, job.ID); j.Status != coord.JobRunning || j.Done != 1 {
		t.Fatalf("job after the failed round: %+v", j)
	}
}

// TestFLRestartWhileSealed: updates are stored sealed; after a restart
// with the key service sealed the job waits (its updates answered 503)
// and resumes its round, with the stored update, once unsealed.
func TestFLRestartWhileSealed(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.FL.Tick = time.Hour })
	e.unseal()
	ctx := e.ctx()
	var agents []*pqAgent
	for i := range 2 {
		a := e.enrollPQ("fls-"+string(rune('a'+i)), nil, byte(90+i))
		a.fetch(t, ctx)
		agents = append(agents, a)
	}
	arch := fedlearn.Arch{Kind: fedlearn.KindLR, Inputs: 1, Classes: 2}
	job, err := e.admin.CreateFLJob(ctx, coord.Spec{Model: "fl-sealed", Arch: arch, Labels: []string{"a", "b"},
		Schema:   fedlearn.Schema{Features: []fedlearn.Feature{{Name: "t", Metric: "t", Agg: fedlearn.AggLatest, Std: 1}}, Label: fedlearn.Label{Metric: "y"}},
		Strategy: strategy.Config{Name: "fedavg"}, Rounds: 1, MinAvailable: 2, MinFit: 2, RoundTimeout: fedlearn.Duration(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	e.srv.FLTick()
	r, err := agents[0].client.WatchFLTask(ctx, "", 0)
	if err != nil || r.Task == nil {
		t.Fatalf("task: %+v %v", r, err)
	}
	task := *r.Task
	if err := sendFLUpdate(t, agents[0], task, []float32{1, 2, 3, 4}); err != nil {
		t.Fatal(err)
	}
	// At rest the update is the envelope, not the encoded delta.
	stored, err := e.srv.store.FLUpdates(ctx, job.ID, 1, 0)
	if err != nil || len(stored) != 1 || bytes.Contains(stored[0].Envelope, []byte("EFLU1")) {
		t.Fatalf("stored %d updates (%v), or in clear", len(stored), err)
	}
	e.restart()
	reconnect(t, e, agents)
	wantStatus(t, sendFLUpdate(t, agents[1], task, []float32{3, 4, 5, 6}), http.StatusServiceUnavailable)
	e.unseal()
	e.srv.FLTick()
	j, err := e.admin.GetFLJob(ctx, job.ID)
	if err != nil || j.Current == nil || len(j.Current.Reported) != 1 {
		t.Fatalf("after the unseal: %+v %v", j.Current, err)
	}
	if err := sendFLUpdate(t, agents[1], task, []float32{3, 4, 5, 6}); err != nil {
		t.Fatal(err)
	}
	rs, err := e.admin.FLRounds(ctx, job.ID)
	if err != nil || len(rs.Rounds) != 1 || rs.Rounds[0].Participants != 2 || rs.Rounds[0].Phase != coord.RoundAggregated || rs.Job.Status != coord.JobDone {
		t.Fatalf("rounds %+v %v", rs, err)
	}
	g, err := e.srv.store.FLGlobal(ctx, job.ID, 1)
	if err != nil {
		t.Fatal(err)
	}
	init := fedlearn.InitWeights(arch, 0).Flatten(nil)
	for i := range g {
		if d := g[i] - init[i] - float64([]float32{2, 3, 4, 5}[i]); math.Abs(d) > 1e-12 {
			t.Fatalf("global[%d] = %v: not the mean of both updates", i, g[i])
		}
	}
}
