package crdt

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
)

// local runs one local op: it checks the collection's type, assigns the
// next sequence number and a fresh timestamp, lets fill complete the op
// (reading current state inside the transaction), then writes the op log
// row, the state and the replica's meta row in one durable transaction.
func (s *Store) local(ctx context.Context, what string, kind Kind, coll, key string, value []byte,
	fill func(w *wtx, op *Op) error) (Delta, error) {
	t := kind.Type()
	if err := checkName(coll, key); err != nil {
		return Delta{}, fmt.Errorf("crdt: %s: %w: %v", what, ErrInvalidDelta, err)
	}
	if len(value) > MaxValueLen {
		return Delta{}, fmt.Errorf("crdt: %s: %w: value length %d exceeds %d", what, ErrInvalidDelta, len(value), MaxValueLen)
	}
	if len(value) == 0 {
		value = nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return Delta{}, ErrClosed
	}
	if err := s.holdErr(what); err != nil {
		return Delta{}, err
	}
	if have := s.colls[coll]; have != 0 && have&typeBit(t) == 0 {
		return Delta{}, fmt.Errorf("%w: %s on %s collection %q, which exists here as %s",
			ErrTypeMismatch, what, t, coll, typesOf(have))
	}
	op := Op{
		Dot:        Dot{Origin: s.id, Seq: s.seq + 1},
		Type:       t,
		Collection: coll,
		Key:        key,
		Kind:       kind,
		Value:      value,
	}
	tx, err := s.wc.BeginTx(ctx, nil)
	if err != nil {
		return Delta{}, unavailable(fmt.Errorf("crdt: %s: begin: %w", what, err))
	}
	w := &wtx{ctx: ctx, tx: tx}
	delta, err := s.localTx(w, what, &op, fill)
	if err != nil {
		tx.Rollback()
		return Delta{}, s.corrupt(err)
	}
	return delta, nil
}

func (s *Store) localTx(w *wtx, what string, op *Op, fill func(w *wtx, op *Op) error) (Delta, error) {
	if fill != nil {
		if err := fill(w, op); err != nil {
			return Delta{}, fmt.Errorf("crdt: %s: %w", what, err)
		}
	}
	op.HLC = s.clock.Now()
	if err := op.validate(); err != nil {
		return Delta{}, fmt.Errorf("crdt: %s: %w: %v", what, ErrInvalidDelta, err)
	}
	if _, err := s.insertOp(w, op, false); err != nil {
		return Delta{}, fmt.Errorf("crdt: %s: %w", what, err)
	}
	if err := s.applyOp(w, op, s.vv); err != nil {
		return Delta{}, fmt.Errorf("crdt: %s: %w", what, err)
	}
	var pending map[string]typeSet
	if s.colls[op.Collection]&typeBit(op.Type) == 0 {
		pending = map[string]typeSet{}
		if err := s.noteCollection(w, op.Collection, op.Type, pending); err != nil {
			return Delta{}, fmt.Errorf("crdt: %s: %w", what, err)
		}
	}
	if _, err := w.exec(s.st.setMeta, int64(op.Dot.Seq), int64(s.clock.Last())); err != nil {
		return Delta{}, fmt.Errorf("crdt: %s: update meta: %w", what, err)
	}
	if err := w.tx.Commit(); err != nil {
		return Delta{}, fmt.Errorf("crdt: %s: commit: %w", what, err)
	}
	s.seq = op.Dot.Seq
	s.vv[s.id] = s.seq
	s.commitCollections(pending)
	s.metrics.localByType[op.Type].Inc()
	return Delta{Origin: s.id, From: op.Dot.Seq - 1, To: op.Dot.Seq, Ops: []Op{*op}}, nil
}

func typesOf(ts typeSet) string {
	out := ""
	for _, t := range []Type{TypeLWW, TypeORSet, TypeCounter, TypeMVReg} {
		if ts&typeBit(t) != 0 {
			if out != "" {
				out += "+"
			}
			out += string(t)
		}
	}
	return out
}

// Put sets key in the last-writer-wins map coll to value.
func (s *Store) Put(ctx context.Context, coll, key string, value []byte) (Delta, error) {
	return s.local(ctx, "put", KindPut, coll, key, value, nil)
}

// Delete deletes key from the last-writer-wins map coll. The deletion is a
// timestamped write like any other (a tombstone), so it wins against older
// writes and loses against newer ones.
func (s *Store) Delete(ctx context.Context, coll, key string) (Delta, error) {
	return s.local(ctx, "delete", KindDelete, coll, key, nil, nil)
}

// SetAdd adds elem to the OR-set coll, tagged with the new op's dot.
func (s *Store) SetAdd(ctx context.Context, coll, elem string) (Delta, error) {
	return s.local(ctx, "set add", KindAdd, coll, elem, nil, nil)
}

// SetRemove removes elem from the OR-set coll by removing the tags this
// replica has observed; adds it has not observed (concurrent ones) survive.
func (s *Store) SetRemove(ctx context.Context, coll, elem string) (Delta, error) {
	return s.local(ctx, "set remove", KindRemove, coll, elem, nil, func(w *wtx, op *Op) error {
		dots, err := queryDots(w, s.st.orsetTags, coll, elem)
		if err != nil {
			return fmt.Errorf("read tags: %w", err)
		}
		op.Observed = dots
		return nil
	})
}

// CounterAdd adds n (possibly negative) to the counter key of coll. The op
// carries this replica's new cumulative increments and decrements for key.
func (s *Store) CounterAdd(ctx context.Context, coll, key string, n int64) (Delta, error) {
	return s.local(ctx, "counter add", KindCounter, coll, key, nil, func(w *wtx, op *Op) error {
		var p, m int64
		err := w.stmt(s.st.counterOwn).QueryRowContext(w.ctx, coll, key, s.id).Scan(&p, &m)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("read counter: %w", err)
		}
		if p < 0 || m < 0 {
			return fmt.Errorf("%w: counter %s/%q: totals %d/%d", ErrCorrupt, coll, key, p, m)
		}
		if n >= 0 {
			if p > math.MaxInt64-n {
				return fmt.Errorf("%w: counter %s/%q increments overflow", ErrInvalidDelta, coll, key)
			}
			p += n
		} else {
			if n == math.MinInt64 || m > math.MaxInt64+n {
				return fmt.Errorf("%w: counter %s/%q decrements overflow", ErrInvalidDelta, coll, key)
			}
			m -= n
		}
		op.P, op.N = uint64(p), uint64(m)
		return nil
	})
}

// MVPut writes value to the multi-value register key of coll, replacing the
// values this replica has observed; concurrent writes elsewhere survive
// beside it until a write that observed them replaces them.
func (s *Store) MVPut(ctx context.Context, coll, key string, value []byte) (Delta, error) {
	return s.local(ctx, "mv put", KindMVPut, coll, key, value, func(w *wtx, op *Op) error {
		dots, err := queryDots(w, s.st.mvDots, coll, key)
		if err != nil {
			return fmt.Errorf("read register: %w", err)
		}
		op.Observed = dots
		return nil
	})
}

// MVDelete removes the values of the multi-value register key of coll that
// this replica has observed.
func (s *Store) MVDelete(ctx context.Context, coll, key string) (Delta, error) {
	return s.local(ctx, "mv delete", KindMVDelete, coll, key, nil, func(w *wtx, op *Op) error {
		dots, err := queryDots(w, s.st.mvDots, coll, key)
		if err != nil {
			return fmt.Errorf("read register: %w", err)
		}
		op.Observed = dots
		return nil
	})
}
