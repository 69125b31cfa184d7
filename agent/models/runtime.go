package models

import (
	"container/list"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sort"
	"strconv"
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
	// Publisher publishes predictions; nil publishes none.
	Publisher Publisher
	// Store keeps predictions; nil keeps none.
	Store *Store
	// MaxDevices bounds the devices whose recent readings are held; past
	// it the least recently seen device's window is dropped (counted in
	// edgefleet_inference_devices_evicted_total). Default 1024.
	MaxDevices int
	// MaxPoints bounds the readings held per device and metric. Default
	// 128.
	MaxPoints int
	// MaxInFlight bounds the predictions published and not yet
	// acknowledged by the broker; past it predictions are not published
	// (counted in edgefleet_inference_publish_failures_total), so a slow
	// broker never holds inference back nor grows memory (about 1 KB
	// each). Default 128.
	MaxInFlight int
	// Clock stamps predictions. Nil means clock.Real().
	Clock clock.Clock
	// Logger receives the runtime's logs. Nil discards them.
	Logger *slog.Logger
}

// Runtime runs the deployed models on the readings ingestion commits.
// One goroutine (Run) drains the tap, updates the devices' windows,
// predicts, then publishes and stores the round's predictions: the
// commit path only hands readings to the tap.
type Runtime struct {
	cfg RuntimeConfig
	clk clock.Clock
	log *slog.Logger
	mg  *Manager

	// plan is what the serving models need, rebuilt when they change.
	plan atomic.Pointer[plan]

	devices map[string]*deviceWindow
	lru     *list.List // *deviceWindow, most recently seen at the front

	// Scratch reused across rounds.
	readings []ingest.TapReading
	pending  []trigger
	seen     map[trigger]struct{}
	raw      []float64
	out      []outgoing
	round    []byte // the round's predictions, encoded for the Store
	roundN   int
	inflight []ingest.Sent
	failed   int       // publish failures since the last log
	lastLog  time.Time // of publish failures
	lastErr  error
}

// outgoing is a prediction to publish.
type outgoing struct {
	topic   string
	payload []byte
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
	m       *Model
	name    []byte // JSON strings
	version []byte
	labels  [][]byte
	probs   []float64
	count   prometheus.Counter // predictions of this model
}

// deviceWindow holds a device's recent readings of the metrics the
// models read.
type deviceWindow struct {
	id     string
	topic  string                      // InferenceTopic(id)
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
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 128
	}
	rt := &Runtime{cfg: cfg, clk: clock.Or(cfg.Clock), log: cfg.Logger, mg: cfg.Manager,
		devices: map[string]*deviceWindow{}, lru: list.New(), seen: map[trigger]struct{}{}}
	if rt.log == nil {
		rt.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	rt.SetModels(cfg.Manager.List())
	return rt
}

// SetModels rebuilds the runtime's plan for the serving models (the
// Manager's Config.Changed) and tells the tap which metrics to queue.
func (rt *Runtime) SetModels(serving []*Model) {
	p := &plan{horizon: map[string]int64{}}
	for _, m := range serving {
		sm := &servingModel{m: m, name: jsonString(m.spec.Name), version: jsonString(m.spec.Version),
			probs: make([]float64, m.spec.Arch.Classes), count: rt.mg.m.predictions.WithLabelValues(m.spec.Name)}
		for _, l := range m.spec.Labels {
			sm.labels = append(sm.labels, jsonString(l))
		}
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

func jsonString(s string) []byte {
	b, _ := json.Marshal(s) // a string always encodes
	return b
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

// Process runs one round over readings (oldest first): it adds them to
// the devices' windows, predicts for each device and reading time with
// every model whose metrics the device sends, and publishes and stores
// the predictions. Run calls it; tests and benchmarks may too (never
// concurrently with Run).
func (rt *Runtime) Process(ctx context.Context, readings []ingest.TapReading) {
	p := rt.plan.Load()
	if len(p.models) == 0 || len(readings) == 0 {
		return
	}
	rt.pending = rt.pending[:0]
	clear(rt.seen)
	for i := range readings {
		r := &readings[i]
		h, ok := p.horizon[r.Metric]
		if !ok || math.IsNaN(r.Value) || math.IsInf(r.Value, 0) {
			continue
		}
		dev := rt.device(r.Device)
		t := r.Time
		dev.add(r.Metric, fedlearn.Point{T: t, V: r.Value}, h, rt.cfg.MaxPoints)
		tr := trigger{dev: dev, t: t}
		if _, dup := rt.seen[tr]; !dup {
			rt.seen[tr] = struct{}{}
			rt.pending = append(rt.pending, tr)
		}
	}
	now := rt.clk.Now()
	rt.out, rt.round, rt.roundN = rt.out[:0], append(rt.round[:0], roundFormat), 0
	for _, tr := range rt.pending {
		if tr.dev.elem == nil {
			continue // evicted later in this round
		}
		for _, sm := range p.models {
			if !tr.dev.serves(sm.m, tr.t) {
				continue
			}
			rt.predict(sm, tr, now)
		}
	}
	rt.flush(ctx)
}

// device returns the window of id, making it the most recently seen and
// evicting the least recently seen past MaxDevices.
func (rt *Runtime) device(id string) *deviceWindow {
	if d, ok := rt.devices[id]; ok {
		rt.lru.MoveToFront(d.elem)
		return d
	}
	d := &deviceWindow{id: id, topic: InferenceTopic(id), series: map[string][]fedlearn.Point{}}
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
	at := time.Unix(0, tr.t).UTC()
	if rt.cfg.Publisher != nil {
		// Each payload is its own: the MQTT client holds it until the
		// broker acknowledges it.
		rt.out = append(rt.out, outgoing{tr.dev.topic, appendPayload(make([]byte, 0, 160+32*len(sm.probs)), sm, tr.dev.id, c, at)})
	}
	if rt.cfg.Store != nil {
		rt.round = appendPrediction(rt.round, tr.dev.id, m.spec.Name, m.spec.Version, m.spec.Labels[c], c, at.UnixMicro(), now.UnixMicro(), sm.probs)
		rt.roundN++
	}
}

// appendPayload appends the JSON of a prediction as published:
//
//	{"model":"occupancy","version":"3","device":"room-1",
//	 "class":{"index":1,"label":"occupied"},"probabilities":[0.02,0.98],
//	 "time":"2026-01-02T03:04:05.123456Z"}
//
// time is the reading's time; probabilities are in class order.
func appendPayload(b []byte, sm *servingModel, device string, class int, at time.Time) []byte {
	b = append(b, `{"model":`...)
	b = append(b, sm.name...)
	b = append(b, `,"version":`...)
	b = append(b, sm.version...)
	b = append(b, `,"device":`...)
	b = strconv.AppendQuote(b, device) // device ids are plain ASCII (ingest.CheckDeviceID)
	b = append(b, `,"class":{"index":`...)
	b = strconv.AppendInt(b, int64(class), 10)
	b = append(b, `,"label":`...)
	b = append(b, sm.labels[class]...)
	b = append(b, `},"probabilities":[`...)
	for i, v := range sm.probs {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendFloat(b, v, 'g', -1, 64)
	}
	b = append(b, `],"time":"`...)
	b = at.AppendFormat(b, time.RFC3339Nano)
	return append(b, `"}`...)
}

// flush publishes and stores the round's predictions.
func (rt *Runtime) flush(ctx context.Context) {
	if len(rt.out) > 0 {
		rt.reap()
		for i, o := range rt.out {
			if len(rt.inflight) >= rt.cfg.MaxInFlight {
				rt.reap()
			}
			if len(rt.inflight) >= rt.cfg.MaxInFlight {
				rt.publishFailed(len(rt.out)-i, fmt.Errorf("models: %d predictions await the broker's acknowledgement (the most in flight)", len(rt.inflight)))
				break
			}
			s, err := rt.cfg.Publisher.Send(o.topic, o.payload)
			if err != nil {
				rt.publishFailed(1, err)
				continue
			}
			rt.inflight = append(rt.inflight, s)
		}
		clear(rt.out)
		if cap(rt.out) > 1024 {
			rt.out = nil
		}
	}
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

// reap drops the acknowledged messages from the in-flight list, counting
// the failed ones.
func (rt *Runtime) reap() {
	keep := rt.inflight[:0]
	for _, s := range rt.inflight {
		select {
		case <-s.Done():
			if err := s.Err(); err != nil {
				rt.publishFailed(1, err)
			}
		default:
			keep = append(keep, s)
		}
	}
	clear(rt.inflight[len(keep):])
	rt.inflight = keep
}

// publishLogEvery spaces the logs of failed publishes.
const publishLogEvery = 10 * time.Second

// publishFailed counts n predictions not published, and logs them at
// most every publishLogEvery.
func (rt *Runtime) publishFailed(n int, err error) {
	rt.mg.m.publishFailures.Add(float64(n))
	rt.failed += n
	rt.lastErr = err
	if now := time.Now(); now.Sub(rt.lastLog) >= publishLogEvery {
		rt.log.Warn("predictions not published (they are stored)", "count", rt.failed, "last_err", rt.lastErr)
		rt.failed, rt.lastLog = 0, now
	}
}
