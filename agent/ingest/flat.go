package ingest

import (
	"time"
)

// appendFlat decodes a flat JSON object: every field is a metric whose
// value is a number (booleans are accepted as 0 and 1), except "ts", the
// time of all readings of the object: Unix seconds (a number, possibly
// fractional) or an RFC 3339 string. Without "ts" the readings take the
// receive time. Field names follow the SenML name rules; a field may
// appear once.
func (d *Decoder) appendFlat(dst []Reading, device string, payload []byte, now time.Time) ([]Reading, bool, error) {
	start := len(dst)
	fail := func(err error) ([]Reading, bool, error) { return dst[:start], false, err }
	d.sc = scanner{data: payload, buf: d.sc.buf}
	sc := &d.sc
	if err := sc.expect('{'); err != nil {
		return fail(decodeErr(ReasonSyntax, -1, "", "flat payload must be a JSON object"))
	}
	var (
		at     time.Time
		haveTS bool
		fields int
	)
	if sc.ws() == '}' {
		sc.pos++
		if err := sc.end(); err != nil {
			return fail(err)
		}
		return fail(decodeErr(ReasonEmpty, -1, "", "flat object has no fields"))
	}
	for {
		if sc.ws() != '"' {
			if sc.atEnd() {
				return fail(sc.syntax("unexpected end of input in object"))
			}
			return fail(sc.syntax("want a field name"))
		}
		fields++
		if fields > d.lim.MaxRecords {
			return fail(decodeErr(ReasonTooMany, -1, "", "more than %d fields", d.lim.MaxRecords))
		}
		key, err := sc.str()
		if err != nil {
			return fail(err)
		}
		isTS := string(key) == "ts"
		var name string
		if !isTS {
			if name, err = d.flatName(key); err != nil {
				return fail(err)
			}
		}
		if err := sc.expect(':'); err != nil {
			return fail(err)
		}
		c := sc.ws()
		switch {
		case isTS:
			if haveTS {
				return fail(decodeErr(ReasonSchema, -1, "ts", "duplicate field"))
			}
			haveTS = true
			var sec float64
			switch {
			case c == '"':
				s, err := sc.str()
				if err != nil {
					return fail(err)
				}
				t, perr := time.Parse(time.RFC3339Nano, string(s))
				if perr != nil {
					return fail(decodeErr(ReasonTime, -1, "ts", "%.64q is not an RFC 3339 time", s))
				}
				sec = float64(t.Unix()) + float64(t.Nanosecond())/1e9
			case c == '-' || (c >= '0' && c <= '9'):
				v, err := sc.number()
				if err != nil {
					return fail(withField(err, "ts"))
				}
				sec = v
			default:
				return fail(decodeErr(ReasonSchema, -1, "ts", "is %s, want Unix seconds or an RFC 3339 string", sc.valueKind()))
			}
			t, err := d.window(sec, now, -1, "ts")
			if err != nil {
				return fail(err)
			}
			at = t
		default:
			for i := start; i < len(dst); i++ {
				if dst[i].Metric == name {
					return fail(decodeErr(ReasonSchema, -1, name, "duplicate field"))
				}
			}
			r := Reading{Device: device, Metric: name}
			switch {
			case c == '-' || (c >= '0' && c <= '9'):
				v, err := sc.number()
				if err != nil {
					return fail(withField(err, name))
				}
				r.Kind, r.Value = KindNumber, v
			case c == 't' || c == 'f':
				isBool, v, err := sc.literal()
				if err != nil {
					return fail(err)
				}
				if !isBool {
					return fail(sc.syntax("bad literal"))
				}
				r.Kind = KindBool
				if v {
					r.Value = 1
				}
			default:
				return fail(decodeErr(ReasonSchema, -1, name, "is %s, want a number", sc.valueKind()))
			}
			dst = append(dst, r)
		}
		switch sc.ws() {
		case ',':
			sc.pos++
			continue
		case '}':
			sc.pos++
		default:
			if sc.atEnd() {
				return fail(sc.syntax("unexpected end of input in object"))
			}
			return fail(sc.syntax("want ',' or '}' in object"))
		}
		break
	}
	if err := sc.end(); err != nil {
		return fail(err)
	}
	if len(dst) == start {
		return fail(decodeErr(ReasonEmpty, -1, "", "flat object holds only \"ts\", no readings"))
	}
	received := !haveTS
	if !haveTS {
		at = time.UnixMicro(now.UnixMicro()).UTC()
	}
	for i := start; i < len(dst); i++ {
		dst[i].Time = at
	}
	return dst, received, nil
}

// withField attaches a field name to a *DecodeError lacking one.
func withField(err error, field string) error {
	if de, ok := err.(*DecodeError); ok && de.Field == "" {
		de.Field = field
	}
	return err
}
