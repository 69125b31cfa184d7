package controlplane

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// Operator API tokens of SQLiteStore.

const apiTokenColumns = `id, hash, name, role, created_at, created_by, expires_at, revoked_at`

func scanAPIToken(sc interface{ Scan(...any) error }) (cpapi.APIToken, error) {
	var t cpapi.APIToken
	var created int64
	var expires, revoked sql.NullInt64
	if err := sc.Scan(&t.ID, &t.Hash, &t.Name, &t.Role, &created, &t.CreatedBy, &expires, &revoked); err != nil {
		return t, err
	}
	t.CreatedAt, t.ExpiresAt, t.RevokedAt = fromNanos(created), timePtr(expires), timePtr(revoked)
	return t, nil
}

// CreateAPIToken stores a token.
func (s *SQLiteStore) CreateAPIToken(ctx context.Context, t cpapi.APIToken, audit AuditEntry) error {
	return s.inTx(ctx, "create api token", func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO api_tokens (`+apiTokenColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)`,
			t.ID, t.Hash, t.Name, string(t.Role), nanos(t.CreatedAt), t.CreatedBy, nullNanos(t.ExpiresAt)); err != nil {
			return fmt.Errorf("controlplane: create api token: %w", err)
		}
		_, err := s.appendAudit(ctx, tx, audit)
		return err
	})
}

// ListAPITokens returns all tokens, newest first.
func (s *SQLiteStore) ListAPITokens(ctx context.Context) ([]cpapi.APIToken, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT `+apiTokenColumns+` FROM api_tokens ORDER BY created_at DESC, id`)
	if err != nil {
		return nil, fmt.Errorf("controlplane: list api tokens: %w", err)
	}
	defer rows.Close()
	out := []cpapi.APIToken{}
	for rows.Next() {
		t, err := scanAPIToken(rows)
		if err != nil {
			return nil, fmt.Errorf("controlplane: list api tokens: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("controlplane: list api tokens: %w", err)
	}
	return out, nil
}

// LookupAPIToken finds a token by digest.
func (s *SQLiteStore) LookupAPIToken(ctx context.Context, hash string) (cpapi.APIToken, error) {
	if err := s.check(); err != nil {
		return cpapi.APIToken{}, err
	}
	t, err := scanAPIToken(s.r.QueryRowContext(ctx, `SELECT `+apiTokenColumns+` FROM api_tokens WHERE hash = ?`, hash))
	if errors.Is(err, sql.ErrNoRows) {
		return t, fmt.Errorf("controlplane: api token: %w", cpapi.ErrNotFound)
	}
	if err != nil {
		return t, fmt.Errorf("controlplane: lookup api token: %w", err)
	}
	return t, nil
}

// RevokeAPIToken marks a token revoked; revoking twice is a conflict.
func (s *SQLiteStore) RevokeAPIToken(ctx context.Context, id string, at time.Time, audit AuditEntry) (cpapi.APIToken, error) {
	var out cpapi.APIToken
	err := s.inTx(ctx, "revoke api token", func(ctx context.Context, tx *sql.Tx) error {
		t, err := scanAPIToken(tx.QueryRowContext(ctx, `SELECT `+apiTokenColumns+` FROM api_tokens WHERE id = ?`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("controlplane: api token %q: %w", id, cpapi.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("controlplane: revoke api token %q: %w", id, err)
		}
		if t.RevokedAt != nil {
			return fmt.Errorf("controlplane: api token %q already revoked at %s: %w", id, t.RevokedAt.Format(time.RFC3339), cpapi.ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE api_tokens SET revoked_at = ? WHERE id = ?`, nanos(at), id); err != nil {
			return fmt.Errorf("controlplane: revoke api token %q: %w", id, err)
		}
		if _, err := s.appendAudit(ctx, tx, audit); err != nil {
			return err
		}
		at := fromNanos(nanos(at))
		t.RevokedAt = &at
		out = t
		return nil
	})
	return out, err
}
