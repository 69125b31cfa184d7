package uplink

import (
	"fmt"
	"math"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// Request sizing. The control plane refuses batches of more than
// MaxBatchReadings readings (default 10,000) and bodies over MaxBodyBytes
// (default 1 MiB, compressed). An outbox batch is sent in one request
// when it fits both bounds below, which hold for the defaults; the JSON
// size bound is on the uncompressed form, so the gzip body is smaller
// still.
const (
	maxRequestReadings  = 5000
	maxRequestJSONBytes = 768 << 10
	// readingJSONOverhead is the JSON of one reading besides its device
	// and metric names: {"device":"","metric":"","ts":"...","value":...},
	// with room for the longest RFC 3339 time and float.
	readingJSONOverhead = 112
)

// Batch sequence numbers. An outbox batch is sent in its epoch
// (OutboxBatch.Epoch); one that fits one request is sent with batch_seq =
// its EpochSeq. A larger one is split into parts numbered splitFlag |
// EpochSeq<<splitPartBits | part: distinct from every unsplit EpochSeq
// and from each other, and the same on every retry because the split
// depends only on the batch's content.
const (
	splitFlag     = uint64(1) << 62
	splitPartBits = 16
	maxSplitSeq   = int64(1)<<(62-splitPartBits) - 1
	maxSplitParts = 1 << splitPartBits
)

// maxNameBytes is the control plane's bound on device and metric names.
const maxNameBytes = 200

// Skip reasons, for edgefleet_uplink_readings_skipped_total{reason}.
const (
	skipText     = "text"      // string or data reading: the control plane stores numbers only
	skipName     = "bad_name"  // device or metric name the control plane refuses (over 200 bytes, control characters)
	skipValue    = "bad_value" // not a finite number
	skipTime     = "bad_time"  // before 2000 or not before 2200
	skipTooLarge = "too_large" // a batch too large to split (more than 65,536 parts)
)

// converted is an outbox batch in wire form.
type converted struct {
	parts   []cpapi.TelemetryBatch
	skipped map[string]int // reason -> readings
}

// readings returns the number of readings in all parts.
func (c *converted) readings() int {
	n := 0
	for _, p := range c.parts {
		n += len(p.Readings)
	}
	return n
}

// RollupMetric returns the metric name under which a rollup statistic is
// uploaded: metric + ":" + stat + "_" + resolution, e.g.
// "temperature:avg_1m" or "temperature:count_1h". stat is min, max, avg
// or count; resolution is "1m" for minute rollups, "1h" for hour
// rollups, and otherwise the resolution in seconds ("300s").
func RollupMetric(metric, stat string, resolution time.Duration) string {
	var res string
	switch resolution {
	case time.Minute:
		res = "1m"
	case time.Hour:
		res = "1h"
	default:
		res = fmt.Sprintf("%ds", int64(resolution/time.Second))
	}
	return metric + ":" + stat + "_" + res
}

// convertBatch turns an outbox batch into telemetry batches: numbers and
// booleans (0 or 1) as readings; each rollup as four readings (min, max,
// avg, count, see RollupMetric) at its bucket start; strings and data,
// and readings the control plane would refuse, are skipped and counted.
func convertBatch(b ingest.OutboxBatch) converted {
	out := converted{skipped: map[string]int{}}
	rs := make([]cpapi.Reading, 0, len(b.Readings)+4*len(b.Rollups))
	add := func(device, metric string, ts time.Time, v float64) {
		switch {
		case !validName(device) || !validName(metric):
			out.skipped[skipName]++
		case math.IsNaN(v) || math.IsInf(v, 0):
			out.skipped[skipValue]++
		case ts.Before(cpapi.MinReadingTime) || !ts.Before(cpapi.MaxQueryTime):
			out.skipped[skipTime]++
		default:
			rs = append(rs, cpapi.Reading{Device: device, Metric: metric, TS: ts.UTC(), Value: v})
		}
	}
	for _, r := range b.Readings {
		switch r.Kind {
		case ingest.KindNumber, ingest.KindBool:
			add(r.Device, r.Metric, r.Time, r.Value)
		default:
			out.skipped[skipText]++
		}
	}
	for _, u := range b.Rollups {
		add(u.Device, RollupMetric(u.Metric, "min", u.Resolution), u.Start, u.Min)
		add(u.Device, RollupMetric(u.Metric, "max", u.Resolution), u.Start, u.Max)
		add(u.Device, RollupMetric(u.Metric, "avg", u.Resolution), u.Start, u.Avg())
		add(u.Device, RollupMetric(u.Metric, "count", u.Resolution), u.Start, float64(u.Count))
	}
	if len(rs) == 0 {
		return out
	}
	// Cut into parts by reading count and estimated JSON size.
	var cuts []int // end index of each part
	size, start := 0, 0
	for i, r := range rs {
		sz := readingJSONOverhead + jsonStringLen(r.Device) + jsonStringLen(r.Metric)
		if i > start && (i-start >= maxRequestReadings || size+sz > maxRequestJSONBytes) {
			cuts = append(cuts, i)
			start, size = i, 0
		}
		size += sz
	}
	cuts = append(cuts, len(rs))
	if len(cuts) == 1 {
		out.parts = []cpapi.TelemetryBatch{{BatchSeq: uint64(b.EpochSeq), Epoch: b.Epoch, Readings: rs}}
		return out
	}
	if len(cuts) > maxSplitParts || b.EpochSeq > maxSplitSeq || b.EpochSeq < 1 {
		out.skipped[skipTooLarge] += len(rs)
		return out
	}
	start = 0
	for i, end := range cuts {
		out.parts = append(out.parts, cpapi.TelemetryBatch{
			BatchSeq: splitFlag | uint64(b.EpochSeq)<<splitPartBits | uint64(i),
			Epoch:    b.Epoch,
			Readings: rs[start:end],
		})
		start = end
	}
	return out
}

// validName applies the control plane's rule for device and metric names:
// 1 to 200 bytes of UTF-8 without control characters.
func validName(s string) bool {
	if s == "" || len(s) > maxNameBytes || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return false
		}
	}
	return true
}

// jsonStringLen returns the length of a valid name (see validName) as
// encoding/json writes it, without the quotes: a quote or backslash takes
// two bytes; '<', '>', '&' (escaped for HTML), U+2028 and U+2029 six.
func jsonStringLen(s string) int {
	n := len(s)
	for _, r := range s {
		switch r {
		case '"', '\\':
			n++
		case '<', '>', '&':
			n += 5
		case '\u2028', '\u2029':
			n += 3
		}
	}
	return n
}
