package ingest

import (
	"sync"
	"sync/atomic"
)

// Tap is a post-commit observer: a Sink that copies the numeric readings
// of each commit that its filter accepts into a bounded queue, for a
// consumer on another goroutine (the model runtime runs inference on
// them). Committed never blocks and never waits for the consumer, so a
// slow consumer cannot delay the acknowledgement of the next commits:
// it takes the tap's lock for as long as copying the accepted readings
// takes, and the consumer holds that lock only to swap a buffer.
//
// When the queue is full the oldest queued readings are dropped to make
// room for the new ones and counted (Dropped): the consumer sees the
// most recent readings, which are the ones its predictions are about.
// Readings are never coalesced: two readings of one device and metric
// both stay queued.
//
// The device and metric names of the readings a Tap hands on are its
// own strings (interned, at most TapConfig.MaxNames of them, then
// copied), so they can be kept.
type Tap struct {
	max   int
	names int

	// accept holds the metric names the consumer wants; nil accepts
	// none, so a tap without a consumer costs a pointer load per commit.
	accept atomic.Pointer[map[string]struct{}]

	mu      sync.Mutex
	queue   []TapReading // oldest first
	intern  map[string]string
	dropped atomic.Int64
	ready   chan struct{} // holds a token while the queue is not empty
}

// TapReading is a numeric reading as a Tap hands it on (48 bytes, half a
// Reading).
type TapReading struct {
	Device string
	Metric string
	Time   int64 // Unix nanoseconds
	Value  float64
}

// TapConfig configures a Tap.
type TapConfig struct {
	// MaxReadings bounds the queue. Default 4096.
	MaxReadings int
	// MaxNames bounds the interned device and metric names. Default 4096.
	MaxNames int
}

// NewTap returns a tap that accepts no metric until SetMetrics.
func NewTap(cfg TapConfig) *Tap {
	if cfg.MaxReadings <= 0 {
		cfg.MaxReadings = 4096
	}
	if cfg.MaxNames <= 0 {
		cfg.MaxNames = 4096
	}
	return &Tap{max: cfg.MaxReadings, names: cfg.MaxNames, intern: map[string]string{}, ready: make(chan struct{}, 1)}
}

// SetMetrics sets the metrics whose numeric readings the tap queues;
// none (nil or empty) turns it off.
func (t *Tap) SetMetrics(metrics []string) {
	if len(metrics) == 0 {
		t.accept.Store(nil)
		return
	}
	m := make(map[string]struct{}, len(metrics))
	for _, s := range metrics {
		m[s] = struct{}{}
	}
	t.accept.Store(&m)
}

// Committed queues the accepted numeric readings of c (Sink).
func (t *Tap) Committed(c Commit) {
	acc := t.accept.Load()
	if acc == nil || len(c.Readings) == 0 {
		return
	}
	t.mu.Lock()
	added := false
	for i := range c.Readings {
		r := &c.Readings[i]
		if !r.Kind.numeric() {
			continue
		}
		if _, ok := (*acc)[r.Metric]; !ok {
			continue
		}
		if len(t.queue) >= t.max {
			// Drop the oldest half-percent at once (at least one), so a
			// full queue does not shift its whole content per reading.
			n := max(1, t.max/200)
			k := copy(t.queue, t.queue[n:])
			clear(t.queue[k:])
			t.queue = t.queue[:k]
			t.dropped.Add(int64(n))
		}
		t.queue = append(t.queue, TapReading{Device: t.name(r.Device), Metric: t.name(r.Metric),
			Time: r.Time.UnixNano(), Value: r.Value})
		added = true
	}
	t.mu.Unlock()
	if added {
		select {
		case t.ready <- struct{}{}:
		default:
		}
	}
}

// name returns the tap's own copy of s. The caller holds t.mu.
func (t *Tap) name(s string) string {
	if v, ok := t.intern[s]; ok {
		return v
	}
	v := string(append([]byte(nil), s...))
	if len(t.intern) < t.names {
		t.intern[v] = v
	}
	return v
}

// Ready has a value when readings may be queued; receive from it, then
// Drain.
func (t *Tap) Ready() <-chan struct{} { return t.ready }

// Drain moves the queued readings, oldest first, into dst (whose
// content it replaces) and returns it. Pass the slice back on the next
// call to reuse its array.
func (t *Tap) Drain(dst []TapReading) []TapReading {
	clear(dst)
	dst = dst[:0]
	t.mu.Lock()
	t.queue, dst = dst, t.queue
	t.mu.Unlock()
	return dst
}

// Dropped is how many readings were dropped from a full queue.
func (t *Tap) Dropped() int64 { return t.dropped.Load() }

// Len is how many readings are queued.
func (t *Tap) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.queue)
}

var _ Sink = (*Tap)(nil)
