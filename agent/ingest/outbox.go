package ingest

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// OutboxBatch is one batch of the outbox: the readings of one group
// commit (BatchReadings) or rollups that replaced evicted readings
// (BatchRollups). Seq increases with every batch ever written and is
// never reused: the receiver de-duplicates by (agent, Seq).
type OutboxBatch struct {
	Seq      int64
	Kind     BatchKind
	Created  time.Time
	Count    int // readings the batch stands for (raw, plus those summarized by its rollups)
	Readings []Reading
	Rollups  []Rollup
}

// ClaimOutbox returns up to max pending batches, oldest first, and
// leases them for lease: until it expires (or ReleaseOutbox), they are
// not returned again and not evicted. The uplink sends them and calls
// AckOutbox; a batch never acknowledged is offered again after its
// lease, so delivery is at-least-once.
func (s *Store) ClaimOutbox(ctx context.Context, max int, lease time.Duration) ([]OutboxBatch, error) {
	if max <= 0 || lease <= 0 {
		return nil, fmt.Errorf("%w: ClaimOutbox max %d and lease %s must be positive", ErrInvalidConfig, max, lease)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	now := s.cfg.Clock().UnixMicro()
	var out []OutboxBatch
	err := s.withTx(ctx, func(tx *sql.Tx) error {
		out = out[:0]
		rows, err := tx.QueryContext(ctx, `SELECT seq, kind, created, readings, payload FROM outbox
			WHERE claimed_until <= ? ORDER BY seq LIMIT ?`, now, max)
		if err != nil {
			return fmt.Errorf("ingest: read outbox: %w", err)
		}
		for rows.Next() {
			var b OutboxBatch
			var kind, created, count int64
			var payload []byte
			if err := rows.Scan(&b.Seq, &kind, &created, &count, &payload); err != nil {
				rows.Close()
				return fmt.Errorf("ingest: read outbox: %w", err)
			}
			k, rs, us, err := DecodeOutboxBatch(payload)
			if err != nil {
				rows.Close()
				return fmt.Errorf("ingest: outbox batch %d: %w", b.Seq, err)
			}
			if int64(k) != kind {
				rows.Close()
				return fmt.Errorf("%w: outbox batch %d: kind %d in row, %d in payload", ErrCorrupt, b.Seq, kind, k)
			}
			b.Kind, b.Created, b.Count, b.Readings, b.Rollups = k, time.UnixMicro(created).UTC(), int(count), rs, us
			out = append(out, b)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("ingest: read outbox: %w", err)
		}
		rows.Close()
		until := now + lease.Microseconds()
		for _, b := range out {
			if _, err := tx.ExecContext(ctx, `UPDATE outbox SET claimed_until = ? WHERE seq = ?`, until, b.Seq); err != nil {
				return fmt.Errorf("ingest: lease outbox batch %d: %w", b.Seq, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// AckOutbox deletes delivered batches. Unknown sequence numbers (already
// acknowledged) are ignored; it returns how many batches it deleted.
func (s *Store) AckOutbox(ctx context.Context, seqs ...int64) (int, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var n, bytes, readings int64
	meta := map[string]int64{}
	err := s.withTx(ctx, func(tx *sql.Tx) error {
		n, bytes, readings = 0, 0, 0
		for _, seq := range seqs {
			var b, r int64
			err := tx.QueryRowContext(ctx, `DELETE FROM outbox WHERE seq = ? RETURNING bytes, readings`, seq).Scan(&b, &r)
			if err == sql.ErrNoRows {
				continue
			}
			if err != nil {
				return fmt.Errorf("ingest: ack outbox batch %d: %w", seq, err)
			}
			n++
			bytes += b
			readings += r
		}
		meta[metaOutboxAcked] = n
		meta[metaOutboxAckedRead] = readings
		return addMeta(ctx, tx, s.stmts.metaAdd, meta)
	})
	if err != nil {
		return 0, err
	}
	s.applyMeta(meta)
	s.obBytes -= bytes
	s.obBatches -= n
	s.obReadings -= readings
	s.m.sync(s)
	return int(n), nil
}

// ReleaseOutbox ends the lease of claimed batches that were not
// delivered, so the next ClaimOutbox returns them at once.
func (s *Store) ReleaseOutbox(ctx context.Context, seqs ...int64) error {
	if len(seqs) == 0 {
		return nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.withTx(ctx, func(tx *sql.Tx) error {
		for _, seq := range seqs {
			if _, err := tx.ExecContext(ctx, `UPDATE outbox SET claimed_until = 0 WHERE seq = ?`, seq); err != nil {
				return fmt.Errorf("ingest: release outbox batch %d: %w", seq, err)
			}
		}
		return nil
	})
}

type outboxRollKey struct {
	device, metric, unit string
	bucket               int64
}

// evictOutbox applies the outbox bound: while pending bytes exceed
// Outbox.MaxBytes, the oldest unclaimed raw batches whose readings all
// precede the current minute are replaced by one batch of per-minute
// rollups of their numeric readings (plus their text readings as they
// were). It returns how many readings it replaced. The caller holds
// s.wmu.
func (s *Store) evictOutbox(ctx context.Context) (int64, error) {
	var total int64
	for s.obBytes > s.cfg.Outbox.MaxBytes {
		now := s.cfg.Clock().UnixMicro()
		minuteStart := floorTo(now, minuteUS)
		type old struct {
			seq, readings, bytes int64
			payload              []byte
		}
		var olds []old
		rows, err := s.wconn.QueryContext(ctx, `SELECT seq, readings, bytes, payload FROM outbox
			WHERE kind = ? AND claimed_until <= ? AND max_ts < ? ORDER BY seq LIMIT 64`,
			int64(BatchReadings), now, minuteStart)
		if err != nil {
			return total, fmt.Errorf("ingest: outbox eviction: %w", err)
		}
		var sumBytes int64
		for rows.Next() {
			var o old
			if err := rows.Scan(&o.seq, &o.readings, &o.bytes, &o.payload); err != nil {
				rows.Close()
				return total, fmt.Errorf("ingest: outbox eviction: %w", err)
			}
			olds = append(olds, o)
			sumBytes += o.bytes
			if s.obBytes-sumBytes <= s.cfg.Outbox.MaxBytes {
				break
			}
		}
		rows.Close()
		if len(olds) == 0 {
			return total, nil
		}
		aggs := map[outboxRollKey]*agg{}
		var keys []outboxRollKey
		var enc batchEncoder
		enc.reset()
		var represented, evicted int64
		for _, o := range olds {
			_, rs, us, err := DecodeOutboxBatch(o.payload)
			if err != nil {
				return total, fmt.Errorf("ingest: outbox batch %d: %w", o.seq, err)
			}
			if len(us) != 0 {
				return total, fmt.Errorf("%w: outbox batch %d: raw batch holds rollups", ErrCorrupt, o.seq)
			}
			represented += o.readings
			for _, r := range rs {
				ts := r.timeUS()
				if !r.Kind.numeric() {
					enc.add(r.Device, r.Metric, r.Unit, ts, r.Kind, r.Value, r.Text)
					continue
				}
				k := outboxRollKey{r.Device, r.Metric, r.Unit, floorTo(ts, minuteUS)}
				a := aggs[k]
				if a == nil {
					a = &agg{}
					aggs[k] = a
					keys = append(keys, k)
				}
				a.add(r.Value)
				evicted++
			}
		}
		for _, k := range keys {
			enc.addRollup(k.device, k.metric, k.unit, 60, k.bucket, *aggs[k])
		}
		p := enc.payload(BatchRollups)
		meta := map[string]int64{metaOutboxEvicted: evicted, metaOutboxRollups: 1}
		err = s.withTx(ctx, func(tx *sql.Tx) error {
			for _, o := range olds {
				if _, err := tx.ExecContext(ctx, `DELETE FROM outbox WHERE seq = ?`, o.seq); err != nil {
					return fmt.Errorf("ingest: outbox eviction: %w", err)
				}
			}
			if _, err := tx.StmtContext(ctx, s.stmts.obIns).ExecContext(ctx, int64(BatchRollups), now, represented,
				enc.minTS, enc.maxTS, int64(len(p)), p); err != nil {
				return fmt.Errorf("ingest: outbox eviction: %w", err)
			}
			return addMeta(ctx, tx, s.stmts.metaAdd, meta)
		})
		if err != nil {
			return total, err
		}
		s.applyMeta(meta)
		s.obBytes += int64(len(p)) - sumBytes
		s.obBatches += 1 - int64(len(olds))
		total += evicted
		s.log.Info("outbox full: raw readings replaced by rollups", "readings", evicted, "batches", len(olds),
			"pending_bytes", s.obBytes, "max_bytes", s.cfg.Outbox.MaxBytes)
	}
	return total, nil
}

// Pressure evaluates the backpressure state: "" when ingestion may
// proceed, "outbox" when the outbox is over Outbox.MaxBytes and nothing
// more can be evicted, "store" when the database is over HighWaterBytes.
// A state, once entered, holds until the size falls below 90% of its
// bound. It first evicts from a full outbox.
func (s *Store) Pressure(ctx context.Context) (string, error) {
	return s.pressureCheck(ctx, true)
}

// sizeCheckCommits: after a commit, the database size is re-read when
// this many commits have passed since the last reading (or while
// backpressure is on); the outbox size is tracked exactly.
const sizeCheckCommits = 16

// pressureCheck is Pressure; with fresh false the database size may be
// up to sizeCheckCommits commits old.
func (s *Store) pressureCheck(ctx context.Context, fresh bool) (string, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed {
		return "", ErrClosed
	}
	if !s.cfg.Outbox.Disabled && s.obBytes > s.cfg.Outbox.MaxBytes {
		if _, err := s.evictOutbox(ctx); err != nil {
			return s.pressure, err
		}
	}
	if n := s.commits.Load(); fresh || s.pressure != "" || n-s.sizeChecked >= sizeCheckCommits {
		used, err := s.usedBytes(ctx)
		if err != nil {
			return s.pressure, err
		}
		s.usedBytesMem, s.sizeChecked = used, n
	}
	used := s.usedBytesMem
	ob, hw := s.obBytes, s.cfg.HighWaterBytes
	obMax := s.cfg.Outbox.MaxBytes
	switch s.pressure {
	case pressureOutbox:
		if ob*10 < obMax*9 {
			s.pressure = ""
		}
	case pressureStore:
		if used*10 < hw*9 {
			s.pressure = ""
		}
	}
	if s.pressure == "" {
		switch {
		case used > hw:
			s.pressure = pressureStore
		case !s.cfg.Outbox.Disabled && ob > obMax:
			s.pressure = pressureOutbox
		}
	}
	s.m.pressure.Store(s.pressure)
	s.m.sync(s)
	return s.pressure, nil
}

// inList returns "?, ?, ..." for n parameters.
func inList(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}
