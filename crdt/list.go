package crdt

import (
	"context"
	"fmt"
	"math"
)

// CounterEntry is one counter of a collection with its value.
type CounterEntry struct {
	Key   string
	Value int64
}

// CounterList returns the counters of coll with their values, sorted by
// key. A counter that was added to is listed even when its value is 0.
func (s *Store) CounterList(ctx context.Context, coll string) ([]CounterEntry, error) {
	if err := s.readCheck("counter list"); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT key, origin, p, n FROM counter WHERE coll = ? ORDER BY key`, coll)
	if err != nil {
		return nil, fmt.Errorf("crdt: counter list: %w", err)
	}
	defer rows.Close()
	var out []CounterEntry
	for rows.Next() {
		var (
			key, origin string
			p, n        int64
		)
		if err := rows.Scan(&key, &origin, &p, &n); err != nil {
			return nil, s.scanErr("counter list", err)
		}
		if p < 0 || n < 0 {
			return nil, s.corrupt(fmt.Errorf("crdt: counter list: %w: counter %s/%q origin %q: totals %d/%d", ErrCorrupt, coll, key, origin, p, n))
		}
		if len(out) == 0 || out[len(out)-1].Key != key {
			out = append(out, CounterEntry{Key: key})
		}
		e := &out[len(out)-1]
		d := p - n // both non-negative: cannot overflow
		if (d > 0 && e.Value > math.MaxInt64-d) || (d < 0 && e.Value < math.MinInt64-d) {
			return nil, fmt.Errorf("crdt: counter list: counter %s/%q overflows int64", coll, key)
		}
		e.Value += d
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("crdt: counter list: %w", err)
	}
	return out, nil
}

// MVEntry is one multi-value register of a collection with its
// concurrent values, in the order MVGet returns them.
type MVEntry struct {
	Key    string
	Values [][]byte
}

// MVList returns the registers of coll that hold a value, sorted by key,
// each with its concurrent values (newest timestamp first, ties by origin
// and sequence, as MVGet).
func (s *Store) MVList(ctx context.Context, coll string) ([]MVEntry, error) {
	if err := s.readCheck("mv list"); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT key, origin, seq, hlc, value FROM mvreg WHERE coll = ? ORDER BY key, hlc DESC, origin, seq`, coll)
	if err != nil {
		return nil, fmt.Errorf("crdt: mv list: %w", err)
	}
	defer rows.Close()
	var out []MVEntry
	for rows.Next() {
		var (
			key, origin string
			seq, hlc    int64
			value       []byte
		)
		if err := rows.Scan(&key, &origin, &seq, &hlc, &value); err != nil {
			return nil, s.scanErr("mv list", err)
		}
		if seq <= 0 || hlc <= 0 || checkOrigin(origin, "") != nil {
			return nil, s.corrupt(fmt.Errorf("crdt: mv list: %w: register %s/%q: dot %q:%d hlc %d", ErrCorrupt, coll, key, origin, seq, hlc))
		}
		if value == nil {
			value = []byte{}
		}
		if len(out) == 0 || out[len(out)-1].Key != key {
			out = append(out, MVEntry{Key: key})
		}
		e := &out[len(out)-1]
		e.Values = append(e.Values, value)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("crdt: mv list: %w", err)
	}
	return out, nil
}
