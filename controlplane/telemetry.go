package controlplane

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Bounds for telemetry readings.
var (
	// MinReadingTime is the earliest accepted reading timestamp.
	MinReadingTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	// MaxQueryTime is the latest time a query range may name.
	MaxQueryTime = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
)

// maxNameLen bounds device and metric names (bytes).
const maxNameLen = 200

// DecodeOptions bounds DecodeTelemetryBatch.
type DecodeOptions struct {
	// Gzip means the input is gzip-compressed JSON.
	Gzip bool
	// MaxBytes bounds the decompressed JSON (default 16 MiB).
	MaxBytes int64
	// MaxReadings bounds the readings per batch (default 10,000).
	MaxReadings int
	// Now and MaxFuture reject readings stamped later than Now+MaxFuture.
	// A zero Now skips that check.
	Now       time.Time
	MaxFuture time.Duration
}

// capReader reads at most n bytes and fails with ErrTooLarge if the
// underlying reader has more.
type capReader struct {
	r io.Reader
	n int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		var one [1]byte
		k, err := c.r.Read(one[:])
		if k > 0 {
			return 0, ErrTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > c.n {
		p = p[:c.n]
	}
	k, err := c.r.Read(p)
	c.n -= int64(k)
	return k, err
}

// DecodeTelemetryBatch decodes and validates one telemetry upload: a JSON
// object {"batch_seq": N, "readings": [{"device", "metric", "ts", "value"}]}
// with no unknown fields and nothing after it, optionally gzip-compressed.
// Errors wrap ErrBadRequest or ErrTooLarge and name the offending field.
func DecodeTelemetryBatch(r io.Reader, opts DecodeOptions) (TelemetryBatch, error) {
	var b TelemetryBatch
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 16 << 20
	}
	if opts.MaxReadings <= 0 {
		opts.MaxReadings = 10000
	}
	src := r
	if opts.Gzip {
		gz, err := gzip.NewReader(r)
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return b, telemetryDecodeError(err, opts.MaxBytes)
			}
			return b, fmt.Errorf("controlplane: telemetry: gzip: %v: %w", err, ErrBadRequest)
		}
		defer gz.Close()
		src = gz
	}
	cr := &capReader{r: src, n: opts.MaxBytes}
	dec := json.NewDecoder(cr)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return TelemetryBatch{}, telemetryDecodeError(err, opts.MaxBytes)
	}
	// Read to the end: catches trailing data and, for gzip, verifies the
	// checksum.
	var extra json.RawMessage
	switch err := dec.Decode(&extra); {
	case err == io.EOF:
	case err == nil:
		return TelemetryBatch{}, fmt.Errorf("controlplane: telemetry: unexpected data after the batch object: %w", ErrBadRequest)
	default:
		return TelemetryBatch{}, telemetryDecodeError(err, opts.MaxBytes)
	}
	if err := validateBatch(&b, opts); err != nil {
		return TelemetryBatch{}, err
	}
	return b, nil
}

func telemetryDecodeError(err error, max int64) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return fmt.Errorf("controlplane: telemetry: body exceeds the limit of %d bytes: %w", mbe.Limit, ErrTooLarge)
	}
	if errors.Is(err, ErrTooLarge) {
		return fmt.Errorf("controlplane: telemetry: decompressed batch exceeds %d bytes: %w", max, ErrTooLarge)
	}
	return fmt.Errorf("controlplane: telemetry: %s: %w", describeJSONError(err), ErrBadRequest)
}

func validName(field, s string) error {
	if s == "" {
		return fmt.Errorf("%s: empty", field)
	}
	if len(s) > maxNameLen {
		return fmt.Errorf("%s: %d bytes, limit %d", field, len(s), maxNameLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s: not valid UTF-8", field)
	}
	for _, r := range s {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return fmt.Errorf("%s: contains control or invalid characters", field)
		}
	}
	return nil
}

func validateBatch(b *TelemetryBatch, opts DecodeOptions) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("controlplane: telemetry: "+format+": %w", append(args, ErrBadRequest)...)
	}
	if b.BatchSeq == 0 {
		return bad("batch_seq: missing or zero (batches are numbered from 1)")
	}
	if b.BatchSeq > math.MaxInt64 {
		return bad("batch_seq: %d exceeds %d", b.BatchSeq, int64(math.MaxInt64))
	}
	if len(b.Readings) == 0 {
		return bad("readings: empty batch")
	}
	if len(b.Readings) > opts.MaxReadings {
		return bad("readings: %d readings, limit %d per batch", len(b.Readings), opts.MaxReadings)
	}
	var latest time.Time
	if !opts.Now.IsZero() {
		latest = opts.Now.Add(opts.MaxFuture)
	}
	for i := range b.Readings {
		rd := &b.Readings[i]
		if err := validName(fmt.Sprintf("readings[%d].device", i), rd.Device); err != nil {
			return bad("%v", err)
		}
		if err := validName(fmt.Sprintf("readings[%d].metric", i), rd.Metric); err != nil {
			return bad("%v", err)
		}
		if rd.TS.IsZero() {
			return bad("readings[%d].ts: missing", i)
		}
		if rd.TS.Before(MinReadingTime) {
			return bad("readings[%d].ts: %s is before %s", i, rd.TS.Format(time.RFC3339Nano), MinReadingTime.Format(time.RFC3339))
		}
		if !latest.IsZero() && rd.TS.After(latest) {
			return bad("readings[%d].ts: %s is more than %s ahead of the server clock", i, rd.TS.Format(time.RFC3339Nano), opts.MaxFuture)
		}
		if !rd.TS.Before(MaxQueryTime) {
			return bad("readings[%d].ts: %s is not before %s", i, rd.TS.Format(time.RFC3339Nano), MaxQueryTime.Format(time.RFC3339))
		}
		if math.IsNaN(rd.Value) || math.IsInf(rd.Value, 0) {
			return bad("readings[%d].value: not a finite number", i)
		}
		rd.TS = rd.TS.UTC()
	}
	return nil
}

// EncodeTelemetryBatch returns the gzip-compressed JSON form of b, as sent
// by Client.UploadTelemetry.
func EncodeTelemetryBatch(b TelemetryBatch) ([]byte, error) {
	var buf bytes.Buffer
	gz, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, fmt.Errorf("controlplane: encode telemetry: %w", err)
	}
	if err := json.NewEncoder(gz).Encode(b); err != nil {
		return nil, fmt.Errorf("controlplane: encode telemetry: %w", err)
	}
	if err := gz.Close(); err != nil {
		return nil, fmt.Errorf("controlplane: encode telemetry: %w", err)
	}
	return buf.Bytes(), nil
}

// describeJSONError turns an encoding/json error into a message naming the
// problem and, where known, the field or byte offset.
func describeJSONError(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var perr *time.ParseError
	switch {
	case errors.Is(err, io.EOF):
		return "empty body, expected a JSON object"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "malformed JSON: unexpected end of input"
	case errors.As(err, &syn):
		return fmt.Sprintf("malformed JSON at byte %d: %s", syn.Offset, syn.Error())
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "(top level)"
		}
		return fmt.Sprintf("field %q: expected %s, got JSON %s", field, typ.Type, typ.Value)
	case errors.As(err, &perr):
		return fmt.Sprintf("invalid time %q: expected RFC 3339 (e.g. 2024-05-01T12:00:00Z)", perr.Value)
	}
	msg := err.Error()
	if s, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return "unknown field " + s
	}
	if s, ok := strings.CutPrefix(msg, "json: "); ok {
		return "invalid JSON: " + s
	}
	return "invalid JSON: " + msg
}
