package ingest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"time"
)

// maxEpochLen bounds an epoch (the control plane's limit).
const maxEpochLen = 64

// newEpoch returns a new epoch: 128 random bits in hex.
func newEpoch() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("make epoch: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// validEpoch reports whether s can be an epoch: 1 to 64 letters, digits,
// '-' or '_' (what the control plane accepts).
func validEpoch(s string) bool {
	if s == "" || len(s) > maxEpochLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Epoch returns the store's epoch: the random id made with its database
// (or when a database from before epochs was first opened by this
// version). The outbox batches the store writes are numbered in it (see
// OutboxBatch).
func (s *Store) Epoch() string { return s.epoch }

// OutboxRow is an outbox row of another database, as ImportOutbox takes
// it: rows salvaged from an ingestion database that is replaced keep
// their identity there, so the control plane recognizes the batches it
// already has.
type OutboxRow struct {
	// Epoch is the epoch that numbered the row (the old database's, or
	// the one its row came from in turn). Not the store's own.
	Epoch string
	// Seq is the row's sequence number in Epoch (at least 1).
	Seq int64
	// Group is, for a row that was claimed there, the sequence number in
	// Epoch of its batch (the batch's first row); 0 for a row never
	// claimed. Rows of one group are imported together, in order, and
	// form the same batch again.
	Group int64
	// Created is when the row was first written.
	Created time.Time
	// Payload is the row's outbox payload (its kind, readings and
	// rollups; see DecodeOutboxBatch).
	Payload []byte
}

// ImportOutbox appends rows of other databases to the outbox, after the
// rows already there, in the order given. Each keeps its epoch and
// sequence number: a batch of them is offered under its old identity
// (OutboxBatch.Epoch and EpochSeq), rows that formed a batch form it
// again, and rows never claimed form new batches of their own epoch. It
// refuses (and imports nothing) a row of the store's own epoch, a
// malformed epoch or payload, or a row whose Seq was imported before.
func (s *Store) ImportOutbox(ctx context.Context, rows []OutboxRow) error {
	if len(rows) == 0 {
		return nil
	}
	type prepared struct {
		kind            BatchKind
		count, min, max int64
		local           int64 // its seq in this store
		row             *OutboxRow
	}
	ps := make([]prepared, len(rows))
	for i := range rows {
		r := &rows[i]
		switch {
		case !validEpoch(r.Epoch):
			return fmt.Errorf("%w: import outbox row %d: epoch %q", ErrInvalidConfig, i, r.Epoch)
		case r.Epoch == s.epoch:
			return fmt.Errorf("%w: import outbox row %d: the store's own epoch %s", ErrInvalidConfig, i, r.Epoch)
		case r.Seq < 1 || r.Group < 0:
			return fmt.Errorf("%w: import outbox row %d: seq %d, group %d", ErrInvalidConfig, i, r.Seq, r.Group)
		}
		kind, rs, us, err := DecodeOutboxBatch(r.Payload)
		if err != nil {
			return fmt.Errorf("ingest: import outbox row %d (epoch %s seq %d): %w", i, r.Epoch, r.Seq, err)
		}
		p := prepared{kind: kind, row: r, count: int64(len(rs))}
		p.min, p.max = int64(1<<63-1), int64(-1<<63)
		for j := range rs {
			ts := rs[j].timeUS()
			p.min, p.max = min(p.min, ts), max(p.max, ts)
		}
		for _, u := range us {
			ts := u.Start.UnixMicro()
			p.count += u.Count
			p.min, p.max = min(p.min, ts), max(p.max, ts)
		}
		if p.count == 0 {
			p.min, p.max = 0, 0
		}
		ps[i] = p
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var addBytes, addReadings int64
	err := s.withTx(ctx, func(tx *sql.Tx) error {
		addBytes, addReadings = 0, 0
		epochs := map[string]int64{}
		type groupKey struct{ epoch, group int64 }
		type group struct {
			grp  int64 // local name: the seq of its first imported row
			kind BatchKind
		}
		groups := map[groupKey]group{}
		for i := range ps {
			p := &ps[i]
			r := p.row
			id, ok := epochs[r.Epoch]
			if !ok {
				if err := tx.QueryRowContext(ctx, `INSERT INTO epochs (epoch) VALUES (?) ON CONFLICT (epoch) DO UPDATE SET epoch = excluded.epoch RETURNING id`,
					r.Epoch).Scan(&id); err != nil {
					return fmt.Errorf("ingest: import outbox: record epoch %s: %w", r.Epoch, err)
				}
				epochs[r.Epoch] = id
			}
			var dup int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM outbox WHERE epoch = ? AND eseq = ?`, id, r.Seq).Scan(&dup); err != nil {
				return fmt.Errorf("ingest: import outbox: %w", err)
			}
			if dup != 0 {
				return fmt.Errorf("%w: import outbox row %d: epoch %s seq %d is already in the outbox", ErrInvalidConfig, i, r.Epoch, r.Seq)
			}
			if err := tx.QueryRowContext(ctx, `INSERT INTO outbox (kind, created, readings, min_ts, max_ts, bytes, payload, epoch, eseq)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq`, int64(p.kind), r.Created.UnixMicro(), p.count, p.min, p.max,
				int64(len(r.Payload)), r.Payload, id, r.Seq).Scan(&p.local); err != nil {
				return fmt.Errorf("ingest: import outbox row %d: %w", i, err)
			}
			addBytes += int64(len(r.Payload))
			addReadings += p.count
			if r.Group == 0 {
				continue
			}
			// The group is named by its first imported row, in this
			// store; its identity stays (epoch, that row's eseq).
			key := groupKey{id, r.Group}
			g, ok := groups[key]
			if !ok {
				g = group{grp: p.local, kind: p.kind}
				groups[key] = g
			}
			if g.kind != p.kind {
				return fmt.Errorf("%w: import outbox row %d: group %d of epoch %s mixes kinds %s and %s", ErrInvalidConfig, i, r.Group, r.Epoch, g.kind, p.kind)
			}
			if _, err := tx.ExecContext(ctx, `UPDATE outbox SET grp = ? WHERE seq = ?`, g.grp, p.local); err != nil {
				return fmt.Errorf("ingest: import outbox row %d: %w", i, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.obBytes += addBytes
	s.obBatches += int64(len(rows))
	s.obReadings += addReadings
	s.m.sync(s)
	return nil
}
