package controlplane

import (
	"crypto/rand"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/coord"
	"github.com/edgefleet/edgefleet/fedlearn/secagg"
)

// TestFLSecureAggregation: through the real handlers with a manual clock,
// three agents run a secure-aggregation round stage by stage: each stage's
// task carries its message and is due by the stage's deadline, only the
// collect stage carries the model, and the new global model is the plain
// mean of the deltas (equal weights here) within the quantisation error. A
// restart in the middle of the next round fails that round with the reason
// and runs it again.
func TestFLSecureAggregation(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true; c.FL.Tick = time.Hour })
	ctx := e.ctx()
	agents := flTestAgents(t, e, "sa", 3, 90)
	spec := flTestSpec("fl-secagg", 2)
	for i := range spec.Schema.Features {
		spec.Schema.Features[i].Std = 1 // no statistics round
	}
	spec.Rounds, spec.RoundTimeout = 2, fedlearn.Duration(2*time.Minute)
	spec.SecAgg = &coord.SecAgg{NumShares: 3, ReconstructionThreshold: 2, ClippingRange: 1, StageTimeout: fedlearn.Duration(20 * time.Second)}
	job, err := e.admin.CreateFLJob(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	e.srv.FLTick()
	clients := map[string]*secagg.Client{}
	deltas := map[string][]float32{}
	for i, a := range agents {
		clients[a.id] = secagg.NewClient(a.id, rand.Reader)
		deltas[a.id] = []float32{0.01 * float32(i+1), -0.02, 0.03, 0.004 * float32(i), 0.05, -0.006 * float32(i)}
	}
	var g0 []float64
	for _, stage := range []string{cpapi.FLSecAggSetup, cpapi.FLSecAggShareKeys, cpapi.FLSecAggCollect, cpapi.FLSecAggUnmask} {
		tasks := flTasks(t, agents)
		for i, task := range tasks {
			a := agents[i]
			sa := task.SecAgg
			if sa == nil || sa.Stage != stage {
				t.Fatalf("%s: task %+v, want stage %s", a.id, sa, stage)
			}
			j, _ := e.admin.GetFLJob(ctx, job.ID)
			if st := j.Current.SecAgg; st == nil || st.Stage != stage || !task.Deadline.Equal(st.StageDeadline) {
				t.Fatalf("stage %s: task due %s, the round's secure aggregation %+v", stage, task.Deadline, st)
			}
			if (task.Global != nil) != (stage == cpapi.FLSecAggCollect) {
				t.Fatalf("stage %s: task carries the model: %v", stage, task.Global != nil)
			}
			if stage == cpapi.FLSecAggCollect {
				g0 = task.Global
			}
			msg, err := clients[a.id].Respond(sa.Message, func() ([]float32, error) {
				return secagg.Weighted(deltas[a.id], 5000, sa.MaxWeight), nil // weight 1 each
			})
			if err != nil {
				t.Fatalf("stage %s, %s: %v", stage, a.id, err)
			}
			if err := sendFLSealed(t, a, task, cpapi.FLUpdate{SecAgg: msg}); err != nil {
				t.Fatalf("stage %s, %s: %v", stage, a.id, err)
			}
		}
	}
	rs, err := e.admin.FLRounds(ctx, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	r1 := rs.Rounds[0]
	if r1.Phase != coord.RoundAggregated || r1.Participants != 3 || r1.SecAgg == nil || r1.SecAgg.Unmasked != 3 {
		t.Fatalf("round 1 %+v %+v", r1, r1.SecAgg)
	}
	g1, err := e.srv.store.FLGlobal(ctx, job.ID, 1)
	if err != nil {
		t.Fatal(err)
	}
	for k := range g1 {
		want := g0[k] + float64(deltas[agents[0].id][k]+deltas[agents[1].id][k]+deltas[agents[2].id][k])/3
		if math.Abs(g1[k]-want) > 1e-5 {
			t.Fatalf("value %d: %v, want %v", k, g1[k], want)
		}
	}
	// Round 2 opens; the control plane restarts in its setup stage.
	e.srv.FLTick()
	flTasks(t, agents)
	e.restart()
	reconnect(t, e, agents)
	e.srv.FLTick()
	rs, _ = e.admin.FLRounds(ctx, job.ID)
	var failed bool
	for _, r := range rs.Rounds {
		if r.Round == 2 && r.Attempt == 0 && r.Phase == coord.RoundFailed && strings.Contains(r.Reason, "restarted during secure aggregation") {
			failed = true
		}
	}
	if !failed {
		t.Fatalf("round 2 after the restart: %+v", rs.Rounds)
	}
	e.srv.FLTick()
	if j, _ := e.admin.GetFLJob(ctx, job.ID); j.Current == nil || j.Current.Round != 2 || j.Current.Attempt != 1 || j.Current.SecAgg == nil {
		t.Fatalf("round 2 not run again: %+v", j.Current)
	}
}
