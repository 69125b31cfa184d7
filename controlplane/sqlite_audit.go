package controlplane

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// The hash-chained audit log of SQLiteStore.

// appendAudit appends e to the chain inside tx.
func (s *SQLiteStore) appendAudit(ctx context.Context, tx *sql.Tx, e AuditEntry) (cpapi.AuditRecord, error) {
	var seq int64
	prev := GenesisHash
	err := tx.StmtContext(ctx, s.stAuditHead).QueryRowContext(ctx).Scan(&seq, &prev)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return cpapi.AuditRecord{}, fmt.Errorf("controlplane: audit head: %w", err)
	}
	rec := cpapi.AuditRecord{
		Seq:      seq + 1,
		Time:     fromNanos(nanos(e.Time)),
		Actor:    e.Actor,
		Action:   e.Action,
		Target:   e.Target,
		Result:   e.Result,
		PrevHash: prev,
	}
	rec.Hash = AuditHash(rec)
	if _, err := tx.StmtContext(ctx, s.stAuditPut).ExecContext(ctx, rec.Seq, nanos(rec.Time), rec.Actor, rec.Action, rec.Target, rec.Result, rec.PrevHash, rec.Hash); err != nil {
		return cpapi.AuditRecord{}, fmt.Errorf("controlplane: append audit: %w", err)
	}
	if _, err := tx.StmtContext(ctx, s.stAuditMove).ExecContext(ctx, rec.Seq, rec.Hash); err != nil {
		return cpapi.AuditRecord{}, fmt.Errorf("controlplane: append audit: %w", err)
	}
	return rec, nil
}

// AppendAudit appends one record in its own transaction.
func (s *SQLiteStore) AppendAudit(ctx context.Context, e AuditEntry) (cpapi.AuditRecord, error) {
	var rec cpapi.AuditRecord
	err := s.inTx(ctx, "append audit", func(ctx context.Context, tx *sql.Tx) error {
		var err error
		rec, err = s.appendAudit(ctx, tx, e)
		return err
	})
	return rec, err
}

// ListAudit returns up to limit records after afterSeq.
func (s *SQLiteStore) ListAudit(ctx context.Context, afterSeq int64, limit int) ([]cpapi.AuditRecord, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT seq, time, actor, action, target, result, prev_hash, hash
		FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?`, afterSeq, limit)
	if err != nil {
		return nil, fmt.Errorf("controlplane: list audit: %w", err)
	}
	defer rows.Close()
	out := []cpapi.AuditRecord{}
	for rows.Next() {
		var r cpapi.AuditRecord
		var t int64
		if err := rows.Scan(&r.Seq, &t, &r.Actor, &r.Action, &r.Target, &r.Result, &r.PrevHash, &r.Hash); err != nil {
			return nil, fmt.Errorf("controlplane: list audit: %w", err)
		}
		r.Time = fromNanos(t)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("controlplane: list audit: %w", err)
	}
	return out, nil
}

// AuditHead returns the recorded head of the chain.
func (s *SQLiteStore) AuditHead(ctx context.Context) (int64, string, error) {
	if err := s.check(); err != nil {
		return 0, "", err
	}
	var seq int64
	hash := GenesisHash
	err := s.r.QueryRowContext(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1`).Scan(&seq, &hash)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return 0, "", fmt.Errorf("controlplane: audit head: %w", err)
	}
	return seq, hash, nil
}
