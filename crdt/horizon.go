package crdt

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
)

// ErrAwaitingState: local ops are refused until the store has recovered
// its state from a peer (see HoldLocalOps).
var ErrAwaitingState = errors.New("crdt: awaiting state from a peer")

// Horizon returns the store's compaction horizon: for every origin, the
// highest sequence number of a removal (LWW delete, OR-set remove,
// multi-value register delete or replacing write) that Compact dropped
// here, or that the peer whose snapshot this store installed had dropped.
// A replica whose version vector is below it for some origin (Behind) may
// lack a removal that no longer exists anywhere as an op: deltas from this
// store would advance its vector over the removal without carrying it, so
// it must install a snapshot instead.
func (s *Store) Horizon() VersionVector {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.horizon.Clone()
}

// Behind returns an origin for which vv is below horizon (the smallest such
// origin name), or false when vv covers the whole horizon.
func Behind(vv, horizon VersionVector) (string, bool) {
	var out []string
	for o, n := range horizon {
		if vv[o] < n {
			out = append(out, o)
		}
	}
	if len(out) == 0 {
		return "", false
	}
	sort.Strings(out)
	return out[0], true
}

// HoldLocalOps makes every local op fail with ErrAwaitingState (wrapped,
// with reason) until ReleaseLocalOps or a successful InstallSnapshot. A
// replica whose own origin the fleet knows further than this store (a
// fresh database under a known replica id) must not issue sequence numbers
// the fleet already holds.
func (s *Store) HoldLocalOps(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if reason == "" {
		reason = "held"
	}
	s.hold = reason
}

// ReleaseLocalOps lifts HoldLocalOps.
func (s *Store) ReleaseLocalOps() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold = ""
}

// LocalOpsHeld returns the reason local ops are held, or "".
func (s *Store) LocalOpsHeld() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hold
}

// Seq returns the last sequence number this replica issued (or learned it
// had issued, from a snapshot).
func (s *Store) Seq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq
}

// holdErr is the error of a local op while local ops are held; s.mu held.
func (s *Store) holdErr(what string) error {
	if s.hold == "" {
		return nil
	}
	return fmt.Errorf("crdt: %s: %w: %s", what, ErrAwaitingState, s.hold)
}

// readHorizon reads the horizon table: per origin, the highest dropped
// removal and the latest timestamp of the dropped removals.
func readHorizon(ctx context.Context, tx *sql.Tx) (VersionVector, Timestamp, error) {
	rows, err := tx.QueryContext(ctx, `SELECT origin, seq, hlc FROM horizon`)
	if err != nil {
		return nil, 0, fmt.Errorf("read horizon: %w", err)
	}
	defer rows.Close()
	h := VersionVector{}
	var last Timestamp
	for rows.Next() {
		var (
			o        string
			seq, hlc int64
		)
		if err := rows.Scan(&o, &seq, &hlc); err != nil {
			return nil, 0, fmt.Errorf("%w: horizon: %v", ErrCorrupt, err)
		}
		if checkOrigin(o, "") != nil || seq < 0 || hlc < 0 {
			return nil, 0, fmt.Errorf("%w: horizon: entry %q = %d at %d", ErrCorrupt, o, seq, hlc)
		}
		if seq > 0 {
			h[o] = uint64(seq)
		}
		if Timestamp(hlc) > last {
			last = Timestamp(hlc)
		}
	}
	return h, last, rows.Err()
}

// writeHorizon replaces the horizon table with h; every row carries the
// latest dropped removal's timestamp.
func writeHorizon(ctx context.Context, tx *sql.Tx, h VersionVector, hlc Timestamp) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM horizon`); err != nil {
		return fmt.Errorf("write horizon: %w", err)
	}
	for o, n := range h {
		if _, err := tx.ExecContext(ctx, `INSERT INTO horizon (origin, seq, hlc) VALUES (?, ?, ?)`, o, int64(n), int64(hlc)); err != nil {
			return fmt.Errorf("write horizon: %w", err)
		}
	}
	return nil
}
