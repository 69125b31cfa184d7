package controlplane

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// The agent registry of SQLiteStore: records, group-committed
// heartbeats, labels, decommissioning and revoked certificates.

const agentColumns = `id, name, labels, version, os, arch, first_seen, last_seen, health, resources,
	cert_serial, cert_not_after, enrollment_token_id, decommissioned_at`

func scanAgent(sc interface{ Scan(...any) error }, extra ...any) (cpapi.Agent, error) {
	var a cpapi.Agent
	var labels string
	var first, last, notAfter int64
	var health, resources sql.NullString
	var decom sql.NullInt64
	dest := []any{&a.ID, &a.Name, &labels, &a.Version, &a.OS, &a.Arch, &first, &last, &health, &resources,
		&a.CertSerial, &notAfter, &a.EnrollmentTokenID, &decom}
	if err := sc.Scan(append(dest, extra...)...); err != nil {
		return a, err
	}
	var err error
	if a.Labels, err = unmarshalLabels(labels); err != nil {
		return a, err
	}
	a.FirstSeen, a.LastSeen, a.CertNotAfter, a.DecommissionedAt = fromNanos(first), fromNanos(last), fromNanos(notAfter), timePtr(decom)
	if health.Valid {
		a.Health = new(cpapi.Health)
		if err := json.Unmarshal([]byte(health.String), a.Health); err != nil {
			return a, fmt.Errorf("controlplane: stored health of %s: %w", a.ID, err)
		}
	}
	if resources.Valid {
		a.Resources = new(cpapi.Resources)
		if err := json.Unmarshal([]byte(resources.String), a.Resources); err != nil {
			return a, fmt.Errorf("controlplane: stored resources of %s: %w", a.ID, err)
		}
	}
	return a, nil
}

func (s *SQLiteStore) getAgent(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, id string) (cpapi.Agent, error) {
	var xw, md []byte
	a, err := scanAgent(q.QueryRowContext(ctx, `SELECT `+agentColumns+`, xwing_public, mldsa_public FROM agents WHERE id = ?`, id), &xw, &md)
	if errors.Is(err, sql.ErrNoRows) {
		return a, fmt.Errorf("controlplane: agent %q: %w", id, cpapi.ErrNotFound)
	}
	if err != nil {
		return a, fmt.Errorf("controlplane: get agent %q: %w", id, err)
	}
	a.XWingPublic, a.MLDSAPublic = xw, md
	return a, nil
}

// GetAgent returns one agent with its public keys.
func (s *SQLiteStore) GetAgent(ctx context.Context, id string) (cpapi.Agent, error) {
	if err := s.check(); err != nil {
		return cpapi.Agent{}, err
	}
	return s.getAgent(ctx, s.r, id)
}

// ListAgents returns all agents ordered by id.
func (s *SQLiteStore) ListAgents(ctx context.Context) ([]cpapi.Agent, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT `+agentColumns+` FROM agents ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("controlplane: list agents: %w", err)
	}
	defer rows.Close()
	out := []cpapi.Agent{}
	for rows.Next() {
		a, err := scanAgent(rows)
		if err != nil {
			return nil, fmt.Errorf("controlplane: list agents: %w", err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("controlplane: list agents: %w", err)
	}
	return out, nil
}

// agentGone explains why agent id cannot be updated: it does not exist or
// was decommissioned.
func (s *SQLiteStore) agentGone(ctx context.Context, id string) error {
	var decom sql.NullInt64
	err := s.stGetAgentID.QueryRowContext(ctx, id).Scan(&decom)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("controlplane: agent %q: %w", id, cpapi.ErrNotFound)
	case err != nil:
		return fmt.Errorf("controlplane: agent %q: %w", id, err)
	case decom.Valid:
		return fmt.Errorf("controlplane: agent %q: %w", id, ErrDecommissioned)
	}
	return nil
}

// heartbeatReq is one heartbeat waiting for the group commit.
type heartbeatReq struct {
	id   string
	hb   cpapi.Heartbeat
	at   time.Time
	done chan heartbeatRes
}

type heartbeatRes struct {
	agent cpapi.Agent
	err   error
}

// maxHeartbeatGroup bounds the heartbeats committed in one transaction.
const maxHeartbeatGroup = 512

// RecordHeartbeat stores a heartbeat. Heartbeats are group-committed: one
// goroutine writes every heartbeat that arrived while the previous commit
// was running in a single transaction, so that with synchronous=FULL a
// thousand heartbeats per second cost tens of fsyncs, not a thousand.
// The call returns once its heartbeat is committed.
func (s *SQLiteStore) RecordHeartbeat(ctx context.Context, id string, hb cpapi.Heartbeat, at time.Time) (cpapi.Agent, error) {
	if err := s.check(); err != nil {
		return cpapi.Agent{}, err
	}
	req := &heartbeatReq{id: id, hb: hb, at: at, done: make(chan heartbeatRes, 1)}
	select {
	case s.hbQueue <- req:
	case <-s.hbStopped:
		return cpapi.Agent{}, ErrClosed
	case <-ctx.Done():
		return cpapi.Agent{}, ctx.Err()
	}
	var res heartbeatRes
	select {
	case res = <-req.done:
	case <-s.hbStopped:
		// The writer answers everything it took before stopping.
		select {
		case res = <-req.done:
		default:
			return cpapi.Agent{}, ErrClosed
		}
	}
	if errors.Is(res.err, sql.ErrNoRows) {
		if gone := s.agentGone(context.WithoutCancel(ctx), id); gone != nil {
			return cpapi.Agent{}, gone
		}
		return cpapi.Agent{}, fmt.Errorf("controlplane: heartbeat %q: %w", id, cpapi.ErrNotFound)
	}
	if res.err != nil {
		return cpapi.Agent{}, fmt.Errorf("controlplane: heartbeat %q: %w", id, res.err)
	}
	return res.agent, nil
}

// heartbeatWriter is the group-commit loop; it runs until hbStop closes.
func (s *SQLiteStore) heartbeatWriter() {
	defer close(s.hbStopped)
	group := make([]*heartbeatReq, 0, maxHeartbeatGroup)
	for {
		select {
		case r := <-s.hbQueue:
			group = append(group, r)
		case <-s.hbStop:
			return
		}
	collect:
		for len(group) < maxHeartbeatGroup {
			select {
			case r := <-s.hbQueue:
				group = append(group, r)
			default:
				break collect
			}
		}
		s.writeHeartbeats(group)
		clear(group)
		group = group[:0]
	}
}

func (s *SQLiteStore) writeHeartbeats(group []*heartbeatReq) {
	ctx := context.Background()
	res := make([]heartbeatRes, len(group))
	err := func() error {
		// Heartbeats only move last_seen and status forward; losing the
		// newest ones to a power failure (never to a crash) is harmless,
		// so they skip the fsync that every other commit pays. The next
		// FULL commit makes them durable as well.
		conn, err := s.writer(ctx, "NORMAL")
		if err != nil {
			return err
		}
		defer conn.Close()
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		st := tx.StmtContext(ctx, s.stHeartbeat)
		defer st.Close()
		for i, r := range group {
			hb := &r.hb
			res[i].agent, res[i].err = scanAgent(st.QueryRowContext(ctx, nanos(r.at),
				hb.Name, hb.Name, hb.Version, hb.Version, hb.OS, hb.OS, hb.Arch, hb.Arch,
				marshalNullable(hb.Health), marshalNullable(hb.Resources), r.id))
		}
		return tx.Commit()
	}()
	for i, r := range group {
		if err != nil {
			res[i] = heartbeatRes{err: fmt.Errorf("group commit: %w", err)}
		}
		r.done <- res[i]
	}
}

// UpdateAgentLabels edits labels.
func (s *SQLiteStore) UpdateAgentLabels(ctx context.Context, id string, set map[string]string, remove []string, audit AuditEntry) (cpapi.Agent, error) {
	var out cpapi.Agent
	err := s.inTx(ctx, "update labels", func(ctx context.Context, tx *sql.Tx) error {
		a, err := s.getAgent(ctx, tx, id)
		if err != nil {
			return err
		}
		if a.DecommissionedAt != nil {
			return fmt.Errorf("controlplane: agent %q: %w", id, ErrDecommissioned)
		}
		labels := maps.Clone(a.Labels)
		for _, k := range remove {
			delete(labels, k)
		}
		maps.Copy(labels, set)
		if _, err := tx.ExecContext(ctx, `UPDATE agents SET labels = ? WHERE id = ?`, marshalLabels(labels), id); err != nil {
			return fmt.Errorf("controlplane: update labels of %q: %w", id, err)
		}
		if _, err := s.appendAudit(ctx, tx, audit); err != nil {
			return err
		}
		a.Labels = labels
		out = a
		return nil
	})
	return out, err
}

// DecommissionAgent marks an agent decommissioned and revokes its
// certificate.
func (s *SQLiteStore) DecommissionAgent(ctx context.Context, id string, at time.Time, audit AuditEntry) (cpapi.Agent, error) {
	var out cpapi.Agent
	err := s.inTx(ctx, "decommission", func(ctx context.Context, tx *sql.Tx) error {
		a, err := s.getAgent(ctx, tx, id)
		if err != nil {
			return err
		}
		if a.DecommissionedAt != nil {
			return fmt.Errorf("controlplane: agent %q was decommissioned at %s: %w", id, a.DecommissionedAt.Format(time.RFC3339), ErrDecommissioned)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE agents SET decommissioned_at = ? WHERE id = ?`, nanos(at), id); err != nil {
			return fmt.Errorf("controlplane: decommission %q: %w", id, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO revoked_certs (serial, agent_id, revoked_at) VALUES (?, ?, ?)
			ON CONFLICT DO NOTHING`, a.CertSerial, id, nanos(at)); err != nil {
			return fmt.Errorf("controlplane: revoke certificate of %q: %w", id, err)
		}
		if _, err := s.appendAudit(ctx, tx, audit); err != nil {
			return err
		}
		at := fromNanos(nanos(at))
		a.DecommissionedAt = &at
		out = a
		return nil
	})
	return out, err
}

// RevokedSerials lists every revoked certificate serial.
func (s *SQLiteStore) RevokedSerials(ctx context.Context) ([]string, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT serial FROM revoked_certs`)
	if err != nil {
		return nil, fmt.Errorf("controlplane: revoked serials: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, fmt.Errorf("controlplane: revoked serials: %w", err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("controlplane: revoked serials: %w", err)
	}
	return out, nil
}
