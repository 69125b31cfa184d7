package models

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/internal/mqtttest"
)

// publishAll runs an outbox over st until the broker (pub) acknowledged
// every stored prediction.
func publishAll(t testing.TB, st *Store, pub Publisher) *Outbox {
	t.Helper()
	o, err := NewOutbox(OutboxConfig{Store: st, Publisher: pub, RetryMin: time.Millisecond, RetryMax: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer runOutbox(o)()
	deadline := time.Now().Add(20 * time.Second)
	for o.Acked() < st.Total() || st.Published() < st.Total() {
		if time.Now().After(deadline) {
			t.Fatalf("published through %d (marked %d) of %d", o.Acked(), st.Published(), st.Total())
		}
		time.Sleep(time.Millisecond)
	}
	return o
}

// runOutbox runs o until the returned function is called.
func runOutbox(o *Outbox) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); o.Run(ctx) }()
	return func() { cancel(); <-done }
}

// storeN stores n predictions for device dev in rounds of per.
func storeN(t testing.TB, st *Store, dev string, from, n, per int) {
	t.Helper()
	base := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	for i := from; i < from+n; i += per {
		var ps []StoredPrediction
		for k := i; k < min(i+per, from+n); k++ {
			at := base.Add(time.Duration(k) * time.Second)
			ps = append(ps, StoredPrediction{Device: dev, Model: "comfort", Version: "1", Class: k % 2, Label: []string{"ok", "stuffy"}[k%2],
				Probabilities: []float64{0.5, 0.5}, ReadingTime: at, At: at})
		}
		if err := st.Add(context.Background(), ps); err != nil {
			t.Fatal(err)
		}
	}
}

func openOutboxStore(t testing.TB, path string, maxRows int64) *Store {
	t.Helper()
	st, err := OpenStore(StoreConfig{Path: path, MaxRows: maxRows, Outbox: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// seqOf returns the sequence number of a published prediction's id.
func seqOf(t testing.TB, payload []byte) int64 {
	t.Helper()
	var p published
	if err := json.Unmarshal(payload, &p); err != nil {
		t.Fatalf("%s: %v", payload, err)
	}
	_, s, ok := strings.Cut(p.ID, "-")
	n, err := strconv.ParseInt(s, 10, 64)
	if !ok || err != nil {
		t.Fatalf("id %q is not EPOCH-SEQ", p.ID)
	}
	return n
}

// gated is a Publisher whose acknowledgements the test releases, and
// which refuses sends while down.
type gated struct {
	mu    sync.Mutex
	down  bool
	sent  []sentMsg
	ackCh []chan struct{}
	ackOf []int     // index in sent of each ackCh
	acked []sentMsg // what the broker acknowledged
}

type gatedSent struct {
	ch  chan struct{}
	err error
}

func (g gatedSent) Done() <-chan struct{} { return g.ch }
func (g gatedSent) Err() error            { return g.err }

func (g *gated) Send(topic string, payload []byte) (ingest.Sent, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.down {
		return nil, ingest.ErrNotConnected
	}
	g.sent = append(g.sent, sentMsg{topic, payload})
	ch := make(chan struct{})
	g.ackCh = append(g.ackCh, ch)
	g.ackOf = append(g.ackOf, len(g.sent)-1)
	return gatedSent{ch: ch}, nil
}

func (g *gated) ackAll() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, ch := range g.ackCh {
		close(ch)
		g.acked = append(g.acked, g.sent[g.ackOf[i]])
	}
	g.ackCh, g.ackOf = nil, nil
}

// TestOutboxBoundsInFlight: with a broker that does not acknowledge, at
// most MaxInFlight predictions are sent; the others wait in the store
// and are sent once acknowledgements come, none lost, in order.
func TestOutboxBoundsInFlight(t *testing.T) {
	st := openOutboxStore(t, filepath.Join(t.TempDir(), StoreFile), 1000)
	storeN(t, st, "r", 0, 20, 3)
	g := &gated{}
	o, err := NewOutbox(OutboxConfig{Store: st, Publisher: g, MaxInFlight: 5})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := o.fill(context.Background(), now); err != nil {
		t.Fatal(err)
	}
	if len(g.sent) != 5 || len(o.inflight) != 5 {
		t.Fatalf("sent %d, in flight %d; want 5", len(g.sent), len(o.inflight))
	}
	for i := 0; i < 3; i++ {
		g.ackAll()
		o.reap(now)
		if err := o.fill(context.Background(), now); err != nil {
			t.Fatal(err)
		}
	}
	g.ackAll()
	o.reap(now)
	if err := o.fill(context.Background(), now); err != nil {
		t.Fatal(err)
	}
	if len(g.sent) != 20 || o.Acked() != 20 {
		t.Fatalf("sent %d, acknowledged through %d; want 20", len(g.sent), o.Acked())
	}
	for i, m := range g.sent {
		if s := seqOf(t, m.Payload); s != int64(i+1) {
			t.Fatalf("message %d has sequence number %d", i, s)
		}
	}
}

// TestOutboxRetriesAndResumes: sends refused while the broker is down
// and messages never acknowledged (a lost connection) are sent again;
// after a restart the outbox resumes after the recorded mark.
func TestOutboxRetriesAndResumes(t *testing.T) {
	path := filepath.Join(t.TempDir(), StoreFile)
	st := openOutboxStore(t, path, 1000)
	storeN(t, st, "r", 0, 30, 7)
	g := &gated{}
	o, err := NewOutbox(OutboxConfig{Store: st, Publisher: g, MaxInFlight: 4, AckTimeout: 50 * time.Millisecond,
		RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond, MarkEvery: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := runOutbox(o)
	time.Sleep(120 * time.Millisecond) // 4 in flight, never acknowledged: timed out, sent again
	g.mu.Lock()
	g.down, g.ackCh, g.ackOf = true, nil, nil // the connection drops: what was in flight is lost
	g.mu.Unlock()
	time.Sleep(50 * time.Millisecond)
	g.mu.Lock()
	g.down = false
	g.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for o.Acked() < 30 {
		g.ackAll()
		if time.Now().After(deadline) {
			t.Fatalf("acknowledged through %d of 30", o.Acked())
		}
		time.Sleep(time.Millisecond)
	}
	stop()
	got := map[int64]bool{}
	for _, m := range g.acked {
		got[seqOf(t, m.Payload)] = true
	}
	for s := int64(1); s <= 30; s++ {
		if !got[s] {
			t.Fatalf("prediction %d never acknowledged", s)
		}
	}
	if counter(o.failures) == 0 {
		t.Fatal("no failure counted")
	}
	if st.Published() != 30 {
		t.Fatalf("marked %d, want 30", st.Published())
	}
	st.Close()

	st = openOutboxStore(t, path, 1000)
	storeN(t, st, "r", 30, 5, 5)
	g2 := &gated{}
	o2, err := NewOutbox(OutboxConfig{Store: st, Publisher: g2})
	if err != nil {
		t.Fatal(err)
	}
	if err := o2.fill(context.Background(), time.Now()); err != nil {
		t.Fatal(err)
	}
	if len(g2.sent) != 5 || seqOf(t, g2.sent[0].Payload) != 31 {
		t.Fatalf("after a restart sent %d from %d, want 5 from 31", len(g2.sent), seqOf(t, g2.sent[0].Payload))
	}
}

// TestStoreRetentionKeepsUnpublished: the age bound deletes only
// published predictions; the count bound deletes unpublished ones too,
// counts them, and the outbox goes on after them.
func TestStoreRetentionKeepsUnpublished(t *testing.T) {
	st := openOutboxStore(t, filepath.Join(t.TempDir(), StoreFile), 40)
	storeN(t, st, "r", 0, 30, 10)
	ctx := context.Background()
	if err := st.MarkPublished(ctx, 10); err != nil {
		t.Fatal(err)
	}
	if err := st.Trim(ctx, time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)); err != nil { // all are past MaxAge
		t.Fatal(err)
	}
	if n, _ := st.Count(ctx); n != 20 {
		t.Fatalf("after the age bound %d stored, want the 20 unpublished", n)
	}
	storeN(t, st, "r", 30, 40, 10) // 60 unpublished, bound 40
	if err := st.Trim(ctx, time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	if n, _ := st.Count(ctx); n != 40 {
		t.Fatalf("after the count bound %d stored, want 40", n)
	}
	if d := st.UnpublishedDropped(); d != 20 {
		t.Fatalf("dropped unpublished %d, want 20", d)
	}
	g := &gated{}
	o := publishAll(t, st, ackAll{g})
	if len(g.sent) != 40 || seqOf(t, g.sent[0].Payload) != 31 || o.Acked() != 70 {
		t.Fatalf("sent %d from %d, acknowledged through %d", len(g.sent), seqOf(t, g.sent[0].Payload), o.Acked())
	}
}

// ackAll acknowledges at once what it sends through g.
type ackAll struct{ g *gated }

func (a ackAll) Send(topic string, payload []byte) (ingest.Sent, error) {
	a.g.mu.Lock()
	defer a.g.mu.Unlock()
	a.g.sent = append(a.g.sent, sentMsg{topic, payload})
	return acked{}, nil
}

// TestOutboxThroughMosquittoRestart publishes stored predictions through
// a real Mosquitto over the agent's publisher connection (ingest.Publisher)
// with a small in-flight window, while more predictions are stored, and
// stops the broker mid-run and starts it again: a subscriber receives
// every prediction (at least once).
func TestOutboxThroughMosquittoRestart(t *testing.T) {
	mosq, err := mqtttest.Start(mqtttest.Options{Dir: t.TempDir(), Persistence: true})
	if errors.Is(err, mqtttest.ErrNoMosquitto) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer mosq.Stop()

	const total = 3000
	var mu sync.Mutex
	got := map[int64]int{}
	opts := mqtt.NewClientOptions().AddBroker(mosq.URL()).SetClientID("outbox-test-sub").SetCleanSession(false).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(100 * time.Millisecond).SetMaxReconnectInterval(200 * time.Millisecond)
	opts.SetOnConnectHandler(func(c mqtt.Client) {
		c.Subscribe("devices/+/inference", 1, func(_ mqtt.Client, m mqtt.Message) {
			s := seqOf(t, m.Payload())
			mu.Lock()
			got[s]++
			mu.Unlock()
		})
	})
	sub := mqtt.NewClient(opts)
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber: %v", tok.Error())
	}
	defer sub.Disconnect(100)
	time.Sleep(200 * time.Millisecond) // subscribed

	pub, err := ingest.NewPublisher(ingest.MQTTConfig{Broker: mosq.URL(), ClientID: "outbox-test-pub", MaxReconnectInterval: 200 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	st := openOutboxStore(t, filepath.Join(t.TempDir(), StoreFile), 100000)
	o, err := NewOutbox(OutboxConfig{Store: st, Publisher: pub, MaxInFlight: 4, AckTimeout: 300 * time.Millisecond,
		RetryMin: 10 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer runOutbox(o)()

	for i := 0; i < total; i += 100 {
		storeN(t, st, fmt.Sprintf("dev-%d", i/1000), i, 100, 25)
		if i == 1000 {
			if err := mosq.Stop(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for pub.Connected() && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(time.Second) // past AckTimeout: what was in flight is sent again

		}
		if i == 2000 {
			if err := mosq.Restart(); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == total {
			break
		}
		if time.Now().After(deadline) {
			var missing []int64
			mu.Lock()
			for s := int64(1); s <= total && len(missing) < 10; s++ {
				if got[s] == 0 {
					missing = append(missing, s)
				}
			}
			mu.Unlock()
			t.Fatalf("received %d distinct predictions of %d (acknowledged through %d, failures %v); missing e.g. %v",
				n, total, o.Acked(), counter(o.failures), missing)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if counter(o.failures) == 0 {
		t.Fatal("no publish failed: the broker's outage was not seen")
	}
	mu.Lock()
	dups := 0
	for _, c := range got {
		dups += c - 1
	}
	mu.Unlock()
	t.Logf("%d predictions received through a broker restart, %d duplicates, %v failed publishes retried", total, dups, counter(o.failures))
}

// TestStoreFromBeforeTheOutbox: predictions stored before the outbox
// existed count as published: an upgrade does not send them again.
func TestStoreFromBeforeTheOutbox(t *testing.T) {
	path := filepath.Join(t.TempDir(), StoreFile)
	st := openOutboxStore(t, path, 1000)
	storeN(t, st, "r", 0, 12, 4)
	if _, err := st.db.Exec(`DROP TABLE outbox`); err != nil {
		t.Fatal(err)
	}
	st.Close()
	st = openOutboxStore(t, path, 1000)
	if st.Published() != 12 || st.Total() != 12 {
		t.Fatalf("published %d of %d after the upgrade", st.Published(), st.Total())
	}
}
