package ingest

import (
	"errors"
	"fmt"
	"strconv"
)

var (
	// ErrInvalidPayload: a message could not be turned into readings (bad
	// topic, size, syntax, types, names, times or values). Every
	// *DecodeError matches it with errors.Is. Such messages are
	// dead-lettered, never dropped.
	ErrInvalidPayload = errors.New("ingest: invalid payload")
	// ErrInvalidConfig: a Config, StoreConfig, BrokerConfig or
	// ReplayConfig holds a value out of range; the constructor refused it.
	ErrInvalidConfig = errors.New("ingest: invalid config")
	// ErrClosed: the Store or Ingestor was closed or stopped.
	ErrClosed = errors.New("ingest: closed")
	// ErrStarted: Start was called on an Ingestor that is already running
	// or has been stopped (an Ingestor runs once).
	ErrStarted = errors.New("ingest: already started")
	// ErrCorrupt: a row or outbox batch read from disk does not hold what
	// the store wrote there.
	ErrCorrupt = errors.New("ingest: corrupt data")
	// ErrNoData: Inspect found no ingestion database in the data directory.
	ErrNoData = errors.New("ingest: no ingestion database")
	// ErrSchema: the database was written by a newer, unknown schema
	// version of this package.
	ErrSchema = errors.New("ingest: unknown schema version")
)

// Reason classifies why a message was dead-lettered. It is stored with
// the dead letter and is the "reason" label of
// edgefleet_ingest_dead_letters_total, so the set is small and fixed.
type Reason string

// Dead-letter reasons.
const (
	ReasonTopic       Reason = "bad_topic"        // topic does not match the pattern or names an invalid device id
	ReasonTooLarge    Reason = "too_large"        // payload above Limits.MaxPayloadBytes
	ReasonEmpty       Reason = "empty"            // empty payload, or no readings in it
	ReasonSyntax      Reason = "syntax"           // not well-formed JSON, or neither array nor object
	ReasonSchema      Reason = "schema"           // JSON of the wrong shape: wrong field types, duplicate or missing fields
	ReasonNotFinite   Reason = "not_finite"       // a number (or a resolved value or time) overflows float64
	ReasonName        Reason = "bad_name"         // a metric name or unit breaks the name rules
	ReasonTime        Reason = "bad_time"         // a time outside the accepted window or unparsable
	ReasonValue       Reason = "bad_value"        // a string or data value too long or not base64
	ReasonTooMany     Reason = "too_many_records" // more records than Limits.MaxRecords
	ReasonUnsupported Reason = "unsupported"      // SenML version above 10 or a must-understand field
	ReasonStore       Reason = "store_error"      // decoded, but the store refused to write it
)

// reasons lists every Reason, for pre-creating metric label values.
var reasons = []Reason{
	ReasonTopic, ReasonTooLarge, ReasonEmpty, ReasonSyntax, ReasonSchema, ReasonNotFinite,
	ReasonName, ReasonTime, ReasonValue, ReasonTooMany, ReasonUnsupported, ReasonStore,
}

// DecodeError says why a payload was refused: a Reason for metrics, the
// record (SenML index, or -1) and field it concerns, and a message.
type DecodeError struct {
	Reason Reason
	Record int    // index of the SenML record, -1 when not about one record
	Field  string // JSON field name, "" when not about one field
	Msg    string
}

// Error implements error.
func (e *DecodeError) Error() string {
	s := "ingest: " + string(e.Reason) + ": "
	if e.Record >= 0 {
		s += "record " + strconv.Itoa(e.Record) + ": "
	}
	if e.Field != "" {
		s += "field " + strconv.Quote(e.Field) + ": "
	}
	return s + e.Msg
}

// Is reports whether target is ErrInvalidPayload.
func (e *DecodeError) Is(target error) bool { return target == ErrInvalidPayload }

func decodeErr(r Reason, record int, field, format string, args ...any) *DecodeError {
	return &DecodeError{Reason: r, Record: record, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// reasonOf returns the Reason of a decode error (ReasonSyntax for others).
func reasonOf(err error) Reason {
	var de *DecodeError
	if errors.As(err, &de) {
		return de.Reason
	}
	return ReasonSyntax
}
