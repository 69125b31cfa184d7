package crdt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// sampleDeltas returns valid deltas using every kind.
func sampleDeltas() []Delta {
	h := Timestamp(0x0194_0000_0000_0001)
	return []Delta{
		{Origin: "agent-1", From: 0, To: 5, Ops: []Op{
			{Dot: Dot{"agent-1", 1}, HLC: h, Type: TypeLWW, Collection: "devices", Key: "d1", Kind: KindPut, Value: []byte("hello")},
			{Dot: Dot{"agent-1", 2}, HLC: h + 1, Type: TypeLWW, Collection: "devices", Key: "d1", Kind: KindDelete},
			{Dot: Dot{"agent-1", 3}, HLC: h + 2, Type: TypeORSet, Collection: "tags", Key: "red", Kind: KindAdd},
			{Dot: Dot{"agent-1", 5}, HLC: h + 3, Type: TypeORSet, Collection: "tags", Key: "red", Kind: KindRemove,
				Observed: []Dot{{"agent-1", 3}, {"agent-2", 7}}},
		}},
		{Origin: "agent-2", From: 6, To: 9, Ops: []Op{
			{Dot: Dot{"agent-2", 7}, HLC: h + 4, Type: TypeCounter, Collection: "cnt", Key: "x", Kind: KindCounter, P: 300, N: 2},
			{Dot: Dot{"agent-2", 8}, HLC: h + 5, Type: TypeMVReg, Collection: "keys", Key: "k", Kind: KindMVPut, Value: []byte{0, 1, 2},
				Observed: []Dot{{"agent-1", 4}}},
			{Dot: Dot{"agent-2", 9}, HLC: h + 6, Type: TypeMVReg, Collection: "keys", Key: "", Kind: KindMVDelete,
				Observed: []Dot{{"agent-2", 8}}},
		}},
		{Origin: "agent-3", From: 10, To: 20}, // a fully compacted range
	}
}

func TestDeltasRoundTrip(t *testing.T) {
	ds := sampleDeltas()
	b, err := EncodeDeltas(ds)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeDeltas(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, ds) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, ds)
	}
	// Decoded values do not alias the input.
	for i := range b {
		b[i] = 0
	}
	if string(got[0].Ops[0].Value) != "hello" {
		t.Fatal("decoded value aliases the input buffer")
	}
	// Empty list.
	b, err = EncodeDeltas(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeDeltas(b); err != nil || len(got) != 0 {
		t.Fatalf("empty: %v %v", got, err)
	}
}

func TestDecodeDeltasRejects(t *testing.T) {
	valid, err := EncodeDeltas(sampleDeltas())
	if err != nil {
		t.Fatal(err)
	}
	// Every truncation fails cleanly.
	for i := 0; i < len(valid); i++ {
		if _, err := DecodeDeltas(valid[:i]); !errors.Is(err, ErrInvalidDelta) {
			t.Fatalf("truncated at %d: err = %v", i, err)
		}
	}
	cases := map[string]struct {
		b    []byte
		want string
	}{
		"unknown format": {append([]byte{9}, valid[1:]...), "unknown format"},
		"trailing":       {append(append([]byte{}, valid...), 0), "trailing"},
		"oversized":      {make([]byte, MaxDeltaBytes+1), "exceed"},
		"huge count":     {binary.AppendUvarint([]byte{1}, 1<<40), "origin count"},
		"bad origin idx": {[]byte{1, 1, 1, 'a', 1, 5, 0, 1, 0}, "origin table"},
		"empty range":    {[]byte{1, 1, 1, 'a', 1, 0, 0, 0, 0}, "range"},
		"bad kind": {[]byte{1, 1, 1, 'a', 1, 0, 0, 1, 1,
			1, 1, 99, 1, 'c', 0}, "unknown kind"},
		"op outside range": {[]byte{1, 1, 1, 'a', 1, 0, 0, 1, 1,
			2, 1, byte(KindAdd), 1, 'c', 0}, "leaves the range"},
		"zero hlc": {[]byte{1, 1, 1, 'a', 1, 0, 0, 1, 1,
			1, 0, byte(KindAdd), 1, 'c', 0}, "timestamp"},
		"delete op": {[]byte{1, 1, 1, 'a', 1, 0, 0, 1, 1,
			1, 1, byte(KindDelete), 1, 'c', 0}, ""}, // a valid delete
		"unsorted observed": {[]byte{1, 1, 1, 'a', 1, 0, 0, 3, 1,
			3, 1, byte(KindRemove), 1, 'c', 0, 2, 0, 2, 0, 1}, "sorted"},
		"duplicate origin": {[]byte{1, 2, 1, 'a', 1, 'a', 0}, "listed twice"},
	}
	for name, c := range cases {
		_, err := DecodeDeltas(c.b)
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: unexpected error %v", name, err)
			}
			continue
		}
		if !errors.Is(err, ErrInvalidDelta) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", name, err, c.want)
		}
	}
}

func TestEncodeDeltasRejectsInvalid(t *testing.T) {
	bad := [][]Delta{
		{{Origin: "", From: 0, To: 1}},
		{{Origin: "a", From: 1, To: 1}},
		{{Origin: "a", From: 0, To: 1, Ops: []Op{{Dot: Dot{"b", 1}, HLC: 1, Type: TypeLWW, Collection: "c", Kind: KindPut}}}},
		{{Origin: "a", From: 0, To: 1, Ops: []Op{{Dot: Dot{"a", 1}, HLC: 1, Type: TypeORSet, Collection: "c", Kind: KindPut}}}},
		{{Origin: "a", From: 0, To: 1, Ops: []Op{{Dot: Dot{"a", 1}, HLC: 1, Type: TypeLWW, Collection: "", Kind: KindPut}}}},
		{{Origin: "a", From: 0, To: 1, Ops: []Op{{Dot: Dot{"a", 1}, HLC: 1, Type: TypeLWW, Collection: "c", Kind: KindPut, Value: make([]byte, MaxValueLen+1)}}}},
		{{Origin: "a", From: 0, To: 1, Ops: []Op{{Dot: Dot{"a", 1}, HLC: 1, Type: TypeCounter, Collection: "c", Kind: KindCounter, P: 1 << 63}}}},
		{{Origin: "a", From: 0, To: 1, Ops: []Op{{Dot: Dot{"a", 1}, HLC: 1, Type: TypeORSet, Collection: "c", Kind: KindRemove, Observed: []Dot{{"a", 1}}}}}},
		{{Origin: "a", From: 0, To: 1, Ops: []Op{{Dot: Dot{"a", 1}, HLC: 1, Type: TypeLWW, Collection: "c", Kind: KindPut, Observed: []Dot{{"b", 1}}}}}},
		{{Origin: strings.Repeat("x", MaxOriginLen+1), From: 0, To: 1}},
	}
	for i, ds := range bad {
		if _, err := EncodeDeltas(ds); !errors.Is(err, ErrInvalidDelta) {
			t.Errorf("case %d: err = %v", i, err)
		}
	}
}

func TestVersionVectorCodec(t *testing.T) {
	vv := VersionVector{"b": 3, "a": 1 << 40, "zero": 0}
	b := EncodeVersionVector(vv)
	got, err := DecodeVersionVector(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, VersionVector{"a": 1 << 40, "b": 3}) {
		t.Fatalf("got %v", got)
	}
	if !bytes.Equal(EncodeVersionVector(got), b) {
		t.Fatal("encoding not canonical")
	}
	for i := 0; i < len(b); i++ {
		if _, err := DecodeVersionVector(b[:i]); !errors.Is(err, ErrInvalidVersionVector) {
			t.Fatalf("truncated at %d: %v", i, err)
		}
	}
	bad := map[string][]byte{
		"unsorted":  {1, 2, 1, 'b', 1, 1, 'a', 1},
		"duplicate": {1, 2, 1, 'a', 1, 1, 'a', 2},
		"zero seq":  {1, 1, 1, 'a', 0},
		"empty":     {1, 1, 0, 1},
		"trailing":  {1, 0, 0},
		"format":    {2, 0},
		"too many":  binary.AppendUvarint([]byte{1}, MaxVersionVectorEntries+1),
	}
	for name, b := range bad {
		if _, err := DecodeVersionVector(b); !errors.Is(err, ErrInvalidVersionVector) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func TestVersionVectorOps(t *testing.T) {
	vv := VersionVector{"a": 3}
	if !vv.Covers(Dot{"a", 3}) || vv.Covers(Dot{"a", 4}) || vv.Covers(Dot{"b", 1}) {
		t.Fatal("Covers")
	}
	c := vv.Clone()
	c["a"] = 9
	if vv["a"] != 3 {
		t.Fatal("Clone aliases")
	}
	vv.Merge(VersionVector{"a": 2, "b": 5})
	if !reflect.DeepEqual(vv, VersionVector{"a": 3, "b": 5}) {
		t.Fatalf("Merge: %v", vv)
	}
	// Advance chains ranges in any order and ignores gapped ones.
	vv = VersionVector{"a": 2}
	vv.Advance([]Delta{{Origin: "a", From: 4, To: 6}, {Origin: "a", From: 2, To: 4}, {Origin: "b", From: 1, To: 3}, {Origin: "c", From: 0, To: 2}})
	if !reflect.DeepEqual(vv, VersionVector{"a": 6, "c": 2}) {
		t.Fatalf("Advance: %v", vv)
	}
	m := MinVersionVector(VersionVector{"a": 3, "b": 2}, VersionVector{"a": 5, "c": 1}, VersionVector{"a": 4, "b": 9})
	if !reflect.DeepEqual(m, VersionVector{"a": 3}) {
		t.Fatalf("Min: %v", m)
	}
	if len(MinVersionVector()) != 0 {
		t.Fatal("Min of nothing")
	}
}

func FuzzDecodeDeltas(f *testing.F) {
	valid, err := EncodeDeltas(sampleDeltas())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	for _, ds := range [][]Delta{sampleDeltas()[:1], sampleDeltas()[1:2], sampleDeltas()[2:], nil} {
		b, err := EncodeDeltas(ds)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add([]byte{2, 0, 0})
	f.Add(valid[:len(valid)/2])
	f.Add(append(append([]byte{}, valid...), 0))
	f.Add([]byte{1, 1, 1, 'a', 1, 0, 0, 1, 1, 1, 1, 99, 1, 'c', 0})
	f.Add(binary.AppendUvarint([]byte{1}, 1<<62))
	f.Fuzz(func(t *testing.T, b []byte) {
		ds, err := DecodeDeltas(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidDelta) {
				t.Fatalf("error does not wrap ErrInvalidDelta: %v", err)
			}
			return
		}
		for i := range ds {
			if err := ds[i].Validate(); err != nil {
				t.Fatalf("decoded delta %d invalid: %v", i, err)
			}
		}
		again, err := EncodeDeltas(ds)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		ds2, err := DecodeDeltas(again)
		if err != nil {
			t.Fatalf("decode re-encoded: %v", err)
		}
		if !reflect.DeepEqual(ds, ds2) {
			t.Fatalf("round trip differs:\n%+v\n%+v", ds, ds2)
		}
	})
}

func FuzzDecodeVersionVector(f *testing.F) {
	f.Add(EncodeVersionVector(VersionVector{"a": 1, "b": 1 << 40}))
	f.Add(EncodeVersionVector(VersionVector{}))
	f.Add([]byte{})
	f.Add([]byte{1, 2, 1, 'b', 1, 1, 'a', 1})
	f.Add([]byte{1, 1, 1, 'a', 0})
	f.Add([]byte{1, 1, 0x80})
	f.Add(binary.AppendUvarint([]byte{1}, 1<<40))
	f.Fuzz(func(t *testing.T, b []byte) {
		vv, err := DecodeVersionVector(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidVersionVector) {
				t.Fatalf("error does not wrap ErrInvalidVersionVector: %v", err)
			}
			return
		}
		if !bytes.Equal(EncodeVersionVector(vv), b) {
			t.Fatalf("accepted a non-canonical encoding %x", b)
		}
	})
}
