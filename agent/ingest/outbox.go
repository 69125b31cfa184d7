package ingest

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// OutboxBatch is what ClaimOutbox hands out: the readings of one or
// more consecutive group commits (BatchReadings), or rollups that
// replaced evicted readings (BatchRollups). Seq names it in this store
// (AckOutbox, ReleaseOutbox): the sequence number of its first outbox
// row, fixed when it is first claimed, with the same rows every time it
// is claimed again. Row sequence numbers increase with every row ever
// written and are never reused.
//
// (Epoch, EpochSeq) is its identity for the receiver, which
// de-duplicates by (agent, Epoch, EpochSeq): Epoch names the database
// that numbered its rows, EpochSeq is its first row's sequence number
// there. For the rows this database wrote, Epoch is Store.Epoch and
// EpochSeq is Seq; rows imported from another database (ImportOutbox)
// keep that database's epoch and numbers. A batch holds rows of one
// epoch.
type OutboxBatch struct {
	Seq      int64
	Epoch    string
	EpochSeq int64
	Kind     BatchKind
	Created  time.Time // when its first row was written
	Count    int       // readings the batch stands for (raw, plus those summarized by its rollups)
	Rows     int       // outbox rows (group commits or eviction batches) it holds
	Readings []Reading
	Rollups  []Rollup
}

// ClaimOutbox returns up to max pending batches, oldest first, and
// leases them for lease: until it expires (or ReleaseOutbox), they are
// not returned again and not evicted. The uplink sends them and calls
// AckOutbox; a batch never acknowledged is offered again after its
// lease, so delivery is at-least-once.
//
// A batch is a group of consecutive outbox rows of one kind holding up
// to Outbox.GroupReadings readings, formed the first time its rows are
// claimed and kept from then on: offered again, it holds the same rows
// under the same Seq. Batches claimed before (their lease ran out or
// was released) come first.
func (s *Store) ClaimOutbox(ctx context.Context, max int, lease time.Duration) ([]OutboxBatch, error) {
	if max <= 0 || lease <= 0 {
		return nil, fmt.Errorf("%w: ClaimOutbox max %d and lease %s must be positive", ErrInvalidConfig, max, lease)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	now := s.cfg.Clock.Now().UnixMicro()
	until := now + lease.Microseconds()
	var out []OutboxBatch
	err := s.withTx(ctx, func(tx *sql.Tx) error {
		out = out[:0]
		groups, err := claimableGroups(ctx, tx, now, max)
		if err != nil {
			return err
		}
		if len(groups) < max {
			more, err := s.formGroups(ctx, tx, now, max-len(groups))
			if err != nil {
				return err
			}
			groups = append(groups, more...)
		}
		for _, g := range groups {
			b, err := loadGroup(ctx, tx, g)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE outbox SET claimed_until = ? WHERE grp = ?`, until, g); err != nil {
				return fmt.Errorf("ingest: lease outbox batch %d: %w", g, err)
			}
			out = append(out, b)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// claimableGroups returns up to max groups formed before whose lease
// ended, oldest first.
func claimableGroups(ctx context.Context, tx *sql.Tx, now int64, max int) ([]int64, error) {
	rows, err := tx.QueryContext(ctx, `SELECT DISTINCT grp FROM outbox WHERE grp != 0 AND claimed_until <= ? ORDER BY grp LIMIT ?`, now, max)
	if err != nil {
		return nil, fmt.Errorf("ingest: read outbox: %w", err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var g int64
		if err := rows.Scan(&g); err != nil {
			return nil, fmt.Errorf("ingest: read outbox: %w", err)
		}
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("ingest: read outbox: %w", err)
	}
	return out, nil
}

// formGroups groups up to max runs of never-claimed rows, oldest first,
// and returns the new groups (named by their first row's seq).
func (s *Store) formGroups(ctx context.Context, tx *sql.Tx, now int64, max int) ([]int64, error) {
	limit := s.cfg.Outbox.GroupReadings
	rows, err := tx.QueryContext(ctx, `SELECT seq, kind, readings, epoch FROM outbox WHERE grp = 0 ORDER BY seq LIMIT ?`, max*limit)
	if err != nil {
		return nil, fmt.Errorf("ingest: read outbox: %w", err)
	}
	type group struct{ first, last, kind, readings, epoch int64 }
	var gs []group
	for rows.Next() {
		var seq, kind, n, epoch int64
		if err := rows.Scan(&seq, &kind, &n, &epoch); err != nil {
			rows.Close()
			return nil, fmt.Errorf("ingest: read outbox: %w", err)
		}
		if k := len(gs); k > 0 && gs[k-1].kind == kind && gs[k-1].epoch == epoch && gs[k-1].readings+n <= int64(limit) {
			gs[k-1].last, gs[k-1].readings = seq, gs[k-1].readings+n
			continue
		}
		if len(gs) == max {
			break
		}
		gs = append(gs, group{first: seq, last: seq, kind: kind, readings: n, epoch: epoch})
	}
	if err := rows.Err(); err != nil {
		rows.Close()
		return nil, fmt.Errorf("ingest: read outbox: %w", err)
	}
	rows.Close()
	out := make([]int64, 0, len(gs))
	for _, g := range gs {
		if _, err := tx.ExecContext(ctx, `UPDATE outbox SET grp = ? WHERE grp = 0 AND seq BETWEEN ? AND ?`, g.first, g.first, g.last); err != nil {
			return nil, fmt.Errorf("ingest: group outbox rows %d..%d: %w", g.first, g.last, err)
		}
		out = append(out, g.first)
	}
	return out, nil
}

// maxOutboxGroupPresize bounds the readings loadGroup allocates room
// for before decoding a batch of readings: the readings column is
// trusted only that far (in a batch of rollups it counts the readings
// they represent, and nothing is presized).
const maxOutboxGroupPresize = 1 << 16

// loadGroup decodes the rows of group g into one batch.
func loadGroup(ctx context.Context, tx *sql.Tx, g int64) (OutboxBatch, error) {
	b := OutboxBatch{Seq: g}
	// Sized once: a group of 1,000 readings is about 100 KB decoded.
	var total int64
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(SUM(readings), 0) FROM outbox WHERE grp = ?`, g).Scan(&total); err != nil {
		return b, fmt.Errorf("ingest: read outbox batch %d: %w", g, err)
	}
	rows, err := tx.QueryContext(ctx, `SELECT o.seq, o.kind, o.created, o.readings, o.payload, o.eseq, e.id, e.epoch
		FROM outbox o LEFT JOIN epochs e ON e.id = o.epoch WHERE o.grp = ? ORDER BY o.seq`, g)
	if err != nil {
		return b, fmt.Errorf("ingest: read outbox batch %d: %w", g, err)
	}
	defer rows.Close()
	var epochID sql.NullInt64
	for rows.Next() {
		var seq, kind, created, count, eseq int64
		var eid sql.NullInt64
		var epoch sql.NullString
		var payload []byte
		if err := rows.Scan(&seq, &kind, &created, &count, &payload, &eseq, &eid, &epoch); err != nil {
			return b, fmt.Errorf("ingest: read outbox batch %d: %w", g, err)
		}
		switch {
		case !eid.Valid:
			return b, fmt.Errorf("%w: outbox row %d names an unknown epoch", ErrCorrupt, seq)
		case b.Rows == 0:
			epochID, b.Epoch, b.EpochSeq = eid, epoch.String, seq
			if eseq != 0 {
				b.EpochSeq = eseq
			}
		case eid != epochID:
			return b, fmt.Errorf("%w: outbox batch %d mixes epochs", ErrCorrupt, g)
		}
		if b.Rows == 0 && BatchKind(kind) == BatchReadings && total > 0 && total <= maxOutboxGroupPresize {
			b.Readings = make([]Reading, 0, total)
		}
		k, rs, us, err := appendOutboxBatch(b.Readings, b.Rollups, payload)
		if err != nil {
			return b, fmt.Errorf("ingest: outbox row %d: %w", seq, err)
		}
		b.Readings, b.Rollups = rs, us
		if int64(k) != kind {
			return b, fmt.Errorf("%w: outbox row %d: kind %d in row, %d in payload", ErrCorrupt, seq, kind, k)
		}
		if b.Rows == 0 {
			b.Kind, b.Created = k, time.UnixMicro(created).UTC()
		} else if k != b.Kind {
			return b, fmt.Errorf("%w: outbox batch %d mixes kinds %d and %d", ErrCorrupt, g, b.Kind, k)
		}
		b.Rows++
		b.Count += int(count)
	}
	if err := rows.Err(); err != nil {
		return b, fmt.Errorf("ingest: read outbox batch %d: %w", g, err)
	}
	if b.Rows == 0 {
		return b, fmt.Errorf("%w: outbox batch %d has no rows", ErrCorrupt, g)
	}
	return b, nil
}

// AckOutbox deletes delivered batches (by OutboxBatch.Seq). Unknown
// sequence numbers (already acknowledged) are ignored; it returns how
// many batches it deleted.
func (s *Store) AckOutbox(ctx context.Context, seqs ...int64) (int, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var n, nrows, bytes, readings int64
	meta := map[string]int64{}
	err := s.withTx(ctx, func(tx *sql.Tx) error {
		n, nrows, bytes, readings = 0, 0, 0, 0
		for _, seq := range seqs {
			if seq == 0 {
				continue
			}
			rows, err := tx.QueryContext(ctx, `DELETE FROM outbox WHERE grp = ? RETURNING bytes, readings`, seq)
			if err != nil {
				return fmt.Errorf("ingest: ack outbox batch %d: %w", seq, err)
			}
			deleted := int64(0)
			for rows.Next() {
				var b, r int64
				if err := rows.Scan(&b, &r); err != nil {
					rows.Close()
					return fmt.Errorf("ingest: ack outbox batch %d: %w", seq, err)
				}
				deleted++
				bytes += b
				readings += r
			}
			if err := rows.Close(); err != nil {
				return fmt.Errorf("ingest: ack outbox batch %d: %w", seq, err)
			}
			if err := rows.Err(); err != nil {
				return fmt.Errorf("ingest: ack outbox batch %d: %w", seq, err)
			}
			if deleted > 0 {
				n++
				nrows += deleted
			}
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
	s.obBatches -= nrows
	s.obReadings -= readings
	s.m.sync(s)
	return int(n), nil
}

// ReleaseOutbox ends the lease of claimed batches that were not
// delivered, so the next ClaimOutbox returns them at once (with the
// same rows).
func (s *Store) ReleaseOutbox(ctx context.Context, seqs ...int64) error {
	if len(seqs) == 0 {
		return nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.withTx(ctx, func(tx *sql.Tx) error {
		for _, seq := range seqs {
			if seq == 0 {
				continue
			}
			if _, err := tx.ExecContext(ctx, `UPDATE outbox SET claimed_until = 0 WHERE grp = ?`, seq); err != nil {
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
		now := s.cfg.Clock.Now().UnixMicro()
		minuteStart := floorTo(now, minuteUS)
		type old struct {
			seq, readings, bytes int64
			payload              []byte
		}
		var olds []old
		rows, err := s.wconn.QueryContext(ctx, `SELECT seq, readings, bytes, payload FROM outbox
			WHERE kind = ? AND grp = 0 AND max_ts < ? ORDER BY seq LIMIT 64`,
			int64(BatchReadings), minuteStart)
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
