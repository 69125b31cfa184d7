package ingest

import (
	"fmt"
	"time"
	"unsafe"
)

// Kind is the type of a reading's value.
type Kind uint8

// Value kinds. Numbers and booleans live in the numeric time series
// (booleans as 0 and 1, so they roll up into the fraction of time true);
// strings (SenML vs) and opaque data (SenML vd, base64-decoded) are kept
// beside them in a text table under the same (device, metric, time) key,
// are forwarded through the outbox, and are not rolled up.
const (
	KindNumber Kind = iota // SenML v, a flat JSON number
	KindBool               // SenML vb, a flat JSON boolean; Value is 0 or 1
	KindString             // SenML vs; Text holds the string
	KindData               // SenML vd; Text holds the decoded bytes
)

// String returns the kind's name.
func (k Kind) String() string {
	switch k {
	case KindNumber:
		return "number"
	case KindBool:
		return "bool"
	case KindString:
		return "string"
	case KindData:
		return "data"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// numeric reports whether readings of the kind go to the numeric series.
func (k Kind) numeric() bool { return k == KindNumber || k == KindBool }

// Reading is one timestamped value of one metric of one device.
type Reading struct {
	Device string    // device id, from the topic
	Metric string    // resolved SenML name (base name + name, ":sum" appended for sums) or flat JSON key
	Unit   string    // SenML unit ("" when none)
	Time   time.Time // UTC, microsecond resolution
	Kind   Kind
	Value  float64 // KindNumber, KindBool
	Text   string  // KindString, KindData
}

// timeUS returns the reading's time in Unix microseconds.
func (r *Reading) timeUS() int64 { return r.Time.UnixMicro() }

// bytesToString views b as a string without copying; the caller must not
// keep the string beyond b's lifetime or modify b meanwhile.
func bytesToString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(unsafe.SliceData(b), len(b))
}
