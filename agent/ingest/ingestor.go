package ingest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/internal/sqliteerr"
)

// Message is one received message. paho's mqtt.Message satisfies it.
type Message interface {
	Topic() string
	Payload() []byte
	// Duplicate is the MQTT DUP flag: the broker may have sent this
	// message before (a redelivery after a lost connection).
	Duplicate() bool
	// MessageID is the MQTT packet id (a redelivery keeps it).
	MessageID() uint16
	// Ack acknowledges the message to the broker; the ingestor calls it
	// only after the message's readings (or dead letter) are committed.
	Ack()
}

// Sink is told about every group commit, after the commit reached the
// disk and its messages were acknowledged (on the acknowledging
// goroutine: commits proceed meanwhile). The uplink implements it to
// wake up and claim the new outbox batch (Store.ClaimOutbox); the
// inference hook can use the readings. Committed runs on the commit
// path: it must return quickly and must not call back into the
// Ingestor. c and its slices must not be kept after it returns.
type Sink interface {
	Committed(c Commit)
}

// Commit describes one group commit.
type Commit struct {
	Seq         int64     // outbox batch sequence, 0 when none was written
	At          time.Time // when the commit completed
	Messages    int       // messages committed (stored, duplicate or dead-lettered)
	Readings    []Reading // readings newly stored, in the order they arrived
	Duplicates  int       // readings ignored as already stored
	DeadLetters int       // messages dead-lettered
}

// DeviceObserver is told which devices sent messages in each group
// commit (the device registry in replicated state implements it). Like
// Sink, it runs on the commit path and must return quickly.
type DeviceObserver interface {
	DevicesSeen(seen []DeviceSeen)
}

// MQTTConfig configures the subscriber.
type MQTTConfig struct {
	// Broker is the broker URL: tcp://host:port or ssl://host:port. Empty
	// means no subscriber: messages are fed through Ingestor.Handle.
	Broker string
	// ClientID identifies the persistent session at the broker; it must
	// be stable across restarts so queued messages are delivered to the
	// agent when it reconnects. Required with Broker.
	ClientID string
	// Username and Password authenticate to the broker (optional).
	Username string
	Password string
	// TLSConfig is used for ssl:// brokers; nil means the system roots.
	TLSConfig *tls.Config
	// KeepAlive is the MQTT keep-alive. Default 30s.
	KeepAlive time.Duration
	// ConnectTimeout bounds one connection attempt. Default 10s.
	ConnectTimeout time.Duration
	// MaxReconnectInterval caps the back-off between reconnection
	// attempts. Default 10s.
	MaxReconnectInterval time.Duration
}

// Config configures an Ingestor. Zero fields take the defaults named in
// their comments.
type Config struct {
	// Store is the store to write to; the Ingestor does not close it.
	// Nil means: open DataDir/ingest.db with StoreConfig (and close it on
	// Stop).
	Store *Store
	// DataDir holds ingest.db when Store is nil.
	DataDir string
	// StoreConfig configures the store opened when Store is nil (its
	// Path, Clock, Logger and Registry are filled in from this Config).
	StoreConfig StoreConfig
	// MQTT configures the subscriber.
	MQTT MQTTConfig
	// Embedded, when set, is the in-process broker the Ingestor attaches
	// to at Start (one Ingestor per broker; start it with
	// BrokerConfig.Ingest). The broker then hands the publishes on the
	// Ingestor's topics to it directly and acknowledges each to its
	// device only after its group commit: there is no subscriber, and
	// MQTT.Broker must be empty or the broker's URL. Publish goes
	// through the broker's inline client.
	Embedded *Broker
	// TopicPattern maps topics to device ids. Default
	// "devices/{device_id}/telemetry"; the subscription is the pattern
	// with {device_id} replaced by "+".
	TopicPattern string
	// Limits bound each message.
	Limits Limits
	// BatchMessages is the most messages one group commit holds.
	// Default 1000. Under load, when commits run back to back, every
	// commit fills up to it: a commit's fixed costs (the disk sync, the
	// rollup, series and device updates, the pages rewritten) are then
	// shared by that many messages. The broker's in-flight window for
	// this client (mosquitto max_inflight_messages) should exceed it,
	// or batches stay small: see the package documentation.
	BatchMessages int
	// BatchDelay is how long a group commit waits for more messages
	// after its first one. Longer means fewer, larger commits (fewer
	// syncs to the disk, less CPU) and a longer wait for the
	// acknowledgement. Default 5ms.
	BatchDelay time.Duration
	// QueueMessages bounds the received messages waiting to be decoded
	// and committed; when full, the subscriber stops reading from the
	// broker. Each holds its message and decoded readings in memory
	// while it waits, and a commit that stalls on the disk fills the
	// queue. Default BatchMessages.
	QueueMessages int
	// RetentionInterval is how often retention runs. Default 1 minute.
	RetentionInterval time.Duration
	// PressureInterval is how often the store's state is re-checked
	// while ingestion is held back. Default 200ms.
	PressureInterval time.Duration
	// MinFreeBytes is the space kept free on the file system holding the
	// store. While less is free (to unprivileged users), the committer
	// stops committing and acknowledging (backpressure reason
	// "disk_full"): the broker keeps the backlog, and the database, its
	// WAL and whatever else shares the file system keep room to work. It
	// resumes once MinFreeBytes plus a tenth is free. The free space is
	// read after every commit and every PressureInterval while held back.
	// Default 32 MiB; -1 turns the check off (a disk that fills still
	// holds ingestion back, through the failing commits, never dropping
	// or dead-lettering a message).
	MinFreeBytes int64
	// Clock is the time source (receive times, relative SenML times) and
	// drives RetentionInterval; it is also the store's clock. Nil means
	// clock.Real(). BatchDelay, PressureInterval and the back-off between
	// failed commits run on the system clock: they bound real latency and
	// poll or wait for the disk.
	Clock clock.Clock
	// Logger receives the ingestor's logs. Nil discards them.
	Logger *slog.Logger
	// Registry receives the metrics. Nil leaves them unregistered.
	Registry *prometheus.Registry
	// Sink, if set, is told about each commit.
	Sink Sink
	// Devices, if set, is told which devices were seen in each commit.
	Devices DeviceObserver
}

// DefaultMinFreeBytes is the default of Config.MinFreeBytes: 32 MiB.
const DefaultMinFreeBytes = 32 << 20

func (c Config) withDefaults() (Config, error) {
	var err error
	c.Clock = clock.Or(c.Clock)
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.Store == nil && c.DataDir == "" {
		return c, fmt.Errorf("%w: neither Store nor DataDir set", ErrInvalidConfig)
	}
	if c.Limits, err = c.Limits.withDefaults(); err != nil {
		return c, err
	}
	if c.BatchMessages == 0 {
		c.BatchMessages = 1000
	}
	if c.BatchDelay == 0 {
		c.BatchDelay = 5 * time.Millisecond
	}
	if c.QueueMessages == 0 {
		c.QueueMessages = c.BatchMessages
	}
	if c.RetentionInterval == 0 {
		c.RetentionInterval = time.Minute
	}
	if c.PressureInterval == 0 {
		c.PressureInterval = 200 * time.Millisecond
	}
	if c.MinFreeBytes == 0 {
		c.MinFreeBytes = DefaultMinFreeBytes
	}
	m := &c.MQTT
	if m.KeepAlive == 0 {
		m.KeepAlive = 30 * time.Second
	}
	if m.ConnectTimeout == 0 {
		m.ConnectTimeout = 10 * time.Second
	}
	if m.MaxReconnectInterval == 0 {
		m.MaxReconnectInterval = 10 * time.Second
	}
	switch {
	case c.BatchMessages < 1 || c.BatchMessages > 100_000:
		return c, fmt.Errorf("%w: BatchMessages %d outside 1..100000", ErrInvalidConfig, c.BatchMessages)
	case c.BatchDelay < 0 || c.BatchDelay > 10*time.Second:
		return c, fmt.Errorf("%w: BatchDelay %s outside 0..10s", ErrInvalidConfig, c.BatchDelay)
	case c.QueueMessages < c.BatchMessages:
		return c, fmt.Errorf("%w: QueueMessages %d below BatchMessages %d", ErrInvalidConfig, c.QueueMessages, c.BatchMessages)
	case c.RetentionInterval < time.Second:
		return c, fmt.Errorf("%w: RetentionInterval %s below 1s", ErrInvalidConfig, c.RetentionInterval)
	case c.PressureInterval < time.Millisecond:
		return c, fmt.Errorf("%w: PressureInterval %s below 1ms", ErrInvalidConfig, c.PressureInterval)
	case c.MinFreeBytes < -1:
		return c, fmt.Errorf("%w: MinFreeBytes %d: want -1 (off) or at least 0", ErrInvalidConfig, c.MinFreeBytes)
	case m.KeepAlive < time.Second || m.ConnectTimeout < 10*time.Millisecond || m.MaxReconnectInterval < 10*time.Millisecond:
		return c, fmt.Errorf("%w: MQTT KeepAlive %s (>= 1s), ConnectTimeout %s, MaxReconnectInterval %s (>= 10ms)",
			ErrInvalidConfig, m.KeepAlive, m.ConnectTimeout, m.MaxReconnectInterval)
	}
	if c.Embedded != nil {
		if m.Broker != "" && m.Broker != c.Embedded.URL() {
			return c, fmt.Errorf("%w: MQTT.Broker %q with an embedded broker at %s", ErrInvalidConfig, m.Broker, c.Embedded.URL())
		}
	} else if m.Broker != "" {
		if err := checkBrokerURL(m.Broker); err != nil {
			return c, err
		}
		if m.ClientID == "" || len(m.ClientID) > 65535 {
			return c, fmt.Errorf("%w: MQTT.ClientID is required with a broker (a stable id keeps the persistent session)", ErrInvalidConfig)
		}
	}
	return c, nil
}

// Ingestor receives device messages (from its MQTT subscriber or
// Handle), decodes them, commits their readings in groups and
// acknowledges each message only after the commit that holds it.
type Ingestor struct {
	cfg      Config
	log      *slog.Logger
	store    *Store
	ownStore bool
	topics   TopicPattern
	m        *ingestMetrics

	queue   chan *envelope
	batches chan *batch
	acks    chan committed

	hmu      sync.RWMutex // Handle holds it shared while enqueueing; Stop exclusively
	stopping chan struct{}
	stopOnce sync.Once
	started  atomic.Bool
	wg       sync.WaitGroup
	done     chan struct{} // closed when the acker has finished

	mqtt *subscriber

	pressure  atomic.Value // string: current backpressure reason, "" none
	failing   atomic.Value // string: pressureDisk or pressureError while commits fail, "" once one succeeds
	dir       string       // the store's directory, for its free space
	statfs    func(dir string) (int64, error)
	diskHeld  bool          // committer: under MinFreeBytes (hysteresis)
	statfsErr bool          // committer: a failing statfs was logged
	retainNow chan struct{} // asks the maintenance goroutine for a retention pass
	attached  atomic.Bool   // attached to Config.Embedded
}

// New validates cfg and builds an Ingestor (opening its store when
// cfg.Store is nil). Nothing runs until Start.
func New(cfg Config) (*Ingestor, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	tp, err := ParseTopicPattern(cfg.TopicPattern)
	if err != nil {
		return nil, err
	}
	m, err := newIngestMetrics(cfg.Registry)
	if err != nil {
		return nil, fmt.Errorf("ingest: register metrics: %w", err)
	}
	in := &Ingestor{
		cfg: cfg, log: cfg.Logger, topics: tp, m: m,
		queue:     make(chan *envelope, cfg.QueueMessages),
		batches:   make(chan *batch, 1),
		acks:      make(chan committed, 2),
		retainNow: make(chan struct{}, 1),
		stopping:  make(chan struct{}),
		done:      make(chan struct{}),
	}
	in.pressure.Store("")
	in.failing.Store("")
	in.statfs = freeBytes
	in.store = cfg.Store
	if in.store == nil {
		sc := cfg.StoreConfig
		sc.Path = filepath.Join(cfg.DataDir, StoreFile)
		sc.Clock, sc.Logger, sc.Registry = cfg.Clock, cfg.Logger, cfg.Registry
		st, err := OpenStore(sc)
		if err != nil {
			return nil, err
		}
		in.store, in.ownStore = st, true
	}
	in.dir = filepath.Dir(in.store.Path())
	if cfg.MQTT.Broker != "" && cfg.Embedded == nil {
		in.mqtt = newSubscriber(in)
	}
	return in, nil
}

// StoreFile is the database file name inside a data directory.
const StoreFile = "ingest.db"

// Store returns the ingestor's store.
func (in *Ingestor) Store() *Store { return in.store }

// Start starts the pipeline and, with a broker configured, the MQTT
// subscriber, which connects (and reconnects) in the background. ctx
// bounds nothing after Start returns: use Stop.
func (in *Ingestor) Start(ctx context.Context) error {
	if !in.started.CompareAndSwap(false, true) {
		return ErrStarted
	}
	dec, err := NewDecoder(in.cfg.Limits, in.cfg.Clock)
	if err != nil {
		return err
	}
	in.wg.Add(4)
	go in.runBatcher(dec)
	go in.runCommitter()
	go in.runAcker()
	go in.runMaintenance()
	if b := in.cfg.Embedded; b != nil {
		if err := b.attach(in); err != nil {
			in.Stop()
			return err
		}
		in.attached.Store(true)
		in.m.connected.Store(1)
	}
	if in.mqtt != nil {
		if err := in.mqtt.start(); err != nil {
			in.Stop()
			return err
		}
	}
	in.log.Info("ingestion started", "broker", in.Broker(), "topic", in.topics.Filter(), "store", in.store.Path())
	return nil
}

// WaitSubscribed waits until the MQTT subscriber is connected and
// subscribed (immediately true without a broker).
func (in *Ingestor) WaitSubscribed(ctx context.Context) error {
	if in.mqtt == nil { // no broker, or attached to the embedded one at Start
		return nil
	}
	select {
	case <-in.mqtt.subscribed:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("ingest: waiting for the MQTT subscription: %w", ctx.Err())
	case <-in.stopping:
		return ErrClosed
	}
}

// Handle queues a received message. It blocks while the queue is full
// (backpressure: the MQTT subscriber then stops reading from the
// broker). After Stop it returns ErrClosed and the message stays
// unacknowledged, so the broker delivers it again later.
func (in *Ingestor) Handle(m Message) error { return in.handle(m, nil) }

// handle is Handle; it also gives up, returning ErrClosed, when abort
// is closed while it waits.
func (in *Ingestor) handle(m Message, abort <-chan struct{}) error {
	in.hmu.RLock()
	defer in.hmu.RUnlock()
	select {
	case <-in.stopping:
		return ErrClosed
	case <-abort:
		return ErrClosed
	default:
	}
	e := envelopePool.Get().(*envelope)
	*e = envelope{topic: m.Topic(), payload: m.Payload(), dup: m.Duplicate(), pid: m.MessageID(),
		recv: in.cfg.Clock.Now(), ack: m.Ack}
	in.m.received.Add(1)
	in.m.pending.Add(1)
	select {
	case in.queue <- e:
		return nil
	default:
	}
	in.setQueuePressure(true)
	defer in.setQueuePressure(false)
	select {
	case in.queue <- e:
		return nil
	case <-in.stopping:
	case <-abort:
	}
	in.m.pending.Add(-1)
	*e = envelope{}
	envelopePool.Put(e)
	return ErrClosed
}

func (in *Ingestor) setQueuePressure(on bool) {
	v := 0.0
	if on {
		v = 1
	}
	in.m.pressureVec.WithLabelValues(pressureQueue).Set(v)
}

// Stop stops receiving, commits and acknowledges what was received,
// disconnects from the broker and closes the store it opened. Messages
// received during Stop stay unacknowledged (the broker redelivers them).
func (in *Ingestor) Stop() error {
	var err error
	in.stopOnce.Do(func() {
		close(in.stopping)
		in.hmu.Lock() // no Handle is enqueueing any more
		close(in.queue)
		in.hmu.Unlock()
		if in.started.Load() {
			<-in.done
		}
		if in.mqtt != nil {
			in.mqtt.stop()
		}
		if in.attached.Load() {
			// The acknowledgements are queued with the broker's
			// connections; publishes now wait for the next Ingestor.
			in.cfg.Embedded.detach(in)
			in.attached.Store(false)
			in.m.connected.Store(0)
		}
		in.wg.Wait()
		if in.ownStore {
			err = in.store.Close()
		}
		in.log.Info("ingestion stopped")
	})
	return err
}

// runBatcher decodes queued messages and hands batches to the
// committer. A batch is offered BatchDelay after its first message, or
// at once when it holds BatchMessages; the hand-over is unbuffered, so
// while the committer is busy with the previous batch the next one keeps
// growing (up to BatchMessages): under load, commits get larger rather
// than queue up.
func (in *Ingestor) runBatcher(dec *Decoder) {
	defer in.wg.Done()
	defer close(in.batches)
	// The linger is on the system clock: it bounds real publish-to-commit
	// latency and exists to share a real fsync among messages.
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var cur *batch                 // the batch being filled, nil when none
	due := false                   // BatchDelay has passed since the batch's first message
	lastRecv := map[string]int64{} // per device: receive times are kept strictly increasing
	for {
		var out chan<- *batch // nil: nothing to offer yet
		full := cur != nil && len(cur.envs) >= in.cfg.BatchMessages
		if cur != nil && (due || full) {
			out = in.batches
			cur.withViews() // offered as it is now
		}
		queue := in.queue
		if full {
			queue = nil // wait for the committer
		}
		var timeout <-chan time.Time
		if cur != nil && !due {
			timeout = timer.C
		}
		select {
		case out <- cur:
			timer.Stop()
			cur, due = nil, false
		case <-timeout:
			due = true
		case e, ok := <-queue:
			if !ok {
				timer.Stop()
				if cur != nil {
					in.batches <- cur.withViews()
				}
				return
			}
			if cur == nil {
				cur = batchPool.Get().(*batch)
				timer.Reset(in.cfg.BatchDelay)
			}
			cur.arena = in.decode(dec, e, lastRecv, cur.arena)
			cur.envs = append(cur.envs, e)
		}
	}
}

// decode fills in the envelope's device, readings or error. A device's
// receive times are made strictly increasing (by a microsecond where
// two messages arrive within one), so readings stamped with the receive
// time never collide on (device, metric, time).
func (in *Ingestor) decode(dec *Decoder, e *envelope, lastRecv map[string]int64, arena []Reading) []Reading {
	dev, err := in.topics.Device(e.topic)
	if err != nil {
		e.err = err
		return arena
	}
	e.device = dev
	us := e.recv.UnixMicro()
	if last, ok := lastRecv[dev]; ok && us <= last {
		us = last + 1
		e.recv = time.UnixMicro(us)
	}
	lastRecv[dev] = us
	start := len(arena)
	arena, e.received, e.err = dec.appendDecode(arena, dev, e.payload, e.recv)
	e.from, e.to = start, len(arena)
	return arena
}

// envelopePool recycles envelopes once their batch is acknowledged.
var envelopePool = sync.Pool{New: func() any { return new(envelope) }}

// batch is a group of messages on its way through the pipeline: the
// batcher fills it, the committer commits it, the acknowledging
// goroutine acknowledges it. Its messages' readings share one arena,
// and the readings its commit stored (for the Sink) another; both are
// reused by later batches (batchPool), so the pipeline allocates little
// per message.
type batch struct {
	envs   []*envelope
	arena  []Reading
	stored []Reading
	// The envelopes' readings are views of arena, set when the batch is
	// handed on (withViews): while it fills, arena grows by copying, and
	// views taken earlier would keep every outgrown array alive until the
	// batch is acknowledged (about twice the final arena).
	views     int      // envs[:views] hold views of the current arena array
	viewsBase *Reading // that array
}

// withViews points every envelope's readings at its part of the arena
// and returns b.
func (b *batch) withViews() *batch {
	var base *Reading
	if cap(b.arena) > 0 {
		base = &b.arena[:1][0]
	}
	if base != b.viewsBase {
		b.views, b.viewsBase = 0, base
	}
	for _, e := range b.envs[b.views:] {
		e.readings = b.arena[e.from:e.to:e.to]
	}
	b.views = len(b.envs)
	return b
}

var batchPool = sync.Pool{New: func() any { return new(batch) }}

// recycle returns an acknowledged batch and its envelopes to their
// pools, dropping every reference to its messages.
func (b *batch) recycle() {
	for _, e := range b.envs {
		*e = envelope{}
		envelopePool.Put(e)
	}
	clear(b.envs)
	clear(b.arena)
	clear(b.stored)
	b.envs, b.arena, b.stored = b.envs[:0], b.arena[:0], b.stored[:0]
	b.views, b.viewsBase = 0, nil
	// The large arrays of a backlog's batches are left to the collector:
	// kept in the pool, they would stay resident at a steady rate, whose
	// batches are small.
	if cap(b.arena) > maxPooledReadings {
		b.arena = nil
	}
	if cap(b.stored) > maxPooledReadings {
		b.stored = nil
	}
	if cap(b.envs) > maxPooledReadings {
		b.envs = nil
	}
	batchPool.Put(b)
}

// maxPooledReadings is the largest array a pooled batch keeps.
const maxPooledReadings = 1024

// runCommitter commits batches, then acknowledges their messages.
func (in *Ingestor) runCommitter() {
	defer in.wg.Done()
	defer close(in.acks)
	ctx := context.Background()
	for b := range in.batches {
		if !in.waitPressure(ctx) {
			in.abandon(b.envs)
			continue
		}
		start := time.Now()
		res, ok := in.commitRetrying(ctx, b.envs, b.stored)
		if !ok {
			in.abandon(b.envs)
			continue
		}
		b.stored = res.newReadings
		at := in.cfg.Clock.Now()
		in.m.commitSecs.Observe(time.Since(start).Seconds())
		in.m.batchSize.Observe(float64(len(b.envs)))
		in.m.commits.Add(1)
		in.acks <- committed{batch: b, res: res, at: at}
		in.checkPressure(ctx)
	}
}

// committed is a batch on disk, waiting to be acknowledged.
type committed struct {
	batch *batch
	res   commitResult
	at    time.Time
}

// runAcker acknowledges committed batches in commit order (so PUBACKs
// follow arrival order), then tells the Sink and the DeviceObserver. It
// runs beside the committer so the next commit does not wait for the
// acknowledgements to be written to the broker.
func (in *Ingestor) runAcker() {
	defer in.wg.Done()
	defer close(in.done)
	for c := range in.acks {
		envs := c.batch.envs
		for _, e := range envs {
			if e.ack != nil {
				e.ack()
			}
		}
		in.m.acked.Add(int64(len(envs)))
		in.m.pending.Add(-int64(len(envs)))
		if in.cfg.Sink != nil {
			in.cfg.Sink.Committed(Commit{Seq: c.res.seq, At: c.at, Messages: len(envs), Readings: c.res.newReadings,
				Duplicates: c.res.duplicates, DeadLetters: c.res.deadLetters})
		}
		if in.cfg.Devices != nil && len(c.res.devices) > 0 {
			in.cfg.Devices.DevicesSeen(c.res.devices)
		}
		c.batch.recycle()
	}
}

// abandon leaves a batch unacknowledged (Stop while held back): the
// broker redelivers its messages to the next session.
func (in *Ingestor) abandon(batch []*envelope) {
	in.m.pending.Add(-int64(len(batch)))
	in.log.Warn("stopping while ingestion is held back: messages left unacknowledged for redelivery", "messages", len(batch))
}

// splitAfter is how many failed attempts of a whole batch are retried
// before its messages are committed one by one.
const splitAfter = 3

// commitRetrying commits a batch, retrying with back-off while the
// store fails; it gives up only when stopping. A failure that says the
// storage cannot take writes (disk full, I/O error, locked, read-only:
// sqliteerr.Unavailable) holds the batch whole, under backpressure
// ("disk_full" or "error"), until a commit succeeds. Any other failure
// that persists could be caused by one message rather than by the disk:
// after splitAfter failed attempts the messages are committed one by
// one, and a message the store refuses on its own is dead-lettered
// (reason store_error) so the others go through. Nothing is
// acknowledged before its commit.
func (in *Ingestor) commitRetrying(ctx context.Context, batch []*envelope, buf []Reading) (commitResult, bool) {
	backoff := 50 * time.Millisecond
	split, unavailable := false, false
	// what split attempts committed before one failed: the Sink and the
	// DeviceObserver are told about those messages with the rest
	var committed commitResult
	for attempt := 1; ; attempt++ {
		// Once split, always split: some messages may be committed already.
		split = split || (attempt > splitAfter && len(batch) > 1 && !unavailable)
		var res commitResult
		var err error
		if split {
			res, err = in.commitEach(ctx, batch)
			committed.add(res)
			res = committed
		} else {
			res, err = in.store.commitInto(ctx, batch, buf)
		}
		if err == nil {
			in.setFailing("", nil, len(batch), attempt)
			return res, true
		}
		in.m.commitErrs.Add(1)
		if errors.Is(err, ErrClosed) {
			return res, false
		}
		unavailable = sqliteerr.Unavailable(err)
		reason := pressureError
		if sqliteerr.Full(err) {
			reason = pressureDisk
		}
		in.setFailing(reason, err, len(batch), attempt)
		select {
		case <-in.stopping:
			return res, false
		case <-time.After(backoff): // system clock: waits for the disk
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// setFailing records whether commits fail, and why (reason "" after a
// success): the backpressure gauges follow, and each change is logged
// once; repeated failures log at debug level.
func (in *Ingestor) setFailing(reason string, err error, messages, attempt int) {
	old := in.failing.Swap(reason)
	if old == reason {
		if err != nil {
			in.log.Debug("group commit failed again; retrying, nothing acknowledged", "reason", reason, "messages", messages, "attempt", attempt, "err", err)
		}
		return
	}
	in.setGauges()
	if reason == "" {
		in.log.Info("group commit succeeded: backpressure off", "after_attempts", attempt)
		return
	}
	in.log.Error("group commit failed; retrying, nothing acknowledged: backpressure on", "reason", reason, "messages", messages, "attempt", attempt, "err", err)
}

// setGauges sets edgefleet_ingest_backpressure for every reason but
// the queue's from the committer's state.
func (in *Ingestor) setGauges() {
	held, failing := in.pressure.Load().(string), in.failing.Load().(string)
	for _, r := range []string{pressureStore, pressureOutbox, pressureError, pressureDisk} {
		v := 0.0
		if r == held || r == failing {
			v = 1
		}
		in.m.pressureVec.WithLabelValues(r).Set(v)
	}
}

// commitEach commits the batch's not yet committed messages one by one,
// dead-lettering a message whose own commit fails for a reason other
// than the storage being unavailable. It returns an error when the
// storage is unavailable or a dead letter cannot be committed either;
// messages committed so far stay marked and are not written again.
func (in *Ingestor) commitEach(ctx context.Context, batch []*envelope) (commitResult, error) {
	var total commitResult
	for _, e := range batch {
		if e.committed {
			continue
		}
		one := []*envelope{e}
		r, err := in.store.commit(ctx, one)
		if err != nil {
			if errors.Is(err, ErrClosed) || sqliteerr.Unavailable(err) {
				return total, err
			}
			in.log.Error("message refused by the store; dead-lettering it", "topic", e.topic, "err", err)
			e.err = decodeErr(ReasonStore, -1, "", "the store refused the message: %v", err)
			e.readings = nil
			if r, err = in.store.commit(ctx, one); err != nil {
				return total, err
			}
		}
		e.committed = true
		total.add(r)
	}
	return total, nil
}

// add adds what commit r did to what res did (r later).
func (res *commitResult) add(r commitResult) {
	if r.seq != 0 {
		res.seq = r.seq
	}
	res.stored += r.stored
	res.duplicates += r.duplicates
	res.dupMessages += r.dupMessages
	res.deadLetters += r.deadLetters
	res.newReadings = append(res.newReadings, r.newReadings...)
	res.devices = append(res.devices, r.devices...)
}

// checkPressure re-evaluates the backpressure state: the store's, then
// the free disk space. It runs on the committer.
func (in *Ingestor) checkPressure(ctx context.Context) string {
	p, err := in.store.pressureCheck(ctx, false)
	if err != nil {
		in.log.Warn("evaluate backpressure", "err", err)
	}
	if p == "" {
		p = in.diskPressure()
	}
	if old := in.pressure.Swap(p); old != p {
		in.setGauges()
		if p != "" {
			in.log.Warn("backpressure on: holding acknowledgements", "reason", p,
				"free_bytes", in.m.diskFree.Load(), "min_free_bytes", in.cfg.MinFreeBytes)
		} else {
			in.log.Info("backpressure off", "free_bytes", in.m.diskFree.Load())
		}
	}
	return p
}

// diskPressure reads the free space of the store's file system:
// pressureDisk while it is under MinFreeBytes (and, once under, until
// MinFreeBytes plus a tenth is free), else "". It runs on the committer.
func (in *Ingestor) diskPressure() string {
	if in.cfg.MinFreeBytes < 0 {
		return ""
	}
	free, err := in.statfs(in.dir)
	if err != nil {
		if !in.statfsErr {
			in.log.Warn("free disk space unknown: the min_free_bytes reserve is not enforced", "err", err)
			in.statfsErr = true
		}
		in.diskHeld = false
		return ""
	}
	in.statfsErr = false
	in.m.diskFree.Store(free)
	limit := in.cfg.MinFreeBytes
	if in.diskHeld {
		limit += limit / 10
	}
	in.diskHeld = free < limit
	if in.diskHeld {
		return pressureDisk
	}
	return ""
}

// waitPressure blocks while the store reports backpressure; false means
// Stop was called meanwhile.
func (in *Ingestor) waitPressure(ctx context.Context) bool {
	if in.pressure.Load().(string) == "" {
		return true
	}
	// System clock: this polls the database's real size and outbox.
	t := time.NewTicker(in.cfg.PressureInterval)
	defer t.Stop()
	for p := in.checkPressure(ctx); p != ""; p = in.checkPressure(ctx) {
		if p == pressureStore {
			// Retention may bring the database down: run it now.
			select {
			case in.retainNow <- struct{}{}:
			default:
			}
		}
		select {
		case <-in.stopping:
			return false
		case <-t.C:
		}
	}
	return true
}

// runMaintenance runs retention every RetentionInterval, and at once
// when the committer is held back by the database's size.
func (in *Ingestor) runMaintenance() {
	defer in.wg.Done()
	t := in.cfg.Clock.NewTicker(in.cfg.RetentionInterval)
	defer t.Stop()
	for {
		select {
		case <-in.stopping:
			return
		case <-t.C():
		case <-in.retainNow:
		}
		if _, err := in.store.Retain(context.Background()); err != nil && !errors.Is(err, ErrClosed) {
			in.log.Warn("retention", "err", err)
		}
	}
}

// Stats is a snapshot of the ingestor's counters.
type Stats struct {
	Received     int64  `json:"received"`        // messages received
	Acked        int64  `json:"acked"`           // messages acknowledged after their commit
	Pending      int64  `json:"pending"`         // received, not yet acknowledged
	Commits      int64  `json:"commits"`         // group commits
	CommitErrors int64  `json:"commit_errors"`   // failed (retried) commits
	Connected    bool   `json:"connected"`       // MQTT session up
	Published    int64  `json:"published"`       // messages published (Publish) and acknowledged by the broker
	Copies       int64  `json:"inflight_copies"` // embedded broker: copies of a publish in flight on its connection, dropped
	Backpressure string `json:"backpressure"`    // why acknowledgements are held back: "", "store", "outbox", "disk_full" or "error"
	// DiskFreeBytes is what is free on the store's file system (-1 when
	// unknown); ingestion holds back below MinFreeBytes.
	DiskFreeBytes int64 `json:"disk_free_bytes"`
	MinFreeBytes  int64 `json:"min_free_bytes"` // the reserve; -1: not enforced
}

// Stats returns the ingestor's counters. A failing commit's reason
// (disk_full, error) comes before the committer's other backpressure
// reasons.
func (in *Ingestor) Stats() Stats {
	p := in.failing.Load().(string)
	if p == "" {
		p = in.pressure.Load().(string)
	}
	free, err := in.statfs(in.dir)
	if err != nil {
		free = -1
	}
	return Stats{
		Received: in.m.received.Load(), Acked: in.m.acked.Load(), Pending: in.m.pending.Load(),
		Commits: in.m.commits.Load(), CommitErrors: in.m.commitErrs.Load(),
		Connected: in.m.connected.Load() == 1, Published: in.m.published.Load(), Copies: in.m.copies.Load(), Backpressure: p,
		DiskFreeBytes: free, MinFreeBytes: in.cfg.MinFreeBytes,
	}
}
