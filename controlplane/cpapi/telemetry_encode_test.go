package cpapi

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// stdTelemetryJSON is what encoding/json's Encoder writes for b.
func stdTelemetryJSON(b TelemetryBatch) ([]byte, error) {
	var buf bytes.Buffer
	err := json.NewEncoder(&buf).Encode(b)
	return buf.Bytes(), err
}

// checkSameJSON fails unless appendTelemetryJSON and encoding/json agree
// on b: the same bytes, or both refuse it.
func checkSameJSON(t *testing.T, b TelemetryBatch) {
	t.Helper()
	want, werr := stdTelemetryJSON(b)
	got, gerr := appendTelemetryJSON(nil, b)
	if (werr != nil) != (gerr != nil) {
		t.Fatalf("encoding/json error %v, ours %v (batch %+v)", werr, gerr, b)
	}
	if werr == nil && !bytes.Equal(got, want) {
		t.Fatalf("JSON differs\n ours: %s\n json: %s", got, want)
	}
}

var awkwardStrings = []string{
	"", "dev-1", "temperature", `quote"d`, `back\slash`, "tab\there", "nl\n", "<script>&", "a&b", "x>y", "ü-ñ-東京",
	"\u2028\u2029", "bad\xffutf8", "\x00\x1f\x7f", "emoji-😀", strings.Repeat("x", 200),
}

var awkwardFloats = []float64{
	0, math.Copysign(0, -1), 1, -1, 20.5, 1e-6, 9.99e-7, 1e-7, 1e20, 1e21, 1.5e21, -1e21,
	math.MaxFloat64, math.SmallestNonzeroFloat64, 0.1, 1.0 / 3, 123456789012345678, 1e-300,
	math.NaN(), math.Inf(1), math.Inf(-1),
}

func awkwardTimes() []time.Time {
	base := time.Date(2026, 11, 27, 17, 0, 0, 123456789, time.UTC)
	return []time.Time{
		base, base.Truncate(time.Second), base.Truncate(time.Millisecond),
		time.Unix(0, 0).UTC(), base.In(time.FixedZone("CET", 3600)), base.In(time.FixedZone("odd", 3600+30)),
		base.In(time.FixedZone("far", 25*3600)), time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(999, 3, 4, 5, 6, 7, 8, time.UTC), {},
	}
}

// TestTelemetryJSONMatchesEncodingJSON: the hand-written encoder writes
// exactly what encoding/json writes, over awkward names, floats and times,
// and refuses what it refuses.
func TestTelemetryJSONMatchesEncodingJSON(t *testing.T) {
	checkSameJSON(t, TelemetryBatch{})
	checkSameJSON(t, TelemetryBatch{BatchSeq: math.MaxUint64, Readings: []Reading{}})
	for _, s := range awkwardStrings {
		checkSameJSON(t, TelemetryBatch{BatchSeq: 1, Readings: []Reading{{Device: s, Metric: s, TS: time.Unix(1e9, 0).UTC(), Value: 1}}})
	}
	for _, f := range awkwardFloats {
		checkSameJSON(t, TelemetryBatch{BatchSeq: 2, Readings: []Reading{{Device: "d", Metric: "m", TS: time.Unix(1e9, 0).UTC(), Value: f}}})
	}
	for _, ts := range awkwardTimes() {
		checkSameJSON(t, TelemetryBatch{BatchSeq: 3, Readings: []Reading{{Device: "d", Metric: "m", TS: ts, Value: 1}}})
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		b := TelemetryBatch{BatchSeq: rng.Uint64()}
		for range rng.IntN(50) {
			b.Readings = append(b.Readings, Reading{
				Device: awkwardStrings[rng.IntN(len(awkwardStrings))],
				Metric: awkwardStrings[rng.IntN(len(awkwardStrings))],
				TS:     time.Unix(rng.Int64N(1<<34), rng.Int64N(1e9)).UTC(),
				Value:  math.Float64frombits(rng.Uint64()),
			})
		}
		checkSameJSON(t, b)
	}
}

// TestTelemetryEncoderRoundTrip: a reused encoder's output decompresses
// to the batch's JSON, batch after batch, larger and smaller.
func TestTelemetryEncoderRoundTrip(t *testing.T) {
	var e TelemetryEncoder
	for _, n := range []int{1000, 3, 0, 5000, 10} {
		b := TelemetryBatch{BatchSeq: uint64(n)}
		for i := range n {
			b.Readings = append(b.Readings, Reading{Device: "dev-1", Metric: "co2", TS: time.Unix(1.7e9+int64(i), 0).UTC(), Value: float64(i) / 7})
		}
		data, err := e.Encode(b)
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := stdTelemetryJSON(b)
		if !bytes.Equal(got, want) {
			t.Fatalf("%d readings: decompressed JSON differs from encoding/json's", n)
		}
	}
	if _, err := e.Encode(TelemetryBatch{Readings: []Reading{{Value: math.NaN()}}}); err == nil || !strings.Contains(err.Error(), "controlplane: encode telemetry") {
		t.Fatalf("NaN: %v", err)
	}
}

// FuzzTelemetryJSON: for any names, value and time, the hand-written
// encoder agrees with encoding/json.
func FuzzTelemetryJSON(f *testing.F) {
	f.Add("dev-1", "temperature", math.Float64bits(21.5), int64(1.7e18), 0)
	f.Add(`a"b`, "<&>", math.Float64bits(1e-7), int64(-6213559680e9), 3600)
	f.Add("bad\xff", "\u2028", math.Float64bits(math.NaN()), int64(0), 90061)
	f.Fuzz(func(t *testing.T, device, metric string, bits uint64, unixNano int64, offset int) {
		ts := time.Unix(0, unixNano).In(time.FixedZone("z", offset%(48*3600)))
		checkSameJSON(t, TelemetryBatch{BatchSeq: bits, Readings: []Reading{{Device: device, Metric: metric, TS: ts, Value: math.Float64frombits(bits)}}})
	})
}

func BenchmarkTelemetryEncode(b *testing.B) {
	batch := TelemetryBatch{BatchSeq: 7}
	t0 := time.Date(2026, 11, 27, 17, 0, 0, 0, time.UTC)
	for i := range 1000 {
		batch.Readings = append(batch.Readings, Reading{Device: "dev-" + string(rune('0'+i%10)), Metric: []string{"temperature", "humidity", "co2"}[i%3], TS: t0.Add(time.Duration(i) * 200 * time.Microsecond), Value: 20 + float64(i%100)/10})
	}
	b.Run("encoder", func(b *testing.B) {
		var e TelemetryEncoder
		b.ReportAllocs()
		for range b.N {
			if _, err := e.Encode(batch); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if _, err := stdTelemetryJSON(batch); err != nil {
				b.Fatal(err)
			}
		}
	})
}
