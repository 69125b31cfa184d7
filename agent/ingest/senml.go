package ingest

import (
	"encoding/base64"
	"math"
	"math/bits"
	"time"
)

// senmlRelativeLimit: resolved SenML times below 2^28 are relative to
// the current time (RFC 8428 section 4.5.3).
const senmlRelativeLimit = 1 << 28

// senmlVersion is the highest SenML version understood (RFC 8428: 10).
const senmlVersion = 10

// SenML record fields, as bits of a presence mask.
const (
	fBN = 1 << iota
	fBT
	fBU
	fBV
	fBS
	fBVer
	fN
	fU
	fV
	fVS
	fVB
	fVD
	fS
	fT
	fUT
)

var senmlFields = map[string]int{
	"bn": fBN, "bt": fBT, "bu": fBU, "bv": fBV, "bs": fBS, "bver": fBVer,
	"n": fN, "u": fU, "v": fV, "vs": fVS, "vb": fVB, "vd": fVD, "s": fS, "t": fT, "ut": fUT,
}

const (
	fBase   = fBN | fBT | fBU | fBV | fBS | fBVer
	fValues = fV | fVS | fVB | fVD
)

// senmlRecord holds one record's fields as read.
type senmlRecord struct {
	has              int
	bn, bu, n, u, vs []byte // alias the input or own copies (see strField)
	vd               []byte
	bt, bv, bs, bver float64
	v, s, t, ut      float64
	vb               bool
}

// appendSenML decodes a SenML JSON pack. Resolution follows RFC 8428
// section 4.6: base name, time, unit, value and sum apply to the record
// that carries them and to all later records until changed; the name is
// base name + name; the time is base time + time, and a resolved time
// below 2^28 is relative to now (negative: in the past); the value is
// base value + value; the sum is base sum + sum. A record holding only
// base fields contributes no reading. A record's sum becomes a reading
// of metric name + ":sum".
func (d *Decoder) appendSenML(dst []Reading, device string, payload []byte, now time.Time) ([]Reading, bool, error) {
	start := len(dst)
	fail := func(err error) ([]Reading, bool, error) { return dst[:start], false, err }
	d.sc = scanner{data: payload, buf: d.sc.buf}
	sc := &d.sc
	if err := sc.expect('['); err != nil {
		return fail(decodeErr(ReasonSyntax, -1, "", "SenML pack must be a JSON array"))
	}
	// A record takes at least 3 bytes ("{}," ): a pack too long to
	// rule out more than MaxRecords is counted first, so a huge pack is
	// refused without decoding its first MaxRecords records.
	if len(payload) > 3*d.lim.MaxRecords && countElements(payload[sc.pos:], d.lim.MaxRecords) > d.lim.MaxRecords {
		return fail(decodeErr(ReasonTooMany, -1, "", "more than %d records", d.lim.MaxRecords))
	}
	var (
		bn, bu       string
		bt, bv, bs   float64
		received     bool
		idx          int
		rec          senmlRecord
		readingsSeen int
	)
	if sc.ws() == ']' {
		sc.pos++
		if err := sc.end(); err != nil {
			return fail(err)
		}
		return fail(decodeErr(ReasonEmpty, -1, "", "SenML pack has no records"))
	}
	for {
		if idx >= d.lim.MaxRecords {
			return fail(decodeErr(ReasonTooMany, -1, "", "more than %d records", d.lim.MaxRecords))
		}
		if err := d.senmlRecord(&rec, idx); err != nil {
			return fail(err)
		}
		// Base fields.
		if rec.has&fBVer != 0 {
			if rec.bver != math.Trunc(rec.bver) || rec.bver < 1 {
				return fail(decodeErr(ReasonSchema, idx, "bver", "base version %g is not a positive integer", rec.bver))
			}
			if rec.bver > senmlVersion {
				return fail(decodeErr(ReasonUnsupported, idx, "bver", "SenML version %g is newer than %d", rec.bver, senmlVersion))
			}
		}
		if rec.has&fBN != 0 {
			bn = string(rec.bn)
		}
		if rec.has&fBT != 0 {
			bt = rec.bt
		}
		if rec.has&fBU != 0 {
			if err := d.checkUnit(rec.bu, idx, "bu"); err != nil {
				return fail(err)
			}
			bu = string(rec.bu)
		}
		if rec.has&fBV != 0 {
			bv = rec.bv
		}
		if rec.has&fBS != 0 {
			bs = rec.bs
		}
		if rec.has&^fBase != 0 { // not a base-only record
			nv := bits.OnesCount(uint(rec.has & fValues))
			if nv > 1 {
				return fail(decodeErr(ReasonSchema, idx, "", "more than one value field (v, vs, vb, vd)"))
			}
			if nv == 0 && rec.has&fS == 0 {
				return fail(decodeErr(ReasonSchema, idx, "", "record has neither a value (v, vs, vb, vd) nor a sum (s)"))
			}
			name := bn + string(rec.n)
			if err := d.checkName(name, idx, "n"); err != nil {
				return fail(err)
			}
			unit := bu
			if rec.has&fU != 0 {
				if err := d.checkUnit(rec.u, idx, "u"); err != nil {
					return fail(err)
				}
				unit = string(rec.u)
			}
			sec := bt + rec.t
			if math.IsInf(sec, 0) {
				return fail(decodeErr(ReasonNotFinite, idx, "t", "base time + time overflows"))
			}
			if sec < senmlRelativeLimit {
				received = true
				sec += float64(now.UnixNano()) / 1e9
			}
			at, err := d.window(sec, now, idx, "t")
			if err != nil {
				return fail(err)
			}
			r := Reading{Device: device, Metric: name, Unit: unit, Time: at}
			switch {
			case rec.has&fV != 0:
				r.Kind, r.Value = KindNumber, bv+rec.v
				if math.IsInf(r.Value, 0) {
					return fail(decodeErr(ReasonNotFinite, idx, "v", "base value + value overflows"))
				}
			case rec.has&fVB != 0:
				r.Kind = KindBool
				if rec.vb {
					r.Value = 1
				}
			case rec.has&fVS != 0:
				if len(rec.vs) > d.lim.MaxTextLen {
					return fail(decodeErr(ReasonValue, idx, "vs", "string of %d bytes exceeds the limit of %d", len(rec.vs), d.lim.MaxTextLen))
				}
				r.Kind, r.Text = KindString, string(rec.vs)
			case rec.has&fVD != 0:
				data, err := decodeSenMLData(rec.vd)
				if err != nil {
					return fail(decodeErr(ReasonValue, idx, "vd", "data value is not base64url: %v", err))
				}
				if len(data) > d.lim.MaxTextLen {
					return fail(decodeErr(ReasonValue, idx, "vd", "data of %d bytes exceeds the limit of %d", len(data), d.lim.MaxTextLen))
				}
				r.Kind, r.Text = KindData, string(data)
			}
			readingsSeen++
			if nv > 0 {
				dst = append(dst, r)
			}
			if rec.has&fS != 0 {
				sum := bs + rec.s
				if math.IsInf(sum, 0) {
					return fail(decodeErr(ReasonNotFinite, idx, "s", "base sum + sum overflows"))
				}
				if len(name)+4 > d.lim.MaxNameLen {
					return fail(decodeErr(ReasonName, idx, "s", "name %.64q leaves no room for the \":sum\" suffix", name))
				}
				sr := r
				sr.Metric, sr.Kind, sr.Value, sr.Text = name+":sum", KindNumber, sum, ""
				dst = append(dst, sr)
			}
		}
		idx++
		switch sc.ws() {
		case ',':
			sc.pos++
			continue
		case ']':
			sc.pos++
		default:
			if sc.atEnd() {
				return fail(sc.syntax("unexpected end of input in SenML pack"))
			}
			return fail(sc.syntax("want ',' or ']' after record %d", idx-1))
		}
		break
	}
	if err := sc.end(); err != nil {
		return fail(err)
	}
	if readingsSeen == 0 {
		return fail(decodeErr(ReasonEmpty, -1, "", "SenML pack holds only base fields, no readings"))
	}
	return dst, received, nil
}

// decodeSenMLData decodes a vd value: base64url without padding per
// RFC 8428 section 4.3; padded input is accepted too.
func decodeSenMLData(s []byte) ([]byte, error) {
	out := make([]byte, base64.RawURLEncoding.DecodedLen(len(s)))
	n, err := base64.RawURLEncoding.Decode(out, s)
	if err == nil {
		return out[:n], nil
	}
	out = make([]byte, base64.URLEncoding.DecodedLen(len(s)))
	n, err2 := base64.URLEncoding.Decode(out, s)
	if err2 != nil {
		return nil, err
	}
	return out[:n], nil
}

// senmlRecord reads one JSON object of the pack into rec.
func (d *Decoder) senmlRecord(rec *senmlRecord, idx int) error {
	sc := &d.sc
	*rec = senmlRecord{bn: rec.bn[:0], bu: rec.bu[:0], n: rec.n[:0], u: rec.u[:0], vs: rec.vs[:0], vd: rec.vd[:0]}
	if sc.ws() != '{' {
		if sc.atEnd() {
			return sc.syntax("unexpected end of input in SenML pack")
		}
		return decodeErr(ReasonSchema, idx, "", "record is %s, want an object", sc.valueKind())
	}
	sc.pos++
	if sc.ws() == '}' {
		sc.pos++
		return decodeErr(ReasonSchema, idx, "", "empty record")
	}
	for {
		if sc.ws() != '"' {
			return sc.syntax("want a field name in record %d", idx)
		}
		key, err := sc.str()
		if err != nil {
			return err
		}
		f, known := senmlFields[string(key)]
		var keyName string
		if !known {
			keyName = string(key)
		}
		if err := sc.expect(':'); err != nil {
			return err
		}
		if !known {
			// RFC 8428 section 4.4: fields ending in "_" must be understood.
			if len(keyName) > 0 && keyName[len(keyName)-1] == '_' {
				return decodeErr(ReasonUnsupported, idx, keyName, "must-understand field is not supported")
			}
			if err := sc.skip(1); err != nil {
				return err
			}
		} else {
			if rec.has&f != 0 {
				return decodeErr(ReasonSchema, idx, fieldName(f), "duplicate field")
			}
			rec.has |= f
			if err := d.senmlField(rec, f, idx); err != nil {
				return err
			}
		}
		switch sc.ws() {
		case ',':
			sc.pos++
		case '}':
			sc.pos++
			return nil
		default:
			if sc.atEnd() {
				return sc.syntax("unexpected end of input in record %d", idx)
			}
			return sc.syntax("want ',' or '}' in record %d", idx)
		}
	}
}

func fieldName(f int) string {
	for k, v := range senmlFields {
		if v == f {
			return k
		}
	}
	return "?"
}

func (d *Decoder) senmlField(rec *senmlRecord, f, idx int) error {
	sc := &d.sc
	c := sc.ws()
	switch f {
	case fBN, fBU, fN, fU, fVS, fVD:
		if c != '"' {
			return decodeErr(ReasonSchema, idx, fieldName(f), "is %s, want a string", sc.valueKind())
		}
		s, err := sc.str()
		if err != nil {
			return err
		}
		// Copy: s may alias the scratch buffer that the next string reuses.
		switch f {
		case fBN:
			rec.bn = append(rec.bn, s...)
		case fBU:
			rec.bu = append(rec.bu, s...)
		case fN:
			rec.n = append(rec.n, s...)
		case fU:
			rec.u = append(rec.u, s...)
		case fVS:
			rec.vs = append(rec.vs, s...)
		case fVD:
			rec.vd = append(rec.vd, s...)
		}
		return nil
	case fVB:
		if c != 't' && c != 'f' {
			return decodeErr(ReasonSchema, idx, "vb", "is %s, want a boolean", sc.valueKind())
		}
		isBool, v, err := sc.literal()
		if err != nil {
			return err
		}
		if !isBool {
			return decodeErr(ReasonSchema, idx, "vb", "is null, want a boolean")
		}
		rec.vb = v
		return nil
	default: // numbers
		if c != '-' && (c < '0' || c > '9') {
			return decodeErr(ReasonSchema, idx, fieldName(f), "is %s, want a number", sc.valueKind())
		}
		v, err := sc.number()
		if err != nil {
			if de, ok := err.(*DecodeError); ok && de.Reason == ReasonNotFinite {
				de.Record, de.Field = idx, fieldName(f)
			}
			return err
		}
		switch f {
		case fBT:
			rec.bt = v
		case fBV:
			rec.bv = v
		case fBS:
			rec.bs = v
		case fBVer:
			rec.bver = v
		case fV:
			rec.v = v
		case fS:
			rec.s = v
		case fT:
			rec.t = v
		case fUT:
			rec.ut = v
		}
		return nil
	}
}
