package models

import (
	"container/list"
	"context"
	"io"
	"log/slog"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/fedlearn"
)

// InferenceTopic is the topic a device's predictions are published to.
func InferenceTopic(device string) string { return "devices/" + device + "/inference" }

// Publisher sends messages at QoS 1 without waiting for the broker's
// acknowledgement (the agent's MQTT client: ingest.Ingestor.Send). The
// payload must not be changed afterwards.
type Publisher interface {
	Send(topic string, payload []byte) (ingest.Sent, error)
}

// RuntimeConfig configures a Runtime. Zero fields take the defaults in
// their comments.
type RuntimeConfig struct {
	// Manager holds the models to run. Required.
	Manager *Manager
	// Tap is the post-commit observer of ingestion the readings come
	// from. Required; the Runtime sets the metrics it queues.
	Tap *ingest.Tap
	// Store keeps predictions; nil keeps none. An Outbox publishes them
	// from there.
	Store *Store
	// MaxDevices bounds the devices whose recent readings are held; past
	// it the least recently seen device's window is dropped (counted in
	// edgefleet_inference_devices_evicted_total). Default 1024.
	MaxDevices int
	// MaxPoints bounds the readings held per device and metric. Default
	// 128.
	MaxPoints int
	// Clock stamps predictions. Nil means clock.Real().
	Clock clock.Clock
	// Logger receives the runtime's logs. Nil discards them.
	Logger *slog.Logger
}

// Runtime runs the deployed models on the readings ingestion commits.
// One goroutine (Run) drains the tap, updates the devices' windows,
// predicts, then stores the round's predictions (an Outbox publishes
// them): the commit path only hands readings to the tap.
type Runtime struct {
	cfg RuntimeConfig
	clk clock.Clock
	log *slog.Logger
	mg  *Manager

	// plan is what the serving models need, rebuilt when they change.
	plan      atomic.Pointer[plan]
	refreshMu sync.Mutex // orders Refresh calls

	devices map[string]*deviceWindow
	lru     *list.List // *deviceWindow, most recently seen at the front

	// Scratch reused across rounds.
	readings []ingest.TapReading
	seen     map[trigger]struct{}
	raw      []float64
	round    []byte // the round's predictions, encoded for the Store
	roundN   int
}

// plan is what the runtime needs of the serving models.
type plan struct {
	models []*servingModel
	// horizon is, per metric, how far back (ns) any feature reading it
	// looks; 0 keeps only the latest reading.
	horizon map[string]int64
}

// servingModel is a model with its encoded, reusable parts.
type servingModel struct {
	m     *Model
	probs []float64
	count prometheus.Counter // predictions of this model
}

// deviceWindow holds a device's recent readings of the metrics the
// models read.
type deviceWindow struct {
	id     string
	series map[string][]fedlearn.Point // oldest first
	elem   *list.Element
}

// trigger is a device's readings at one time: one prediction per model.
type trigger struct {
	dev *deviceWindow
	t   int64
}

// NewRuntime returns a runtime over cfg.Manager's models.
func NewRuntime(cfg RuntimeConfig) *Runtime {
	if cfg.MaxDevices <= 0 {
		cfg.MaxDevices = 1024
	}
	if cfg.MaxPoints <= 0 {
		cfg.MaxPoints = 128
	}
	rt := &Runtime{cfg: cfg, clk: clock.Or(cfg.Clock), log: cfg.Logger, mg: cfg.Manager,
		devices: map[string]*deviceWindow{}, lru: list.New(), seen: map[trigger]struct{}{}}
	if rt.log == nil {
		rt.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	rt.Refresh()
	return rt
}

// Refresh rebuilds the runtime's plan for the Manager's serving models
// and tells the tap which metrics to queue; call it when they change
// (the Manager's Config.Changed). It reads the serving models itself,
// under its own lock, so that of two calls racing (an install's and
// the start-up's) the later leaves the newest models in place, never a
// list taken before the other's install.
func (rt *Runtime) Refresh() {
	rt.refreshMu.Lock()
	defer rt.refreshMu.Unlock()
	p := &plan{horizon: map[string]int64{}}
	for _, m := range rt.mg.List() {
		sm := &servingModel{m: m, probs: make([]float64, m.spec.Arch.Classes), count: rt.mg.m.predictions.WithLabelValues(m.spec.Name)}
		p.models = append(p.models, sm)
		for _, f := range m.spec.Schema.Features {
			p.horizon[f.Metric] = max(p.horizon[f.Metric], int64(f.Window))
		}
	}
	metrics := make([]string, 0, len(p.horizon))
	for k := range p.horizon {
		metrics = append(metrics, k)
	}
	sort.Strings(metrics)
	rt.plan.Store(p)
	rt.cfg.Tap.SetMetrics(metrics)
}

// Run drains the tap until ctx ends.
func (rt *Runtime) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-rt.cfg.Tap.Ready():
		}
		rt.readings = rt.cfg.Tap.Drain(rt.readings)
		rt.Process(ctx, rt.readings)
	}
}

// Process runs one round over readings (oldest first, as committed): it
// adds them to the devices' windows and, as each reading time of a device
// is complete (the next reading is of another device or time), predicts
// for it with every model whose metrics the device sends, then stores
// the round's predictions. Predicting as the readings come, not after
// the whole round, gives a burst drained at once the predictions the same
// readings arriving one by one get: the windows are bounded, and a later
// reading of the burst could push out points an earlier reading time
// needs. Run calls it; tests and benchmarks may too (never concurrently
// with Run).
func (rt *Runtime) Process(ctx context.Context, readings []ingest.TapReading) {
	p := rt.plan.Load()
	if len(p.models) == 0 || len(readings) == 0 {
		return
	}
	clear(rt.seen)
	now := rt.clk.Now()
	rt.round, rt.roundN = append(rt.round[:0], roundFormat), 0
	var cur trigger
	fire := func() {
		if cur.dev == nil || cur.dev.elem == nil {
			return // none yet, or evicted since
		}
		if _, dup := rt.seen[cur]; dup {
			return // a reading time split in the round: predicted once
		}
		served := false
		for _, sm := range p.models {
			if cur.dev.serves(sm.m, cur.t) {
				rt.predict(sm, cur, now)
				served = true
			}
		}
		if served {
			// Not before: a new device's first reading time, split
			// around another device's readings, is served once its
			// later part brings the metrics still missing.
			rt.seen[cur] = struct{}{}
		}
	}
	for i := range readings {
		r := &readings[i]
		h, ok := p.horizon[r.Metric]
		if !ok || math.IsNaN(r.Value) || math.IsInf(r.Value, 0) {
			continue
		}
		dev := rt.device(r.Device)
		tr := trigger{dev: dev, t: r.Time}
		if tr != cur {
			fire()
			cur = tr
		}
		dev.add(r.Metric, fedlearn.Point{T: r.Time, V: r.Value}, h, rt.cfg.MaxPoints)
	}
	fire()
	rt.flush(ctx)
}

// device returns the window of id, making it the most recently seen and
// evicting the least recently seen past MaxDevices.
func (rt *Runtime) device(id string) *deviceWindow {
	if d, ok := rt.devices[id]; ok {
		rt.lru.MoveToFront(d.elem)
		return d
	}
	d := &deviceWindow{id: id, series: map[string][]fedlearn.Point{}}
	d.elem = rt.lru.PushFront(d)
	rt.devices[id] = d
	for len(rt.devices) > rt.cfg.MaxDevices {
		old := rt.lru.Remove(rt.lru.Back()).(*deviceWindow)
		old.elem = nil
		delete(rt.devices, old.id)
		rt.mg.m.evicted.Inc()
	}
	return d
}

// add inserts p in time order and drops readings older than the horizon
// before the newest (keeping the newest) and past maxPoints.
func (d *deviceWindow) add(metric string, p fedlearn.Point, horizon int64, maxPoints int) {
	pts := d.series[metric]
	i := len(pts)
	for i > 0 && pts[i-1].T > p.T {
		i--
	}
	if i > 0 && pts[i-1].T == p.T {
		pts[i-1] = p // the same reading again
	} else {
		pts = append(pts, fedlearn.Point{})
		copy(pts[i+1:], pts[i:])
		pts[i] = p
	}
	newest := pts[len(pts)-1].T
	drop := 0
	for drop < len(pts)-1 && (pts[drop].T <= newest-horizon || len(pts)-drop > maxPoints) {
		drop++
	}
	if drop > 0 {
		n := copy(pts, pts[drop:])
		pts = pts[:n]
	}
	d.series[metric] = pts
}

// serves reports the rule of which device a model runs for: the device
// has sent every metric the model reads (it holds a reading of each),
// and its readings at time t include at least one of them.
func (d *deviceWindow) serves(m *Model, t int64) bool {
	hit := false
	for _, metric := range m.metrics {
		pts := d.series[metric]
		if len(pts) == 0 {
			return false
		}
		if !hit {
			k := sort.Search(len(pts), func(k int) bool { return pts[k].T >= t })
			hit = k < len(pts) && pts[k].T == t
		}
	}
	return hit
}

func (d *deviceWindow) points(metric string) []fedlearn.Point { return d.series[metric] }

// predict runs one model for one trigger and queues its outputs.
func (rt *Runtime) predict(sm *servingModel, tr trigger, now time.Time) {
	start := time.Now()
	m := sm.m
	n := len(m.spec.Schema.Features)
	if cap(rt.raw) < n {
		rt.raw = make([]float64, n)
	}
	raw := rt.raw[:n]
	m.spec.Schema.Extract(raw, tr.t, tr.dev.points)
	c, err := m.predictInto(raw, sm.probs)
	if err != nil {
		rt.log.Warn("prediction failed", "model", m.spec.Name, "device", tr.dev.id, "err", err)
		return
	}
	rt.mg.m.latency.Observe(time.Since(start).Seconds())
	sm.count.Inc()
	if rt.cfg.Store != nil {
		rt.round = appendPrediction(rt.round, tr.dev.id, m.spec.Name, m.spec.Version, m.spec.Labels[c], c, tr.t/1e3, now.UnixMicro(), sm.probs)
		rt.roundN++
	}
}

// flush stores the round's predictions.
func (rt *Runtime) flush(ctx context.Context) {
	if rt.roundN > 0 {
		if err := rt.cfg.Store.AddRound(ctx, rt.roundN, rt.clk.Now(), rt.round); err != nil {
			rt.mg.m.storeFailures.Add(float64(rt.roundN))
			rt.log.Warn("predictions not stored", "count", rt.roundN, "err", err)
		}
	}
	if cap(rt.round) > 64<<10 {
		rt.round = nil // a backlog's round: not kept
	}
}
