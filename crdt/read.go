package crdt

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"strings"
)

func (s *Store) readCheck(what string) error {
	if s.closed.Load() {
		return fmt.Errorf("crdt: %s: %w", what, ErrClosed)
	}
	return nil
}

// lwwRow checks one lww state row.
func lwwRow(coll, key string, hlc int64, origin string, deleted int64) error {
	if hlc <= 0 || checkOrigin(origin, "") != nil || (deleted != 0 && deleted != 1) {
		return fmt.Errorf("%w: lww %s/%q: hlc %d, origin %q, deleted %d", ErrCorrupt, coll, key, hlc, origin, deleted)
	}
	return nil
}

// Get returns the live entry of key in the last-writer-wins map coll;
// false when it is absent or deleted.
func (s *Store) Get(ctx context.Context, coll, key string) (Entry, bool, error) {
	if err := s.readCheck("get"); err != nil {
		return Entry{}, false, err
	}
	var (
		hlc, deleted int64
		origin       string
		value        []byte
	)
	err := s.st.lwwGet.QueryRowContext(ctx, coll, key).Scan(&hlc, &origin, &deleted, &value)
	if errors.Is(err, sql.ErrNoRows) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, s.scanErr("get", err)
	}
	if err := lwwRow(coll, key, hlc, origin, deleted); err != nil {
		return Entry{}, false, s.corrupt(fmt.Errorf("crdt: get: %w", err))
	}
	if deleted != 0 {
		return Entry{}, false, nil
	}
	return Entry{Key: key, Value: value, HLC: Timestamp(hlc), Origin: origin}, true, nil
}

// scanErr wraps a query or scan error; conversion errors mean a row holds
// something of the wrong type and are reported as corrupt.
func (s *Store) scanErr(what string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("crdt: %s: %w", what, err)
	}
	if isConversionError(err) {
		return s.corrupt(fmt.Errorf("crdt: %s: %w: %v", what, ErrCorrupt, err))
	}
	return s.corrupt(fmt.Errorf("crdt: %s: %w", what, err))
}

// isConversionError reports whether err is database/sql failing to convert
// a column into the Go type asked for.
func isConversionError(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "converting") || strings.Contains(msg, "unsupported Scan")
}

// List returns the live entries of the last-writer-wins map coll, sorted by
// key.
func (s *Store) List(ctx context.Context, coll string) ([]Entry, error) {
	if err := s.readCheck("list"); err != nil {
		return nil, err
	}
	rows, err := s.st.lwwList.QueryContext(ctx, coll)
	if err != nil {
		return nil, fmt.Errorf("crdt: list: %w", err)
	}
	defer rows.Close()
	var out []Entry
	for rows.Next() {
		var (
			key, origin  string
			hlc, deleted int64
			value        []byte
		)
		if err := rows.Scan(&key, &hlc, &origin, &deleted, &value); err != nil {
			return nil, s.scanErr("list", err)
		}
		if err := lwwRow(coll, key, hlc, origin, deleted); err != nil {
			return nil, s.corrupt(fmt.Errorf("crdt: list: %w", err))
		}
		if deleted == 0 {
			out = append(out, Entry{Key: key, Value: value, HLC: Timestamp(hlc), Origin: origin})
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("crdt: list: %w", err)
	}
	return out, nil
}

// SetContains reports whether elem is in the OR-set coll.
func (s *Store) SetContains(ctx context.Context, coll, elem string) (bool, error) {
	if err := s.readCheck("set contains"); err != nil {
		return false, err
	}
	var ok int64
	if err := s.st.setContains.QueryRowContext(ctx, coll, elem).Scan(&ok); err != nil {
		return false, s.scanErr("set contains", err)
	}
	return ok != 0, nil
}

// SetMembers returns the elements of the OR-set coll, sorted.
func (s *Store) SetMembers(ctx context.Context, coll string) ([]string, error) {
	if err := s.readCheck("set members"); err != nil {
		return nil, err
	}
	rows, err := s.st.setMembers.QueryContext(ctx, coll)
	if err != nil {
		return nil, fmt.Errorf("crdt: set members: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var e string
		if err := rows.Scan(&e); err != nil {
			return nil, s.scanErr("set members", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("crdt: set members: %w", err)
	}
	return out, nil
}

// CounterValue returns the value of the counter key of coll (0 when absent).
func (s *Store) CounterValue(ctx context.Context, coll, key string) (int64, error) {
	if err := s.readCheck("counter value"); err != nil {
		return 0, err
	}
	rows, err := s.st.counterRows.QueryContext(ctx, coll, key)
	if err != nil {
		return 0, fmt.Errorf("crdt: counter value: %w", err)
	}
	defer rows.Close()
	var sum int64
	for rows.Next() {
		var (
			origin string
			p, n   int64
		)
		if err := rows.Scan(&origin, &p, &n); err != nil {
			return 0, s.scanErr("counter value", err)
		}
		if p < 0 || n < 0 {
			return 0, s.corrupt(fmt.Errorf("crdt: counter value: %w: counter %s/%q origin %q: totals %d/%d", ErrCorrupt, coll, key, origin, p, n))
		}
		d := p - n // both non-negative: cannot overflow
		if (d > 0 && sum > math.MaxInt64-d) || (d < 0 && sum < math.MinInt64-d) {
			return 0, fmt.Errorf("crdt: counter value: counter %s/%q overflows int64", coll, key)
		}
		sum += d
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("crdt: counter value: %w", err)
	}
	return sum, nil
}

// MVGet returns the concurrent values of the multi-value register key of
// coll: newest timestamp first, ties by origin and sequence. Empty when the
// register has no value.
func (s *Store) MVGet(ctx context.Context, coll, key string) ([][]byte, error) {
	if err := s.readCheck("mv get"); err != nil {
		return nil, err
	}
	rows, err := s.st.mvGet.QueryContext(ctx, coll, key)
	if err != nil {
		return nil, fmt.Errorf("crdt: mv get: %w", err)
	}
	defer rows.Close()
	var out [][]byte
	for rows.Next() {
		var (
			origin   string
			seq, hlc int64
			value    []byte
		)
		if err := rows.Scan(&origin, &seq, &hlc, &value); err != nil {
			return nil, s.scanErr("mv get", err)
		}
		if seq <= 0 || hlc <= 0 || checkOrigin(origin, "") != nil {
			return nil, s.corrupt(fmt.Errorf("crdt: mv get: %w: register %s/%q: dot %q:%d hlc %d", ErrCorrupt, coll, key, origin, seq, hlc))
		}
		if value == nil {
			value = []byte{}
		}
		out = append(out, value)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("crdt: mv get: %w", err)
	}
	return out, nil
}

// Collections lists the collections this store holds, sorted by name then
// type, with their live key counts.
func (s *Store) Collections(ctx context.Context) ([]CollectionInfo, error) {
	if err := s.readCheck("collections"); err != nil {
		return nil, err
	}
	out, err := listCollections(ctx, s.db)
	if errors.Is(err, ErrCorrupt) {
		return nil, s.corrupt(err)
	}
	return out, err
}

func listCollections(ctx context.Context, db *sql.DB) ([]CollectionInfo, error) {
	rows, err := db.QueryContext(ctx, `SELECT c.name, c.type, CASE c.type
		WHEN 'lww' THEN (SELECT count(*) FROM lww WHERE coll = c.name AND deleted = 0)
		WHEN 'orset' THEN (SELECT count(DISTINCT elem) FROM orset WHERE coll = c.name)
		WHEN 'counter' THEN (SELECT count(DISTINCT key) FROM counter WHERE coll = c.name)
		WHEN 'mvreg' THEN (SELECT count(DISTINCT key) FROM mvreg WHERE coll = c.name)
		ELSE -1 END
		FROM colls c ORDER BY c.name, c.type`)
	if err != nil {
		return nil, fmt.Errorf("crdt: collections: %w", err)
	}
	defer rows.Close()
	var out []CollectionInfo
	for rows.Next() {
		var (
			ci  CollectionInfo
			typ string
		)
		if err := rows.Scan(&ci.Name, &typ, &ci.Keys); err != nil {
			if isConversionError(err) {
				return nil, fmt.Errorf("crdt: collections: %w: %v", ErrCorrupt, err)
			}
			return nil, fmt.Errorf("crdt: collections: %w", err)
		}
		ci.Type = Type(typ)
		if !ci.Type.Valid() {
			return nil, fmt.Errorf("crdt: collections: %w: collection %q has unknown type %q", ErrCorrupt, ci.Name, typ)
		}
		out = append(out, ci)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("crdt: collections: %w", err)
	}
	return out, nil
}
