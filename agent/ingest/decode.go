package ingest

import (
	"fmt"
	"math"
	"time"

	"github.com/edgefleet/edgefleet/clock"
)

// Limits bound what one message may hold. The zero value of a field
// means its default (DefaultLimits).
type Limits struct {
	// MaxPayloadBytes is the largest payload accepted. Default 64 KiB.
	MaxPayloadBytes int
	// MaxRecords is the largest number of SenML records (or flat JSON
	// fields) in one message. Default 1000.
	MaxRecords int
	// MaxNameLen is the longest resolved metric name, in bytes. Default 255.
	MaxNameLen int
	// MaxUnitLen is the longest unit, in bytes. Default 32.
	MaxUnitLen int
	// MaxTextLen is the longest string (vs) or decoded data (vd) value,
	// in bytes. Default 1024.
	MaxTextLen int
	// MaxPast is how far before the receive time a reading's time may
	// lie. Default 365 days.
	MaxPast time.Duration
	// MaxFuture is how far after the receive time a reading's time may
	// lie (device clock skew). Default 10 minutes.
	MaxFuture time.Duration
}

// DefaultLimits returns the default limits.
func DefaultLimits() Limits {
	return Limits{
		MaxPayloadBytes: 64 << 10,
		MaxRecords:      1000,
		MaxNameLen:      255,
		MaxUnitLen:      32,
		MaxTextLen:      1024,
		MaxPast:         365 * 24 * time.Hour,
		MaxFuture:       10 * time.Minute,
	}
}

// withDefaults fills zero fields from DefaultLimits and validates.
func (l Limits) withDefaults() (Limits, error) {
	d := DefaultLimits()
	if l.MaxPayloadBytes == 0 {
		l.MaxPayloadBytes = d.MaxPayloadBytes
	}
	if l.MaxRecords == 0 {
		l.MaxRecords = d.MaxRecords
	}
	if l.MaxNameLen == 0 {
		l.MaxNameLen = d.MaxNameLen
	}
	if l.MaxUnitLen == 0 {
		l.MaxUnitLen = d.MaxUnitLen
	}
	if l.MaxTextLen == 0 {
		l.MaxTextLen = d.MaxTextLen
	}
	if l.MaxPast == 0 {
		l.MaxPast = d.MaxPast
	}
	if l.MaxFuture == 0 {
		l.MaxFuture = d.MaxFuture
	}
	switch {
	case l.MaxPayloadBytes < 0 || l.MaxPayloadBytes > 256<<20:
		return l, fmt.Errorf("%w: Limits.MaxPayloadBytes %d outside 1..256MiB", ErrInvalidConfig, l.MaxPayloadBytes)
	case l.MaxRecords < 0 || l.MaxRecords > 1_000_000:
		return l, fmt.Errorf("%w: Limits.MaxRecords %d outside 1..1000000", ErrInvalidConfig, l.MaxRecords)
	case l.MaxNameLen < 0 || l.MaxNameLen > 4096:
		return l, fmt.Errorf("%w: Limits.MaxNameLen %d outside 1..4096", ErrInvalidConfig, l.MaxNameLen)
	case l.MaxUnitLen < 0 || l.MaxUnitLen > 4096:
		return l, fmt.Errorf("%w: Limits.MaxUnitLen %d outside 1..4096", ErrInvalidConfig, l.MaxUnitLen)
	case l.MaxTextLen < 0 || l.MaxTextLen > 1<<20:
		return l, fmt.Errorf("%w: Limits.MaxTextLen %d outside 1..1MiB", ErrInvalidConfig, l.MaxTextLen)
	case l.MaxPast < 0:
		return l, fmt.Errorf("%w: negative Limits.MaxPast %s", ErrInvalidConfig, l.MaxPast)
	case l.MaxFuture < 0:
		return l, fmt.Errorf("%w: negative Limits.MaxFuture %s", ErrInvalidConfig, l.MaxFuture)
	}
	return l, nil
}

// Decoder turns payloads into readings: SenML JSON (RFC 8428) or flat
// JSON objects of numbers. It is not safe for concurrent use (it reuses
// a scratch buffer); the zero value is not usable, use NewDecoder.
type Decoder struct {
	lim   Limits
	now   func() time.Time
	sc    scanner
	names map[string]string // valid flat field names seen, to reuse their strings
}

// maxNames bounds Decoder.names; past it the map starts over.
const maxNames = 4096

// flatName returns a flat field name as a checked string, reusing the
// string of a name seen before: devices send the same few names in
// every message.
func (d *Decoder) flatName(key []byte) (string, error) {
	if name, ok := d.names[string(key)]; ok {
		return name, nil
	}
	name := string(key)
	if err := d.checkName(name, -1, name); err != nil {
		return "", err
	}
	if d.names == nil || len(d.names) >= maxNames {
		d.names = make(map[string]string, 64)
	}
	d.names[name] = name
	return name, nil
}

// NewDecoder returns a decoder enforcing lim (zero fields take their
// defaults). c is the clock that relative and missing times resolve
// against; nil means clock.Real().
func NewDecoder(lim Limits, c clock.Clock) (*Decoder, error) {
	lim, err := lim.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Decoder{lim: lim, now: clock.Or(c).Now}, nil
}

// Decode sniffs the payload's shape (a JSON array is SenML, an object is
// flat JSON) and decodes it for device. The error, if any, is a
// *DecodeError.
func (d *Decoder) Decode(device string, payload []byte) ([]Reading, error) {
	rs, _, err := d.appendDecode(nil, device, payload, d.now())
	return rs, err
}

// DecodeSenML decodes a SenML JSON pack for device.
func (d *Decoder) DecodeSenML(device string, payload []byte) ([]Reading, error) {
	if err := d.checkSize(payload); err != nil {
		return nil, err
	}
	rs, _, err := d.appendSenML(nil, device, payload, d.now())
	return rs, err
}

// DecodeFlat decodes a flat JSON object for device.
func (d *Decoder) DecodeFlat(device string, payload []byte) ([]Reading, error) {
	if err := d.checkSize(payload); err != nil {
		return nil, err
	}
	rs, _, err := d.appendFlat(nil, device, payload, d.now())
	return rs, err
}

func (d *Decoder) checkSize(payload []byte) error {
	if len(payload) > d.lim.MaxPayloadBytes {
		return decodeErr(ReasonTooLarge, -1, "", "payload of %d bytes exceeds the limit of %d", len(payload), d.lim.MaxPayloadBytes)
	}
	return nil
}

// appendDecode appends the payload's readings to dst. received reports
// whether any reading took its time from the receive clock (no time or
// a relative time), which makes the message's readings depend on when
// it was received: see the package documentation on de-duplication.
// On error dst is returned unchanged in length.
func (d *Decoder) appendDecode(dst []Reading, device string, payload []byte, now time.Time) (out []Reading, received bool, err error) {
	if err := d.checkSize(payload); err != nil {
		return dst, false, err
	}
	d.sc = scanner{data: payload, buf: d.sc.buf}
	switch c := d.sc.ws(); {
	case d.sc.atEnd():
		return dst, false, decodeErr(ReasonEmpty, -1, "", "empty payload")
	case c == '[':
		return d.appendSenML(dst, device, payload, now)
	case c == '{':
		return d.appendFlat(dst, device, payload, now)
	default:
		return dst, false, decodeErr(ReasonSyntax, -1, "", "payload is neither a JSON array (SenML) nor a JSON object (flat): starts with %q", c)
	}
}

// window checks t (Unix seconds, finite) against the accepted window
// around now and converts it to microseconds.
func (d *Decoder) window(sec float64, now time.Time, record int, field string) (time.Time, error) {
	nowS := float64(now.UnixNano()) / 1e9
	lo := nowS - d.lim.MaxPast.Seconds()
	hi := nowS + d.lim.MaxFuture.Seconds()
	if math.IsNaN(sec) || math.IsInf(sec, 0) {
		return time.Time{}, decodeErr(ReasonNotFinite, record, field, "time is not finite")
	}
	if sec < lo || sec > hi {
		hint := ""
		if sec > 1e11 && sec/1000 >= lo && sec/1000 <= hi {
			hint = " (milliseconds? times are Unix seconds)"
		}
		return time.Time{}, decodeErr(ReasonTime, record, field,
			"time %s is outside the accepted window %s .. %s%s",
			fmtSec(sec), fmtSec(lo), fmtSec(hi), hint)
	}
	return time.UnixMicro(int64(math.Round(sec * 1e6))).UTC(), nil
}

func fmtSec(s float64) string {
	if s > -1e11 && s < 1e11 {
		sec, frac := math.Modf(s)
		return time.Unix(int64(sec), int64(frac*1e9)).UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("%g", s)
}

// isNameChar reports whether c may appear in a SenML name after the
// first character (RFC 8428 section 4.5.1: A-Z a-z 0-9 - : . / _).
func isNameChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == ':' || c == '.' || c == '/' || c == '_'
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// checkName applies the RFC 8428 name rules and the length limit.
func (d *Decoder) checkName(name string, record int, field string) error {
	if name == "" {
		return decodeErr(ReasonName, record, field, "empty name")
	}
	if len(name) > d.lim.MaxNameLen {
		return decodeErr(ReasonName, record, field, "name of %d bytes exceeds the limit of %d", len(name), d.lim.MaxNameLen)
	}
	if !isAlnum(name[0]) {
		return decodeErr(ReasonName, record, field, "name %.64q must start with a letter or digit", name)
	}
	for i := 1; i < len(name); i++ {
		if !isNameChar(name[i]) {
			return decodeErr(ReasonName, record, field, "name %.64q holds %q (allowed: A-Z a-z 0-9 - : . / _)", name, name[i])
		}
	}
	return nil
}

// checkUnit accepts printable ASCII without spaces up to MaxUnitLen.
func (d *Decoder) checkUnit(unit []byte, record int, field string) error {
	if len(unit) > d.lim.MaxUnitLen {
		return decodeErr(ReasonName, record, field, "unit of %d bytes exceeds the limit of %d", len(unit), d.lim.MaxUnitLen)
	}
	for _, c := range unit {
		if c <= 0x20 || c >= 0x7f {
			return decodeErr(ReasonName, record, field, "unit %.40q holds a character outside printable ASCII", unit)
		}
	}
	return nil
}
