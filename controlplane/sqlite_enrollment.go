package controlplane

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// Enrollment tokens and enrollment of SQLiteStore.

// enrollmentsSQL keeps the answer of each enrollment (the agent and the
// certificate issued), by token: a client that lost the answer retries
// with the same token and keys and gets it again (see Server.enrollRetry).
const enrollmentsSQL = `
CREATE TABLE enrollments (
	token_id    TEXT PRIMARY KEY REFERENCES enrollment_tokens(id),
	agent_id    TEXT NOT NULL REFERENCES agents(id),
	certificate TEXT NOT NULL
);
`

// CreateEnrollmentTokens stores tokens.
func (s *SQLiteStore) CreateEnrollmentTokens(ctx context.Context, tokens []cpapi.EnrollmentToken, audit AuditEntry) error {
	return s.inTx(ctx, "create enrollment tokens", func(ctx context.Context, tx *sql.Tx) error {
		st, err := tx.PrepareContext(ctx, `INSERT INTO enrollment_tokens (id, hash, labels, created_at, created_by, expires_at) VALUES (?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return fmt.Errorf("controlplane: create enrollment tokens: %w", err)
		}
		defer st.Close()
		for _, t := range tokens {
			if _, err := st.ExecContext(ctx, t.ID, t.Hash, marshalLabels(t.Labels), nanos(t.CreatedAt), t.CreatedBy, nanos(t.ExpiresAt)); err != nil {
				return fmt.Errorf("controlplane: create enrollment token %s: %w", t.ID, err)
			}
		}
		_, err = s.appendAudit(ctx, tx, audit)
		return err
	})
}

const enrollmentColumns = `id, hash, labels, created_at, created_by, expires_at, used_at, used_by`

func scanEnrollmentToken(sc interface{ Scan(...any) error }, now time.Time) (cpapi.EnrollmentToken, error) {
	var t cpapi.EnrollmentToken
	var labels string
	var created, expires int64
	var used sql.NullInt64
	var usedBy sql.NullString
	if err := sc.Scan(&t.ID, &t.Hash, &labels, &created, &t.CreatedBy, &expires, &used, &usedBy); err != nil {
		return t, err
	}
	var err error
	if t.Labels, err = unmarshalLabels(labels); err != nil {
		return t, err
	}
	t.CreatedAt, t.ExpiresAt, t.UsedAt, t.UsedBy = fromNanos(created), fromNanos(expires), timePtr(used), usedBy.String
	switch {
	case t.UsedAt != nil:
		t.State = "used"
	case !now.IsZero() && !now.Before(t.ExpiresAt):
		t.State = "expired"
	default:
		t.State = "unused"
	}
	return t, nil
}

// ListEnrollmentTokens returns every enrollment token, newest first.
func (s *SQLiteStore) ListEnrollmentTokens(ctx context.Context, now time.Time) ([]cpapi.EnrollmentToken, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT `+enrollmentColumns+` FROM enrollment_tokens ORDER BY created_at DESC, id`)
	if err != nil {
		return nil, fmt.Errorf("controlplane: list enrollment tokens: %w", err)
	}
	defer rows.Close()
	out := []cpapi.EnrollmentToken{}
	for rows.Next() {
		t, err := scanEnrollmentToken(rows, now)
		if err != nil {
			return nil, fmt.Errorf("controlplane: list enrollment tokens: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("controlplane: list enrollment tokens: %w", err)
	}
	return out, nil
}

// LookupEnrollmentToken finds a token by digest.
func (s *SQLiteStore) LookupEnrollmentToken(ctx context.Context, hash string) (cpapi.EnrollmentToken, error) {
	if err := s.check(); err != nil {
		return cpapi.EnrollmentToken{}, err
	}
	t, err := scanEnrollmentToken(s.r.QueryRowContext(ctx, `SELECT `+enrollmentColumns+` FROM enrollment_tokens WHERE hash = ?`, hash), time.Time{})
	if errors.Is(err, sql.ErrNoRows) {
		return t, fmt.Errorf("controlplane: enrollment token: %w", cpapi.ErrNotFound)
	}
	if err != nil {
		return t, fmt.Errorf("controlplane: lookup enrollment token: %w", err)
	}
	return t, nil
}

// EnrollAgent consumes the token and inserts the agent and its
// enrollment answer atomically.
func (s *SQLiteStore) EnrollAgent(ctx context.Context, tokenID string, a cpapi.Agent, certPEM string, now time.Time, audit AuditEntry) error {
	return s.inTx(ctx, "enroll", func(ctx context.Context, tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE enrollment_tokens SET used_at = ?, used_by = ?
			WHERE id = ? AND used_at IS NULL AND expires_at > ?`, nanos(now), a.ID, tokenID, nanos(now))
		if err != nil {
			return fmt.Errorf("controlplane: enroll: consume token: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			var used sql.NullInt64
			var expires int64
			err := tx.QueryRowContext(ctx, `SELECT used_at, expires_at FROM enrollment_tokens WHERE id = ?`, tokenID).Scan(&used, &expires)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				return fmt.Errorf("controlplane: enroll: token %s: %w", tokenID, cpapi.ErrNotFound)
			case err != nil:
				return fmt.Errorf("controlplane: enroll: %w", err)
			case used.Valid:
				return fmt.Errorf("controlplane: enroll: token %s used at %s: %w", tokenID, fromNanos(used.Int64).Format(time.RFC3339), ErrTokenUsed)
			default:
				return fmt.Errorf("controlplane: enroll: token %s expired at %s: %w", tokenID, fromNanos(expires).Format(time.RFC3339), ErrTokenExpired)
			}
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO agents (id, name, labels, version, os, arch, first_seen, last_seen,
			health, resources, cert_serial, cert_not_after, xwing_public, mldsa_public, enrollment_token_id)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, ?, ?, ?)`,
			a.ID, a.Name, marshalLabels(a.Labels), a.Version, a.OS, a.Arch, nanos(a.FirstSeen), nanos(a.LastSeen),
			a.CertSerial, nanos(a.CertNotAfter), nilIfEmpty(a.XWingPublic), nilIfEmpty(a.MLDSAPublic), tokenID)
		if err != nil {
			return fmt.Errorf("controlplane: enroll: insert agent %s: %w", a.ID, err)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO enrollments (token_id, agent_id, certificate) VALUES (?, ?, ?)`, tokenID, a.ID, certPEM)
		if err != nil {
			return fmt.Errorf("controlplane: enroll: record enrollment of %s: %w", a.ID, err)
		}
		_, err = s.appendAudit(ctx, tx, audit)
		return err
	})
}

// LookupEnrollment returns the agent enrolled with token tokenID and the
// certificate it was issued.
func (s *SQLiteStore) LookupEnrollment(ctx context.Context, tokenID string) (agentID, certPEM string, err error) {
	if err := s.check(); err != nil {
		return "", "", err
	}
	err = s.r.QueryRowContext(ctx, `SELECT agent_id, certificate FROM enrollments WHERE token_id = ?`, tokenID).Scan(&agentID, &certPEM)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", fmt.Errorf("controlplane: enrollment of token %s: %w", tokenID, cpapi.ErrNotFound)
	}
	if err != nil {
		return "", "", fmt.Errorf("controlplane: lookup enrollment of token %s: %w", tokenID, err)
	}
	return agentID, certPEM, nil
}

func nilIfEmpty(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}
