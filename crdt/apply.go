package crdt

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
)

// encodeDots encodes observed dots for the op log (nil when empty).
func encodeDots(ds []Dot) []byte {
	if len(ds) == 0 {
		return nil
	}
	b := binary.AppendUvarint(nil, uint64(len(ds)))
	for _, d := range ds {
		b = appendString(b, d.Origin)
		b = binary.AppendUvarint(b, d.Seq)
	}
	return b
}

// decodeDots decodes encodeDots' output read back from the op log.
func decodeDots(b []byte) ([]Dot, error) {
	if len(b) == 0 {
		return nil, nil
	}
	r := &decoder{b: b}
	n := r.count("observed count", MaxObserved, 2)
	out := make([]Dot, 0, n)
	for i := 0; i < n && r.err == nil; i++ {
		o := string(r.bytes("origin", MaxOriginLen))
		out = append(out, Dot{Origin: o, Seq: r.uvarint("sequence")})
	}
	if r.err == nil && r.off != len(b) {
		r.fail("%d trailing bytes", len(b)-r.off)
	}
	if r.err != nil {
		return nil, r.err
	}
	return out, nil
}

// wtx is a write transaction with the store's prepared statements bound to
// it lazily.
type wtx struct {
	ctx   context.Context
	tx    *sql.Tx
	bound map[*sql.Stmt]*sql.Stmt
}

func (w *wtx) stmt(st *sql.Stmt) *sql.Stmt {
	if b, ok := w.bound[st]; ok {
		return b
	}
	b := w.tx.StmtContext(w.ctx, st)
	if w.bound == nil {
		w.bound = make(map[*sql.Stmt]*sql.Stmt, 8)
	}
	w.bound[st] = b
	return b
}

func (w *wtx) exec(st *sql.Stmt, args ...any) (sql.Result, error) {
	return w.stmt(st).ExecContext(w.ctx, args...)
}

// insertOp writes op to the op log. With ignore, an op already present is
// left alone and reported as not inserted.
func (s *Store) insertOp(w *wtx, op *Op, ignore bool) (bool, error) {
	st := s.st.insOp
	if ignore {
		st = s.st.insOpIgnore
	}
	var value any
	if op.Kind == KindPut || op.Kind == KindMVPut {
		value = nonNil(op.Value)
	}
	res, err := w.exec(st, op.Dot.Origin, int64(op.Dot.Seq), int64(op.HLC), string(op.Type),
		op.Collection, op.Key, int64(op.Kind), value, int64(op.P), int64(op.N), encodeDots(op.Observed))
	if err != nil {
		return false, fmt.Errorf("insert op %s:%d: %w", op.Dot.Origin, op.Dot.Seq, err)
	}
	if !ignore {
		return true, nil
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("insert op %s:%d: %w", op.Dot.Origin, op.Dot.Seq, err)
	}
	return n > 0, nil
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// applyOp applies op to the state tables. vv is the version vector as of
// this point of the transaction: a removed dot it does not cover may still
// arrive, so it is recorded in the removed table to keep it out.
func (s *Store) applyOp(w *wtx, op *Op, vv VersionVector) error {
	origin, seq := op.Dot.Origin, int64(op.Dot.Seq)
	var err error
	switch op.Kind {
	case KindPut:
		_, err = w.exec(s.st.lwwUpsert, op.Collection, op.Key, int64(op.HLC), origin, seq, 0, nonNil(op.Value))
	case KindDelete:
		_, err = w.exec(s.st.lwwUpsert, op.Collection, op.Key, int64(op.HLC), origin, seq, 1, nil)
	case KindAdd:
		_, err = w.exec(s.st.orsetAdd, origin, seq, op.Collection, op.Key)
	case KindRemove:
		err = s.removeDots(w, s.st.orsetDel, TypeORSet, op.Observed, vv)
	case KindCounter:
		_, err = w.exec(s.st.counterUpsert, op.Collection, op.Key, origin, int64(op.P), int64(op.N))
	case KindMVPut:
		if err = s.removeDots(w, s.st.mvDel, TypeMVReg, op.Observed, vv); err == nil {
			_, err = w.exec(s.st.mvIns, origin, seq, op.Collection, op.Key, int64(op.HLC), nonNil(op.Value))
		}
	case KindMVDelete:
		err = s.removeDots(w, s.st.mvDel, TypeMVReg, op.Observed, vv)
	default:
		err = fmt.Errorf("unknown kind %d", uint8(op.Kind))
	}
	if err != nil {
		return fmt.Errorf("apply op %s:%d (%s %s/%q): %w", origin, seq, op.Kind, op.Collection, op.Key, err)
	}
	return nil
}

func (s *Store) removeDots(w *wtx, del *sql.Stmt, t Type, dots []Dot, vv VersionVector) error {
	for _, d := range dots {
		if _, err := w.exec(del, d.Origin, int64(d.Seq)); err != nil {
			return err
		}
		if !vv.Covers(d) {
			if _, err := w.exec(s.st.insRemoved, string(t), d.Origin, int64(d.Seq)); err != nil {
				return err
			}
		}
	}
	return nil
}

// noteCollection records (coll, t) in the colls table unless known. The
// caller adds it to s.colls after the transaction commits.
func (s *Store) noteCollection(w *wtx, coll string, t Type, pending map[string]typeSet) error {
	bit := typeBit(t)
	if s.colls[coll]&bit != 0 || pending[coll]&bit != 0 {
		return nil
	}
	if _, err := w.exec(s.st.insColl, coll, string(t)); err != nil {
		return fmt.Errorf("record collection %q: %w", coll, err)
	}
	pending[coll] |= bit
	return nil
}

func (s *Store) commitCollections(pending map[string]typeSet) {
	for c, b := range pending {
		s.colls[c] |= b
	}
}

// queryDots returns the dots selected by st (origin, seq rows) in the
// transaction.
func queryDots(w *wtx, st *sql.Stmt, args ...any) ([]Dot, error) {
	rows, err := w.stmt(st).QueryContext(w.ctx, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Dot
	for rows.Next() {
		var (
			o string
			n int64
		)
		if err := rows.Scan(&o, &n); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		d := Dot{Origin: o, Seq: uint64(n)}
		if n <= 0 || checkDot(d, "dot") != nil {
			return nil, fmt.Errorf("%w: dot %q:%d", ErrCorrupt, o, n)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}
