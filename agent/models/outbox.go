package models

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
)

// OutboxConfig configures an Outbox. Zero fields take the defaults in
// their comments.
type OutboxConfig struct {
	// Store is the predictions database (opened with
	// StoreConfig.Outbox). Required.
	Store *Store
	// Publisher sends the predictions. Required.
	Publisher Publisher
	// MaxInFlight bounds the predictions sent and not yet acknowledged
	// by the broker. Default 128.
	MaxInFlight int
	// AckTimeout is how long the oldest prediction in flight may wait
	// for its acknowledgement before the outbox sends again from it (a
	// connection lost with messages in flight). Default 10s.
	AckTimeout time.Duration
	// MarkEvery spaces the writes of the published mark. Default 250ms.
	// Timeouts, marks and retries are looked at on a ticker of the
	// shortest of MarkEvery, RetryMin and AckTimeout/4.
	MarkEvery time.Duration
	// RetryMin and RetryMax bound the pause after a failed publish,
	// doubling from RetryMin. Defaults 100ms and 5s.
	RetryMin, RetryMax time.Duration
	// Clock times acknowledgements, marks and retries. Nil means
	// clock.Real().
	Clock clock.Clock
	// Logger receives the outbox's logs. Nil discards them.
	Logger *slog.Logger
	// Registry receives the outbox's metrics. Nil leaves them
	// unregistered.
	Registry *prometheus.Registry
}

// Outbox publishes the stored predictions to devices/{id}/inference, in
// the order they were stored, at QoS 1, with at most MaxInFlight
// unacknowledged. It remembers (Store.MarkPublished, at most every
// MarkEvery) how far the broker acknowledged them without a gap; after a
// failed publish, an acknowledgement that does not come within
// AckTimeout, or a restart, it sends again from there. Delivery is
// therefore at least once: a prediction sent but not yet marked is sent
// again, with the same id, and consumers de-duplicate by it. Memory is
// bounded by MaxInFlight payloads and one stored round: the backlog stays
// in the database.
type Outbox struct {
	cfg OutboxConfig
	clk clock.Clock
	log *slog.Logger

	published prometheus.Counter
	failures  prometheus.Counter
	acked     atomic.Int64 // published through this sequence number, without a gap

	// The round being read: its encoding after the predictions already
	// queued, and the sequence number of its next prediction.
	round    []byte
	roundSeq int64
	roundEnd int64 // sequence number of the round's last prediction
	roundIdx int
	cursor   int64 // next sequence number to send

	payload  []byte // scratch for predictions skipped
	topic    []byte // scratch
	inflight []inflightMsg
	retry    time.Duration
	failed   int
	lastLog  time.Time
	lastErr  error
}

// inflightMsg is a prediction sent and not yet acknowledged.
type inflightMsg struct {
	seq  int64
	s    sentWaiter
	sent time.Time
}

// sentWaiter is ingest.Sent.
type sentWaiter interface {
	Done() <-chan struct{}
	Err() error
}

// NewOutbox returns an outbox over cfg.Store; Run publishes.
func NewOutbox(cfg OutboxConfig) (*Outbox, error) {
	if cfg.Store == nil || cfg.Publisher == nil {
		return nil, fmt.Errorf("models: outbox needs a store and a publisher")
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 128
	}
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = 10 * time.Second
	}
	if cfg.MarkEvery <= 0 {
		cfg.MarkEvery = 250 * time.Millisecond
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 100 * time.Millisecond
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(5*time.Second, cfg.RetryMin)
	}
	o := &Outbox{cfg: cfg, clk: clock.Or(cfg.Clock), log: cfg.Logger,
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_inference_published_total",
			Help: "Predictions the broker acknowledged on devices/{id}/inference (a prediction sent again after a failure may count twice).",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_inference_publish_failures_total",
			Help: "Predictions whose publish failed or was not acknowledged in time; they stay in the predictions database and are sent again.",
		}),
	}
	if o.log == nil {
		o.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	st := cfg.Store
	o.acked.Store(st.Published())
	o.cursor = st.Published() + 1
	if reg := cfg.Registry; reg != nil {
		for _, c := range []prometheus.Collector{o.published, o.failures,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "edgefleet_inference_publish_backlog",
				Help: "Stored predictions not yet acknowledged by the broker.",
			}, func() float64 { return float64(max(0, st.Total()-max(o.acked.Load(), st.Published()))) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "edgefleet_inference_unpublished_dropped_total",
				Help: "Predictions deleted by the predictions database's count bound (models.predictions_max_rows) before they were published.",
			}, func() float64 { return float64(st.UnpublishedDropped()) }),
		} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("models: registering outbox metrics: %w", err)
			}
		}
	}
	return o, nil
}

// Acked is the sequence number through which the broker acknowledged
// the predictions without a gap.
func (o *Outbox) Acked() int64 { return o.acked.Load() }

// Run publishes until ctx ends, then writes the published mark.
func (o *Outbox) Run(ctx context.Context) {
	st := o.cfg.Store
	marked := st.Published()
	lastMark := o.clk.Now()
	var retryAt time.Time
	tick := o.clk.NewTicker(min(o.cfg.MarkEvery, o.cfg.RetryMin, o.cfg.AckTimeout/4))
	defer tick.Stop()
	for {
		now := o.clk.Now()
		o.reap(now)
		if len(o.inflight) == 0 && o.cursor <= o.acked.Load() {
			o.cursor = o.acked.Load() + 1
		}
		if !now.Before(retryAt) {
			if err := o.fill(ctx, now); err != nil {
				o.fail(err)
				retryAt = now.Add(o.retry)
			}
		}
		acked := o.acked.Load()
		if acked > marked && (now.Sub(lastMark) >= o.cfg.MarkEvery || acked >= st.Total()) {
			if err := st.MarkPublished(context.WithoutCancel(ctx), acked); err != nil {
				o.log.Warn("could not record the published predictions; they may be sent again", "err", err)
			}
			marked, lastMark = acked, now
		}

		// Wait for the oldest acknowledgement, new predictions, the
		// ticker (acknowledgement timeout, mark, retry) or the end. The
		// ticker is one for the run: a timer per wait would be garbage
		// at every acknowledgement.
		var front, added <-chan struct{}
		var tc <-chan time.Time
		if len(o.inflight) > 0 {
			front, tc = o.inflight[0].s.Done(), tick.C()
		}
		if acked > marked || now.Before(retryAt) {
			tc = tick.C()
		}
		if !now.Before(retryAt) && len(o.inflight) < o.cfg.MaxInFlight {
			added = st.Added()
		}
		select {
		case <-ctx.Done():
			if a := o.acked.Load(); a > marked {
				if err := st.MarkPublished(context.WithoutCancel(ctx), a); err != nil {
					o.log.Warn("could not record the published predictions; they may be sent again", "err", err)
				}
			}
			return
		case <-front:
		case <-added:
		case <-tc:
		}
	}
}

// reap takes the acknowledged predictions off the front of the in-flight
// list. A failed or overdue one sends again from the oldest unacknowledged.
func (o *Outbox) reap(now time.Time) {
	n := 0
	for n < len(o.inflight) {
		m := o.inflight[n]
		select {
		case <-m.s.Done():
			if err := m.s.Err(); err != nil {
				o.fail(err)
				return
			}
			o.acked.Store(max(o.acked.Load(), m.seq))
			o.published.Inc()
			n++
			continue
		default:
		}
		if now.Sub(m.sent) >= o.cfg.AckTimeout {
			o.fail(fmt.Errorf("models: prediction %d not acknowledged within %s", m.seq, o.cfg.AckTimeout))
			return
		}
		break
	}
	k := copy(o.inflight, o.inflight[n:])
	clear(o.inflight[k:])
	o.inflight = o.inflight[:k]
	if n > 0 {
		o.retry = 0
	}
}

// fill sends stored predictions until MaxInFlight are in flight or none
// is left.
func (o *Outbox) fill(ctx context.Context, now time.Time) error {
	st := o.cfg.Store
	for len(o.inflight) < o.cfg.MaxInFlight {
		if len(o.round) == 0 {
			first, last, data, ok, err := st.roundAfter(ctx, o.cursor-1)
			if err != nil || !ok {
				return err
			}
			if len(data) < 1 || data[0] != roundFormat {
				o.skip(first, last, fmt.Errorf("%w: format byte", errRound))
				continue
			}
			o.round, o.roundSeq, o.roundEnd, o.roundIdx = data[1:], first, last, 0
			if o.cursor < first { // dropped by the count bound
				o.cursor = first
			}
		}
		seq := o.roundSeq + int64(o.roundIdx)
		payload := o.payload[:0]
		if seq >= o.cursor {
			payload = make([]byte, 0, 256) // the MQTT client holds it until acknowledged
		}
		payload, device, rest, err := appendPayloadFromRound(payload, o.round, st.Epoch(), seq)
		if err != nil {
			o.skip(seq, o.roundEnd, fmt.Errorf("%w: prediction %d: %v", errRound, o.roundIdx, err))
			continue
		}
		o.round, o.roundIdx = rest, o.roundIdx+1
		if seq < o.cursor {
			o.payload = payload // scratch: not sent
			continue            // sent before a rewind's mark, or acknowledged
		}
		o.topic = append(append(append(o.topic[:0], "devices/"...), device...), "/inference"...)
		s, err := o.cfg.Publisher.Send(string(o.topic), payload)
		if err != nil {
			o.rewind()
			return err
		}
		o.inflight = append(o.inflight, inflightMsg{seq: seq, s: s, sent: now})
		o.cursor = seq + 1
	}
	return nil
}

// skip passes over the stored predictions first..last that do not
// decode (a damaged database): they cannot be published.
func (o *Outbox) skip(first, last int64, err error) {
	o.log.Error("stored predictions do not decode; they are not published", "from", first, "through", last, "err", err)
	o.failures.Add(float64(last - first + 1))
	o.round = nil
	o.cursor = max(o.cursor, last+1)
	if len(o.inflight) == 0 {
		o.acked.Store(max(o.acked.Load(), last))
	}
}

// rewind forgets what is in flight: the next fill sends again from the
// oldest unacknowledged prediction.
func (o *Outbox) rewind() {
	clear(o.inflight)
	o.inflight = o.inflight[:0]
	o.round = nil
	o.cursor = o.acked.Load() + 1
}

// publishLogEvery spaces the logs of failed publishes.
const publishLogEvery = 10 * time.Second

// fail counts a failed publish, rewinds and doubles the pause before the
// next try; it logs at most every publishLogEvery.
func (o *Outbox) fail(err error) {
	n := max(1, len(o.inflight))
	o.failures.Add(float64(n))
	o.rewind()
	o.retry = min(max(2*o.retry, o.cfg.RetryMin), o.cfg.RetryMax)
	o.failed += n
	o.lastErr = err
	if now := o.clk.Now(); now.Sub(o.lastLog) >= publishLogEvery {
		o.log.Warn("predictions not published yet; they are stored and sent again", "count", o.failed, "retry_in", o.retry, "last_err", o.lastErr)
		o.failed, o.lastLog = 0, now
	}
}

// appendPayloadFromRound appends the JSON of the prediction encoded at
// the start of round (appendPrediction's format) as published, and
// returns it with the prediction's device and the rest of round:
//
//	{"id":"1796623200000000-42","model":"occupancy","version":"3",
//	 "device":"room-1","class":{"index":1,"label":"occupied"},
//	 "probabilities":[0.02,0.98],"time":"2026-01-02T03:04:05.123456Z"}
//
// id is PredictionID; time is the reading's time; probabilities are in
// class order. It reads the encoding in place: nothing is allocated
// beyond b's growth.
func appendPayloadFromRound(b, round []byte, epoch, seq int64) (payload, device, rest []byte, err error) {
	errShort := errors.New("truncated")
	field := func() ([]byte, error) {
		n, k := binary.Uvarint(round)
		if k <= 0 || n > uint64(len(round)-k) {
			return nil, errShort
		}
		f := round[k : k+int(n)]
		round = round[k+int(n):]
		return f, nil
	}
	var fs [4][]byte // device, model, version, label
	for i := range fs {
		if fs[i], err = field(); err != nil {
			return b, nil, nil, err
		}
	}
	class, k := binary.Uvarint(round)
	if k <= 0 || class > math.MaxInt32 {
		return b, nil, nil, errShort
	}
	round = round[k:]
	readingUS, k := binary.Varint(round)
	if k <= 0 {
		return b, nil, nil, errShort
	}
	round = round[k:]
	if _, k = binary.Varint(round); k <= 0 { // the prediction's time: not published
		return b, nil, nil, errShort
	}
	round = round[k:]
	nprobs, k := binary.Uvarint(round)
	if k <= 0 || nprobs > uint64(len(round)-k)/8 {
		return b, nil, nil, errShort
	}
	round = round[k:]

	b = append(b, `{"id":"`...)
	b = strconv.AppendInt(b, epoch, 10)
	b = append(b, '-')
	b = strconv.AppendInt(b, seq, 10)
	b = append(b, `","model":`...)
	b = appendJSONBytes(b, fs[1])
	b = append(b, `,"version":`...)
	b = appendJSONBytes(b, fs[2])
	b = append(b, `,"device":`...)
	b = appendJSONBytes(b, fs[0])
	b = append(b, `,"class":{"index":`...)
	b = strconv.AppendUint(b, class, 10)
	b = append(b, `,"label":`...)
	b = appendJSONBytes(b, fs[3])
	b = append(b, `},"probabilities":[`...)
	for i := range int(nprobs) {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendFloat(b, math.Float64frombits(binary.LittleEndian.Uint64(round[8*i:])), 'g', -1, 64)
	}
	round = round[8*nprobs:]
	b = append(b, `],"time":"`...)
	b = time.UnixMicro(readingUS).UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, `"}`...), fs[0], round, nil
}

// appendJSONBytes appends s as a JSON string: plain printable ASCII as
// is, anything else through encoding/json.
func appendJSONBytes(b, s []byte) []byte {
	for _, c := range s {
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return appendJSONString(b, string(s))
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendJSONString appends s as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always encodes
	return append(b, q...)
}
