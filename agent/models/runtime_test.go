package models

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/fedlearn"
)

// recorder is a Publisher keeping what it was given, acknowledged at
// once.
type recorder struct {
	mu   sync.Mutex
	msgs []sentMsg
}

type sentMsg struct {
	Topic   string
	Payload []byte
}

func (r *recorder) Send(topic string, payload []byte) (ingest.Sent, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, sentMsg{topic, payload})
	return acked{}, nil
}

type acked struct{}

var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (acked) Done() <-chan struct{} { return closed }
func (acked) Err() error            { return nil }

// published is the JSON of a prediction on devices/{id}/inference.
type published struct {
	ID      string `json:"id"`
	Model   string `json:"model"`
	Version string `json:"version"`
	Device  string `json:"device"`
	Class   struct {
		Index int    `json:"index"`
		Label string `json:"label"`
	} `json:"class"`
	Probabilities []float64 `json:"probabilities"`
	Time          time.Time `json:"time"`
}

func newTestRuntime(t testing.TB, f *fedlearn.File) (*Runtime, *recorder, *Store, *ingest.Tap) {
	t.Helper()
	k := signingKey(t, 1)
	dir := t.TempDir()
	var rt *Runtime
	mg, _ := newTestManager(t, dir, k, nil)
	mg.cfg.Changed = func([]*Model) {
		if rt != nil {
			rt.Refresh()
		}
	}
	st, err := OpenStore(StoreConfig{Path: filepath.Join(dir, StoreFile), MaxRows: 50, Outbox: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rec := &recorder{}
	tap := ingest.NewTap(ingest.TapConfig{})
	rt = NewRuntime(RuntimeConfig{Manager: mg, Tap: tap, Store: st, MaxDevices: 4, MaxPoints: 16})
	if err := mg.Install(context.Background(), sign(t, f, k)); err != nil {
		t.Fatal(err)
	}
	return rt, rec, st, tap
}

// reading is one numeric reading at base+sec seconds.
func reading(dev, metric string, sec float64, v float64) ingest.TapReading {
	base := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	return ingest.TapReading{Device: dev, Metric: metric, Time: base.Add(time.Duration(sec * float64(time.Second))).UnixNano(), Value: v}
}

// TestRuntimePredictionsEqualForward feeds readings through the runtime
// and checks each published and stored prediction against fedlearn's
// Extract and Forward over the same readings.
func TestRuntimePredictionsEqualForward(t *testing.T) {
	f := testFile(t, "1", 3)
	rt, rec, st, _ := newTestRuntime(t, f)
	var all []ingest.TapReading
	// room-1 sends all three metrics every 10 s; room-2 never sends co2
	// (no prediction); room-3 sends humidity only after a while.
	for i := 0; i < 12; i++ {
		s := float64(10 * i)
		round := []ingest.TapReading{
			reading("room-1", "temperature", s, 20+float64(i)/3),
			reading("room-1", "humidity", s, 35+float64(i)),
			reading("room-1", "co2", s, 500+40*float64(i%5)),
			reading("room-2", "temperature", s, 22),
			reading("room-2", "humidity", s, 40),
			reading("room-3", "temperature", s, 19),
			reading("room-3", "co2", s, 800),
			reading("room-1", "pressure", s, 1013), // read by no model: ignored
		}
		if i >= 6 {
			round = append(round, reading("room-3", "humidity", s, 55))
		}
		all = append(all, round...)
		rt.Process(context.Background(), round)
	}
	series := func(dev string, upTo int64) func(string) []fedlearn.Point {
		return func(metric string) []fedlearn.Point {
			var pts []fedlearn.Point
			for _, r := range all {
				if r.Device == dev && r.Metric == metric && r.Time <= upTo {
					pts = append(pts, fedlearn.Point{T: r.Time, V: r.Value})
				}
			}
			return pts
		}
	}
	publishAll(t, st, rec)
	perDevice := map[string]int{}
	ids := map[string]bool{}
	for _, m := range rec.msgs {
		var p published
		if err := json.Unmarshal(m.Payload, &p); err != nil {
			t.Fatalf("%s: %v", m.Payload, err)
		}
		if m.Topic != InferenceTopic(p.Device) || p.Model != "comfort" || p.Version != "1" {
			t.Fatalf("topic %s payload %s", m.Topic, m.Payload)
		}
		perDevice[p.Device]++
		if p.ID == "" || ids[p.ID] {
			t.Fatalf("id %q empty or repeated: %s", p.ID, m.Payload)
		}
		ids[p.ID] = true
		raw := make([]float64, 3)
		f.Schema.Extract(raw, p.Time.UnixNano(), series(p.Device, p.Time.UnixNano()))
		wc, wp := forwardOf(t, f, raw)
		if p.Class.Index != wc || p.Class.Label != f.Labels[wc] || !equalProbs(p.Probabilities, wp, 1e-12) {
			t.Fatalf("%s at %s: published %+v, forward %d %v (features %v)", p.Device, p.Time, p, wc, wp, raw)
		}
	}
	if perDevice["room-1"] != 12 || perDevice["room-2"] != 0 || perDevice["room-3"] != 6 {
		t.Fatalf("predictions per device %v, want room-1 12, room-2 0, room-3 6", perDevice)
	}
	stored, err := st.Recent(context.Background(), "room-1", "comfort", 5)
	if err != nil || len(stored) != 5 {
		t.Fatalf("stored %d %v", len(stored), err)
	}
	var last published
	for i := len(rec.msgs) - 1; i >= 0; i-- {
		if json.Unmarshal(rec.msgs[i].Payload, &last); last.Device == "room-1" {
			break
		}
	}
	if s := stored[0]; !s.ReadingTime.Equal(last.Time) || s.Class != last.Class.Index || !equalProbs(s.Probabilities, last.Probabilities, 0) {
		t.Fatalf("stored %+v, published %+v", s, last)
	}
}

// TestRuntimeBounds checks the device bound (least recently seen
// evicted) and the per-metric point bound.
func TestRuntimeBounds(t *testing.T) {
	rt, _, st, _ := newTestRuntime(t, testFile(t, "1", 3))
	for d := 0; d < 10; d++ {
		dev := fmt.Sprintf("dev-%d", d)
		var rs []ingest.TapReading
		for i := 0; i < 40; i++ {
			rs = append(rs, reading(dev, "co2", float64(i)/10, float64(i)), reading(dev, "temperature", float64(i)/10, 20), reading(dev, "humidity", float64(i)/10, 40))
		}
		rt.Process(context.Background(), rs)
	}
	if len(rt.devices) != 4 || rt.lru.Len() != 4 {
		t.Fatalf("%d devices held, bound 4", len(rt.devices))
	}
	if _, ok := rt.devices["dev-9"]; !ok {
		t.Fatal("the most recent device was evicted")
	}
	if got := counter(rt.mg.m.evicted); got != 6 {
		t.Fatalf("evicted %v, want 6", got)
	}
	for _, d := range rt.devices {
		for metric, pts := range d.series {
			if len(pts) > 16 {
				t.Fatalf("%s %s holds %d points, bound 16", d.id, metric, len(pts))
			}
		}
		if n := len(d.series["temperature"]); n != 1 {
			t.Fatalf("latest-only metric holds %d points", n)
		}
	}
	// 10 devices x 40 readings: 400 predictions, each round of 40 over
	// the bound (50 rows, applied every 4 added).
	if n, err := st.Count(context.Background()); err != nil || n > 50+40 {
		t.Fatalf("store holds %d (bound 50 + one round): %v", n, err)
	}
	if err := st.Trim(context.Background(), time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	// Rounds are kept whole: at least the newest 50, less than one
	// round (40) more.
	if n, err := st.Count(context.Background()); err != nil || n < 50 || n >= 50+40 {
		t.Fatalf("store holds %d after trimming (bound 50, rounds of 40): %v", n, err)
	}
}

// TestRuntimeSkipsNonFinite: a NaN reading is not added to a window.
func TestRuntimeSkipsNonFinite(t *testing.T) {
	rt, rec, _, _ := newTestRuntime(t, testFile(t, "1", 3))
	rt.Process(context.Background(), []ingest.TapReading{
		reading("r", "temperature", 0, math.NaN()), reading("r", "humidity", 0, 40), reading("r", "co2", 0, 600)})
	publishAll(t, rt.cfg.Store, rec)
	if len(rec.msgs) != 0 {
		t.Fatalf("predicted without a finite temperature: %s", rec.msgs[0].Payload)
	}
}

// TestInstallWhileServing swaps versions while the runtime predicts on
// readings and the API predicts (run with -race): every prediction comes
// from a whole version.
func TestInstallWhileServing(t *testing.T) {
	k := signingKey(t, 1)
	rt, _, _, _ := newTestRuntime(t, testFile(t, "1", 3))
	files := [][]byte{sign(t, testFile(t, "2", 4), k), sign(t, testFile(t, "3", 5), k)}
	ctx := context.Background()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			rt.Process(ctx, []ingest.TapReading{reading("r", "temperature", float64(i), 20), reading("r", "humidity", float64(i), 40), reading("r", "co2", float64(i), 600)})
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := rt.mg.Predict("comfort", []float64{21, 40, 600}); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := 0; i < 20; i++ {
		if err := rt.mg.Install(ctx, files[i%2]); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if m, _ := rt.mg.Get("comfort"); m.Version() != "3" {
		t.Fatalf("serving %s", m.Version())
	}
}

// TestRuntimeBurstEqualsOneByOne: a burst of one device's messages drained
// in one round (more than the window's point bound) gets the predictions
// the same messages get arriving one by one: one per reading time, with
// the same features.
func TestRuntimeBurstEqualsOneByOne(t *testing.T) {
	const n = 40 // over MaxPoints (16), within the store's 50 rows
	var burst []ingest.TapReading
	for i := 0; i < n; i++ {
		s := float64(10 * i)
		burst = append(burst,
			reading("room-1", "temperature", s, 20+float64(i%7)),
			reading("room-1", "humidity", s, 30+float64(i%11)),
			reading("room-1", "co2", s, 400+float64(13*i%90)))
	}
	run := func(oneByOne bool) []published {
		rt, rec, st, _ := newTestRuntime(t, testFile(t, "1", 3))
		if oneByOne {
			for i := 0; i < len(burst); i += 3 {
				rt.Process(context.Background(), burst[i:i+3])
			}
		} else {
			rt.Process(context.Background(), burst)
		}
		publishAll(t, st, rec)
		out := make([]published, len(rec.msgs))
		for i, m := range rec.msgs {
			if err := json.Unmarshal(m.Payload, &out[i]); err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	want, got := run(true), run(false)
	if len(want) != n || len(got) != n {
		t.Fatalf("one by one: %d predictions, burst: %d; want %d each", len(want), len(got), n)
	}
	for i := range want {
		if !want[i].Time.Equal(got[i].Time) || want[i].Class != got[i].Class || !equalProbs(want[i].Probabilities, got[i].Probabilities, 0) {
			t.Fatalf("prediction %d: one by one %+v, burst %+v", i, want[i], got[i])
		}
	}
}

// TestRuntimeNewDeviceSplitReadingTime: a device the runtime has not
// seen sends its first reading time in two parts with another device's
// reading between them, all in one round; it gets one prediction, as
// it would with the parts in rounds of their own.
func TestRuntimeNewDeviceSplitReadingTime(t *testing.T) {
	rt, rec, st, _ := newTestRuntime(t, testFile(t, "1", 3))
	rt.Process(context.Background(), []ingest.TapReading{
		reading("room-9", "temperature", 0, 21),
		reading("room-1", "temperature", 0, 20),
		reading("room-9", "humidity", 0, 35),
		reading("room-9", "co2", 0, 500),
	})
	publishAll(t, st, rec)
	if len(rec.msgs) != 1 {
		t.Fatalf("%d predictions, want room-9's one", len(rec.msgs))
	}
	var p published
	if err := json.Unmarshal(rec.msgs[0].Payload, &p); err != nil {
		t.Fatal(err)
	}
	if p.Device != "room-9" {
		t.Fatalf("prediction for %+v", p)
	}
}
