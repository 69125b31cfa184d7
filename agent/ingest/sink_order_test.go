package ingest

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// orderRecorder is a Sink that keeps every reading it is told about.
type orderRecorder struct {
	mu       sync.Mutex
	commits  int
	readings []Reading
}

func (r *orderRecorder) Committed(c Commit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.commits++
	r.readings = append(r.readings, c.Readings...)
}

// TestSinkGetsReadingsInArrivalOrder: a group commit stores a batch's
// numeric readings grouped by series and older ones last, but the Sink
// (the inference runtime follows each device's readings in time) is
// told about them in the order they arrived, text readings among them.
func TestSinkGetsReadingsInArrivalOrder(t *testing.T) {
	rec := &orderRecorder{}
	in := newTestIngestor(t, Config{Sink: rec, BatchDelay: 2 * time.Second})
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	type sent struct {
		dev, metric string
		at          int // seconds after t0
		value       string
	}
	msgs := []sent{
		{"d0", "a", 1, "1"}, {"d0", "b", 1, "2"}, {"d1", "a", 1, "3"},
		{"d0", "a", 2, "4"}, {"d0", "b", 2, "5"}, {"d1", "s", 1, `"on"`},
		{"d0", "a", 0, "6"}, // older than d0's a already in the batch
		{"d1", "a", 2, "7"},
	}
	var fm []*fakeMsg
	for i, m := range msgs {
		ts := t0.Add(time.Duration(m.at) * time.Second).Unix()
		payload := fmt.Appendf(nil, `{"ts":%d,%q:%s}`, ts, m.metric, m.value)
		if m.value[0] == '"' { // text: SenML vs
			payload = fmt.Appendf(nil, `[{"bt":%d,"n":%q,"vs":%s}]`, ts, m.metric, m.value)
		}
		f := &fakeMsg{topic: "devices/" + m.dev + "/telemetry", pid: uint16(i + 1), payload: payload}
		fm = append(fm, f)
		if err := in.Handle(f); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "acknowledgements", func() bool { return allAcked(fm) })
	waitFor(t, "the sink", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.readings) == len(msgs)
	})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.commits != 1 {
		t.Fatalf("%d commits, want the batch in one (the test needs it)", rec.commits)
	}
	for i, m := range msgs {
		r := rec.readings[i]
		if r.Device != m.dev || r.Metric != m.metric || !r.Time.Equal(t0.Add(time.Duration(m.at)*time.Second)) {
			var got []string
			for _, r := range rec.readings {
				got = append(got, fmt.Sprintf("%s/%s@%s", r.Device, r.Metric, r.Time.Sub(t0)))
			}
			t.Fatalf("reading %d is %s/%s@%s, want %s/%s@%ds; the sink got %v", i, r.Device, r.Metric, r.Time.Sub(t0), m.dev, m.metric, m.at, got)
		}
	}
}
