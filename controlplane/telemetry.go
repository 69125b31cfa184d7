package controlplane

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/edgefleet/edgefleet/pqcrypto"
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
			return 0, cpapi.ErrTooLarge
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
func DecodeTelemetryBatch(r io.Reader, opts DecodeOptions) (cpapi.TelemetryBatch, error) {
	var b cpapi.TelemetryBatch
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
			return b, fmt.Errorf("controlplane: telemetry: gzip: %v: %w", err, cpapi.ErrBadRequest)
		}
		defer gz.Close()
		src = gz
	}
	cr := &capReader{r: src, n: opts.MaxBytes}
	dec := json.NewDecoder(cr)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return cpapi.TelemetryBatch{}, telemetryDecodeError(err, opts.MaxBytes)
	}
	// Read to the end: catches trailing data and, for gzip, verifies the
	// checksum.
	var extra json.RawMessage
	switch err := dec.Decode(&extra); {
	case err == io.EOF:
	case err == nil:
		return cpapi.TelemetryBatch{}, fmt.Errorf("controlplane: telemetry: unexpected data after the batch object: %w", cpapi.ErrBadRequest)
	default:
		return cpapi.TelemetryBatch{}, telemetryDecodeError(err, opts.MaxBytes)
	}
	if err := validateBatch(&b, opts); err != nil {
		return cpapi.TelemetryBatch{}, err
	}
	return b, nil
}

func telemetryDecodeError(err error, max int64) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return fmt.Errorf("controlplane: telemetry: body exceeds the limit of %d bytes: %w", mbe.Limit, cpapi.ErrTooLarge)
	}
	if errors.Is(err, cpapi.ErrTooLarge) {
		return fmt.Errorf("controlplane: telemetry: decompressed batch exceeds %d bytes: %w", max, cpapi.ErrTooLarge)
	}
	return fmt.Errorf("controlplane: telemetry: %s: %w", describeJSONError(err), cpapi.ErrBadRequest)
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

func validateBatch(b *cpapi.TelemetryBatch, opts DecodeOptions) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("controlplane: telemetry: "+format+": %w", append(args, cpapi.ErrBadRequest)...)
	}
	if b.BatchSeq == 0 {
		return bad("batch_seq: missing or zero (batches are numbered from 1)")
	}
	if b.BatchSeq > math.MaxInt64 {
		return bad("batch_seq: %d exceeds %d", b.BatchSeq, int64(math.MaxInt64))
	}
	if err := cpapi.ValidEpoch(b.Epoch); err != nil {
		return bad("epoch: %v", err)
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
		if rd.TS.Before(cpapi.MinReadingTime) {
			return bad("readings[%d].ts: %s is before %s", i, rd.TS.Format(time.RFC3339Nano), cpapi.MinReadingTime.Format(time.RFC3339))
		}
		if !latest.IsZero() && rd.TS.After(latest) {
			return bad("readings[%d].ts: %s is more than %s ahead of the server clock", i, rd.TS.Format(time.RFC3339Nano), opts.MaxFuture)
		}
		if !rd.TS.Before(cpapi.MaxQueryTime) {
			return bad("readings[%d].ts: %s is not before %s", i, rd.TS.Format(time.RFC3339Nano), cpapi.MaxQueryTime.Format(time.RFC3339))
		}
		if math.IsNaN(rd.Value) || math.IsInf(rd.Value, 0) {
			return bad("readings[%d].value: not a finite number", i)
		}
		rd.TS = rd.TS.UTC()
	}
	return nil
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

// namedError is an answer whose message starts with a named error's text.
func namedError(status int, named error, format string, args ...any) error {
	return &httpError{status: status, msg: named.Error() + ": " + fmt.Sprintf(format, args...), err: errors.Join(cpapi.StatusError(status), named)}
}

// handleTelemetryUpload stores one upload: plain JSON (gzip or identity),
// or a sealed envelope (EnvelopeContentType).
func (s *Server) handleTelemetryUpload(w http.ResponseWriter, r *http.Request, c *call) error {
	mt := ""
	if ct := r.Header.Get("Content-Type"); ct != "" {
		var err error
		if mt, _, err = mime.ParseMediaType(ct); err != nil {
			mt = ct
		}
	}
	switch mt {
	case cpapi.EnvelopeContentType:
		return s.handleSealedTelemetry(w, r, c)
	case "", "application/json":
	default:
		return errorf(http.StatusUnsupportedMediaType, "Content-Type %q: expected application/json or %s", r.Header.Get("Content-Type"), cpapi.EnvelopeContentType)
	}
	if s.cfg.Keys.RequireSealedTelemetry {
		s.keys.metrics.envelopes.WithLabelValues("unsealed_refused").Inc()
		return namedError(http.StatusUnsupportedMediaType, cpapi.ErrUnsealedTelemetry,
			"this control plane accepts telemetry sealed under the key %q only (Content-Type %s); the agent must seal its uploads (control_plane.seal_telemetry: true)",
			cpapi.TelemetryKeyName, cpapi.EnvelopeContentType)
	}
	gz := false
	switch enc := strings.ToLower(r.Header.Get("Content-Encoding")); enc {
	case "gzip":
		gz = true
	case "", "identity":
	default:
		return errorf(http.StatusUnsupportedMediaType, "Content-Encoding %q: expected gzip or identity", enc)
	}
	body := http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	batch, err := DecodeTelemetryBatch(body, DecodeOptions{
		Gzip: gz, MaxBytes: s.cfg.MaxTelemetryBytes, MaxReadings: s.cfg.MaxBatchReadings,
		Now: c.now, MaxFuture: s.cfg.MaxClockSkew,
	})
	if err != nil {
		return err
	}
	return s.ingestTelemetry(w, r, c, batch)
}

// handleSealedTelemetry opens a sealed upload and stores the batch inside.
// Every check that needs no key comes first: the headers must name the
// calling agent, an epoch and a batch_seq.
func (s *Server) handleSealedTelemetry(w http.ResponseWriter, r *http.Request, c *call) error {
	if enc := strings.ToLower(r.Header.Get("Content-Encoding")); enc != "" && enc != "identity" {
		return errorf(http.StatusUnsupportedMediaType, "Content-Encoding %q: an envelope is sent as is (its content is gzip-compressed JSON)", enc)
	}
	sealedFor := r.Header.Get(cpapi.HeaderSealedAgent)
	if sealedFor == "" {
		return badRequest("header %s: missing; name the agent id the envelope was sealed for", cpapi.HeaderSealedAgent)
	}
	epoch := r.Header.Get(cpapi.HeaderSealedEpoch)
	if err := cpapi.ValidEpoch(epoch); err != nil {
		return badRequest("header %s: %v", cpapi.HeaderSealedEpoch, err)
	}
	seqText := r.Header.Get(cpapi.HeaderSealedBatchSeq)
	seq, err := strconv.ParseUint(seqText, 10, 64)
	if err != nil || seq == 0 || seq > math.MaxInt64 {
		return badRequest("header %s: %q is not a batch_seq (1..%d)", cpapi.HeaderSealedBatchSeq, seqText, int64(math.MaxInt64))
	}
	if sealedFor != c.agentID {
		s.keys.metrics.envelopes.WithLabelValues("refused").Inc()
		return namedError(http.StatusBadRequest, cpapi.ErrEnvelopeBinding, "sealed for agent %q, sent by agent %q", sealedFor, c.agentID)
	}
	env, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		return telemetryDecodeError(err, s.cfg.MaxTelemetryBytes)
	}
	if len(env) == 0 {
		return badRequest("empty body, expected a %s", cpapi.EnvelopeContentType)
	}
	if err := s.requireUnsealed(); err != nil {
		s.keys.metrics.envelopes.WithLabelValues("sealed").Inc()
		return err
	}
	pt, err := s.keys.svc.Decrypt(keyCtx(r.Context(), c), cpapi.TelemetryKeyName, env, cpapi.TelemetryAAD(sealedFor, epoch, seq))
	if err != nil {
		return s.envelopeError(err, seq)
	}
	defer clear(pt)
	batch, err := DecodeTelemetryBatch(bytes.NewReader(pt), DecodeOptions{
		Gzip: true, MaxBytes: s.cfg.MaxTelemetryBytes, MaxReadings: s.cfg.MaxBatchReadings,
		Now: c.now, MaxFuture: s.cfg.MaxClockSkew,
	})
	if err != nil {
		s.keys.metrics.envelopes.WithLabelValues("refused").Inc()
		return err
	}
	if batch.BatchSeq != seq || batch.Epoch != epoch {
		s.keys.metrics.envelopes.WithLabelValues("refused").Inc()
		return namedError(http.StatusBadRequest, cpapi.ErrEnvelopeBinding, "sealed for epoch %q batch_seq %d, the batch inside carries epoch %q batch_seq %d", epoch, seq, batch.Epoch, batch.BatchSeq)
	}
	s.keys.metrics.envelopes.WithLabelValues("opened").Inc()
	return s.ingestTelemetry(w, r, c, batch)
}

// envelopeError answers an envelope the key service did not open.
func (s *Server) envelopeError(err error, seq uint64) error {
	switch {
	case errors.Is(err, dkms.ErrSealed), errors.Is(err, dkms.ErrNotInitialized):
		s.keys.metrics.envelopes.WithLabelValues("sealed").Inc()
		return s.sealedError()
	case errors.Is(err, dkms.ErrKeyVersionRetired), errors.Is(err, dkms.ErrKeyVersionDestroyed), errors.Is(err, dkms.ErrBelowMinVersion),
		errors.Is(err, dkms.ErrUnknownVersion), errors.Is(err, dkms.ErrUnknownKey):
		// The agent holds an old or unknown version: it fetches its keys
		// and seals again.
		s.keys.metrics.envelopes.WithLabelValues("refused").Inc()
		return namedError(http.StatusConflict, cpapi.ErrEnvelopeUnopened, "%s; fetch the current key versions (GET /v1/agent/keys) and seal again", cleanKeyError(err.Error()))
	case errors.Is(err, dkms.ErrWrongKey), errors.Is(err, dkms.ErrWrongPurpose), errors.Is(err, dkms.ErrMalformed),
		errors.Is(err, dkms.ErrInvalidName), envelopeInputError(err):
		s.keys.metrics.envelopes.WithLabelValues("refused").Inc()
		return namedError(http.StatusBadRequest, cpapi.ErrEnvelopeUnopened,
			"%s (tampered or truncated, or sealed for another agent or batch_seq than %d)", cleanKeyError(err.Error()), seq)
	}
	return err
}

// envelopeInputError reports whether err is pqcrypto's verdict on the
// envelope's bytes (every pqcrypto sentinel is).
func envelopeInputError(err error) bool {
	for _, e := range []error{
		pqcrypto.ErrTruncated, pqcrypto.ErrAuthFailed, pqcrypto.ErrBadSignature, pqcrypto.ErrUnknownSuite,
		pqcrypto.ErrUnsupportedVersion, pqcrypto.ErrMalformed, pqcrypto.ErrWrongRecipient, pqcrypto.ErrKeyVersion,
		pqcrypto.ErrWrongKey, pqcrypto.ErrInvalidKey, pqcrypto.ErrUnsupported,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// ingestTelemetry stores a decoded batch once per (agent, epoch,
// batch_seq); the same identity with other readings is refused (409).
func (s *Server) ingestTelemetry(w http.ResponseWriter, r *http.Request, c *call, batch cpapi.TelemetryBatch) error {
	res, err := s.store.IngestTelemetry(r.Context(), c.agentID, batch, c.now)
	if errors.Is(err, cpapi.ErrBatchConflict) {
		s.metrics.batches.WithLabelValues("conflict").Inc()
		s.log.Warn("telemetry batch refused: its identity was stored before with other readings",
			"agent", c.agentID, "epoch", batch.Epoch, "batch_seq", batch.BatchSeq, "readings", len(batch.Readings), "err", err)
		return &httpError{status: http.StatusConflict, msg: err.Error(), err: errors.Join(cpapi.ErrConflict, err)}
	}
	if err != nil {
		return s.agentGone(c, err)
	}
	if res.Duplicate {
		s.metrics.batches.WithLabelValues("duplicate").Inc()
	} else {
		s.metrics.batches.WithLabelValues("stored").Inc()
		s.metrics.readings.Add(float64(res.Accepted))
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}
