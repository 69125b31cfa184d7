package ingest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
)

// fakeMsg is a received message whose acknowledgement is observable.
type fakeMsg struct {
	topic   string
	payload []byte
	dup     bool
	pid     uint16
	acked   atomic.Int32
	onAck   func()
}

func (m *fakeMsg) Topic() string     { return m.topic }
func (m *fakeMsg) Payload() []byte   { return m.payload }
func (m *fakeMsg) Duplicate() bool   { return m.dup }
func (m *fakeMsg) MessageID() uint16 { return m.pid }
func (m *fakeMsg) Ack() {
	if m.onAck != nil {
		m.onAck()
	}
	m.acked.Add(1)
}

// recorder is a Sink and DeviceObserver.
type recorder struct {
	mu       sync.Mutex
	commits  []Commit
	readings int
	messages int
	devices  map[string]int
}

func (r *recorder) Committed(c Commit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.readings += len(c.Readings)
	r.messages += c.Messages
	c.Readings = nil
	r.commits = append(r.commits, c)
}

func (r *recorder) DevicesSeen(seen []DeviceSeen) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.devices == nil {
		r.devices = map[string]int{}
	}
	for _, d := range seen {
		r.devices[d.Device] += d.Messages
	}
}

func (r *recorder) count() (msgs, readings int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.messages, r.readings
}

// allAcked reports whether every message was acknowledged once.
func allAcked(ms []*fakeMsg) bool {
	for _, m := range ms {
		if m.acked.Load() != 1 {
			return false
		}
	}
	return true
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newTestIngestor(t *testing.T, cfg Config) *Ingestor {
	t.Helper()
	if cfg.Store == nil && cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	in, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Stop() })
	return in
}

func TestIngestorAcksAfterCommit(t *testing.T) {
	rec := &recorder{}
	reg := prometheus.NewRegistry()
	in := newTestIngestor(t, Config{Sink: rec, Devices: rec, Registry: reg, BatchDelay: 20 * time.Millisecond})
	ctx := context.Background()
	var msgs []*fakeMsg
	var bad atomic.Int32
	for i := 0; i < 50; i++ {
		m := &fakeMsg{topic: fmt.Sprintf("devices/d%d/telemetry", i%3), pid: uint16(i),
			payload: []byte(fmt.Sprintf(`{"v":%d,"ts":%d}`, i, time.Now().Unix()-int64(i)))}
		if i%10 == 9 {
			m.payload = []byte(`{"v":"broken"`)
		}
		// At acknowledgement time the message's readings or dead letter
		// must already be readable from the database.
		m.onAck = func() {
			st, err := in.Store().Stats(ctx)
			if err != nil || st.Messages < int64(m.pid)+1 {
				bad.Add(1)
			}
		}
		msgs = append(msgs, m)
		if err := in.Handle(m); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "acknowledgements", func() bool {
		for _, m := range msgs {
			if m.acked.Load() == 0 {
				return false
			}
		}
		return true
	})
	if bad.Load() != 0 {
		t.Fatalf("%d messages acknowledged before their commit was visible", bad.Load())
	}
	for _, m := range msgs {
		if m.acked.Load() != 1 {
			t.Fatalf("message acknowledged %d times", m.acked.Load())
		}
	}
	st, _ := in.Store().Stats(ctx)
	if st.Readings != 45 || st.DeadLetters != 5 || st.Messages != 50 {
		t.Fatalf("stats %+v", st)
	}
	if msgsSeen, readings := rec.count(); msgsSeen != 50 || readings != 45 {
		t.Fatalf("sink saw %d messages, %d readings", msgsSeen, readings)
	}
	rec.mu.Lock()
	if rec.devices["d0"]+rec.devices["d1"]+rec.devices["d2"] != 45 {
		t.Fatalf("devices seen %v", rec.devices)
	}
	rec.mu.Unlock()
	s := in.Stats()
	if s.Received != 50 || s.Acked != 50 || s.Pending != 0 || s.Commits == 0 {
		t.Fatalf("ingestor stats %+v", s)
	}
	if v := metricValue(t, reg, "edgefleet_ingest_messages_acked_total", nil); v != 50 {
		t.Fatalf("acked metric %v", v)
	}
}

func TestIngestorStop(t *testing.T) {
	dir := t.TempDir()
	in, err := New(Config{DataDir: dir, BatchDelay: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := in.Start(context.Background()); !errors.Is(err, ErrStarted) {
		t.Fatalf("second Start: %v", err)
	}
	var msgs []*fakeMsg
	for i := 0; i < 200; i++ {
		m := &fakeMsg{topic: "devices/a/telemetry", payload: []byte(fmt.Sprintf(`{"v":%d}`, i)), pid: uint16(i)}
		msgs = append(msgs, m)
		in.Handle(m)
	}
	// Stop commits and acknowledges everything received before it.
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}
	for i, m := range msgs {
		if m.acked.Load() != 1 {
			t.Fatalf("message %d not acknowledged by Stop", i)
		}
	}
	late := &fakeMsg{topic: "devices/a/telemetry", payload: []byte(`{"v":1}`)}
	if err := in.Handle(late); !errors.Is(err, ErrClosed) || late.acked.Load() != 0 {
		t.Fatalf("Handle after Stop: %v, acked %d", err, late.acked.Load())
	}
	rep, err := Inspect(dir)
	if err != nil || rep.Readings != 200 {
		t.Fatalf("after stop: %+v %v", rep, err)
	}
}

// TestIngestorBackpressure: with the outbox full of readings of the
// current minute, the ingestor stops committing and acknowledging; the
// queue fills and Handle blocks; once the uplink acknowledges the
// outbox, everything held is committed. Nothing is lost.
func TestIngestorBackpressure(t *testing.T) {
	clk := newFakeClock()
	reg := prometheus.NewRegistry()
	in := newTestIngestor(t, Config{Clock: clk, Registry: reg, BatchMessages: 100, QueueMessages: 200,
		BatchDelay: time.Millisecond, PressureInterval: 5 * time.Millisecond,
		StoreConfig: StoreConfig{Outbox: OutboxConfig{MaxBytes: 64 << 10}}})
	ctx := context.Background()
	const total = 5000
	var handled atomic.Int64
	msgs := make([]*fakeMsg, total)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < total; i++ {
			msgs[i] = &fakeMsg{topic: "devices/a/telemetry", pid: uint16(i),
				payload: []byte(fmt.Sprintf(`{"value_with_a_long_name_%d":%d,"ts":%.6f}`, i%50, i, float64(testNow.UnixMicro()+int64(i))/1e6))}
			if err := in.Handle(msgs[i]); err != nil {
				t.Error(err)
				return
			}
			handled.Add(1)
		}
	}()
	waitFor(t, "backpressure", func() bool { return in.Stats().Backpressure == pressureOutbox })
	if v := metricValue(t, reg, "edgefleet_ingest_backpressure", map[string]string{"reason": "outbox"}); v != 1 {
		t.Fatalf("backpressure gauge %v", v)
	}
	// Held: Handle blocks once the queue is full, and nothing more is acknowledged.
	time.Sleep(100 * time.Millisecond)
	h1, a1 := handled.Load(), in.Stats().Acked
	time.Sleep(100 * time.Millisecond)
	if h2, a2 := handled.Load(), in.Stats().Acked; h2 != h1 || a2 != a1 || h1 == total {
		t.Fatalf("not held back: handled %d -> %d, acked %d -> %d", h1, h2, a1, a2)
	}
	// The uplink drains the outbox: ingestion resumes.
	for {
		bs, err := in.Store().ClaimOutbox(ctx, 100, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		var seqs []int64
		for _, b := range bs {
			seqs = append(seqs, b.Seq)
		}
		if _, err := in.Store().AckOutbox(ctx, seqs...); err != nil {
			t.Fatal(err)
		}
		if in.Stats().Acked == total {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	<-done
	for i, m := range msgs {
		if m.acked.Load() != 1 {
			t.Fatalf("message %d acknowledged %d times", i, m.acked.Load())
		}
	}
	st, _ := in.Store().Stats(ctx)
	if st.Readings != total || st.OutboxEvicted != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestIngestorReceiveTimesUnique(t *testing.T) {
	// A frozen clock: every message arrives in the same microsecond.
	in := newTestIngestor(t, Config{Clock: clock.NewManual(testNow)})
	var msgs []*fakeMsg
	for i := 0; i < 100; i++ {
		m := &fakeMsg{topic: "devices/a/telemetry", payload: []byte(`{"door":0}`), pid: uint16(i)}
		msgs = append(msgs, m)
		in.Handle(m)
	}
	waitFor(t, "acks", func() bool { return msgs[99].acked.Load() == 1 })
	st, _ := in.Store().Stats(context.Background())
	if st.Readings != 100 || st.DuplicateReadings != 0 {
		t.Fatalf("identical receive-time messages: %+v", st)
	}
}

func TestIngestorConfigValidation(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []Config{
		{},
		{DataDir: dir, BatchMessages: -1},
		{DataDir: dir, BatchMessages: 100, QueueMessages: 10},
		{DataDir: dir, TopicPattern: "devices/x"},
		{DataDir: dir, MQTT: MQTTConfig{Broker: "tcp://localhost:1883"}},
		{DataDir: dir, MQTT: MQTTConfig{Broker: "http://localhost:1883", ClientID: "a"}},
		{DataDir: dir, MQTT: MQTTConfig{Broker: "tcp://localhost", ClientID: "a"}},
		{DataDir: dir, Limits: Limits{MaxRecords: -1}},
		{DataDir: dir, RetentionInterval: time.Millisecond},
	} {
		if _, err := New(c); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: error %v, want ErrInvalidConfig", c, err)
		}
	}
}

// TestIngestorStorePressureRetention: over the database high-water mark
// the ingestor holds back, runs retention at once (not at the next
// interval), and resumes when the oldest raw readings are gone.
func TestIngestorStorePressureRetention(t *testing.T) {
	clk := newFakeClock()
	in := newTestIngestor(t, Config{Clock: clk, BatchMessages: 500, BatchDelay: time.Millisecond, PressureInterval: 5 * time.Millisecond,
		RetentionInterval: time.Hour,
		StoreConfig:       StoreConfig{Retention: RetentionConfig{MaxBytes: 1 << 20}, HighWaterBytes: 2 << 20, Outbox: OutboxConfig{Disabled: true}}})
	const total = 150000
	msgs := make([]*fakeMsg, 0, total)
	for i := 0; i < total; i++ {
		m := &fakeMsg{topic: "devices/a/telemetry", pid: uint16(i),
			payload: []byte(fmt.Sprintf(`{"v":%d,"ts":%.6f}`, i, float64(testNow.Add(-time.Hour).UnixMicro()+int64(i)*20000)/1e6))}
		msgs = append(msgs, m)
		if err := in.Handle(m); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "all acknowledged", func() bool { return msgs[total-1].acked.Load() == 1 })
	st, _ := in.Store().Stats(context.Background())
	if st.StoredTotal != total || st.RetentionDeletedSize == 0 || st.UsedBytes > 3<<20 {
		t.Fatalf("stats %+v", st)
	}
}

// TestIngestorPoisonMessage: a message the store keeps refusing does not
// stall the others: after a few failed attempts the batch is committed
// message by message and the refused one is dead-lettered.
func TestIngestorPoisonMessage(t *testing.T) {
	dir := t.TempDir()
	st, err := OpenStore(StoreConfig{Path: dir + "/" + StoreFile})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.commitHook = func(envs []*envelope) error {
		for _, e := range envs {
			if e.err == nil && strings.Contains(string(e.payload), "poison") {
				return errors.New("simulated refusal")
			}
		}
		return nil
	}
	in := newTestIngestor(t, Config{Store: st, BatchDelay: 20 * time.Millisecond})
	var msgs []*fakeMsg
	for i := 0; i < 10; i++ {
		p := fmt.Sprintf(`{"v":%d}`, i)
		if i == 4 {
			p = `{"poison":1}`
		}
		m := &fakeMsg{topic: "devices/a/telemetry", payload: []byte(p), pid: uint16(i + 1)}
		msgs = append(msgs, m)
		in.Handle(m)
	}
	waitFor(t, "acknowledgements", func() bool { return allAcked(msgs) })
	s, _ := st.Stats(context.Background())
	page, _ := st.DeadLetters(context.Background(), DeadLetterQuery{})
	if s.Readings != 9 || s.DeadLetters != 1 || len(page.Items) != 1 || page.Items[0].Reason != ReasonStore || in.Stats().CommitErrors < splitAfter {
		t.Fatalf("stats %+v, dead letters %+v, ingestor %+v", s, page.Items, in.Stats())
	}
}

// TestIngestorEmptyPayload: a message without a payload (nil, as a
// broker may hand it over) is dead-lettered and acknowledged.
func TestIngestorEmptyPayload(t *testing.T) {
	in := newTestIngestor(t, Config{BatchDelay: time.Millisecond})
	m := &fakeMsg{topic: "devices/d1/telemetry", pid: 7}
	if err := in.Handle(m); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the acknowledgement", func() bool { return m.acked.Load() == 1 })
	page, err := in.Store().DeadLetters(context.Background(), DeadLetterQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Items) != 1 || page.Items[0].Reason != ReasonEmpty || len(page.Items[0].Payload) != 0 {
		t.Fatalf("dead letters %+v", page.Items)
	}
}

// TestIngestorRetentionOnClock: retention runs every RetentionInterval of
// the configured clock, so a manual clock moved past the interval and a
// reading's maximum age removes the reading without waiting in real time.
func TestIngestorRetentionOnClock(t *testing.T) {
	clk := newFakeClock()
	in := newTestIngestor(t, Config{Clock: clk, BatchDelay: time.Millisecond, RetentionInterval: time.Hour,
		StoreConfig: StoreConfig{Retention: RetentionConfig{RawMaxAge: 2 * time.Hour}, Outbox: OutboxConfig{Disabled: true}}})
	ctx := context.Background()
	m := &fakeMsg{topic: "devices/a/telemetry", pid: 1,
		payload: []byte(fmt.Sprintf(`{"v":1,"ts":%d}`, testNow.Add(-time.Hour).Unix()))}
	if err := in.Handle(m); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "acknowledgement", func() bool { return m.acked.Load() == 1 })
	readings := func() int64 {
		st, err := in.Store().Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.Readings
	}
	if n := readings(); n != 1 {
		t.Fatalf("readings before retention: %d, want 1", n)
	}
	waitFor(t, "the retention ticker", func() bool { return clk.Waiters() > 0 })
	clk.Advance(2 * time.Hour) // the reading is now 3 hours old
	waitFor(t, "retention", func() bool { return readings() == 0 })
}

// TestSplitCommitTellsTheSinkEverything: a batch the store refuses whole
// is committed message by message; when the storage then fails in the
// middle (I/O error) and the rest commits on a later attempt, the Sink
// and the DeviceObserver still hear of every message, those committed
// before the failure too.
func TestSplitCommitTellsTheSinkEverything(t *testing.T) {
	dir := t.TempDir()
	st, err := OpenStore(StoreConfig{Path: dir + "/" + StoreFile})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	failedOnce := false
	st.commitHook = func(envs []*envelope) error {
		if len(envs) > 1 {
			return errors.New("simulated refusal of the whole batch")
		}
		if !failedOnce && strings.Contains(string(envs[0].payload), `"v":5`) {
			failedOnce = true
			return fmt.Errorf("simulated write failure: %w", syscall.EIO)
		}
		return nil
	}
	rec := &recorder{}
	in := newTestIngestor(t, Config{Store: st, Sink: rec, Devices: rec, BatchDelay: 200 * time.Millisecond})
	var msgs []*fakeMsg
	for i := 0; i < 10; i++ {
		m := &fakeMsg{topic: "devices/a/telemetry", payload: []byte(fmt.Sprintf(`{"v":%d}`, i)), pid: uint16(i + 1)}
		msgs = append(msgs, m)
		if err := in.Handle(m); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "acknowledgements", func() bool { return allAcked(msgs) })
	waitFor(t, "the sink", func() bool { m, _ := rec.count(); return m == 10 })
	if !failedOnce {
		t.Fatal("the storage failure was not simulated: the batch was not split")
	}
	if m, r := rec.count(); m != 10 || r != 10 {
		t.Fatalf("the sink heard of %d messages and %d readings, want 10 and 10", m, r)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.devices["a"] != 10 {
		t.Fatalf("devices seen %v, want a's 10 messages", rec.devices)
	}
}
