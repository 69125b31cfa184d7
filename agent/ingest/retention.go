package ingest

import (
	"context"
	"database/sql"
	"fmt"
)

// RetentionResult reports what one retention pass deleted.
type RetentionResult struct {
	RawByAge    int64 // raw readings (numeric and text) older than RawMaxAge
	RawBySize   int64 // oldest raw readings deleted to bring the database under MaxBytes
	Rollups     int64 // rollups older than their max age
	DeadLetters int64 // dead letters older than DeadLetterMaxAge
	UsedBytes   int64 // database used size afterwards
}

// retentionChunk is how many rows one retention transaction deletes at
// most, so commits interleave with a long clean-up.
const retentionChunk = 5000

// Retain applies the retention policy once: raw readings by age, then
// the oldest raw readings while the database is over MaxBytes, then
// rollups and dead letters by age. Every raw reading deleted is already
// part of the rollups. It works in small transactions, so ingestion
// proceeds meanwhile.
func (s *Store) Retain(ctx context.Context) (RetentionResult, error) {
	var res RetentionResult
	now := s.cfg.Clock.Now().UnixMicro()
	ids, err := s.seriesIDs(ctx)
	if err != nil {
		return res, err
	}
	cutoff := now - s.cfg.Retention.RawMaxAge.Microseconds()
	for _, id := range ids {
		for _, tbl := range []string{"readings", "text_readings"} {
			n, err := s.deleteBefore(ctx, tbl, id, cutoff, metaRetainedAge)
			res.RawByAge += n
			if err != nil {
				return res, err
			}
		}
	}
	// Size: delete the oldest raw readings, a time slice at a time.
	for {
		used, err := s.lockedUsedBytes(ctx)
		if err != nil {
			return res, err
		}
		res.UsedBytes = used
		if used <= s.cfg.Retention.MaxBytes {
			break
		}
		oldest, ok, err := s.oldestRaw(ctx, ids)
		if err != nil {
			return res, err
		}
		if !ok {
			break // no raw readings left; Pressure reports the rest
		}
		step := max(minuteUS, (now-oldest)/32)
		var deleted int64
		for _, id := range ids {
			for _, tbl := range []string{"readings", "text_readings"} {
				n, err := s.deleteBefore(ctx, tbl, id, oldest+step, metaRetainedSize)
				deleted += n
				if err != nil {
					res.RawBySize += deleted
					return res, err
				}
			}
		}
		res.RawBySize += deleted
		if deleted == 0 {
			break
		}
	}
	// Rollups and dead letters by age.
	for _, r := range []struct {
		res    int64
		maxAge int64
	}{{60, s.cfg.Retention.MinuteMaxAge.Microseconds()}, {3600, s.cfg.Retention.HourMaxAge.Microseconds()}} {
		n, err := s.exec(ctx, nil, `DELETE FROM rollups WHERE res = ? AND bucket < ?`, r.res, now-r.maxAge)
		res.Rollups += n
		if err != nil {
			return res, err
		}
	}
	n, err := s.exec(ctx, map[string]int64{metaDeadEvicted: 1, metaDeadLetters: -1},
		`DELETE FROM dead_letters WHERE at < ?`, now-s.cfg.Retention.DeadLetterMaxAge.Microseconds())
	res.DeadLetters = n
	if err != nil {
		return res, err
	}
	used, err := s.lockedUsedBytes(ctx)
	if err != nil {
		return res, err
	}
	res.UsedBytes = used
	if res.RawByAge+res.RawBySize+res.Rollups+res.DeadLetters > 0 {
		s.log.Info("retention", "raw_by_age", res.RawByAge, "raw_by_size", res.RawBySize,
			"rollups", res.Rollups, "dead_letters", res.DeadLetters, "used_bytes", res.UsedBytes)
	}
	return res, nil
}

func (s *Store) seriesIDs(ctx context.Context) ([]int64, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM series ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("ingest: list series: %w", err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("ingest: list series: %w", err)
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

func (s *Store) lockedUsedBytes(ctx context.Context) (int64, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	used, err := s.usedBytes(ctx)
	if err == nil {
		s.usedBytesMem = used
		s.m.usedBytes.Store(used)
	}
	return used, err
}

// oldestRaw returns the earliest time of any raw reading.
func (s *Store) oldestRaw(ctx context.Context, ids []int64) (int64, bool, error) {
	var oldest int64
	found := false
	for _, id := range ids {
		for _, tbl := range []string{"readings", "text_readings"} {
			var ts sql.NullInt64
			if err := s.db.QueryRowContext(ctx, `SELECT MIN(ts) FROM `+tbl+` WHERE series = ?`, id).Scan(&ts); err != nil {
				return 0, false, fmt.Errorf("ingest: oldest reading: %w", err)
			}
			if ts.Valid && (!found || ts.Int64 < oldest) {
				oldest, found = ts.Int64, true
			}
		}
	}
	return oldest, found, nil
}

// deleteBefore deletes a series' rows of tbl older than cutoff, in
// chunks, and accounts them to the counter cause.
func (s *Store) deleteBefore(ctx context.Context, tbl string, series, cutoff int64, cause string) (int64, error) {
	ctrKey := metaRawReadings
	if tbl == "text_readings" {
		ctrKey = metaTextReadings
	}
	var total int64
	for {
		// Bound one transaction to retentionChunk rows: find the time of
		// the chunk's last row, if the range holds more.
		var bound sql.NullInt64
		err := s.db.QueryRowContext(ctx, `SELECT ts FROM `+tbl+` WHERE series = ? AND ts < ? ORDER BY ts LIMIT 1 OFFSET ?`,
			series, cutoff, retentionChunk-1).Scan(&bound)
		limit := cutoff
		if err == nil && bound.Valid {
			limit = bound.Int64 + 1
		} else if err != nil && err != sql.ErrNoRows {
			return total, fmt.Errorf("ingest: retention: %w", err)
		}
		n, err := s.exec(ctx, map[string]int64{ctrKey: -1, cause: 1},
			`DELETE FROM `+tbl+` WHERE series = ? AND ts < ?`, series, limit)
		total += n
		if err != nil {
			return total, err
		}
		if limit == cutoff || n == 0 {
			return total, nil
		}
	}
}

// exec runs one write statement in its own transaction and adds the
// number of affected rows, times each factor, to the meta counters.
func (s *Store) exec(ctx context.Context, factors map[string]int64, q string, args ...any) (int64, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var n int64
	meta := map[string]int64{}
	err := s.withTx(ctx, func(tx *sql.Tx) error {
		out, err := tx.ExecContext(ctx, q, args...)
		if err != nil {
			return fmt.Errorf("ingest: retention: %w", err)
		}
		n, _ = out.RowsAffected()
		for k, f := range factors {
			meta[k] = n * f
		}
		return addMeta(ctx, tx, s.stmts.metaAdd, meta)
	})
	if err != nil {
		return 0, err
	}
	s.applyMeta(meta)
	s.m.sync(s)
	return n, nil
}

// trimDeadLetters deletes the oldest dead letters beyond MaxDeadLetters.
// The caller holds s.wmu.
func (s *Store) trimDeadLetters(ctx context.Context) error {
	excess := s.ctr[metaDeadLetters] - int64(s.cfg.MaxDeadLetters)
	if excess <= 0 {
		return nil
	}
	meta := map[string]int64{}
	err := s.withTx(ctx, func(tx *sql.Tx) error {
		out, err := tx.ExecContext(ctx, `DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters ORDER BY id LIMIT ?)`, excess)
		if err != nil {
			return fmt.Errorf("ingest: trim dead letters: %w", err)
		}
		n, _ := out.RowsAffected()
		meta[metaDeadLetters], meta[metaDeadEvicted] = -n, n
		return addMeta(ctx, tx, s.stmts.metaAdd, meta)
	})
	if err != nil {
		return err
	}
	s.applyMeta(meta)
	s.m.sync(s)
	return nil
}
