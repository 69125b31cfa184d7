package training

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/fedlearn"
)

// memReadings is an in-memory Readings: device -> metric -> points in
// time order (Unix microseconds).
type memReadings struct {
	series map[string]map[string][]ingest.SeriesPoint
	pages  int // SeriesPage calls
}

func (r *memReadings) DeviceNames(context.Context) ([]string, error) {
	var out []string
	for d := range r.series {
		out = append(out, d)
	}
	sort.Strings(out)
	return out, nil
}

func (r *memReadings) SeriesPage(_ context.Context, device, metric string, after, to int64, limit int) ([]ingest.SeriesPoint, error) {
	r.pages++
	pts := r.series[device][metric]
	i := sort.Search(len(pts), func(k int) bool { return pts[k].TS > after })
	var out []ingest.SeriesPoint
	for ; i < len(pts) && pts[i].TS < to && len(out) < limit; i++ {
		out = append(out, pts[i])
	}
	return out, nil
}

type memState map[string]string

func (s memState) Get(_ context.Context, coll, key string) ([]byte, bool, error) {
	v, ok := s[coll+"/"+key]
	return []byte(v), ok, nil
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// twoBlobs is a device whose class (metric "y") is 1 when a+b > 0 (with a
// margin), readings every 10 s.
func twoBlobs(n int, seed uint64) map[string][]ingest.SeriesPoint {
	rng := rand.New(rand.NewPCG(seed, 1))
	out := map[string][]ingest.SeriesPoint{}
	for i := 0; i < n; i++ {
		ts := t0.Add(time.Duration(i) * 10 * time.Second).UnixMicro()
		y := rng.IntN(2)
		c := float64(2*y - 1)
		out["a"] = append(out["a"], ingest.SeriesPoint{TS: ts, Value: 10 + 3*c + rng.NormFloat64()})
		out["b"] = append(out["b"], ingest.SeriesPoint{TS: ts, Value: -5 + 2*c + rng.NormFloat64()})
		out["y"] = append(out["y"], ingest.SeriesPoint{TS: ts, Value: float64(y)})
	}
	return out
}

func blobSpec() Spec {
	return Spec{
		Model: "lr",
		Schema: fedlearn.Schema{Features: []fedlearn.Feature{
			{Name: "a", Metric: "a", Agg: fedlearn.AggLatest},
			{Name: "b_mean", Metric: "b", Agg: fedlearn.AggMean, Window: fedlearn.Duration(25 * time.Second)},
		}, Label: fedlearn.Label{Metric: "y"}},
		Labels: []string{"neg", "pos"},
		Epochs: 8, LearnRate: 0.05, Seed: 3,
	}
}

func newManager(t *testing.T, dir string, r Readings, st State) *Manager {
	t.Helper()
	m, err := New(Config{Dir: dir, Readings: r, State: st, MaxExamples: 50000, KeepJobs: 5,
		Clock: clock.NewManual(t0.Add(30 * 24 * time.Hour)), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	m.Start()
	return m
}

func waitDone(t *testing.T, m *Manager, id string) Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	j, err := m.Wait(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if j.State != StateDone {
		t.Fatalf("job %s: %s: %s", id, j.State, j.Error)
	}
	return j
}

func TestJobTrainsAndKeepsModel(t *testing.T) {
	r := &memReadings{series: map[string]map[string][]ingest.SeriesPoint{"d1": twoBlobs(3000, 1)}}
	m := newManager(t, t.TempDir(), r, nil)
	j, err := m.Submit(blobSpec())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Submit(blobSpec()); !errors.Is(err, ErrBusy) {
		t.Errorf("second job while one runs: %v", err)
	}
	j = waitDone(t, m, j.ID)
	d := j.Data
	if d.Anchors != 3000 || d.Examples != 3000 || d.Kept != 3000 || d.Train != 2400 || d.HeldOut != 600 || d.ClassCounts[0]+d.ClassCounts[1] != 3000 {
		t.Fatalf("data %+v", d)
	}
	if len(j.History) != 8 || j.EpochsDone != 8 {
		t.Fatalf("history %+v", j.History)
	}
	last := j.History[7]
	if last.HeldOutAcc < 0.95 || last.TrainLoss >= j.History[0].TrainLoss {
		t.Fatalf("epochs %+v", j.History)
	}
	if r.pages < 3*2 { // 3000 readings of 3 metrics in pages of 2048
		t.Errorf("store read in %d pages", r.pages)
	}
	md, err := m.Model(j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if md.Examples != 2400 || md.Arch.Kind != fedlearn.KindLR || len(md.Weights) != 2 || md.Schema.Features[0].Std == 0 {
		t.Fatalf("model %+v", md)
	}
	// The model serves: its schema's normalisation and weights classify
	// fresh readings as well as the held-out split.
	f, err := fedlearn.NewForward(md.Arch, weights(md.Weights))
	if err != nil {
		t.Fatal(err)
	}
	fresh := twoBlobs(500, 9)
	ok := 0
	x, probs := make([]float64, 2), make([]float64, 2)
	for i := range fresh["y"] {
		at := fresh["y"][i].TS * 1000
		md.Schema.Extract(x, at, func(metric string) []fedlearn.Point {
			var pts []fedlearn.Point
			for _, p := range fresh[metric] {
				pts = append(pts, fedlearn.Point{T: p.TS * 1000, V: p.Value})
			}
			return pts
		})
		if err := md.Schema.Normalize(x, x); err != nil {
			t.Fatal(err)
		}
		if c, _ := f.Predict(x, probs); c == int(fresh["y"][i].Value) {
			ok++
		}
	}
	if acc := float64(ok) / 500; acc < 0.95 {
		t.Fatalf("fresh accuracy %.3f", acc)
	}
}

// TestJobResumesFromCheckpoint: a job interrupted after some epochs (the
// manager closed, as at a shutdown) resumes from its checkpoint in a new
// manager and ends with the very weights of an uninterrupted run.
func TestJobResumesFromCheckpoint(t *testing.T) {
	r := &memReadings{series: map[string]map[string][]ingest.SeriesPoint{"d1": twoBlobs(8000, 2)}}
	spec := blobSpec()
	spec.Epochs = 30

	ref := newManager(t, t.TempDir(), r, nil)
	rj, err := ref.Submit(spec)
	if err != nil {
		t.Fatal(err)
	}
	want, err := func() (Model, error) { waitDone(t, ref, rj.ID); return ref.Model(rj.ID) }()
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	m1, err := New(Config{Dir: dir, Readings: r, MaxExamples: 50000, Clock: clock.NewManual(t0.Add(30 * 24 * time.Hour)),
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	m1.Start()
	j, err := m1.Submit(spec)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(180 * time.Second)
	for {
		cur, _ := m1.Job(j.ID)
		if cur.EpochsDone >= 2 {
			break
		}
		if time.Now().After(deadline) || finished(cur.State) {
			t.Fatalf("job never reached epoch 2: %+v", cur)
		}
		time.Sleep(time.Millisecond)
	}
	m1.Close()
	stopped, _ := m1.Job(j.ID)
	if finished(stopped.State) || stopped.EpochsDone >= spec.Epochs {
		t.Fatalf("job finished before the interruption: %+v", stopped)
	}

	m2 := newManager(t, dir, r, nil)
	got := waitDone(t, m2, j.ID)
	if !slices.Equal(got.Resumes, []int{stopped.EpochsDone}) {
		t.Fatalf("resumes %v, stopped after epoch %d", got.Resumes, stopped.EpochsDone)
	}
	for i, h := range got.History {
		if h.Epoch != i+1 {
			t.Fatalf("history %+v", got.History)
		}
	}
	md, err := m2.Model(j.ID)
	if err != nil {
		t.Fatal(err)
	}
	for i := range want.Weights {
		if !slices.Equal(md.Weights[i].Data, want.Weights[i].Data) {
			t.Fatalf("tensor %s differs from the uninterrupted run", md.Weights[i].Name)
		}
	}
}

func TestStateLabel(t *testing.T) {
	pts := func(v float64) map[string][]ingest.SeriesPoint {
		out := map[string][]ingest.SeriesPoint{}
		for i := 0; i < 200; i++ {
			ts := t0.Add(time.Duration(i) * time.Minute).UnixMicro()
			out["temp"] = append(out["temp"], ingest.SeriesPoint{TS: ts, Value: v + float64(i%7)/10})
		}
		return out
	}
	r := &memReadings{series: map[string]map[string][]ingest.SeriesPoint{
		"cold-1": pts(5), "hot-1": pts(40), "hot-2": pts(41), "unlabelled": pts(20), "bad": pts(20),
	}}
	st := memState{"labels/cold-1": `"cold"`, "labels/hot-1": `"hot"`, "labels/hot-2": "hot", "labels/bad": `"lukewarm"`}
	m := newManager(t, t.TempDir(), r, st)
	spec := Spec{
		Model:  "lr",
		Schema: fedlearn.Schema{Features: []fedlearn.Feature{{Name: "t", Metric: "temp", Agg: fedlearn.AggLatest}}, Label: fedlearn.Label{StateKey: "labels/{device}"}},
		Labels: []string{"cold", "hot"}, Epochs: 5, LearnRate: 0.1,
	}
	j, err := m.Submit(spec)
	if err != nil {
		t.Fatal(err)
	}
	j = waitDone(t, m, j.ID)
	if j.Data.Examples != 600 || j.Data.Unlabelled != 400 || !slices.Equal(j.Data.ClassCounts, []int{200, 400}) {
		t.Fatalf("data %+v", j.Data)
	}
	if acc := j.History[len(j.History)-1].HeldOutAcc; acc != 1 {
		t.Fatalf("held-out accuracy %v", acc)
	}
}

// TestExamplesCap: a range with many more readings than the cap keeps
// exactly the cap, a sample from the whole range.
func TestExamplesCap(t *testing.T) {
	r := &memReadings{series: map[string]map[string][]ingest.SeriesPoint{"d1": twoBlobs(30000, 4)}}
	m := newManager(t, t.TempDir(), r, nil)
	spec := blobSpec()
	spec.MaxExamples = 1000
	spec.Epochs = 1
	j, err := m.Submit(spec)
	if err != nil {
		t.Fatal(err)
	}
	j = waitDone(t, m, j.ID)
	if j.Data.Examples != 30000 || j.Data.Kept != 1000 || j.Data.Train+j.Data.HeldOut != 1000 {
		t.Fatalf("data %+v", j.Data)
	}
	spec.MaxExamples = 60000
	if _, err := m.Submit(spec); !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), "max_examples") {
		t.Fatalf("cap above the agent's: %v", err)
	}
}

func TestRangeAndNoExamples(t *testing.T) {
	r := &memReadings{series: map[string]map[string][]ingest.SeriesPoint{"d1": twoBlobs(1000, 5)}}
	m := newManager(t, t.TempDir(), r, nil)
	spec := blobSpec()
	spec.Epochs = 1
	spec.From = t0.Add(1000 * time.Second)
	spec.To = t0.Add(2000 * time.Second)
	j, err := m.Submit(spec)
	if err != nil {
		t.Fatal(err)
	}
	if j = waitDone(t, m, j.ID); j.Data.Anchors != 100 {
		t.Fatalf("range [1000 s, 2000 s) of readings every 10 s: %d anchors", j.Data.Anchors)
	}
	spec.Device = "nobody"
	j, err = m.Submit(spec)
	if err != nil {
		t.Fatal(err)
	}
	j, _ = m.Wait(context.Background(), j.ID)
	if j.State != StateFailed || !strings.Contains(j.Error, "no labelled examples") {
		t.Fatalf("job on no data: %s %q", j.State, j.Error)
	}
	if _, err := m.Model(j.ID); !errors.Is(err, ErrNotDone) {
		t.Fatalf("model of a failed job: %v", err)
	}
}

func TestSpecErrorsNameTheField(t *testing.T) {
	now := t0
	for _, tc := range []struct {
		field string
		edit  func(s *Spec)
	}{
		{"model", func(s *Spec) { s.Model = "" }},
		{"model", func(s *Spec) { s.Model = "cnn" }},
		{"labels", func(s *Spec) { s.Labels = []string{"one"} }},
		{"labels[1]", func(s *Spec) { s.Labels = []string{"a", "a"} }},
		{"schema.features", func(s *Spec) { s.Schema.Features = nil }},
		{"schema.features[1]", func(s *Spec) { s.Schema.Features[1].Window = 0 }},
		{"schema.features[0].metric", func(s *Spec) { s.Schema.Features[0].Metric = "y" }},
		{"schema.label", func(s *Spec) { s.Schema.Label = fedlearn.Label{} }},
		{"schema.label.state_key", func(s *Spec) { s.Schema.Label = fedlearn.Label{StateKey: "nokey"} }},
		{"epochs", func(s *Spec) { s.Epochs = -1 }},
		{"solver", func(s *Spec) { s.Solver = "lbfgs" }},
		{"learn_rate", func(s *Spec) { s.LearnRate = math.NaN() }},
		{"momentum", func(s *Spec) { s.Momentum = 1 }},
		{"momentum", func(s *Spec) { s.Momentum = 0.5 }}, // adam
		{"batch_size", func(s *Spec) { s.BatchSize = -3 }},
		{"batch_size", func(s *Spec) { s.Model, s.BatchSize = "mlp:4096", 4096 }},
		{"l2", func(s *Spec) { s.L2 = -1 }},
		{"mu", func(s *Spec) { s.Mu = 0.1 }},
		{"hold_out", func(s *Spec) { h := 0.95; s.HoldOut = &h }},
		{"from", func(s *Spec) { s.From = now.Add(time.Hour) }},
		{"normalize", func(s *Spec) { s.Normalize = "zscore" }},
		{"device", func(s *Spec) { s.Device = "a/b" }},
		{"start_by", func(s *Spec) { s.StartBy = now.Add(MaxStartDelay + time.Second) }},
		{"expected_duration", func(s *Spec) { s.ExpectedDuration = fedlearn.Duration(-time.Minute) }},
		{"expected_duration", func(s *Spec) { s.ExpectedDuration = fedlearn.Duration(MaxExpectedDuration + time.Second) }},
		{"base.weights", func(s *Spec) {
			a, _ := fedlearn.ParseArch("lr", 2, 2)
			s.Model, s.Base = "", &Base{Arch: a, Weights: tensors(fedlearn.NewWeights(a))[:1]}
		}},
		{"base.arch.classes", func(s *Spec) {
			a, _ := fedlearn.ParseArch("lr", 2, 3)
			s.Model, s.Base = "", &Base{Arch: a, Weights: tensors(fedlearn.NewWeights(a))}
		}},
	} {
		s := blobSpec()
		tc.edit(&s)
		_, err := s.resolve(now, 1000)
		var se *SpecError
		if !errors.As(err, &se) || se.Field != tc.field || !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("%s: got %v", tc.field, err)
		}
	}
	s := blobSpec()
	if _, err := s.resolve(now, 1000); err != nil || s.Epochs != 8 || s.BatchSize != 64 || *s.HoldOut != 0.2 || s.To != now || s.Normalize != NormalizeFit {
		t.Fatalf("defaults: %v %+v", err, s)
	}
}

// TestFeatureStatsAcrossDevices: the statistics two devices report, added
// up, standardise as the two devices' training splits together would.
func TestFeatureStatsAcrossDevices(t *testing.T) {
	r := &memReadings{series: map[string]map[string][]ingest.SeriesPoint{"d1": twoBlobs(500, 1), "d2": twoBlobs(700, 2)}}
	m := newManager(t, t.TempDir(), r, nil)
	total := fedlearn.NewFeatureStats(2)
	n := 0
	for _, dev := range []string{"d1", "d2"} {
		spec := blobSpec()
		spec.Device = dev
		st, k, err := m.FeatureStats(context.Background(), spec)
		if err != nil {
			t.Fatal(err)
		}
		n += k
		for i := range total.Count {
			total.Count[i] += st.Count[i]
			total.Sum[i] += st.Sum[i]
			total.SumSq[i] += st.SumSq[i]
		}
	}
	both := blobSpec()
	j, err := m.Submit(both) // every device
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, m, j.ID)
	md, err := m.Model(j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if n != 400+560 || total.Count[0] != float64(n) {
		t.Fatalf("%d examples, counts %v", n, total.Count)
	}
	got := fedlearn.Schema{Features: slices.Clone(md.Schema.Features)}
	if err := total.Apply(&got); err != nil {
		t.Fatal(err)
	}
	// The job on both devices samples and splits them together, so its
	// split differs from the per-device ones: compare loosely.
	for i, f := range got.Features {
		w := md.Schema.Features[i]
		if math.Abs(f.Mean-w.Mean) > 0.1*w.Std || math.Abs(f.Std-w.Std) > 0.05*w.Std {
			t.Errorf("feature %s: federated mean %.3f std %.3f, pooled %.3f %.3f", f.Name, f.Mean, f.Std, w.Mean, w.Std)
		}
	}
	if _, _, err := m.FeatureStats(context.Background(), Spec{}); !errors.Is(err, ErrInvalidSpec) {
		t.Fatalf("empty spec: %v", err)
	}
}

// TestRoundFromGlobalWeights is the local part of a federated round: train
// from given global weights, with the global schema's normalisation, for
// some epochs with FedProx's mu, and hand back the weights and the example
// count. A large mu keeps the weights near the global ones.
func TestRoundFromGlobalWeights(t *testing.T) {
	r := &memReadings{series: map[string]map[string][]ingest.SeriesPoint{"d1": twoBlobs(2000, 6)}}
	m := newManager(t, t.TempDir(), r, nil)
	first, err := m.Submit(blobSpec())
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, m, first.ID)
	prev, err := m.Model(first.ID)
	if err != nil {
		t.Fatal(err)
	}
	global := fedlearn.InitWeights(prev.Arch, 42)
	dist := func(mu float64) (float64, Model) {
		spec := blobSpec()
		spec.Model, spec.Base, spec.Mu, spec.Epochs = "", NewBase(prev.Arch, global), mu, 3
		spec.Schema = prev.Schema // the global normalisation, kept
		j, err := m.Submit(spec)
		if err != nil {
			t.Fatal(err)
		}
		if j.Spec.Normalize != NormalizeKeep {
			t.Fatalf("normalize %q with a base", j.Spec.Normalize)
		}
		waitDone(t, m, j.ID)
		md, err := m.Model(j.ID)
		if err != nil {
			t.Fatal(err)
		}
		if md.Examples != 1600 || !slices.EqualFunc(md.Schema.Features, prev.Schema.Features, func(a, b fedlearn.Feature) bool { return a == b }) {
			t.Fatalf("examples %d, schema %+v", md.Examples, md.Schema)
		}
		d := 0.0
		got, want := md.Params().Flatten(nil), global.Flatten(nil)
		for i := range got {
			d += (got[i] - want[i]) * (got[i] - want[i])
		}
		return math.Sqrt(d), md
	}
	free, md := dist(0)
	held, _ := dist(50)
	t.Logf("distance to the global weights: %.4f with mu 0, %.4f with mu 50; held-out accuracy %.3f", free, held, md.HeldOutAcc)
	if free == 0 || held >= free/2 {
		t.Fatalf("mu 50 moved the weights %.4f from the global ones, mu 0 %.4f", held, free)
	}
}

// TestDeferredJobWaits: a job with a window (start_by) waits, in state
// waiting, until the scheduler lets it start; one without runs at once;
// both account their end.
func TestDeferredJobWaits(t *testing.T) {
	r := &memReadings{series: map[string]map[string][]ingest.SeriesPoint{"d1": twoBlobs(500, 1)}}
	clk := clock.NewManual(t0.Add(30 * 24 * time.Hour))
	type call struct {
		id       string
		latest   time.Time
		expected time.Duration
	}
	calls := make(chan call, 4)
	release := make(chan struct{})
	var ended atomic.Int32
	m, err := New(Config{Dir: t.TempDir(), Readings: r, MaxExamples: 50000, KeepJobs: 5, Clock: clk, Logger: slog.New(slog.DiscardHandler),
		Defer: func(ctx context.Context, id string, latest time.Time, expected time.Duration) (func(), error) {
			calls <- call{id, latest, expected}
			if !latest.IsZero() {
				select {
				case <-release:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			return func() { ended.Add(1) }, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	m.Start()
	spec := blobSpec()
	spec.Epochs = 1
	spec.StartBy = clk.Now().Add(6 * time.Hour)
	spec.ExpectedDuration = fedlearn.Duration(20 * time.Minute)
	j, err := m.Submit(spec)
	if err != nil {
		t.Fatal(err)
	}
	next := func() call {
		t.Helper()
		select {
		case c := <-calls:
			return c
		case <-time.After(10 * time.Second):
			t.Fatal("the job did not ask the scheduler")
			return call{}
		}
	}
	c := next()
	if c.id != j.ID || !c.latest.Equal(spec.StartBy) || c.expected != 20*time.Minute {
		t.Fatalf("defer call %+v", c)
	}
	if got, _ := m.Job(j.ID); got.State != StateWaiting || !got.Started.IsZero() {
		t.Fatalf("while deferred: %s started %v", got.State, got.Started)
	}
	close(release)
	waitDone(t, m, j.ID)
	spec.StartBy = time.Time{}
	j2, err := m.Submit(spec)
	if err != nil {
		t.Fatal(err)
	}
	if c := next(); c.id != j2.ID || !c.latest.IsZero() {
		t.Fatalf("undeferred job's call %+v", c)
	}
	waitDone(t, m, j2.ID)
	if n := ended.Load(); n != 2 {
		t.Fatalf("%d jobs accounted, want 2", n)
	}
}
