// Package devices is the agent's device registry: it keeps the replicated
// LWW collection "devices" up to date with one Record per device the agent
// ingests from (written on first sight, then at most every interval), fed
// by ingestion's commits. It writes through a Put function the agent gives
// it (a replicated write) and reads nothing but its own state.
package devices

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/prometheus/client_golang/prometheus"
)

// Record is a device's entry in the replicated device registry (LWW
// collection "devices", key = device id). Each agent writes the records
// of the devices it ingests from; when a device moves to another agent,
// that agent's later write wins.
type Record struct {
	// ID is the device id (from its telemetry topic).
	ID string `json:"id"`
	// Agent is the node name of the agent that ingests from it.
	Agent string `json:"agent"`
	// FirstSeen and LastSeen are the receive times of its first and latest
	// committed messages at that agent.
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	// Messages and Readings count what that agent committed from it
	// (messages dead-lettered excluded).
	Messages int64 `json:"messages"`
	Readings int64 `json:"readings"`
	// Rate is its messages per second since the agent's previous write of
	// the record (its lifetime average on the first write after a
	// restart, 0 on the very first).
	Rate float64 `json:"rate"`
	// LastValues holds the latest numeric value of each metric (booleans
	// as 0 and 1); string and data readings are not listed.
	LastValues map[string]float64 `json:"last_values"`
	// Updated is when the agent wrote this record.
	Updated time.Time `json:"updated"`
}

// maxPendingDevices bounds the devices whose updates wait for the
// registry's worker; beyond it updates are dropped, counted, and the
// worker re-reads every device's counters from the ingestion database.
const maxPendingDevices = 50_000

// devUpdate accumulates a device's activity between two passes of the
// registry's worker.
type devUpdate struct {
	first, last time.Time
	messages    int64
	readings    int64
	values      map[string]timedValue
}

type timedValue struct {
	at time.Time
	v  float64
}

// devState is the registry's view of one device.
type devState struct {
	first, last time.Time
	messages    int64
	readings    int64
	rate        float64
	values      map[string]timedValue
	// wrote* describe the last record written by this process.
	wroteAt       time.Time
	wroteLast     time.Time
	wroteMessages int64
	written       bool
	dirty         bool
}

// Config configures a Registry. Put is required.
type Config struct {
	// Agent is this agent's node name, written into every record.
	Agent string
	// Interval is the least time between two writes of a device's record
	// (ingest.device_registry_interval); its first sight is written at once.
	Interval time.Duration
	// Put writes a device's record (value: its JSON) as a replicated write.
	Put func(ctx context.Context, id string, value []byte) error
	// Reload returns this agent's devices from the ingestion database; it
	// is called after updates were dropped. Nil skips that.
	Reload func(ctx context.Context) ([]ingest.Device, error)
	// Clock is the registry's clock; nil means clock.Real().
	Clock clock.Clock
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
}

// Registry keeps the "devices" collection up to date. Ingestion tells it
// about commits on its acknowledging goroutine (Committed, DevicesSeen),
// which must not wait: updates are merged into a bounded map per device
// and a worker writes the records, a device's at once on first sight and
// then at most every interval.
type Registry struct {
	agent    string
	interval time.Duration
	clock    clock.Clock
	put      func(ctx context.Context, id string, value []byte) error
	reload   func(ctx context.Context) ([]ingest.Device, error) // this agent's devices from the ingestion database
	log      *slog.Logger
	// maxPending bounds the pending map (maxPendingDevices).
	maxPending int

	mu       sync.Mutex
	pending  map[string]*devUpdate
	overflow bool
	wake     chan struct{}
	// flushes asks the worker to write every changed record now (Flush).
	flushes chan chan struct{}

	// Owned by the worker (or by the caller before run and after it ends).
	state map[string]*devState

	writes  atomic.Int64
	dropped atomic.Int64
	errors  atomic.Int64

	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a registry; it writes nothing until Start.
func New(cfg Config) (*Registry, error) {
	if cfg.Put == nil {
		return nil, errors.New("devices: Config.Put is required")
	}
	if cfg.Interval <= 0 {
		return nil, fmt.Errorf("devices: interval %v is not positive", cfg.Interval)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Registry{
		agent: cfg.Agent, interval: cfg.Interval, clock: clock.Or(cfg.Clock), put: cfg.Put, reload: cfg.Reload, log: log,
		maxPending: maxPendingDevices,
		pending:    map[string]*devUpdate{},
		wake:       make(chan struct{}, 1),
		flushes:    make(chan chan struct{}),
		state:      map[string]*devState{},
	}, nil
}

// Stats counts the registry's work since New.
type Stats struct {
	Writes  int64 // records written
	Dropped int64 // updates dropped past the pending bound
	Errors  int64 // failed writes (retried)
}

// Stats returns the registry's counters.
func (r *Registry) Stats() Stats {
	return Stats{Writes: r.writes.Load(), Dropped: r.dropped.Load(), Errors: r.errors.Load()}
}

// Register exposes the registry's counters on reg.
func (r *Registry) Register(reg *prometheus.Registry) error {
	for _, c := range []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "edgefleet_device_registry_writes_total",
			Help: "Device records written to the replicated device registry."}, func() float64 { return float64(r.writes.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "edgefleet_device_registry_dropped_total",
			Help: "Device updates dropped because too many devices were waiting to be written (counters are then re-read from the ingestion database)."},
			func() float64 { return float64(r.dropped.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "edgefleet_device_registry_errors_total",
			Help: "Failed writes of device records (retried)."}, func() float64 { return float64(r.errors.Load()) }),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// entry returns the pending update of device, or nil when the pending map
// is full (the update is dropped and counted). r.mu is held.
func (r *Registry) entry(device string) *devUpdate {
	u := r.pending[device]
	if u != nil {
		return u
	}
	if len(r.pending) >= r.maxPending {
		r.dropped.Add(1)
		r.overflow = true
		return nil
	}
	u = &devUpdate{}
	r.pending[strings.Clone(device)] = u
	return u
}

// Committed takes the latest numeric value of each metric from a commit's
// readings (ingest.Sink).
func (r *Registry) Committed(c ingest.Commit) {
	if len(c.Readings) == 0 {
		return
	}
	r.mu.Lock()
	var u *devUpdate
	dev := ""
	for i := range c.Readings {
		rd := &c.Readings[i]
		if rd.Kind != ingest.KindNumber && rd.Kind != ingest.KindBool {
			continue
		}
		if u == nil || rd.Device != dev {
			dev = rd.Device
			if u = r.entry(dev); u == nil {
				continue
			}
		}
		if u.values == nil {
			u.values = map[string]timedValue{}
		}
		if old, ok := u.values[rd.Metric]; !ok || !rd.Time.Before(old.at) {
			u.values[rd.Metric] = timedValue{at: rd.Time, v: rd.Value}
		}
	}
	r.mu.Unlock()
	r.signal()
}

// DevicesSeen counts the devices' messages and readings
// (ingest.DeviceObserver).
func (r *Registry) DevicesSeen(seen []ingest.DeviceSeen) {
	r.mu.Lock()
	for _, s := range seen {
		u := r.entry(s.Device)
		if u == nil {
			continue
		}
		if u.first.IsZero() || s.At.Before(u.first) {
			u.first = s.At
		}
		if s.At.After(u.last) {
			u.last = s.At
		}
		u.messages += int64(s.Messages)
		u.readings += int64(s.Readings)
	}
	r.mu.Unlock()
	r.signal()
}

func (r *Registry) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Seed loads this agent's devices from the ingestion database, so counters
// continue across restarts. Nothing is written until a device is seen.
func (r *Registry) Seed(devs []ingest.Device) {
	for _, d := range devs {
		st := &devState{first: d.FirstSeen, last: d.LastSeen, messages: d.Messages, readings: d.Readings, rate: d.Rate,
			values: map[string]timedValue{}}
		for _, m := range d.Metrics {
			if m.Kind == ingest.KindNumber.String() || m.Kind == ingest.KindBool.String() {
				st.values[m.Name] = timedValue{at: m.LastTime, v: m.Value}
			}
		}
		r.state[d.ID] = st
	}
}

// Start runs the worker until Stop.
func (r *Registry) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.done = make(chan struct{})
	tick := min(r.interval/4, time.Second)
	go func() {
		defer close(r.done)
		t := r.clock.NewTicker(tick)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case done := <-r.flushes:
				r.pass(ctx, true)
				close(done)
				continue
			case <-r.wake:
			case <-t.C():
			}
			r.pass(ctx, false)
		}
	}()
}

// Flush makes the running worker write every record with unwritten
// changes now, not when its interval is due, and waits until it has (or
// ctx ends, or the worker is not running). Not concurrently with Start
// or Stop.
func (r *Registry) Flush(ctx context.Context) error {
	if r.cancel == nil {
		return errors.New("devices: flush: registry not started")
	}
	done := make(chan struct{})
	select {
	case r.flushes <- done:
	case <-r.done:
		return errors.New("devices: flush: registry stopped")
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stop ends the worker; with flush, every record with unwritten changes
// is written first.
func (r *Registry) Stop(ctx context.Context, flush bool) {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
	r.cancel = nil
	if flush {
		r.pass(ctx, true)
	}
}

// pass merges the pending updates and writes the records that are due
// (all changed ones with force).
func (r *Registry) pass(ctx context.Context, force bool) {
	r.mu.Lock()
	pending, overflow := r.pending, r.overflow
	if len(pending) > 0 {
		r.pending = make(map[string]*devUpdate, len(pending))
	} else {
		pending = nil // r.pending stays in use by the commit path
	}
	r.overflow = false
	r.mu.Unlock()

	for id, u := range pending {
		st := r.state[id]
		if st == nil {
			st = &devState{values: map[string]timedValue{}}
			r.state[id] = st
		}
		if !u.first.IsZero() && (st.first.IsZero() || u.first.Before(st.first)) {
			st.first = u.first
		}
		if u.last.After(st.last) {
			st.last = u.last
		}
		st.messages += u.messages
		st.readings += u.readings
		for m, v := range u.values {
			if old, ok := st.values[m]; !ok || !v.at.Before(old.at) {
				st.values[m] = v
			}
		}
		st.dirty = true
	}
	if overflow && r.reload != nil {
		r.resync(ctx)
	}

	now := r.clock.Now()
	for id, st := range r.state {
		if !st.dirty || st.messages == 0 && len(st.values) == 0 {
			continue
		}
		if !force && st.written && now.Sub(st.wroteAt) < r.interval {
			continue
		}
		if ctx.Err() != nil {
			return
		}
		r.write(ctx, id, st, now)
	}
}

// resync re-reads every device's counters from the ingestion database
// after updates were dropped.
func (r *Registry) resync(ctx context.Context) {
	devs, err := r.reload(ctx)
	if err != nil {
		r.log.Warn("device registry: re-reading devices after dropped updates", "err", err)
		return
	}
	r.log.Warn("device registry: too many devices waiting; counters re-read from the ingestion database", "devices", len(devs))
	for _, d := range devs {
		st := r.state[d.ID]
		if st == nil {
			st = &devState{values: map[string]timedValue{}}
			r.state[d.ID] = st
		}
		if st.messages != d.Messages || st.readings != d.Readings || !st.last.Equal(d.LastSeen) {
			st.dirty = true
		}
		st.first, st.last, st.messages, st.readings = d.FirstSeen, d.LastSeen, d.Messages, d.Readings
		for _, m := range d.Metrics {
			if m.Kind == ingest.KindNumber.String() || m.Kind == ingest.KindBool.String() {
				if old, ok := st.values[m.Name]; !ok || !m.LastTime.Before(old.at) {
					st.values[m.Name] = timedValue{at: m.LastTime, v: m.Value}
				}
			}
		}
	}
}

// write stores one device's record; a failure leaves it dirty for the
// next pass.
func (r *Registry) write(ctx context.Context, id string, st *devState, now time.Time) {
	rate := st.rate
	if st.written {
		rate = 0
		if span := st.last.Sub(st.wroteLast).Seconds(); span > 0 {
			rate = float64(st.messages-st.wroteMessages) / span
		}
	}
	if math.IsNaN(rate) || math.IsInf(rate, 0) || rate < 0 {
		rate = 0
	}
	rec := Record{ID: id, Agent: r.agent, FirstSeen: st.first.UTC(), LastSeen: st.last.UTC(),
		Messages: st.messages, Readings: st.readings, Rate: rate,
		LastValues: make(map[string]float64, len(st.values)), Updated: now.UTC()}
	for m, v := range st.values {
		rec.LastValues[m] = v.v
	}
	b, err := json.Marshal(rec)
	if err != nil {
		r.errors.Add(1)
		r.log.Error("device registry: encoding record", "device", id, "err", err)
		return
	}
	if err := r.put(ctx, id, b); err != nil {
		r.errors.Add(1)
		if !errors.Is(err, context.Canceled) {
			r.log.Warn("device registry: writing record; retrying", "device", id, "err", err)
		}
		return
	}
	r.writes.Add(1)
	st.rate = rate
	st.wroteAt, st.wroteLast, st.wroteMessages = now, st.last, st.messages
	st.written, st.dirty = true, false
}

// Decode decodes a registry value read from replicated state (key: the
// device id).
func Decode(key string, value []byte) (Record, error) {
	if err := ingest.CheckDeviceID(key); err != nil {
		return Record{}, fmt.Errorf("devices: record key: %w", err)
	}
	var rec Record
	if err := json.Unmarshal(value, &rec); err != nil {
		return Record{}, fmt.Errorf("devices: record %q: %w", key, err)
	}
	if rec.ID == "" {
		rec.ID = key
	}
	if rec.ID != key {
		return Record{}, fmt.Errorf("devices: record %q holds id %q", key, rec.ID)
	}
	if rec.LastValues == nil {
		rec.LastValues = map[string]float64{}
	}
	return rec, nil
}
