package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

var fuzzSeeds = []string{
	`[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]`,
	`[{"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,"bu":"A","bver":5,"n":"voltage","u":"V","v":120.1},{"n":"current","t":-5,"v":1.2},{"n":"current","t":-4,"v":1.3}]`,
	`[{"bn":"d:","n":"door","vb":true},{"n":"state","vs":"ok"},{"n":"blob","vd":"aGVsbG8"},{"n":"e","s":5,"bs":1}]`,
	`[{"n":"a","v":1,"x_":2}]`,
	`[{"n":"a","v":1e400}]`,
	`[{"n":"a","v":1,"t":1e308}]`,
	`[{"n":"a\u00e9\ud83d\ude00","v":1}]`,
	`[{"n":"a","v":1,"q":[[[[{"x":null}]]]]}]`,
	`{"temp":21.5,"hum":40,"ts":1772366390.5}`,
	`{"ts":"2026-03-01T11:59:00.25Z","on":true}`,
	`{"a":"x"}`,
	`{"a":1,"a":2}`,
	`[]`, `{}`, ``, `nul`, `[1,2`, "\xff\xfe", `{"a":-0.0e-0}`, `[{"n":"a","vb":false,"t":-1e-7}]`,
}

// checkDecoded holds for every successful decode: the payload is valid
// JSON, every reading is well-formed and within the limits.
func checkDecoded(t *testing.T, d *Decoder, payload []byte, rs []Reading, err error) {
	t.Helper()
	if err != nil {
		var de *DecodeError
		if !errors.As(err, &de) || !errors.Is(err, ErrInvalidPayload) {
			t.Fatalf("error %v (%T) is not a *DecodeError", err, err)
		}
		known := false
		for _, r := range reasons {
			known = known || r == de.Reason
		}
		if !known {
			t.Fatalf("unknown reason %q", de.Reason)
		}
		if len(rs) != 0 {
			t.Fatalf("error with %d readings", len(rs))
		}
		return
	}
	if !json.Valid(payload) {
		t.Fatalf("accepted invalid JSON %q", payload)
	}
	if len(rs) == 0 || len(rs) > 2*d.lim.MaxRecords {
		t.Fatalf("%d readings", len(rs))
	}
	lo, hi := testNow.Add(-d.lim.MaxPast-time.Second), testNow.Add(d.lim.MaxFuture+time.Second)
	for _, r := range rs {
		if r.Device != "dev1" || d.checkName(r.Metric, -1, "") != nil && d.checkName(r.Metric[:max(0, len(r.Metric)-4)], -1, "") != nil {
			t.Fatalf("bad reading %+v", r)
		}
		if math.IsNaN(r.Value) || math.IsInf(r.Value, 0) {
			t.Fatalf("non-finite value in %+v", r)
		}
		if r.Time.Before(lo) || r.Time.After(hi) {
			t.Fatalf("time outside the window: %+v", r)
		}
		if (r.Kind == KindBool && r.Value != 0 && r.Value != 1) || len(r.Text) > d.lim.MaxTextLen {
			t.Fatalf("bad value in %+v", r)
		}
	}
}

func FuzzDecodeSenML(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	d := newTestDecoder(f, Limits{MaxRecords: 50})
	f.Fuzz(func(t *testing.T, p []byte) {
		rs, err := d.DecodeSenML("dev1", p)
		checkDecoded(t, d, p, rs, err)
		// countElements agrees with a JSON parser on arrays.
		var arr []json.RawMessage
		if json.Unmarshal(p, &arr) == nil {
			if i := bytes.IndexByte(p, '['); i >= 0 {
				if n := countElements(p[i+1:], 1<<30); n != len(arr) {
					t.Fatalf("countElements %d, want %d", n, len(arr))
				}
			}
		}
	})
}

func FuzzDecodeFlat(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	d := newTestDecoder(f, Limits{MaxRecords: 50})
	f.Fuzz(func(t *testing.T, p []byte) {
		rs, err := d.DecodeFlat("dev1", p)
		checkDecoded(t, d, p, rs, err)
	})
}

func FuzzDecodePayload(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add("devices/dev1/telemetry", []byte(s))
	}
	f.Add("devices/dev1/x", []byte(`{"a":1}`))
	f.Add("devices/+/telemetry", []byte(`{"a":1}`))
	d := newTestDecoder(f, Limits{MaxRecords: 50, MaxPayloadBytes: 4096})
	tp, _ := ParseTopicPattern("")
	f.Fuzz(func(t *testing.T, topic string, p []byte) {
		dev, err := tp.Device(topic)
		if err == nil && !tp.Matches(topic) {
			t.Fatalf("device %q from %q, which does not match the pattern", dev, topic)
		}
		if err != nil && tp.Matches(topic) && CheckDeviceID(strings.Split(topic, "/")[1]) == nil {
			t.Fatalf("%q matches the pattern with a valid device id, but: %v", topic, err)
		}
		if err != nil {
			if reasonOf(err) != ReasonTopic {
				t.Fatalf("topic error %v", err)
			}
			return
		}
		if tp.Topic(dev) != topic {
			t.Fatalf("device %q from %q does not map back", dev, topic)
		}
		rs, _, err := d.appendDecode(nil, dev, p, testNow)
		if dev == "dev1" {
			checkDecoded(t, d, p, rs, err)
		}
		if err == nil && len(p) > 4096 {
			t.Fatal("accepted an oversized payload")
		}
	})
}

// FuzzDecodeOutboxBatch: the outbox payload decoder never panics on
// damaged data, and what it accepts re-encodes to the same bytes.
func FuzzDecodeOutboxBatch(f *testing.F) {
	var e batchEncoder
	e.reset()
	e.add("d1", "temp", "Cel", 1772366400000000, KindNumber, 21.5, "")
	e.add("d1", "state", "", 1772366400000001, KindString, 0, "ok")
	f.Add(e.payload(BatchReadings))
	e.reset()
	e.addRollup("d1", "temp", "Cel", 60, 1772366400000000, agg{count: 3, sum: 60, min: 19, max: 21})
	e.add("d1", "blob", "", 1772366400000002, KindData, 0, "\x00\x01")
	f.Add(e.payload(BatchRollups))
	f.Add([]byte("EO\x01\x01\x00\x00\x00"))
	f.Add([]byte("EO\x01\x01\xff\xff\xff\xff\x0f"))
	f.Fuzz(func(t *testing.T, p []byte) {
		kind, rs, us, err := DecodeOutboxBatch(p)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		var re batchEncoder
		re.reset()
		for _, r := range rs {
			re.add(r.Device, r.Metric, r.Unit, r.timeUS(), r.Kind, r.Value, r.Text)
		}
		for _, u := range us {
			re.addRollup(u.Device, u.Metric, u.Unit, int64(u.Resolution/time.Second), u.Start.UnixMicro(),
				agg{count: u.Count, sum: u.Sum, min: u.Min, max: u.Max})
		}
		if _, rs2, us2, err := DecodeOutboxBatch(re.payload(kind)); err != nil || len(rs2) != len(rs) || len(us2) != len(us) {
			t.Fatalf("re-encoded batch does not decode alike: %v", err)
		}
	})
}
