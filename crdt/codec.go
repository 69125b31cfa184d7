package crdt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// Wire formats. Both start with a format byte so later versions can be told
// apart; decoders reject unknown formats, trailing bytes and anything beyond
// the limits in validate.go.
//
// Deltas (format 1), all integers unsigned varints, strings and byte slices
// length-prefixed:
//
//	format=1
//	origins count, origin...          (table; dots refer to it by index)
//	deltas count, then per delta:
//	  origin index, from, to-from, ops count, then per op:
//	    seq-prev (prev starts at from), hlc, kind byte, collection, key,
//	    put/mvput: value; counter: p, n;
//	    remove/mvput/mvdelete: observed count, (origin index, seq)...
//
// The op's type follows from its kind. Version vector (format 1):
//
//	format=1, entries count, (origin, seq)... sorted by origin, seq > 0
const (
	deltasFormat1 = 1
	vvFormat1     = 1
)

// EncodeDeltas encodes ds in the compact binary wire format. Invalid deltas
// and encodings beyond MaxDeltaBytes, MaxOpsPerMessage or
// MaxDeltasPerMessage are refused with an error wrapping ErrInvalidDelta.
func EncodeDeltas(ds []Delta) ([]byte, error) {
	if len(ds) > MaxDeltasPerMessage {
		return nil, fmt.Errorf("%w: encode: %d deltas exceed %d", ErrInvalidDelta, len(ds), MaxDeltasPerMessage)
	}
	idx := map[string]int{}
	var origins []string
	intern := func(o string) {
		if _, ok := idx[o]; !ok {
			idx[o] = len(origins)
			origins = append(origins, o)
		}
	}
	nops := 0
	for i := range ds {
		if err := ds[i].Validate(); err != nil {
			return nil, fmt.Errorf("crdt: encode: %w", err)
		}
		intern(ds[i].Origin)
		nops += len(ds[i].Ops)
		for j := range ds[i].Ops {
			for _, d := range ds[i].Ops[j].Observed {
				intern(d.Origin)
			}
		}
	}
	if nops > MaxOpsPerMessage {
		return nil, fmt.Errorf("%w: encode: %d ops exceed %d", ErrInvalidDelta, nops, MaxOpsPerMessage)
	}
	b := make([]byte, 0, 64)
	b = append(b, deltasFormat1)
	b = binary.AppendUvarint(b, uint64(len(origins)))
	for _, o := range origins {
		b = appendString(b, o)
	}
	b = binary.AppendUvarint(b, uint64(len(ds)))
	for i := range ds {
		d := &ds[i]
		b = binary.AppendUvarint(b, uint64(idx[d.Origin]))
		b = binary.AppendUvarint(b, d.From)
		b = binary.AppendUvarint(b, d.To-d.From)
		b = binary.AppendUvarint(b, uint64(len(d.Ops)))
		prev := d.From
		for j := range d.Ops {
			op := &d.Ops[j]
			b = binary.AppendUvarint(b, op.Dot.Seq-prev)
			prev = op.Dot.Seq
			b = binary.AppendUvarint(b, uint64(op.HLC))
			b = append(b, byte(op.Kind))
			b = appendString(b, op.Collection)
			b = appendString(b, op.Key)
			switch op.Kind {
			case KindPut, KindMVPut:
				b = binary.AppendUvarint(b, uint64(len(op.Value)))
				b = append(b, op.Value...)
			case KindCounter:
				b = binary.AppendUvarint(b, op.P)
				b = binary.AppendUvarint(b, op.N)
			}
			switch op.Kind {
			case KindRemove, KindMVPut, KindMVDelete:
				b = binary.AppendUvarint(b, uint64(len(op.Observed)))
				for _, dot := range op.Observed {
					b = binary.AppendUvarint(b, uint64(idx[dot.Origin]))
					b = binary.AppendUvarint(b, dot.Seq)
				}
			}
		}
		if len(b) > MaxDeltaBytes {
			return nil, fmt.Errorf("%w: encode: encoding exceeds %d bytes", ErrInvalidDelta, MaxDeltaBytes)
		}
	}
	return b, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// encodedOpSize is an upper bound of the bytes op takes in the deltas wire
// format (origin indexes counted at 3 bytes).
func encodedOpSize(op *Op) int {
	n := 10 + uvarintLen(uint64(op.HLC)) + 1 +
		uvarintLen(uint64(len(op.Collection))) + len(op.Collection) +
		uvarintLen(uint64(len(op.Key))) + len(op.Key) +
		uvarintLen(uint64(len(op.Value))) + len(op.Value) +
		uvarintLen(op.P) + uvarintLen(op.N) + uvarintLen(uint64(len(op.Observed)))
	for _, d := range op.Observed {
		n += 3 + uvarintLen(d.Seq)
	}
	return n
}

// encodedDeltaOverhead is an upper bound of the bytes a delta of origin o
// adds besides its ops (its origin table entry included).
func encodedDeltaOverhead(o string) int { return 1 + len(o) + 3 + 3*10 }

// decoder reads the wire formats; the first error sticks.
type decoder struct {
	b   []byte
	off int
	err error
	ctx string
}

func (r *decoder) fail(format string, args ...any) {
	if r.err == nil {
		msg := fmt.Sprintf(format, args...)
		if r.ctx != "" {
			msg = r.ctx + ": " + msg
		}
		r.err = fmt.Errorf("%s (at byte %d)", msg, r.off)
	}
}

func (r *decoder) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b[r.off:])
	if n <= 0 {
		if n == 0 {
			r.fail("truncated %s", what)
		} else {
			r.fail("%s overflows 64 bits", what)
		}
		return 0
	}
	if n != uvarintLen(v) {
		r.fail("%s not minimally encoded", what)
		return 0
	}
	r.off += n
	return v
}

// count reads a length or count of at most max items, each taking at least
// minBytes bytes of the remaining input.
func (r *decoder) count(what string, max, minBytes int) int {
	v := r.uvarint(what)
	if r.err != nil {
		return 0
	}
	if v > uint64(max) {
		r.fail("%s %d exceeds %d", what, v, max)
		return 0
	}
	if minBytes > 0 && v > uint64((len(r.b)-r.off)/minBytes) {
		r.fail("%s %d exceeds the remaining input", what, v)
		return 0
	}
	return int(v)
}

func (r *decoder) bytes(what string, max int) []byte {
	n := r.count(what+" length", max, 1)
	if r.err != nil {
		return nil
	}
	out := r.b[r.off : r.off+n]
	r.off += n
	return out
}

func (r *decoder) byte1(what string) byte {
	if r.err != nil {
		return 0
	}
	if r.off >= len(r.b) {
		r.fail("truncated %s", what)
		return 0
	}
	c := r.b[r.off]
	r.off++
	return c
}

// DecodeDeltas decodes the output of EncodeDeltas. It never panics: any
// malformed, truncated, oversized or invalid input (including deltas that
// fail Delta.Validate) returns an error wrapping ErrInvalidDelta that names
// the problem. The result does not alias b.
func DecodeDeltas(b []byte) ([]Delta, error) {
	ds, err := decodeDeltas(b)
	if err != nil {
		return nil, fmt.Errorf("%w: decode: %v", ErrInvalidDelta, err)
	}
	return ds, nil
}

func decodeDeltas(b []byte) ([]Delta, error) {
	if len(b) > MaxDeltaBytes {
		return nil, fmt.Errorf("%d bytes exceed %d", len(b), MaxDeltaBytes)
	}
	if len(b) == 0 {
		return nil, errors.New("empty input")
	}
	if b[0] != deltasFormat1 {
		return nil, fmt.Errorf("unknown format %d", b[0])
	}
	r := &decoder{b: b, off: 1}
	norig := r.count("origin count", MaxDeltasPerMessage+MaxObserved, 2)
	origins := make([]string, 0, norig)
	seen := make(map[string]bool, norig)
	for i := 0; i < norig && r.err == nil; i++ {
		o := string(r.bytes("origin", MaxOriginLen))
		if r.err == nil && len(o) == 0 {
			r.fail("origin %d is empty", i)
		}
		if r.err == nil && seen[o] {
			r.fail("origin %q listed twice", o)
		}
		seen[o] = true
		origins = append(origins, o)
	}
	origin := func(what string) string {
		i := r.uvarint(what)
		if r.err != nil {
			return ""
		}
		if i >= uint64(len(origins)) {
			r.fail("%s %d outside the origin table of %d", what, i, len(origins))
			return ""
		}
		return origins[i]
	}
	nd := r.count("delta count", MaxDeltasPerMessage, 4)
	ds := make([]Delta, 0, nd)
	totalOps := 0
	for i := 0; i < nd && r.err == nil; i++ {
		r.ctx = fmt.Sprintf("delta %d", i)
		var d Delta
		d.Origin = origin("origin index")
		d.From = r.uvarint("from")
		span := r.uvarint("range length")
		if r.err == nil && (span == 0 || span > maxSeq || d.From > maxSeq-span) {
			r.fail("range (%d, +%d] invalid", d.From, span)
		}
		d.To = d.From + span
		nops := r.count("op count", MaxOpsPerMessage-totalOps, 6)
		totalOps += nops
		if nops > 0 {
			d.Ops = make([]Op, 0, nops)
		}
		prev := d.From
		for j := 0; j < nops && r.err == nil; j++ {
			r.ctx = fmt.Sprintf("delta %d op %d", i, j)
			var op Op
			step := r.uvarint("sequence step")
			if r.err == nil && (step == 0 || step > d.To-prev) {
				r.fail("sequence step %d leaves the range", step)
			}
			prev += step
			op.Dot = Dot{Origin: d.Origin, Seq: prev}
			op.HLC = Timestamp(r.uvarint("timestamp"))
			op.Kind = Kind(r.byte1("kind"))
			if r.err == nil && !op.Kind.Valid() {
				r.fail("unknown kind %d", uint8(op.Kind))
			}
			op.Type = op.Kind.Type()
			op.Collection = string(r.bytes("collection", MaxCollectionLen))
			op.Key = string(r.bytes("key", MaxKeyLen))
			switch op.Kind {
			case KindPut, KindMVPut:
				if v := r.bytes("value", MaxValueLen); len(v) > 0 {
					op.Value = append([]byte(nil), v...)
				}
			case KindCounter:
				op.P = r.uvarint("counter p")
				op.N = r.uvarint("counter n")
			}
			switch op.Kind {
			case KindRemove, KindMVPut, KindMVDelete:
				nobs := r.count("observed count", MaxObserved, 2)
				if nobs > 0 {
					op.Observed = make([]Dot, 0, nobs)
				}
				for k := 0; k < nobs && r.err == nil; k++ {
					o := origin("observed origin index")
					op.Observed = append(op.Observed, Dot{Origin: o, Seq: r.uvarint("observed sequence")})
				}
			}
			if r.err != nil {
				break
			}
			if err := op.validate(); err != nil {
				r.fail("%v", err)
			}
			d.Ops = append(d.Ops, op)
		}
		r.ctx = fmt.Sprintf("delta %d", i)
		if r.err == nil {
			if err := d.validate(); err != nil {
				r.fail("%v", err)
			}
		}
		ds = append(ds, d)
	}
	r.ctx = ""
	if r.err == nil && r.off != len(b) {
		r.fail("%d trailing bytes", len(b)-r.off)
	}
	if r.err != nil {
		return nil, r.err
	}
	return ds, nil
}

// EncodeVersionVector encodes vv in the binary wire format: origins sorted,
// zero entries left out. Entries DecodeVersionVector would refuse (origins
// longer than MaxOriginLen, sequences above 1<<63-1) are left out too.
func EncodeVersionVector(vv VersionVector) []byte {
	origins := make([]string, 0, len(vv))
	for o, s := range vv {
		if s > 0 && s <= maxSeq && checkOrigin(o, "") == nil {
			origins = append(origins, o)
		}
	}
	sort.Strings(origins)
	b := make([]byte, 0, 2+len(origins)*16)
	b = append(b, vvFormat1)
	b = binary.AppendUvarint(b, uint64(len(origins)))
	for _, o := range origins {
		b = appendString(b, o)
		b = binary.AppendUvarint(b, vv[o])
	}
	return b
}

// DecodeVersionVector decodes the output of EncodeVersionVector. It never
// panics; malformed input returns an error wrapping ErrInvalidVersionVector.
func DecodeVersionVector(b []byte) (VersionVector, error) {
	vv, err := decodeVersionVector(b)
	if err != nil {
		return nil, fmt.Errorf("%w: decode: %v", ErrInvalidVersionVector, err)
	}
	return vv, nil
}

func decodeVersionVector(b []byte) (VersionVector, error) {
	if len(b) > MaxDeltaBytes {
		return nil, fmt.Errorf("%d bytes exceed %d", len(b), MaxDeltaBytes)
	}
	if len(b) == 0 {
		return nil, errors.New("empty input")
	}
	if b[0] != vvFormat1 {
		return nil, fmt.Errorf("unknown format %d", b[0])
	}
	r := &decoder{b: b, off: 1}
	n := r.count("entry count", MaxVersionVectorEntries, 3)
	vv := make(VersionVector, n)
	prev := ""
	for i := 0; i < n && r.err == nil; i++ {
		r.ctx = fmt.Sprintf("entry %d", i)
		o := string(r.bytes("origin", MaxOriginLen))
		s := r.uvarint("sequence")
		if r.err != nil {
			break
		}
		switch {
		case len(o) == 0:
			r.fail("empty origin")
		case i > 0 && o <= prev:
			r.fail("origin %q not sorted after %q", o, prev)
		case s == 0 || s > maxSeq:
			r.fail("sequence %d outside 1..%d", s, uint64(maxSeq))
		}
		prev = o
		vv[o] = s
	}
	r.ctx = ""
	if r.err == nil && r.off != len(b) {
		r.fail("%d trailing bytes", len(b)-r.off)
	}
	if r.err != nil {
		return nil, r.err
	}
	return vv, nil
}
