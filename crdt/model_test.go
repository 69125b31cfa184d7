package crdt

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
)

// refState is the reference model of the four collection types: their
// textbook semantics as a function of a set of ops, with no SQL, no version
// vectors, no compaction and no delivery order. The model-based test keeps,
// for every replica, the set of ops it has applied, and checks that the
// store's state is refState of that set (and, once everything is
// delivered, refState of every op made).
//
//   - LWW map: per (collection, key), the put or delete with the highest
//     (HLC, origin, seq) wins; the key is live iff the winner is a put.
//   - OR-set: a tag is the dot of an add; it is live iff no remove in the set
//     observed it; an element is present iff it has a live tag.
//   - PN-counter: per (collection, key, origin), the origin's latest op
//     (highest seq) holds its cumulative increments P and decrements N; the
//     value is the sum of P-N over origins.
//   - MV register: the writes not replaced by a write or delete in the set
//     (an op replaces the dots it observed, which its origin computes from
//     its own model state, see observedAt). Under causal delivery this is
//     "the writes no other op causally follows", the textbook definition.
//
// Ops of another type on the same collection name live beside each other,
// per type, as in the store.
type refState struct {
	lww      map[refKey]*Op       // winning put or delete
	tags     map[refKey][]Dot     // live add tags, sorted
	counters map[refOriginKey]*Op // latest op per origin
	mv       map[refKey][]*Op     // live writes, sorted by dot
	colls    map[string]typeSet   // types each collection holds ops of

	setRemoved map[Dot]bool // dots observed by OR-set removes
	mvRemoved  map[Dot]bool // dots observed by MV puts and deletes
}

type refKey struct{ coll, key string }

type refOriginKey struct{ coll, key, origin string }

// lwwBeats reports whether a wins over b in a last-writer-wins map.
func lwwBeats(a, b *Op) bool {
	if a.HLC != b.HLC {
		return a.HLC > b.HLC
	}
	if a.Dot.Origin != b.Dot.Origin {
		return a.Dot.Origin > b.Dot.Origin
	}
	return a.Dot.Seq > b.Dot.Seq
}

// evalOps computes the state of a set of ops (each dot once; the order of
// ops does not matter).
func evalOps(ops []*Op) *refState {
	st := &refState{
		lww: map[refKey]*Op{}, tags: map[refKey][]Dot{}, counters: map[refOriginKey]*Op{},
		mv: map[refKey][]*Op{}, colls: map[string]typeSet{},
		setRemoved: map[Dot]bool{}, mvRemoved: map[Dot]bool{},
	}
	for _, op := range ops {
		switch op.Kind {
		case KindRemove:
			for _, d := range op.Observed {
				st.setRemoved[d] = true
			}
		case KindMVPut, KindMVDelete:
			for _, d := range op.Observed {
				st.mvRemoved[d] = true
			}
		}
	}
	for _, op := range ops {
		st.colls[op.Collection] |= typeBit(op.Type)
		k := refKey{op.Collection, op.Key}
		switch op.Kind {
		case KindPut, KindDelete:
			if cur := st.lww[k]; cur == nil || lwwBeats(op, cur) {
				st.lww[k] = op
			}
		case KindAdd:
			if !st.setRemoved[op.Dot] {
				st.tags[k] = append(st.tags[k], op.Dot)
			}
		case KindCounter:
			ok := refOriginKey{op.Collection, op.Key, op.Dot.Origin}
			if cur := st.counters[ok]; cur == nil || op.Dot.Seq > cur.Dot.Seq {
				st.counters[ok] = op
			}
		case KindMVPut:
			if !st.mvRemoved[op.Dot] {
				st.mv[k] = append(st.mv[k], op)
			}
		}
	}
	for k := range st.tags {
		sort.Slice(st.tags[k], func(i, j int) bool { return dotLess(st.tags[k][i], st.tags[k][j]) })
	}
	for k := range st.mv {
		sort.Slice(st.mv[k], func(i, j int) bool { return dotLess(st.mv[k][i].Dot, st.mv[k][j].Dot) })
	}
	return st
}

// observedAt returns the dots a remove (OR-set) or an MV put or delete made
// in state st observes: the live tags of the element, or the live writes of
// the register.
func (st *refState) observedAt(kind Kind, coll, key string) []Dot {
	k := refKey{coll, key}
	switch kind {
	case KindRemove:
		return append([]Dot(nil), st.tags[k]...)
	case KindMVPut, KindMVDelete:
		var out []Dot
		for _, op := range st.mv[k] {
			out = append(out, op.Dot)
		}
		return out
	}
	return nil
}

// counterTotals returns origin's cumulative totals of a counter in st.
func (st *refState) counterTotals(coll, key, origin string) (p, n uint64) {
	if op := st.counters[refOriginKey{coll, key, origin}]; op != nil {
		return op.P, op.N
	}
	return 0, 0
}

// superseded reports whether op, applied, is superseded in st: what
// Compact may drop at any time (rule 1 of its doc).
func (st *refState) superseded(op *Op) bool {
	switch op.Kind {
	case KindPut, KindDelete:
		return st.lww[refKey{op.Collection, op.Key}].Dot != op.Dot
	case KindCounter:
		return st.counters[refOriginKey{op.Collection, op.Key, op.Dot.Origin}].Dot != op.Dot
	case KindAdd:
		return st.setRemoved[op.Dot]
	case KindMVPut:
		return len(op.Observed) == 0 && st.mvRemoved[op.Dot]
	}
	return false
}

// expirable reports whether op is a removal Compact may drop once it is
// stable and older than the tombstone TTL (rule 2 of its doc).
func (st *refState) expirable(op *Op) bool {
	switch op.Kind {
	case KindDelete, KindRemove, KindMVDelete:
		return true
	case KindMVPut:
		return st.mvRemoved[op.Dot]
	}
	return false
}

// walk calls part for each of StateHash's parts in order and row for each
// of its rows of the collections starting with prefix: live LWW entries,
// live OR-set tags, per-origin counter totals, live MV writes, each sorted
// as StateHash sorts them.
func (st *refState) walk(prefix string, part func(name string), row func(fields ...any)) {
	part("lww")
	for _, k := range sortedKeys(st.lww, prefix) {
		if op := st.lww[k]; op.Kind == KindPut {
			row(k.coll, k.key, uint64(op.HLC), op.Dot.Origin, op.Value)
		}
	}
	part("orset")
	for _, k := range sortedKeys(st.tags, prefix) {
		for _, d := range st.tags[k] {
			row(k.coll, k.key, d.Origin, d.Seq)
		}
	}
	part("counter")
	var cks []refOriginKey
	for k := range st.counters {
		if strings.HasPrefix(k.coll, prefix) {
			cks = append(cks, k)
		}
	}
	sort.Slice(cks, func(i, j int) bool {
		a, b := cks[i], cks[j]
		if a.coll != b.coll {
			return a.coll < b.coll
		}
		if a.key != b.key {
			return a.key < b.key
		}
		return a.origin < b.origin
	})
	for _, k := range cks {
		op := st.counters[k]
		row(k.coll, k.key, k.origin, op.P, op.N)
	}
	part("mvreg")
	for _, k := range sortedKeys(st.mv, prefix) {
		for _, op := range st.mv[k] {
			row(k.coll, k.key, op.Dot.Origin, op.Dot.Seq, uint64(op.HLC), op.Value)
		}
	}
}

func sortedKeys[V any](m map[refKey]V, prefix string) []refKey {
	var out []refKey
	for k := range m {
		if strings.HasPrefix(k.coll, prefix) {
			out = append(out, k)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].coll != out[j].coll {
			return out[i].coll < out[j].coll
		}
		return out[i].key < out[j].key
	})
	return out
}

// hash returns what StateHashPrefix(prefix) of a store holding st returns:
// the same canonical encoding (see hash.go), computed from the model.
func (st *refState) hash(prefix string) string {
	h := sha256.New()
	st.walk(prefix, func(name string) { writeField(h, []byte(name)) }, func(fields ...any) {
		h.Write([]byte{0xff})
		for _, f := range fields {
			switch v := f.(type) {
			case string:
				writeField(h, []byte(v))
			case []byte:
				writeField(h, v)
			case uint64:
				h.Write(binary.BigEndian.AppendUint64(nil, v))
			}
		}
	})
	return hex.EncodeToString(h.Sum(nil))
}

// rows renders the rows hash covers, one line each, the way storeRows
// renders a store's: for failure messages.
func (st *refState) rows(prefix string) []string {
	var out []string
	name := ""
	st.walk(prefix, func(n string) { name = n }, func(f ...any) {
		switch name {
		case "lww":
			out = append(out, fmt.Sprintf("lww %q %q hlc=%d origin=%s value=%q", f...))
		case "orset":
			out = append(out, fmt.Sprintf("orset %q %q tag=%s:%d", f...))
		case "counter":
			out = append(out, fmt.Sprintf("counter %q %q origin=%s p=%d n=%d", f...))
		case "mvreg":
			out = append(out, fmt.Sprintf("mvreg %q %q dot=%s:%d hlc=%d value=%q", f...))
		}
	})
	return out
}

// collections returns what Collections reports for the collections
// starting with prefix.
func (st *refState) collections(prefix string) []CollectionInfo {
	var out []CollectionInfo
	for name, ts := range st.colls {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		for _, t := range []Type{TypeLWW, TypeORSet, TypeCounter, TypeMVReg} {
			if ts&typeBit(t) != 0 {
				out = append(out, CollectionInfo{Name: name, Type: t, Keys: st.liveKeys(name, t)})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Type < out[j].Type
	})
	return out
}

func (st *refState) liveKeys(coll string, t Type) int {
	n := 0
	switch t {
	case TypeLWW:
		for k, op := range st.lww {
			if k.coll == coll && op.Kind == KindPut {
				n++
			}
		}
	case TypeORSet:
		for k, tags := range st.tags {
			if k.coll == coll && len(tags) > 0 {
				n++
			}
		}
	case TypeCounter:
		keys := map[string]bool{}
		for k := range st.counters {
			if k.coll == coll {
				keys[k.key] = true
			}
		}
		n = len(keys)
	case TypeMVReg:
		for k, ws := range st.mv {
			if k.coll == coll && len(ws) > 0 {
				n++
			}
		}
	}
	return n
}

// sameOp reports whether two ops carry the same change (an empty value and
// no value are the same).
func sameOp(a, b *Op) bool {
	if a.Dot != b.Dot || a.HLC != b.HLC || a.Type != b.Type || a.Collection != b.Collection ||
		a.Key != b.Key || a.Kind != b.Kind || !bytes.Equal(a.Value, b.Value) || a.P != b.P || a.N != b.N ||
		len(a.Observed) != len(b.Observed) {
		return false
	}
	for i := range a.Observed {
		if a.Observed[i] != b.Observed[i] {
			return false
		}
	}
	return true
}
