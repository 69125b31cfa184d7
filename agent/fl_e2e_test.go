package agent_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/coord"
	"github.com/edgefleet/edgefleet/fedlearn/datasets"
	"github.com/edgefleet/edgefleet/fedlearn/strategy"
	"github.com/edgefleet/edgefleet/internal/agenttest"
	"github.com/edgefleet/edgefleet/internal/cptest"
	"github.com/edgefleet/edgefleet/internal/datasettest"
)

// flTap watches an agent's FL updates on their way to the control plane.
// On the agent's first update it first sends four bad copies (a wrong
// signature, a tampered envelope, a header naming another round than the
// envelope was sealed for, no envelope Content-Type), then the update,
// then the same bytes again (a replay); it records the statuses.
// hold, when set, blocks the updates of a task until it is closed.
type flTap struct {
	next http.RoundTripper

	mu       sync.Mutex
	statuses map[string][]int // by kind: unsigned, unsealed, no_envelope, real, replay
	tampered bool
	holdKey  string // task key to hold ("job/round/attempt")
	hold     chan struct{}
	held     chan struct{} // closed when a held request arrives
}

func (f *flTap) send(req *http.Request, edit func(r *http.Request, body []byte) []byte) (int, error) {
	body, err := req.GetBody()
	if err != nil {
		return 0, err
	}
	b, _ := io.ReadAll(body)
	r := req.Clone(req.Context())
	b = edit(r, bytes.Clone(b))
	r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	resp, err := f.next.RoundTrip(r)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func (f *flTap) record(kind string, status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statuses[kind] = append(f.statuses[kind], status)
}

func (f *flTap) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != "POST" || req.URL.Path != "/v1/agent/fl/update" {
		return f.next.RoundTrip(req)
	}
	f.mu.Lock()
	first := !f.tampered
	f.tampered = true
	var hold, held chan struct{}
	if f.hold != nil && req.Header.Get(cpapi.HeaderFLTask) == f.holdKey {
		hold, held = f.hold, f.held
		f.hold = nil
	}
	f.mu.Unlock()
	if hold != nil {
		close(held)
		<-hold
	}
	same := func(r *http.Request, b []byte) []byte { return b }
	if first {
		for kind, edit := range map[string]func(r *http.Request, b []byte) []byte{
			"unsigned": func(r *http.Request, b []byte) []byte {
				r.Header.Set(cpapi.HeaderFLSignature, "AAAA"+r.Header.Get(cpapi.HeaderFLSignature)[4:])
				return b
			},
			"tampered": func(r *http.Request, b []byte) []byte { b[len(b)-1] ^= 1; return b },
			"wrong_task": func(r *http.Request, b []byte) []byte {
				k := r.Header.Get(cpapi.HeaderFLTask)
				r.Header.Set(cpapi.HeaderFLTask, k[:strings.Index(k, "/")]+"/99/0")
				return b
			},
			"no_envelope": func(r *http.Request, b []byte) []byte {
				r.Header.Set("Content-Type", "application/octet-stream")
				return b
			},
		} {
			st, err := f.send(req, edit)
			if err != nil {
				return nil, err
			}
			f.record(kind, st)
		}
	}
	resp, err := f.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	f.record("real", resp.StatusCode)
	if resp.StatusCode == http.StatusOK {
		st, err := f.send(req, same)
		if err == nil {
			f.record("replay", st)
		}
	}
	return resp, nil
}

// flPublish sends lines to the agent's embedded broker as device and
// waits until the agent has stored them.
func flPublish(t *testing.T, a *agent.Agent, device string, lines []string) {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(a.MQTTURL()).SetClientID("dev-" + device).SetMaxResumePubInFlight(1000))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt connect: %v", tok.Error())
	}
	defer c.Disconnect(50)
	var toks []mqtt.Token
	for _, l := range lines {
		toks = append(toks, c.Publish("devices/"+device+"/telemetry", 1, false, l))
	}
	for _, tok := range toks {
		if !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	api := agentapi.New("http://"+a.APIAddr(), nil)
	defer api.CloseIdleConnections()
	waitUntil(t, 60*time.Second, device+" stored", func() (bool, string) {
		st, err := api.Ingest(t.Context())
		return err == nil && st.Store != nil && st.Store.Messages >= int64(len(lines)), fmt.Sprint(st.Store, err)
	})
}

// flOccupancySpec is federated LR on the occupancy messages of
// datasettest (metrics as the messages name them), normalised with the
// training file's statistics.
func flOccupancySpec(t *testing.T, rounds int) coord.Spec {
	p, err := datasets.Load(datasettest.Dir(t), datasets.Occupancy, 0)
	if err != nil {
		t.Skipf("SKIP: occupancy data set: %v", err)
	}
	schema := p.Schema
	for i := range schema.Features {
		schema.Features[i].Metric = datasettest.OccupancyMetrics[i]
	}
	schema.Label = fedlearn.Label{Metric: "Occupancy"}
	arch, err := fedlearn.ParseArch("lr", len(schema.Features), 2)
	if err != nil {
		t.Fatal(err)
	}
	return coord.Spec{
		Model: "occupancy-fl", Arch: arch, Schema: schema, Labels: p.Classes,
		Strategy: strategy.Config{Name: "fedavg"}, Rounds: rounds,
		MinAvailable: 4, MinFit: 4, RoundTimeout: fedlearn.Duration(2 * time.Minute),
		Epochs: 1, BatchSize: 32, LearnRate: 0.01, Solver: "adam", Seed: 1,
		Evaluation: &coord.Evaluation{Dataset: datasets.Occupancy},
	}
}

func waitFLJob(t *testing.T, cp func() *cpapi.Client, id string, d time.Duration) cpapi.FLJob {
	t.Helper()
	var j cpapi.FLJob
	waitUntil(t, d, "fl job "+id+" finished", func() (bool, string) {
		var err error
		j, err = cp().GetFLJob(t.Context(), id)
		return err == nil && j.Status != coord.JobRunning, fmt.Sprintf("%+v %v", j.Current, err)
	})
	return j
}

// TestFederatedOccupancy: a real control plane and four real agents, each
// holding a different contiguous slice of the occupancy training file,
// published over MQTT into its store. A FedAvg LR job of five rounds runs
// end to end: every round has the four agents' updates counted once (bad
// copies and replays sent beside the real updates are refused and
// counted), the global accuracy on datatest (evaluated by the control
// plane) rises, and the final model lands in the registry. Then a second
// job's round 2 is interrupted by a control plane restart after three of
// the four updates arrived: it resumes with them and the fourth, and
// finishes without counting any update twice. FedProx and FedMedian jobs
// follow.
func TestFederatedOccupancy(t *testing.T) {
	if testing.Short() {
		t.Skip("trains four agents")
	}
	spec := flOccupancySpec(t, 5)
	cpDir := t.TempDir()
	cpCfg := cptest.Config(cpDir)
	cpCfg.FL.Tick = 50 * time.Millisecond
	cpCfg.FL.DataDir = datasettest.Dir(t)
	srv, admin := cptest.Start(t, cpCfg)
	var cpMu sync.Mutex
	cp := func() *cpapi.Client { cpMu.Lock(); defer cpMu.Unlock(); return admin }

	const n, per = 4, 2000
	var agents []*agent.Agent
	var published []string // every agent's readings, for centralised statistics
	var taps []*flTap
	end := time.Now()
	for i := range n {
		toks, err := admin.CreateEnrollmentTokens(t.Context(), time.Hour, map[string]string{"fl": "occupancy"}, 1)
		if err != nil {
			t.Fatal(err)
		}
		cfg := agenttest.Config(t, fmt.Sprintf("fl-%d", i), "fl-e2e")
		cfg.Ingest.Enabled = true
		cfg.Ingest.MQTT.EmbeddedListen = "127.0.0.1:0"
		cfg.ControlPlane.URL = srv.URL()
		cfg.ControlPlane.CAFile = srv.CAPath()
		cfg.ControlPlane.EnrollmentToken = toks[0].Token
		cfg.ControlPlane.BackoffMin = 50 * time.Millisecond
		cfg.ControlPlane.BackoffMax = 500 * time.Millisecond
		tap := &flTap{statuses: map[string][]int{}}
		taps = append(taps, tap)
		a := agenttest.StartWith(t, cfg, agent.Deps{UplinkWrapTransport: func(rt http.RoundTripper) http.RoundTripper {
			tap.next = rt
			return tap
		}})
		agents = append(agents, a)
		lines, _, _ := datasettest.Occupancy(t, i*per, per, end)
		flPublish(t, a, fmt.Sprintf("room-%d", i), lines)
		published = append(published, lines...)
	}
	waitUntil(t, 30*time.Second, "agents enrolled with keys", func() (bool, string) {
		for _, a := range agents {
			if a.Uplink().Keys() == nil {
				return false, fmt.Sprintf("%+v", a.Uplink().Status())
			}
		}
		return true, ""
	})
	spec.Selector = "fl=occupancy"
	start := time.Now()
	job, err := admin.CreateFLJob(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	job = waitFLJob(t, cp, job.ID, 5*time.Minute)
	t.Logf("job %s: %s in %s", job.ID, job.Status, time.Since(start).Round(time.Millisecond))
	if job.Status != coord.JobDone || job.Done != 5 {
		t.Fatalf("job %+v", job)
	}
	rs, err := admin.FLRounds(t.Context(), job.ID)
	if err != nil {
		t.Fatal(err)
	}
	var accs []float64
	refused := map[string]int{}
	for _, r := range rs.Rounds {
		t.Logf("round %d attempt %d: %s, %d participants, %d failures, refused %v, %d examples, accuracy %v, loss %v, up %d B, down %d B, %.2fs",
			r.Round, r.Attempt, r.Phase, r.Participants, r.Failures, r.Refused, r.Examples, r.Accuracy, r.Loss, r.BytesUp, r.BytesDown, r.Seconds)
		if r.Phase != coord.RoundAggregated || r.Participants != n || len(r.Selected) != n {
			t.Errorf("round %d: %s with %d participants of %d selected, want %d of %d", r.Round, r.Phase, r.Participants, len(r.Selected), n, n)
		}
		if r.Examples != n*per {
			t.Errorf("round %d: %d examples, want %d (each agent's %d once)", r.Round, r.Examples, n*per, per)
		}
		accs = append(accs, r.Accuracy["datatest"])
		for k, v := range r.Refused {
			refused[k] += v
		}
	}
	if len(accs) != 5 || !(accs[4] > accs[0]) || accs[4] < 0.95 {
		t.Errorf("datatest accuracy by round %v: want rising to at least 0.95", accs)
	}
	// Each agent's first update came with four bad copies, refused and
	// counted: the wrong signature and the tampered envelope as unsigned
	// (the signature covers the envelope and is checked first), the other
	// round's header and the missing envelope as unsealed; every update's
	// replay was refused.
	if refused[coord.RefusedUnsigned] != 2*n || refused[coord.RefusedUnsealed] != 2*n {
		t.Errorf("refused %v, want %d unsigned and %d unsealed", refused, 2*n, 2*n)
	}
	// The replay of the last update may still be on its way.
	waitUntil(t, 10*time.Second, "every update replayed", func() (bool, string) {
		k := 0
		for _, tap := range taps {
			tap.mu.Lock()
			k += len(tap.statuses["replay"])
			tap.mu.Unlock()
		}
		return k == 5*n, fmt.Sprint(k)
	})
	replays := 0
	for i, tap := range taps {
		tap.mu.Lock()
		st := tap.statuses
		tap.mu.Unlock()
		t.Logf("agent %d statuses %v", i, st)
		if got := fmt.Sprint(st["unsigned"], st["tampered"], st["wrong_task"], st["no_envelope"]); got != "[400] [400] [400] [415]" {
			t.Errorf("agent %d: bad copies answered %s", i, got)
		}
		for _, s := range st["replay"] {
			if s != http.StatusConflict {
				t.Errorf("agent %d: a replay answered %d", i, s)
			}
			replays++
		}
	}
	if replays != 5*n || refused[coord.RefusedReplayed] == 0 {
		t.Errorf("%d replays sent (want %d), %d counted as replayed", replays, 5*n, refused[coord.RefusedReplayed])
	}
	m, err := admin.GetModel(t.Context(), spec.Model, job.ModelVersion)
	if err != nil || job.ModelVersion == "" {
		t.Fatalf("model of the job in the registry: %v (version %q)", err, job.ModelVersion)
	}
	t.Logf("registry: %s version %s digest %s signed by %s", m.Name, m.Version, m.Digest, m.Signer)
	if _, err := admin.DeployModel(t.Context(), spec.Model, job.ModelVersion, "fl=occupancy"); err != nil {
		t.Fatalf("deploying the federated model: %v", err)
	}

	// A control plane restart in the middle of round 2 of a second job:
	// agent 3's update is held until the control plane restarted.
	spec2 := flOccupancySpec(t, 3)
	spec2.Selector, spec2.Seed = "fl=occupancy", 2
	job2, err := admin.CreateFLJob(t.Context(), spec2)
	if err != nil {
		t.Fatal(err)
	}
	release, held := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	// A failing test releases the held request before the agents stop.
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	taps[3].mu.Lock()
	taps[3].holdKey, taps[3].hold, taps[3].held = job2.ID+"/2/0", release, held
	taps[3].mu.Unlock()
	select {
	case <-held:
	case <-time.After(3 * time.Minute):
		t.Fatal("agent 3's round 2 update never came")
	}
	waitUntil(t, time.Minute, "three updates of round 2 in", func() (bool, string) {
		j, err := admin.GetFLJob(t.Context(), job2.ID)
		return err == nil && j.Current != nil && j.Current.Round == 2 && len(j.Current.Reported) == 3, fmt.Sprintf("%+v %v", j.Current, err)
	})
	t.Logf("job %s round 2: three updates in, agent 3's held; restarting the control plane", job2.ID)
	addr := srv.Addr().String()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	cfg2 := cpCfg
	cfg2.Listen = addr
	_, admin2 := cptest.Start(t, cfg2)
	cpMu.Lock()
	admin = admin2
	cpMu.Unlock()
	j, err := admin2.GetFLJob(t.Context(), job2.ID)
	if err != nil || j.Current == nil || j.Current.Round != 2 || len(j.Current.Reported) != 3 {
		t.Fatalf("after the restart: %+v %v", j.Current, err)
	}
	releaseOnce.Do(func() { close(release) })
	job2 = waitFLJob(t, cp, job2.ID, 5*time.Minute)
	if job2.Status != coord.JobDone {
		t.Fatalf("job 2 after the restart: %+v", job2)
	}
	rs2, err := admin2.FLRounds(t.Context(), job2.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs2.Rounds {
		t.Logf("job 2 round %d attempt %d: %s, %d participants, refused %v, %d examples, accuracy %v, up %d B", r.Round, r.Attempt, r.Phase, r.Participants, r.Refused, r.Examples, r.Accuracy, r.BytesUp)
		if r.Phase != coord.RoundAggregated || r.Participants != n || r.Examples != n*per {
			t.Errorf("job 2 round %d: %s, %d participants, %d examples; want %d and %d", r.Round, r.Phase, r.Participants, r.Examples, n, n*per)
		}
		// Bytes up count the accepted updates, across the restart too.
		if r.BytesUp != rs.Rounds[0].BytesUp {
			t.Errorf("job 2 round %d: %d bytes up, job 1's rounds %d", r.Round, r.BytesUp, rs.Rounds[0].BytesUp)
		}
	}
	if len(rs2.Rounds) != 3 {
		t.Errorf("job 2: %d round attempts, want 3", len(rs2.Rounds))
	}

	// Other strategies run the same way: FedProx (μ sent to the clients'
	// training) and FedMedian, two rounds each.
	mu := 0.1
	for _, sc := range []strategy.Config{{Name: "fedprox", ProximalMu: &mu}, {Name: "fedmedian"}} {
		sp := flOccupancySpec(t, 2)
		sp.Selector, sp.Strategy = "fl=occupancy", sc
		j, err := admin2.CreateFLJob(t.Context(), sp)
		if err != nil {
			t.Fatal(err)
		}
		var got coord.Spec
		if err := json.Unmarshal(j.Spec, &got); err != nil {
			t.Fatal(err)
		}
		if want := map[string]float64{"fedprox": mu}[sc.Name]; got.Mu != want {
			t.Errorf("%s: clients' mu %v", sc.Name, got.Mu)
		}
		j = waitFLJob(t, cp, j.ID, 3*time.Minute)
		rs, err := admin2.FLRounds(t.Context(), j.ID)
		if err != nil || j.Status != coord.JobDone || len(rs.Rounds) != 2 {
			t.Fatalf("%s job: %+v, %d rounds, %v", sc.Name, j, len(rs.Rounds), err)
		}
		last := rs.Rounds[1]
		t.Logf("%s: round 2 datatest accuracy %.4f, %d participants", sc.Name, last.Accuracy["datatest"], last.Participants)
		if last.Participants != n || last.Accuracy["datatest"] < 0.9 {
			t.Errorf("%s: round 2 %+v", sc.Name, last)
		}
	}

	// A schema without normalisation: round 0 collects the agents'
	// feature statistics, which equal the centralised ones of the four
	// slices; the job trains with them as well as with the training
	// file's.
	spec3 := flOccupancySpec(t, 5)
	spec3.Selector = "fl=occupancy"
	spec3.Schema.Features = slices.Clone(spec3.Schema.Features)
	for i := range spec3.Schema.Features {
		f := &spec3.Schema.Features[i]
		f.Mean, f.Std, f.Impute = 0, 0, 0
	}
	j3, err := admin2.CreateFLJob(t.Context(), spec3)
	if err != nil {
		t.Fatal(err)
	}
	j3 = waitFLJob(t, cp, j3.ID, 5*time.Minute)
	rs3, err := admin2.FLRounds(t.Context(), j3.ID)
	if err != nil || j3.Status != coord.JobDone || j3.Schema == nil || len(rs3.Rounds) != 6 {
		t.Fatalf("statistics job: %+v, %d rounds, %v", j3, len(rs3.Rounds), err)
	}
	if r0 := rs3.Rounds[0]; r0.Kind != coord.RoundStats || r0.Participants != n || r0.Examples != n*per {
		t.Errorf("statistics round %+v", r0)
	}
	rows := make([][]float64, len(published))
	for i, l := range published {
		var m map[string]float64
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatal(err)
		}
		for _, f := range spec3.Schema.Features {
			rows[i] = append(rows[i], m[f.Metric])
		}
	}
	want := spec3.Schema
	want.Features = slices.Clone(want.Features)
	want.Standardize(rows)
	for i, w := range want.Features {
		g := j3.Schema.Features[i]
		t.Logf("%s: federated mean %.10g std %.10g, centralised %.10g %.10g", w.Name, g.Mean, g.Std, w.Mean, w.Std)
		if math.Abs(g.Mean-w.Mean) > 1e-9*math.Abs(w.Mean) || math.Abs(g.Std-w.Std) > 1e-9*w.Std {
			t.Errorf("%s: federated %+v, centralised %+v", w.Name, g, w)
		}
	}
	last3 := rs3.Rounds[5]
	t.Logf("federated statistics: round 5 datatest accuracy %.4f, datatest2 %.4f", last3.Accuracy["datatest"], last3.Accuracy["datatest2"])
	if last3.Accuracy["datatest"] < 0.95 {
		t.Errorf("with federated statistics: round 5 %+v", last3)
	}

	// Local differential privacy: each agent clips and noises its update
	// before sealing it; every round reports the ε spent.
	spec4 := flOccupancySpec(t, 2)
	spec4.Selector = "fl=occupancy"
	spec4.DP = &coord.DP{Mode: coord.DPLocal, NoiseMultiplier: 0.05, Clip: 5}
	j4, err := admin2.CreateFLJob(t.Context(), spec4)
	if err != nil {
		t.Fatal(err)
	}
	j4 = waitFLJob(t, cp, j4.ID, 3*time.Minute)
	rs4, err := admin2.FLRounds(t.Context(), j4.ID)
	if err != nil || j4.Status != coord.JobDone || len(rs4.Rounds) != 2 || j4.Privacy == nil {
		t.Fatalf("local DP job: %+v, %d rounds, %v", j4, len(rs4.Rounds), err)
	}
	for _, r := range rs4.Rounds {
		t.Logf("local DP round %d: %d participants, ε %.4g at δ %g, datatest accuracy %.4f", r.Round, r.Participants, r.Epsilon, r.Delta, r.Accuracy["datatest"])
		if r.Participants != n || !(r.Epsilon > 0) || r.Delta != coord.DefaultDPDelta {
			t.Errorf("local DP round %+v", r)
		}
	}
	if j4.Privacy.Epsilon != rs4.Rounds[1].Epsilon || j4.Privacy.Rounds != 2 {
		t.Errorf("local DP job privacy %+v", j4.Privacy)
	}
}
