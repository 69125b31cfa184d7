package devices

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/clock"
)

// regHarness drives a Registry by hand: a manual clock and a recording
// put.
type regHarness struct {
	t      *testing.T
	clk    *clock.Manual
	mu     sync.Mutex
	writes map[string][]Record
	fail   error
	reg    *Registry
	reload []ingest.Device
}

func newRegHarness(t *testing.T) *regHarness {
	h := &regHarness{t: t, clk: clock.NewManual(time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)), writes: map[string][]Record{}}
	var err error
	h.reg, err = New(Config{Agent: "agent-1", Interval: 30 * time.Second, Clock: h.clk,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Put: func(_ context.Context, id string, v []byte) error {
			h.mu.Lock()
			defer h.mu.Unlock()
			if h.fail != nil {
				return h.fail
			}
			rec, err := Decode(id, v)
			if err != nil {
				t.Fatalf("registry wrote an undecodable record: %v", err)
			}
			h.writes[id] = append(h.writes[id], rec)
			return nil
		},
		Reload: func(context.Context) ([]ingest.Device, error) { return h.reload, nil }})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// now is the harness clock's time.
func (h *regHarness) now() time.Time { return h.clk.Now() }

func (h *regHarness) last(id string) (Record, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ws := h.writes[id]
	if len(ws) == 0 {
		return Record{}, 0
	}
	return ws[len(ws)-1], len(ws)
}

// commit reports one commit of msgs messages of one reading "t" each from
// device, received at the harness's time.
func (h *regHarness) commit(device string, msgs int, value float64) {
	var rs []ingest.Reading
	for i := 0; i < msgs; i++ {
		rs = append(rs, ingest.Reading{Device: device, Metric: "t", Time: h.now().Add(time.Duration(i) * time.Millisecond), Kind: ingest.KindNumber, Value: value + float64(i)})
	}
	rs = append(rs, ingest.Reading{Device: device, Metric: "state", Time: h.now(), Kind: ingest.KindString, Text: "on"})
	h.reg.Committed(ingest.Commit{Messages: msgs, Readings: rs})
	h.reg.DevicesSeen([]ingest.DeviceSeen{{Device: device, At: h.now(), Messages: msgs, Readings: msgs + 1}})
}

func TestDeviceRegistryCoalesces(t *testing.T) {
	h := newRegHarness(t)
	ctx := context.Background()
	t0 := h.now()

	// First sight: written at once.
	h.commit("d1", 1, 20)
	h.reg.pass(ctx, false)
	rec, n := h.last("d1")
	if n != 1 || rec.Messages != 1 || rec.Readings != 2 || rec.Agent != "agent-1" || !rec.FirstSeen.Equal(t0) ||
		rec.LastValues["t"] != 20 || rec.Rate != 0 || !rec.Updated.Equal(t0) {
		t.Fatalf("first write (%d): %+v", n, rec)
	}
	if _, ok := rec.LastValues["state"]; ok {
		t.Fatalf("string reading listed in last_values: %+v", rec.LastValues)
	}

	// Many commits within the interval: no write, counts accumulate.
	for i := 0; i < 50; i++ {
		h.clk.Set(h.now().Add(200 * time.Millisecond))
		h.commit("d1", 2, float64(100+i))
		h.reg.pass(ctx, false)
	}
	if _, n := h.last("d1"); n != 1 {
		t.Fatalf("%d writes within one interval, want 1", n)
	}
	// Once the interval has passed, one write holds everything.
	h.clk.Set(t0.Add(30 * time.Second))
	h.reg.pass(ctx, false)
	rec, n = h.last("d1")
	if n != 2 || rec.Messages != 101 || rec.Readings != 152 || rec.LastValues["t"] != 150 {
		t.Fatalf("second write (%d): %+v", n, rec)
	}
	// 100 messages between the last-seen times of the two writes (10 s).
	if want := 100 / 10.0; math.Abs(rec.Rate-want) > 1e-9 {
		t.Fatalf("rate %v, want %v", rec.Rate, want)
	}
	// Nothing new: no write, however long.
	h.clk.Set(h.now().Add(time.Hour))
	h.reg.pass(ctx, false)
	if _, n := h.last("d1"); n != 2 {
		t.Fatalf("idle device rewritten: %d writes", n)
	}

	// An older reading arriving late does not replace a newer last value.
	h.reg.Committed(ingest.Commit{Readings: []ingest.Reading{{Device: "d1", Metric: "t", Time: t0, Kind: ingest.KindNumber, Value: -1}}})
	h.reg.DevicesSeen([]ingest.DeviceSeen{{Device: "d1", At: h.now(), Messages: 1, Readings: 1}})
	h.reg.pass(ctx, false)
	if rec, _ := h.last("d1"); rec.LastValues["t"] != 150 || rec.Messages != 102 {
		t.Fatalf("late reading: %+v", rec)
	}

	// A failed write is retried on the next pass.
	h.clk.Set(h.now().Add(time.Minute))
	h.commit("d2", 1, 1)
	h.fail = errors.New("disk full")
	h.reg.pass(ctx, false)
	if _, n := h.last("d2"); n != 0 || h.reg.errors.Load() != 1 {
		t.Fatalf("failed write recorded: %d, errors %d", n, h.reg.errors.Load())
	}
	h.fail = nil
	h.reg.pass(ctx, false)
	if rec, n := h.last("d2"); n != 1 || rec.Messages != 1 {
		t.Fatalf("retry: %d %+v", n, rec)
	}

	// stop with flush writes what the interval held back.
	h.clk.Set(h.now().Add(time.Second))
	h.commit("d2", 3, 7)
	h.reg.pass(ctx, false)
	if _, n := h.last("d2"); n != 1 {
		t.Fatal("written before its interval")
	}
	h.reg.Start()
	h.reg.Stop(ctx, true)
	if rec, n := h.last("d2"); n != 2 || rec.Messages != 4 {
		t.Fatalf("flush on stop: %d %+v", n, rec)
	}
}

func TestDeviceRegistrySeedAndOverflow(t *testing.T) {
	h := newRegHarness(t)
	ctx := context.Background()
	first := h.now().Add(-time.Hour)
	h.reg.Seed([]ingest.Device{{ID: "old", FirstSeen: first, LastSeen: h.now().Add(-time.Minute), Messages: 40, Readings: 80, Rate: 0.5,
		Metrics: []ingest.MetricInfo{{Name: "t", Kind: "number", LastTime: first, Value: 3}, {Name: "s", Kind: "string", Text: "x"}}}})
	h.reg.pass(ctx, false)
	if _, n := h.last("old"); n != 0 {
		t.Fatal("seeded device written before it was seen")
	}
	h.commit("old", 1, 9)
	h.reg.pass(ctx, false)
	rec, n := h.last("old")
	if n != 1 || rec.Messages != 41 || rec.Readings != 82 || !rec.FirstSeen.Equal(first) || rec.Rate != 0.5 || rec.LastValues["t"] != 9 {
		t.Fatalf("counters do not continue from the database (%d): %+v", n, rec)
	}

	// Past the pending bound updates are dropped, and the worker re-reads
	// the counters from the ingestion database.
	h.reg.maxPending = 2
	h.clk.Set(h.now().Add(time.Minute))
	h.commit("a", 1, 1)
	h.commit("b", 1, 1)
	h.commit("c", 1, 1)
	if h.reg.dropped.Load() == 0 {
		t.Fatal("no update dropped past the bound")
	}
	h.reload = []ingest.Device{{ID: "c", FirstSeen: h.now(), LastSeen: h.now(), Messages: 1, Readings: 2,
		Metrics: []ingest.MetricInfo{{Name: "t", Kind: "number", LastTime: h.now(), Value: 1}}}}
	h.reg.pass(ctx, false)
	for _, id := range []string{"a", "b", "c"} {
		if rec, n := h.last(id); n != 1 || rec.Messages != 1 || rec.LastValues["t"] != 1 {
			t.Errorf("%s after overflow: %d writes, %+v", id, n, rec)
		}
	}
}

// TestDeviceRegistryConcurrent: the commit path and the worker run
// together; every message is counted once in the final records.
func TestDeviceRegistryConcurrent(t *testing.T) {
	h := newRegHarness(t)
	h.reg.interval = time.Millisecond
	h.reg.clock = clock.Real()
	h.reg.Start()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			dev := []string{"x", "y"}[w%2]
			for i := 0; i < 500; i++ {
				at := time.Now()
				h.reg.Committed(ingest.Commit{Readings: []ingest.Reading{{Device: dev, Metric: "m", Time: at, Kind: ingest.KindNumber, Value: float64(i)}}})
				h.reg.DevicesSeen([]ingest.DeviceSeen{{Device: dev, At: at, Messages: 1, Readings: 1}})
			}
		}(w)
	}
	wg.Wait()
	h.reg.Stop(context.Background(), true)
	for _, id := range []string{"x", "y"} {
		if rec, _ := h.last(id); rec.Messages != 1000 || rec.Readings != 1000 {
			t.Errorf("%s: %+v", id, rec)
		}
	}
}

func TestDecodeDeviceRecord(t *testing.T) {
	good := `{"id":"d1","agent":"a","first_seen":"2024-05-01T12:00:00Z","last_seen":"2024-05-01T12:00:01Z","messages":2,"readings":4,"rate":1,"last_values":{"t":21.5},"updated":"2024-05-01T12:00:02Z"}`
	rec, err := Decode("d1", []byte(good))
	if err != nil || rec.LastValues["t"] != 21.5 || rec.Messages != 2 {
		t.Fatalf("%v %+v", err, rec)
	}
	for _, bad := range []string{``, `nope`, `[]`, `{"id":"other"}`, `{"messages":"x"}`} {
		if _, err := Decode("d1", []byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if rec, err := Decode("d9", []byte(`{}`)); err != nil || rec.ID != "d9" || rec.LastValues == nil {
		t.Errorf("empty object: %v %+v", err, rec)
	}
}

// FuzzDecodeDeviceRecord: records come from peers through replication;
// any bytes give a record or an error, never a panic, and a record
// re-encodes to one that decodes the same.
func FuzzDecodeDeviceRecord(f *testing.F) {
	f.Add("d1", []byte(`{"id":"d1","agent":"a","messages":2,"last_values":{"t":21.5}}`))
	f.Add("d1", []byte(`{"id":"d2"}`))
	f.Add("x", []byte(`{"last_values":{"a":1e308,"b":-0}}`))
	f.Add("x", []byte(`{"first_seen":"not a time"}`))
	f.Add("x", []byte("\xff\x00"))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		rec, err := Decode(key, value)
		if err != nil {
			return
		}
		if rec.ID != key || rec.LastValues == nil {
			t.Fatalf("decoded %+v for key %q", rec, key)
		}
		b, err := json.Marshal(rec)
		if err != nil {
			return // e.g. a time outside JSON's range
		}
		again, err := Decode(key, b)
		if err != nil || again.Messages != rec.Messages || len(again.LastValues) != len(rec.LastValues) {
			t.Fatalf("round trip: %v %+v vs %+v", err, again, rec)
		}
	})
}

// TestDeviceRegistryFlush: Flush writes a changed record at once, not when
// the interval is due, and writes nothing for a device with no change.
func TestDeviceRegistryFlush(t *testing.T) {
	h := newRegHarness(t)
	ctx := context.Background()
	if err := h.reg.Flush(ctx); err == nil {
		t.Fatal("Flush before Start: no error")
	}
	h.reg.Start()
	defer h.reg.Stop(ctx, false)
	h.commit("d1", 1, 20)
	if err := h.reg.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, n := h.last("d1"); n != 1 {
		t.Fatalf("first sight: %d writes, want 1", n)
	}
	h.clk.Set(h.now().Add(time.Second)) // well within the 30 s interval
	h.commit("d1", 3, 30)
	if err := h.reg.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	rec, n := h.last("d1")
	if n != 2 || rec.Messages != 4 {
		t.Fatalf("after a flush within the interval: %d writes, last %+v; want 2 writes, 4 messages", n, rec)
	}
	if err := h.reg.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, n := h.last("d1"); n != 2 {
		t.Fatalf("flush without changes wrote again: %d writes", n)
	}
}

func FuzzDecodeIdentity(f *testing.F) {
	f.Add("d1", []byte(`{"id":"d1","hash":"$7$101$k6NdYsnn/MLMDKSh$JxJImt6dOABI1/oJCEhJ+gCRPyPhRRx6fYnZGwTsKE9UEjCL/56jnnXhQ/ZGb1AD1bichVZgMYnzPir+Da/grQ==","publish":["devices/d1/telemetry"],"subscribe":["devices/d1/commands"],"state":"active"}`))
	f.Add("d1", []byte(`{"id":"d1","hash":"$6$x","state":"active"}`))
	f.Add("d1", []byte(`{"id":"d2"}`))
	f.Add("x", []byte(`[`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		d, err := DecodeIdentity(key, value)
		if err != nil {
			return
		}
		if d.ID != key || d.Check() != nil {
			t.Fatalf("decoded an invalid identity %+v", d)
		}
	})
}

func TestIdentityCheck(t *testing.T) {
	const h = "$7$101$k6NdYsnn/MLMDKSh$JxJImt6dOABI1/oJCEhJ+gCRPyPhRRx6fYnZGwTsKE9UEjCL/56jnnXhQ/ZGb1AD1bichVZgMYnzPir+Da/grQ=="
	pub, sub := DefaultTopics("d1", "")
	good := Identity{ID: "d1", Hash: h, Publish: pub, Subscribe: sub, State: StateActive}
	if err := good.Check(); err != nil {
		t.Fatal(err)
	}
	many := make([]string, 33)
	for i := range many {
		many[i] = "a"
	}
	for _, c := range []struct {
		mod  func(*Identity)
		want string
	}{
		{func(d *Identity) { d.ID = "a/b" }, "identity id"},
		{func(d *Identity) { d.Hash = "plain" }, "$7$"},
		{func(d *Identity) { d.State = "gone" }, "state"},
		{func(d *Identity) { d.Publish = []string{"devices/#/x"} }, "publish topic"},
		{func(d *Identity) { d.Subscribe = []string{"$SYS/#"} }, "subscribe topic"},
		{func(d *Identity) { d.Publish = many }, "33 publish topics"},
	} {
		d := good
		c.mod(&d)
		if err := d.Check(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error naming %q", d, err, c.want)
		}
	}
	b, _ := json.Marshal(good)
	if _, err := DecodeIdentity("d2", b); err == nil || !strings.Contains(err.Error(), "holds id") {
		t.Fatalf("key mismatch: %v", err)
	}
	if pub[0] != "devices/d1/telemetry" || sub[0] != "devices/d1/commands" || sub[1] != "devices/d1/inference" {
		t.Fatalf("defaults %v %v", pub, sub)
	}
}
