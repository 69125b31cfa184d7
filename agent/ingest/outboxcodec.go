package ingest

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"time"
)

// Outbox batch payload format, version 1 (all integers varint-encoded
// as in encoding/binary, floats as 8 bytes little-endian):
//
//	"EO" 0x01 kind(1 byte: 1 readings, 2 rollups)
//	uvarint nstrings, then nstrings × (uvarint len, bytes)   -- devices, metrics, units
//	uvarint nreadings, then per reading:
//	    uvarint device, uvarint metric, uvarint unit         -- indexes into the strings
//	    varint  time delta (µs, from the previous reading; the first from 0)
//	    byte kind, then float64 (number, bool) or uvarint len + bytes (string, data)
//	uvarint nrollups, then per rollup:
//	    uvarint device, uvarint metric, uvarint unit
//	    uvarint resolution (seconds), varint bucket start (µs)
//	    uvarint count, float64 sum, float64 min, float64 max
//
// The format is private to the agent's disk: the uplink decodes it with
// DecodeOutboxBatch and chooses its own wire encoding.

const (
	outboxMagic0, outboxMagic1 = 'E', 'O'
	outboxVersion              = 1
)

// BatchKind says what an outbox batch holds.
type BatchKind uint8

// Outbox batch kinds.
const (
	// BatchReadings: raw readings, as committed.
	BatchReadings BatchKind = 1
	// BatchRollups: per-minute rollups that replaced raw numeric readings
	// evicted from a full outbox, plus those batches' string and data
	// readings, which have no rollup and are kept as they were.
	BatchRollups BatchKind = 2
)

// String names the kind.
func (k BatchKind) String() string {
	switch k {
	case BatchReadings:
		return "readings"
	case BatchRollups:
		return "rollups"
	}
	return fmt.Sprintf("batchkind(%d)", uint8(k))
}

// Rollup summarizes the numeric readings of one series over one time
// bucket. Sum, Min, Max and Count merge across rollups of the same bucket.
type Rollup struct {
	Device     string
	Metric     string
	Unit       string
	Resolution time.Duration // time.Minute or time.Hour
	Start      time.Time     // bucket start, UTC
	Count      int64
	Sum        float64
	Min        float64
	Max        float64
}

// Avg returns Sum/Count (0 for an empty rollup).
func (r Rollup) Avg() float64 {
	if r.Count == 0 {
		return 0
	}
	return r.Sum / float64(r.Count)
}

// batchEncoder builds an outbox payload. Reuse it with reset.
type batchEncoder struct {
	strs    map[string]uint64
	strList []string
	body    []byte
	n       int
	nroll   int
	roll    []byte
	lastTS  int64
	minTS   int64
	maxTS   int64
}

func (e *batchEncoder) reset() {
	if e.strs == nil {
		e.strs = make(map[string]uint64)
	}
	clear(e.strs)
	e.strList = e.strList[:0]
	e.body = e.body[:0]
	e.roll = e.roll[:0]
	e.n, e.nroll = 0, 0
	e.lastTS = 0
	e.minTS, e.maxTS = math.MaxInt64, math.MinInt64
}

func (e *batchEncoder) str(s string) uint64 {
	if i, ok := e.strs[s]; ok {
		return i
	}
	i := uint64(len(e.strList))
	e.strs[s] = i
	e.strList = append(e.strList, s)
	return i
}

func (e *batchEncoder) span(ts int64) {
	e.minTS = min(e.minTS, ts)
	e.maxTS = max(e.maxTS, ts)
}

// add appends a reading (time in µs).
func (e *batchEncoder) add(device, metric, unit string, ts int64, kind Kind, value float64, text string) {
	e.addIdx(e.str(device), e.str(metric), e.str(unit), ts, kind, value, text)
}

// addIdx appends a reading whose strings are already in the table.
func (e *batchEncoder) addIdx(device, metric, unit uint64, ts int64, kind Kind, value float64, text string) {
	b := e.body
	b = binary.AppendUvarint(b, device)
	b = binary.AppendUvarint(b, metric)
	b = binary.AppendUvarint(b, unit)
	b = binary.AppendVarint(b, ts-e.lastTS)
	e.lastTS = ts
	b = append(b, byte(kind))
	if kind.numeric() {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(value))
	} else {
		b = binary.AppendUvarint(b, uint64(len(text)))
		b = append(b, text...)
	}
	e.body = b
	e.n++
	e.span(ts)
}

// addRollup appends a rollup (bucket start in µs, resolution in seconds).
func (e *batchEncoder) addRollup(device, metric, unit string, resSec int64, bucket int64, a agg) {
	b := e.roll
	b = binary.AppendUvarint(b, e.str(device))
	b = binary.AppendUvarint(b, e.str(metric))
	b = binary.AppendUvarint(b, e.str(unit))
	b = binary.AppendUvarint(b, uint64(resSec))
	b = binary.AppendVarint(b, bucket)
	b = binary.AppendUvarint(b, uint64(a.count))
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(a.sum))
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(a.min))
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(a.max))
	e.roll = b
	e.nroll++
	e.span(bucket)
}

// payload returns the encoded batch.
func (e *batchEncoder) payload(kind BatchKind) []byte {
	size := 4 + 10 + len(e.body) + len(e.roll) + 20
	for _, s := range e.strList {
		size += len(s) + 2
	}
	out := make([]byte, 0, size)
	out = append(out, outboxMagic0, outboxMagic1, outboxVersion, byte(kind))
	out = binary.AppendUvarint(out, uint64(len(e.strList)))
	for _, s := range e.strList {
		out = binary.AppendUvarint(out, uint64(len(s)))
		out = append(out, s...)
	}
	out = binary.AppendUvarint(out, uint64(e.n))
	out = append(out, e.body...)
	out = binary.AppendUvarint(out, uint64(e.nroll))
	out = append(out, e.roll...)
	return out
}

// maxOutboxStrings bounds the string table a payload may declare.
const maxOutboxStrings = 1 << 20

// DecodeOutboxBatch decodes an outbox payload into its readings and
// rollups. It refuses anything malformed with an error wrapping
// ErrCorrupt, and never panics.
func DecodeOutboxBatch(p []byte) (BatchKind, []Reading, []Rollup, error) {
	return appendOutboxBatch(nil, nil, p)
}

// appendOutboxBatch decodes an outbox payload like DecodeOutboxBatch,
// appending its readings and rollups to rs and us. On an error it
// returns rs and us as they were given.
func appendOutboxBatch(rs []Reading, us []Rollup, p []byte) (BatchKind, []Reading, []Rollup, error) {
	d := batchDecoder{p: p}
	kind, rs2, us2, err := d.decode(rs, us)
	if err != nil {
		return 0, rs, us, err
	}
	return kind, rs2, us2, nil
}

type batchDecoder struct {
	p   []byte
	off int
	err error
}

func (d *batchDecoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: outbox batch at byte %d: %s", ErrCorrupt, d.off, fmt.Sprintf(format, args...))
	}
}

func (d *batchDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.p[d.off:])
	if n <= 0 {
		d.fail("bad uvarint")
		return 0
	}
	d.off += n
	return v
}

func (d *batchDecoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.p[d.off:])
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.off += n
	return v
}

func (d *batchDecoder) float() float64 {
	if d.err != nil {
		return 0
	}
	if len(d.p)-d.off < 8 {
		d.fail("short float")
		return 0
	}
	v := math.Float64frombits(binary.LittleEndian.Uint64(d.p[d.off:]))
	d.off += 8
	return v
}

func (d *batchDecoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.p)-d.off) {
		d.fail("length %d beyond the end", n)
		return nil
	}
	b := d.p[d.off : d.off+int(n)]
	d.off += int(n)
	return b
}

func (d *batchDecoder) byte1() byte {
	if d.err != nil {
		return 0
	}
	if d.off >= len(d.p) {
		d.fail("short")
		return 0
	}
	b := d.p[d.off]
	d.off++
	return b
}

func (d *batchDecoder) ref(strs []string) string {
	i := d.uvarint()
	if d.err != nil {
		return ""
	}
	if i >= uint64(len(strs)) {
		d.fail("string index %d out of %d", i, len(strs))
		return ""
	}
	return strs[i]
}

// count reads an element count and checks it against the bytes left,
// given the smallest encoding of one element.
func (d *batchDecoder) count(minSize int) int {
	n := d.uvarint()
	if d.err != nil {
		return 0
	}
	if n > uint64(len(d.p)-d.off)/uint64(minSize) {
		d.fail("count %d larger than the data", n)
		return 0
	}
	return int(n)
}

func (d *batchDecoder) decode(rs []Reading, us []Rollup) (BatchKind, []Reading, []Rollup, error) {
	if len(d.p) < 4 || d.p[0] != outboxMagic0 || d.p[1] != outboxMagic1 {
		return 0, nil, nil, fmt.Errorf("%w: outbox batch: bad magic", ErrCorrupt)
	}
	if d.p[2] != outboxVersion {
		return 0, nil, nil, fmt.Errorf("%w: outbox batch: unknown version %d", ErrCorrupt, d.p[2])
	}
	kind := BatchKind(d.p[3])
	if kind != BatchReadings && kind != BatchRollups {
		return 0, nil, nil, fmt.Errorf("%w: outbox batch: unknown kind %d", ErrCorrupt, d.p[3])
	}
	d.off = 4
	ns := d.count(1)
	if ns > maxOutboxStrings {
		d.fail("%d strings", ns)
	}
	strs := make([]string, 0, ns)
	for i := 0; i < ns && d.err == nil; i++ {
		strs = append(strs, string(d.bytes()))
	}
	nr := d.count(6) // smallest reading: three string refs, time delta, kind, empty text
	rs = slices.Grow(rs, nr)
	var ts int64
	for i := 0; i < nr && d.err == nil; i++ {
		r := Reading{Device: d.ref(strs), Metric: d.ref(strs), Unit: d.ref(strs)}
		delta := d.varint()
		ts += delta
		if ts < -1<<62 || ts > 1<<62 {
			d.fail("time out of range")
		}
		r.Time = time.UnixMicro(ts).UTC()
		r.Kind = Kind(d.byte1())
		switch r.Kind {
		case KindNumber, KindBool:
			r.Value = d.float()
		case KindString, KindData:
			r.Text = string(d.bytes())
		default:
			d.fail("unknown value kind %d", r.Kind)
		}
		rs = append(rs, r)
	}
	nu := d.count(30)
	us = slices.Grow(us, nu)
	for i := 0; i < nu && d.err == nil; i++ {
		u := Rollup{Device: d.ref(strs), Metric: d.ref(strs), Unit: d.ref(strs)}
		res := d.uvarint()
		bucket := d.varint()
		if res == 0 || res > 366*24*3600 || bucket < -1<<62 || bucket > 1<<62 {
			d.fail("bad rollup resolution %d or bucket %d", res, bucket)
		}
		u.Resolution = time.Duration(res) * time.Second
		u.Start = time.UnixMicro(bucket).UTC()
		cnt := d.uvarint()
		if cnt > math.MaxInt64 {
			d.fail("bad rollup count")
		}
		u.Count = int64(cnt)
		u.Sum, u.Min, u.Max = d.float(), d.float(), d.float()
		us = append(us, u)
	}
	if d.err == nil && d.off != len(d.p) {
		d.fail("%d trailing bytes", len(d.p)-d.off)
	}
	if d.err != nil {
		return 0, nil, nil, d.err
	}
	return kind, rs, us, nil
}
