package controlplane

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/coord"
	"github.com/edgefleet/edgefleet/fedlearn/strategy"
)

// sendFLSealed seals and signs an encoded update as an agent does and
// posts it.
func sendFLSealed(t *testing.T, a *pqAgent, task cpapi.FLTask, u cpapi.FLUpdate) error {
	t.Helper()
	env, sig := sealFL(t, a, task, u)
	_, err := a.client.UploadFLUpdate(context.Background(), task, env, sig)
	return err
}

// sealFL seals and signs an update for task as an agent does.
func sealFL(t *testing.T, a *pqAgent, task cpapi.FLTask, u cpapi.FLUpdate) (env, sig []byte) {
	t.Helper()
	u.Job, u.Round, u.Attempt = task.Job, task.Round, task.Attempt
	pt := cpapi.EncodeFLUpdate(u)
	env, err := a.keys.Encrypt(context.Background(), cpapi.TelemetryKeyName, pt, cpapi.FLUpdateAAD(a.id, task.Job, task.Round, task.Attempt))
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(env)
	sig, err = a.cert.PrivateKey.(crypto.Signer).Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return env, sig
}

// reconnect gives the agents clients of the restarted server.
func reconnect(t *testing.T, e *keyEnv, agents []*pqAgent) {
	t.Helper()
	for _, a := range agents {
		c, err := cpapi.NewClient(cpapi.ClientConfig{URL: e.srv.URL(), CAPEM: []byte(a.resp.CABundle), Certificate: &a.cert, Timeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.CloseIdleConnections)
		a.client = c
	}
}

// flTestAgents enrolls n agents labelled fl=yes with their keyrings.
func flTestAgents(t *testing.T, e *keyEnv, prefix string, n int, seed byte) []*pqAgent {
	var agents []*pqAgent
	for i := range n {
		a := e.enrollPQ(fmt.Sprintf("%s-%d", prefix, i), map[string]string{"fl": "yes"}, seed+byte(i))
		a.fetch(t, e.ctx())
		agents = append(agents, a)
	}
	return agents
}

// flTasks asks every agent for its task; all must have one.
func flTasks(t *testing.T, agents []*pqAgent) []cpapi.FLTask {
	t.Helper()
	var out []cpapi.FLTask
	for _, a := range agents {
		r, err := a.client.WatchFLTask(context.Background(), "", 0)
		if err != nil || r.Task == nil {
			t.Fatalf("agent %s: task %+v %v", a.id, r.Task, err)
		}
		if err := r.Task.Validate(); err != nil {
			t.Fatal(err)
		}
		out = append(out, *r.Task)
	}
	return out
}

func flTestSpec(model string, features int) coord.Spec {
	sc := fedlearn.Schema{Label: fedlearn.Label{Metric: "y"}}
	for i := range features {
		sc.Features = append(sc.Features, fedlearn.Feature{Name: fmt.Sprintf("f%d", i), Metric: fmt.Sprintf("m%d", i), Agg: fedlearn.AggLatest})
	}
	return coord.Spec{Model: model, Arch: fedlearn.Arch{Kind: fedlearn.KindLR, Inputs: features, Classes: 2}, Labels: []string{"a", "b"},
		Schema: sc, Strategy: strategy.Config{Name: "fedavg"}, Rounds: 1, MinAvailable: 3, MinFit: 3,
		RoundTimeout: fedlearn.Duration(time.Hour), Selector: "fl=yes", Seed: 4}
}

// TestFLStatsRound: a job whose schema has no normalisation starts with
// round 0, in which three agents send their feature statistics sealed and
// signed (never in clear at rest); a control plane restart after two of
// them resumes the round (a replay is refused); the schema the round sets
// equals the centralised mean and std of the three agents' rows within
// 1e-9, every later task carries it, and so does the finished model.
func TestFLStatsRound(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true; c.FL.Tick = time.Hour })
	ctx := e.ctx()
	agents := flTestAgents(t, e, "fls", 3, 40)
	job, err := e.admin.CreateFLJob(ctx, flTestSpec("fl-stats", 2))
	if err != nil {
		t.Fatal(err)
	}
	e.srv.FLTick()
	tasks := flTasks(t, agents)
	if !tasks[0].Stats() || tasks[0].Round != 0 || tasks[0].Schema.Features[0].Std != 0 {
		t.Fatalf("first task: kind %q round %d", tasks[0].Kind, tasks[0].Round)
	}
	// Each agent's rows: a shifted, scaled series with a missing value.
	var union [][]float64
	var stats []fedlearn.FeatureStats
	for k := range agents {
		st := fedlearn.NewFeatureStats(2)
		for i := range 50 + 30*k {
			row := []float64{400 + 37*float64(k) + float64(i*i%97), 20.5 + 0.01*float64(i)}
			if i%17 == 3 {
				row[1] = math.NaN()
			}
			st.Add(row)
			union = append(union, row)
		}
		stats = append(stats, st)
	}
	send := func(k int) error {
		return sendFLSealed(t, agents[k], tasks[k], cpapi.FLUpdate{Examples: 50 + 30*k, Stats: &stats[k]})
	}
	// A delta in the statistics round is refused as invalid.
	wantStatus(t, sendFLSealed(t, agents[0], tasks[0], cpapi.FLUpdate{Examples: 3, Delta: make([]float32, 6)}), http.StatusBadRequest)
	for k := range 2 {
		if err := send(k); err != nil {
			t.Fatal(err)
		}
	}
	stored, err := e.srv.store.FLUpdates(ctx, job.ID, 0, 0)
	if err != nil || len(stored) != 2 || bytes.Contains(stored[0].Envelope, []byte("EFLS1")) {
		t.Fatalf("stored %d statistics (%v), or in clear", len(stored), err)
	}
	e.restart()
	reconnect(t, e, agents)
	e.srv.FLTick()
	j, err := e.admin.GetFLJob(ctx, job.ID)
	if err != nil || j.Current == nil || j.Current.Round != 0 || j.Current.Kind != coord.RoundStats || len(j.Current.Reported) != 2 || j.Schema != nil {
		t.Fatalf("after the restart: %+v %v", j.Current, err)
	}
	wantStatus(t, send(1), http.StatusConflict)
	if err := send(2); err != nil {
		t.Fatal(err)
	}
	j, err = e.admin.GetFLJob(ctx, job.ID)
	if err != nil || j.Schema == nil || j.Current != nil || j.Done != 0 {
		t.Fatalf("after the statistics: %+v %v", j, err)
	}
	want := flTestSpec("x", 2).Schema
	want.Standardize(union)
	for i, w := range want.Features {
		g := j.Schema.Features[i]
		t.Logf("feature %d: federated mean %.12g std %.12g, centralised %.12g %.12g", i, g.Mean, g.Std, w.Mean, w.Std)
		if math.Abs(g.Mean-w.Mean) > 1e-9*math.Abs(w.Mean) || math.Abs(g.Std-w.Std) > 1e-9*w.Std || g.Impute != g.Mean {
			t.Errorf("feature %d: federated %+v, centralised %+v", i, g, w)
		}
	}
	rs, err := e.admin.FLRounds(ctx, job.ID)
	if err != nil || len(rs.Rounds) != 1 || rs.Rounds[0].Kind != coord.RoundStats || rs.Rounds[0].Phase != coord.RoundAggregated || rs.Rounds[0].Participants != 3 {
		t.Fatalf("rounds %+v %v", rs.Rounds, err)
	}
	e.srv.FLTick()
	tasks = flTasks(t, agents)
	if tasks[0].Stats() || tasks[0].Round != 1 || !slices.Equal(tasks[0].Schema.Features, j.Schema.Features) {
		t.Fatalf("round 1 task: kind %q round %d schema %+v", tasks[0].Kind, tasks[0].Round, tasks[0].Schema.Features)
	}
	// Statistics in a training round are refused.
	wantStatus(t, sendFLSealed(t, agents[0], tasks[0], cpapi.FLUpdate{Examples: 50, Stats: &stats[0]}), http.StatusBadRequest)
	for k, a := range agents {
		if err := sendFLSealed(t, a, tasks[k], cpapi.FLUpdate{Examples: 10, Delta: []float32{0.1, 0.2, 0.3, 0.4, 0.5, 0.6}}); err != nil {
			t.Fatal(err)
		}
	}
	j, err = e.admin.GetFLJob(ctx, job.ID)
	if err != nil || j.Status != coord.JobDone || j.ModelVersion == "" {
		t.Fatalf("job %+v %v", j, err)
	}
	b, err := e.admin.DownloadModel(ctx, "fl-stats", j.ModelVersion)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fedlearn.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.Schema.Features, j.Schema.Features) || f.Training.Params["normalize"] != "federated" {
		t.Fatalf("model file schema %+v, params %v", f.Schema.Features, f.Training.Params)
	}
}

// qOneEpsilon is ε after T rounds of the Gaussian mechanism with every
// client (q = 1): RDP(α) = α/(2z²), ε = min over α of T·RDP(α) +
// ln(1/δ)/(α−1), α = 2..512.
func qOneEpsilon(z float64, T int, delta float64) float64 {
	best := math.Inf(1)
	for a := 2.0; a <= 512; a++ {
		best = min(best, float64(T)*a/(2*z*z)+math.Log(1/delta)/(a-1))
	}
	return best
}

// TestFLDifferentialPrivacy: a central-DP job reports after every round
// the ε of the independent computation (rounds, job JSON and the
// Prometheus gauge); with a budget it stops, done, before the round that
// would exceed it and its model is published; a local-DP job's tasks
// carry the clipping norm and the noise multiplier.
func TestFLDifferentialPrivacy(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true; c.FL.Tick = time.Hour })
	ctx := e.ctx()
	agents := flTestAgents(t, e, "fldp", 3, 50)
	run := func(spec coord.Spec) cpapi.FLJob {
		job, err := e.admin.CreateFLJob(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		for range spec.Rounds + 1 {
			e.srv.FLTick()
			j, _ := e.admin.GetFLJob(ctx, job.ID)
			if j.Status != coord.JobRunning {
				break
			}
			for k, task := range flTasks(t, agents) {
				if task.DP != nil {
					t.Fatalf("central DP: the task carries %+v", task.DP)
				}
				if err := sendFLSealed(t, agents[k], task, cpapi.FLUpdate{Examples: 10, Delta: []float32{1, 2, 3, 4}}); err != nil {
					t.Fatal(err)
				}
			}
		}
		j, err := e.admin.GetFLJob(ctx, job.ID)
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	sp := flTestSpec("fl-dp", 1)
	sp.Schema.Features[0].Std = 1
	sp.Rounds = 4
	sp.DP = &coord.DP{Mode: coord.DPCentral, NoiseMultiplier: 5, Clip: 1}
	j := run(sp)
	rs, err := e.admin.FLRounds(ctx, j.ID)
	if err != nil || len(rs.Rounds) != 4 || j.Status != coord.JobDone {
		t.Fatalf("job %+v, rounds %+v %v", j, rs.Rounds, err)
	}
	for _, r := range rs.Rounds {
		want := qOneEpsilon(5, r.Round, 1e-5)
		t.Logf("round %d: ε %.6f (independent %.6f) at δ %g, q %v", r.Round, r.Epsilon, want, r.Delta, r.Q)
		if math.Abs(r.Epsilon-want) > 0.01*want || r.Delta != 1e-5 || r.Q != 1 {
			t.Errorf("round %d: ε %v δ %v q %v, want ε %v", r.Round, r.Epsilon, r.Delta, r.Q, want)
		}
	}
	if p := j.Privacy; p == nil || p.Epsilon != rs.Rounds[3].Epsilon || p.Rounds != 4 || p.Mode != coord.DPCentral {
		t.Fatalf("job privacy %+v", j.Privacy)
	}
	m, err := e.client(e.tokenFor(cpapi.RoleViewer)).Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf(`controlplane_fl_epsilon{job=%q} %v`, j.ID, j.Privacy.Epsilon); !strings.Contains(m, want) {
		t.Errorf("metrics lack %q", want)
	}

	// A budget of 1.5 allows two rounds of z = 5 (ε 0.98, 1.40; the third
	// would reach 1.72).
	if qOneEpsilon(5, 2, 1e-5) > 1.5 || qOneEpsilon(5, 3, 1e-5) <= 1.5 {
		t.Fatal("the budget case no longer sits between rounds 2 and 3")
	}
	sp.Model, sp.Rounds, sp.DP.Budget = "fl-dp-budget", 10, 1.5
	j = run(sp)
	t.Logf("budget job: %s after %d rounds: %s", j.Status, j.Done, j.Reason)
	if j.Status != coord.JobDone || j.Done != 2 || !strings.HasPrefix(j.Reason, coord.ReasonBudget) || j.ModelVersion == "" || j.Privacy.Epsilon > 1.5 {
		t.Fatalf("budget job %+v %+v", j, j.Privacy)
	}

	// Local DP: the task carries C and z for the agent.
	sp.Model, sp.Rounds, sp.DP = "fl-dp-local", 1, &coord.DP{Mode: coord.DPLocal, NoiseMultiplier: 0.7, Clip: 0.5}
	job, err := e.admin.CreateFLJob(ctx, sp)
	if err != nil {
		t.Fatal(err)
	}
	e.srv.FLTick()
	task := flTasks(t, agents)[0]
	if task.Job != job.ID || task.DP == nil || *task.DP != (cpapi.FLTaskDP{Clip: 0.5, NoiseMultiplier: 0.7}) {
		t.Fatalf("local DP task %s: %+v", task.Job, task.DP)
	}
	// Central DP with a strategy that does not average is refused.
	sp.DP, sp.Strategy = &coord.DP{Mode: coord.DPCentral, NoiseMultiplier: 1, Clip: 1}, strategy.Config{Name: "fedmedian"}
	ae := wantStatus(t, func() error { _, err := e.admin.CreateFLJob(ctx, sp); return err }(), http.StatusBadRequest)
	if !strings.Contains(ae.Message, "dp.mode") {
		t.Fatalf("central DP with FedMedian: %s", ae.Message)
	}
}
