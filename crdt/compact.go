package crdt

import (
	"context"
	"fmt"
	"time"
)

// Compact shrinks the op log and the tombstones, keeping replicas
// convergent. The safety rule:
//
//  1. Superseded ops are always removed: an LWW put or delete that is not
//     its key's winner; a counter op followed by a later op of the same
//     origin on the same key (it carries cumulative totals); an OR-set add
//     whose tag has been removed; a multi-value register write that observed
//     nothing and whose value has been replaced. Whatever superseded them
//     stays in the log and is shipped instead, and DeltasSince's ranges
//     still cover the removed sequence numbers, so a peer catching up
//     reaches the same state.
//  2. Ops that remove something (LWW deletes that are their key's winner,
//     with their delete markers; OR-set removes; multi-value register
//     deletes, and writes that observed other values once they are replaced
//     themselves) are removed only when covered by stable, the version
//     vector every known member has reached (MinVersionVector of their
//     vectors), AND older than the tombstone TTL (their timestamp before
//     now - TombstoneTTL). Covered by stable means every member has applied
//     the removal, so none of them can reintroduce what it removed by
//     shipping an older op; the TTL bounds how long an op may still be
//     underway to a member. A replica that has been absent for longer than
//     the TTL (or that is not among the members stable was computed from)
//     may still hold, or later receive from its own old state, ops whose
//     removals are gone everywhere; merging would resurrect deleted keys
//     and removed elements. Every removal dropped here raises the store's
//     compaction horizon (Horizon): a replica whose version vector is
//     behind it for some origin cannot be repaired by deltas and must
//     install a snapshot (ExportSnapshot, InstallSnapshot) instead.
//  3. Removed-dot records (removals that arrived before the op they remove)
//     are dropped once this store's own version vector covers the dot: an
//     op it covers is never applied again.
//
// The whole compaction is one transaction.
func (s *Store) Compact(ctx context.Context, stable VersionVector, now time.Time) (CompactStats, error) {
	var st CompactStats
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return st, fmt.Errorf("crdt: compact: %w", ErrClosed)
	}
	tx, err := s.wc.BeginTx(ctx, nil)
	if err != nil {
		return st, fmt.Errorf("crdt: compact: begin: %w", err)
	}
	defer tx.Rollback()
	superseded := []string{
		`DELETE FROM ops WHERE kind IN (1, 2) AND NOT EXISTS (SELECT 1 FROM lww l
			WHERE l.coll = ops.coll AND l.key = ops.key AND l.origin = ops.origin AND l.seq = ops.seq)`,
		`DELETE FROM ops WHERE kind = 5 AND (origin, seq) NOT IN
			(SELECT origin, max(seq) FROM ops WHERE kind = 5 GROUP BY origin, coll, key)`,
		`DELETE FROM ops WHERE kind = 3 AND NOT EXISTS (SELECT 1 FROM orset r
			WHERE r.origin = ops.origin AND r.seq = ops.seq)`,
		`DELETE FROM ops WHERE kind = 6 AND observed IS NULL AND NOT EXISTS (SELECT 1 FROM mvreg m
			WHERE m.origin = ops.origin AND m.seq = ops.seq)`,
	}
	for _, q := range superseded {
		res, err := tx.ExecContext(ctx, q)
		if err != nil {
			return st, fmt.Errorf("crdt: compact: superseded ops: %w", err)
		}
		n, _ := res.RowsAffected()
		st.OpsRemoved += int(n)
	}

	cutoff := timestampFromMillis(now.Add(-s.ttl).UnixMilli())
	rows, err := tx.QueryContext(ctx, `SELECT origin, seq, kind, hlc FROM ops
		WHERE kind IN (2, 4, 6, 7) AND hlc < ?
		AND NOT (kind = 6 AND EXISTS (SELECT 1 FROM mvreg m WHERE m.origin = ops.origin AND m.seq = ops.seq))`, int64(cutoff))
	if err != nil {
		return st, fmt.Errorf("crdt: compact: expired removals: %w", err)
	}
	type cand struct {
		dot  Dot
		kind Kind
		hlc  Timestamp
	}
	var expired []cand
	for rows.Next() {
		var (
			o              string
			seq, kind, hlc int64
		)
		if err := rows.Scan(&o, &seq, &kind, &hlc); err != nil {
			rows.Close()
			return st, s.corrupt(fmt.Errorf("crdt: compact: %w: %v", ErrCorrupt, err))
		}
		d := Dot{Origin: o, Seq: uint64(seq)}
		if seq > 0 && stable.Covers(d) {
			expired = append(expired, cand{d, Kind(kind), Timestamp(hlc)})
		}
	}
	if err := rows.Close(); err != nil {
		return st, fmt.Errorf("crdt: compact: %w", err)
	}
	horizon, horizonHLC := s.horizon.Clone(), s.horizonHLC
	for _, c := range expired {
		if c.dot.Seq > horizon[c.dot.Origin] {
			horizon[c.dot.Origin] = c.dot.Seq
		}
		if c.hlc > horizonHLC {
			horizonHLC = c.hlc
		}
		if c.kind == KindDelete {
			res, err := tx.ExecContext(ctx, `DELETE FROM lww WHERE origin = ? AND seq = ? AND deleted = 1
				AND (coll, key) IN (SELECT coll, key FROM ops WHERE origin = ? AND seq = ?)`,
				c.dot.Origin, int64(c.dot.Seq), c.dot.Origin, int64(c.dot.Seq))
			if err != nil {
				return st, fmt.Errorf("crdt: compact: delete marker: %w", err)
			}
			n, _ := res.RowsAffected()
			st.TombstonesRemoved += int(n)
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM ops WHERE origin = ? AND seq = ?`, c.dot.Origin, int64(c.dot.Seq))
		if err != nil {
			return st, fmt.Errorf("crdt: compact: expired op: %w", err)
		}
		n, _ := res.RowsAffected()
		st.OpsRemoved += int(n)
	}

	for o, n := range s.vv {
		res, err := tx.ExecContext(ctx, `DELETE FROM removed WHERE origin = ? AND seq <= ?`, o, int64(n))
		if err != nil {
			return st, fmt.Errorf("crdt: compact: removed dots: %w", err)
		}
		k, _ := res.RowsAffected()
		st.TombstonesRemoved += int(k)
	}
	if len(expired) > 0 {
		if err := writeHorizon(ctx, tx, horizon, horizonHLC); err != nil {
			return st, fmt.Errorf("crdt: compact: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return st, fmt.Errorf("crdt: compact: commit: %w", err)
	}
	s.horizon, s.horizonHLC = horizon, horizonHLC
	s.metrics.compacted.WithLabelValues("ops").Add(float64(st.OpsRemoved))
	s.metrics.compacted.WithLabelValues("tombstones").Add(float64(st.TombstonesRemoved))
	s.log.Debug("crdt: compacted", "ops_removed", st.OpsRemoved, "tombstones_removed", st.TombstonesRemoved)
	return st, nil
}
