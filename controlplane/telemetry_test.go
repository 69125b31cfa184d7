package controlplane

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

func makeBatch(seq uint64, start time.Time, n int, devices ...string) cpapi.TelemetryBatch {
	if len(devices) == 0 {
		devices = []string{"dev-1"}
	}
	b := cpapi.TelemetryBatch{BatchSeq: seq, Epoch: testEpoch, Readings: make([]cpapi.Reading, n)}
	for i := range n {
		b.Readings[i] = cpapi.Reading{Device: devices[i%len(devices)], Metric: "temperature", TS: start.Add(time.Duration(i) * time.Second), Value: float64(i)}
	}
	return b
}

func countReadings(t *testing.T, e *testEnv, q cpapi.TelemetryQuery) int64 {
	t.Helper()
	if q.Bucket == 0 {
		q.Bucket = 1000 * time.Hour
	}
	res, err := e.admin.QueryTelemetry(e.ctx(), q)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, s := range res.Series {
		for _, b := range s.Buckets {
			n += b.Count
		}
	}
	return n
}

func TestTelemetryUploadIsIdempotent(t *testing.T) {
	e := newTestEnv(t, nil)
	a := e.enroll("tele", nil)
	start := e.clock.Now().Add(-30 * time.Minute)
	batch := makeBatch(1, start, 1000, "dev-1", "dev-2")
	res, err := a.client.UploadTelemetry(e.ctx(), batch)
	if err != nil {
		t.Fatal(err)
	}
	if res.Duplicate || res.Accepted != 1000 || res.BatchSeq != 1 {
		t.Fatalf("first upload %+v", res)
	}
	// A retry (same bytes, or re-encoded) is recognised and stores nothing.
	for range 3 {
		res, err = a.client.UploadTelemetry(e.ctx(), batch)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Duplicate || res.Accepted != 0 {
			t.Fatalf("retry %+v", res)
		}
	}
	// The same identity with other readings is refused by name (409) and
	// changes nothing: not the readings, not the batch's record.
	q := cpapi.TelemetryQuery{Agent: a.id, From: start.Add(-time.Hour), To: e.clock.Now().Add(time.Hour)}
	before, err := e.admin.QueryTelemetry(e.ctx(), cpapi.TelemetryQuery{Agent: a.id, From: q.From, To: q.To, Limit: 5000})
	if err != nil {
		t.Fatal(err)
	}
	for _, changed := range []cpapi.TelemetryBatch{
		makeBatch(1, start.Add(time.Hour), 10),     // other readings
		makeBatch(1, start, 999, "dev-1", "dev-2"), // one reading fewer
		func() cpapi.TelemetryBatch { // one value changed
			c := makeBatch(1, start, 1000, "dev-1", "dev-2")
			c.Readings[500].Value += 0.25
			return c
		}(),
	} {
		res, err = a.client.UploadTelemetry(e.ctx(), changed)
		var ae *cpapi.APIError
		if !errors.As(err, &ae) || ae.Status != 409 || !errors.Is(err, cpapi.ErrConflict) ||
			!strings.HasPrefix(ae.Message, cpapi.ErrBatchConflict.Error()) || !strings.Contains(ae.Message, `epoch "ep-test" batch_seq 1`) {
			t.Fatalf("changed retry %+v %v", res, err)
		}
	}
	if n := countReadings(t, e, q); n != 1000 {
		t.Fatalf("%d readings stored, want 1000", n)
	}
	if logs := e.logs.String(); strings.Count(logs, "telemetry batch refused") != 3 || !strings.Contains(logs, "epoch=ep-test batch_seq=1") ||
		!strings.Contains(logs, "with other readings (1000 then, 999 in this upload)") {
		t.Errorf("conflicts not logged with their reason:\n%s", logs)
	}
	after, err := e.admin.QueryTelemetry(e.ctx(), cpapi.TelemetryQuery{Agent: a.id, From: q.From, To: q.To, Limit: 5000})
	if err != nil || fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("stored readings changed by a refused upload (%v)", err)
	}
	// The original is still a duplicate, not a conflict.
	if res, err = a.client.UploadTelemetry(e.ctx(), batch); err != nil || !res.Duplicate {
		t.Fatalf("retry after conflicts %+v %v", res, err)
	}
	// The same batch_seq in another epoch (a new ingestion database) is
	// a new batch.
	next := makeBatch(1, start, 7, "dev-9")
	next.Epoch = "ep-other"
	if res, err = a.client.UploadTelemetry(e.ctx(), next); err != nil || res.Duplicate || res.Accepted != 7 {
		t.Fatalf("new epoch %+v %v", res, err)
	}
	if n := countReadings(t, e, q); n != 1007 {
		t.Fatalf("%d readings stored, want 1007", n)
	}
	// The same batch_seq from another agent is a different batch.
	b := e.enroll("tele2", nil)
	res, err = b.client.UploadTelemetry(e.ctx(), makeBatch(1, start, 5))
	if err != nil || res.Duplicate || res.Accepted != 5 {
		t.Fatalf("other agent %+v %v", res, err)
	}
	// Uncompressed JSON is accepted too.
	plain, _ := json.Marshal(makeBatch(2, start.Add(time.Hour), 3))
	status, body := e.rawRequest("POST", "/v1/agents/self/telemetry", "", plain, map[string]string{"Content-Type": "application/json"}, &a.cert)
	if status != 200 || !strings.Contains(body, `"accepted":3`) {
		t.Fatalf("plain upload %d %s", status, body)
	}
}

func TestTelemetryDownsampling(t *testing.T) {
	e := newTestEnv(t, nil)
	a := e.enroll("ds", nil)
	base := e.clock.Now().Truncate(time.Hour).Add(-2 * time.Hour)
	// 120 readings one per 30 s over one hour; value = minute index*10 + (0 or 5).
	var rs []cpapi.Reading
	for i := range 120 {
		rs = append(rs, cpapi.Reading{Device: "pump", Metric: "pressure", TS: base.Add(time.Duration(i) * 30 * time.Second), Value: float64(i/2*10 + (i%2)*5)})
		rs = append(rs, cpapi.Reading{Device: "pump", Metric: "flow", TS: base.Add(time.Duration(i) * 30 * time.Second), Value: 1})
	}
	if _, err := a.client.UploadTelemetry(e.ctx(), cpapi.TelemetryBatch{BatchSeq: 1, Epoch: testEpoch, Readings: rs}); err != nil {
		t.Fatal(err)
	}
	res, err := e.admin.QueryTelemetry(e.ctx(), cpapi.TelemetryQuery{Agent: a.id, Device: "pump", Metric: "pressure", From: base, To: base.Add(time.Hour), Bucket: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Series) != 1 || res.BucketSeconds != 600 {
		t.Fatalf("series %+v", res)
	}
	bks := res.Series[0].Buckets
	if len(bks) != 6 {
		t.Fatalf("%d buckets, want 6", len(bks))
	}
	for k, b := range bks {
		// Bucket k covers minutes 10k..10k+9: values 100k+10m and +5.
		wantMin, wantMax := float64(100*k), float64(100*k+95)
		wantAvg := (wantMin + wantMax) / 2
		if !b.Start.Equal(base.Add(time.Duration(k) * 10 * time.Minute)) {
			t.Errorf("bucket %d starts %s", k, b.Start)
		}
		if b.Count != 20 || b.Min != wantMin || b.Max != wantMax || math.Abs(b.Avg-wantAvg) > 1e-9 {
			t.Errorf("bucket %d = %+v, want count 20 min %g max %g avg %g", k, b, wantMin, wantMax, wantAvg)
		}
	}
	// Raw points, time range (from inclusive, to exclusive), metric filter.
	res, err = e.admin.QueryTelemetry(e.ctx(), cpapi.TelemetryQuery{Metric: "pressure", From: base.Add(time.Minute), To: base.Add(3 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Series) != 1 || len(res.Series[0].Points) != 4 || res.Series[0].Points[0].Value != 10 {
		t.Errorf("raw points %+v", res.Series)
	}
	// Both metrics without a filter, and truncation at the limit.
	res, err = e.admin.QueryTelemetry(e.ctx(), cpapi.TelemetryQuery{Agent: a.id, From: base, To: base.Add(time.Hour), Limit: 150})
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, s := range res.Series {
		total += len(s.Points)
	}
	if len(res.Series) != 2 || total != 150 || !res.Truncated {
		t.Errorf("limit: %d series, %d points, truncated %v", len(res.Series), total, res.Truncated)
	}
	// A non-matching filter answers an empty list, not an error.
	res, err = e.admin.QueryTelemetry(e.ctx(), cpapi.TelemetryQuery{Device: "nothing", From: base, To: base.Add(time.Hour)})
	if err != nil || len(res.Series) != 0 {
		t.Errorf("empty query %+v %v", res, err)
	}
}

func TestTelemetryBadBatchWritesNothing(t *testing.T) {
	e := newTestEnv(t, nil)
	a := e.enroll("half", nil)
	start := e.clock.Now().Add(-time.Minute)
	b := makeBatch(7, start, 100)
	b.Readings[99].TS = e.clock.Now().Add(48 * time.Hour)
	_, err := a.client.UploadTelemetry(e.ctx(), b)
	ae := wantStatus(t, err, 400)
	if !strings.Contains(ae.Message, "readings[99].ts") {
		t.Errorf("message %q does not name the reading", ae.Message)
	}
	q := cpapi.TelemetryQuery{Agent: a.id, From: start.Add(-time.Hour), To: e.clock.Now().Add(time.Hour)}
	if n := countReadings(t, e, q); n != 0 {
		t.Fatalf("%d readings stored from a refused batch", n)
	}
	// The sequence number was not consumed: the corrected batch is stored.
	b.Readings[99].TS = start
	res, err := a.client.UploadTelemetry(e.ctx(), b)
	if err != nil || res.Duplicate || res.Accepted != 100 {
		t.Fatalf("corrected batch %+v %v", res, err)
	}
}

func TestDecodeTelemetryBatch(t *testing.T) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	opts := DecodeOptions{MaxReadings: 3, MaxBytes: 4096, Now: now, MaxFuture: time.Hour}
	good := `{"batch_seq":3,"epoch":"e1","readings":[{"device":"d","metric":"m","ts":"2024-05-01T11:00:00+02:00","value":1.5}]}`
	b, err := DecodeTelemetryBatch(strings.NewReader(good), opts)
	if err != nil {
		t.Fatal(err)
	}
	if b.BatchSeq != 3 || b.Readings[0].TS.Location() != time.UTC || !b.Readings[0].TS.Equal(time.Date(2024, 5, 1, 9, 0, 0, 0, time.UTC)) {
		t.Errorf("decoded %+v", b)
	}
	cases := []struct{ in, want string }{
		{``, "empty body"},
		{`{"batch_seq":1,`, "unexpected end"},
		{`{"batch_seq":1,"epoch":"e1","readings":[],"extra":1}`, `unknown field "extra"`},
		{`{"batch_seq":"one"}`, `field "batch_seq"`},
		{`{"batch_seq":0,"epoch":"e1","readings":[{"device":"d","metric":"m","ts":"2024-05-01T11:00:00Z","value":1}]}`, "batch_seq"},
		{`{"batch_seq":-1}`, "batch_seq"},
		{`{"batch_seq":1,"epoch":"e1","readings":[]}`, "empty batch"},
		{`{"batch_seq":1,"readings":[{"device":"d","metric":"m","ts":"2024-05-01T11:00:00Z","value":1}]}`, "epoch: missing"},
		{`{"batch_seq":1,"epoch":"","readings":[{"device":"d","metric":"m","ts":"2024-05-01T11:00:00Z","value":1}]}`, "epoch: missing"},
		{`{"batch_seq":1,"epoch":"a b","readings":[{"device":"d","metric":"m","ts":"2024-05-01T11:00:00Z","value":1}]}`, "epoch: \"a b\": only letters"},
		{`{"batch_seq":1,"epoch":"` + strings.Repeat("e", 65) + `","readings":[{"device":"d","metric":"m","ts":"2024-05-01T11:00:00Z","value":1}]}`, "epoch: 65 bytes"},
		{`{"batch_seq":1,"epoch":"e1","readings":[{"device":"","metric":"m","ts":"2024-05-01T11:00:00Z","value":1}]}`, "readings[0].device: empty"},
		{`{"batch_seq":1,"epoch":"e1","readings":[{"device":"d","metric":"m","value":1}]}`, "readings[0].ts: missing"},
		{`{"batch_seq":1,"epoch":"e1","readings":[{"device":"d","metric":"m","ts":"yesterday","value":1}]}`, "invalid time"},
		{`{"batch_seq":1,"epoch":"e1","readings":[{"device":"d","metric":"m","ts":"1999-12-31T23:59:59Z","value":1}]}`, "before 2000"},
		{`{"batch_seq":1,"epoch":"e1","readings":[{"device":"d","metric":"m","ts":"2024-05-01T13:00:01Z","value":1}]}`, "ahead of the server clock"},
		{`{"batch_seq":1,"epoch":"e1","readings":[{"device":"d","metric":"m","ts":"2024-05-01T11:00:00Z","value":1e999}]}`, "value"},
		{`{"batch_seq":1,"epoch":"e1","readings":[{"device":"d\u0007","metric":"m","ts":"2024-05-01T11:00:00Z","value":1}]}`, "control"},
		{good + `{}`, "after the batch"},
		{`{"batch_seq":1,"epoch":"e1","readings":[` + strings.Repeat(`{"device":"d","metric":"m","ts":"2024-05-01T11:00:00Z","value":1},`, 3) + `{"device":"d","metric":"m","ts":"2024-05-01T11:00:00Z","value":1}]}`, "limit 3"},
	}
	for _, c := range cases {
		_, err := DecodeTelemetryBatch(strings.NewReader(c.in), opts)
		if !errors.Is(err, cpapi.ErrBadRequest) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%.60q: %v, want ErrBadRequest naming %q", c.in, err, c.want)
		}
	}
	// Decompression bomb: small gzip, large JSON.
	var big bytes.Buffer
	gz := gzip.NewWriter(&big)
	fmt.Fprintf(gz, `{"batch_seq":1,"epoch":"e1","readings":[{"device":"%s"`, strings.Repeat("x", 100000))
	gz.Close()
	_, err = DecodeTelemetryBatch(&big, DecodeOptions{Gzip: true, MaxBytes: 4096})
	if !errors.Is(err, cpapi.ErrTooLarge) {
		t.Errorf("bomb: %v, want ErrTooLarge", err)
	}
	// Corrupt gzip.
	enc, _ := cpapi.EncodeTelemetryBatch(b)
	enc[len(enc)-5] ^= 0xff
	if _, err := DecodeTelemetryBatch(bytes.NewReader(enc), DecodeOptions{Gzip: true}); !errors.Is(err, cpapi.ErrBadRequest) {
		t.Errorf("corrupt gzip: %v", err)
	}
	if _, err := DecodeTelemetryBatch(strings.NewReader("not gzip"), DecodeOptions{Gzip: true}); !errors.Is(err, cpapi.ErrBadRequest) {
		t.Errorf("not gzip: %v", err)
	}
}

func FuzzDecodeTelemetryBatch(f *testing.F) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	good := []byte(`{"batch_seq":3,"epoch":"e1","readings":[{"device":"d","metric":"m","ts":"2024-05-01T11:00:00Z","value":1.5}]}`)
	enc, _ := cpapi.EncodeTelemetryBatch(cpapi.TelemetryBatch{BatchSeq: 9, Epoch: testEpoch, Readings: []cpapi.Reading{{Device: "a", Metric: "b", TS: now, Value: -2}}})
	f.Add(good, false)
	f.Add(enc, true)
	f.Add([]byte(`{"batch_seq":18446744073709551615,"epoch":"e1","readings":[{"device":"d","metric":"m","ts":"2024-05-01T11:00:00Z","value":0}]}`), false)
	f.Add([]byte(`{"batch_seq":1,"epoch":"e1","readings":[{"device":"\ud800","metric":"m","ts":"0001-01-01T00:00:00Z","value":0}]}`), false)
	f.Add([]byte(`{"batch_seq":1,"epoch":"e1","readings":null}`), false)
	f.Add([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff}, true)
	f.Add([]byte(`[]`), false)
	f.Fuzz(func(t *testing.T, data []byte, gz bool) {
		opts := DecodeOptions{Gzip: gz, MaxBytes: 1 << 16, MaxReadings: 100, Now: now, MaxFuture: time.Hour}
		b, err := DecodeTelemetryBatch(bytes.NewReader(data), opts)
		if err != nil {
			if !errors.Is(err, cpapi.ErrBadRequest) && !errors.Is(err, cpapi.ErrTooLarge) {
				t.Fatalf("error %v wraps neither ErrBadRequest nor ErrTooLarge", err)
			}
			return
		}
		if b.BatchSeq == 0 || len(b.Readings) == 0 || len(b.Readings) > 100 {
			t.Fatalf("accepted invalid batch %+v", b)
		}
		for i, r := range b.Readings {
			if r.Device == "" || r.Metric == "" || r.TS.Before(cpapi.MinReadingTime) || r.TS.After(now.Add(time.Hour)) || math.IsNaN(r.Value) {
				t.Fatalf("accepted invalid reading %d %+v", i, r)
			}
		}
		// What is accepted survives a round trip unchanged.
		re, err := cpapi.EncodeTelemetryBatch(b)
		if err != nil {
			t.Fatal(err)
		}
		b2, err := DecodeTelemetryBatch(bytes.NewReader(re), DecodeOptions{Gzip: true, MaxBytes: 1 << 20, MaxReadings: 100, Now: now, MaxFuture: time.Hour})
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if len(b2.Readings) != len(b.Readings) || b2.BatchSeq != b.BatchSeq {
			t.Fatal("round trip changed the batch")
		}
		for i := range b.Readings {
			if b.Readings[i] != b2.Readings[i] && !(b.Readings[i].TS.Equal(b2.Readings[i].TS) && b.Readings[i].Value == b2.Readings[i].Value) {
				t.Fatalf("reading %d changed: %+v vs %+v", i, b.Readings[i], b2.Readings[i])
			}
		}
	})
}
