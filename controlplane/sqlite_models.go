package controlplane

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// The model registry of SQLiteStore: model files (signed by the control
// plane) and the deployment stacks of (name, selector).

const modelsSQL = `
CREATE TABLE models (
	name      TEXT NOT NULL,
	version   TEXT NOT NULL,
	digest    TEXT NOT NULL,
	meta      TEXT NOT NULL,
	file      BLOB NOT NULL,
	pushed_at INTEGER NOT NULL,
	PRIMARY KEY (name, version)
);
CREATE TABLE model_deployments (
	seq            INTEGER PRIMARY KEY,
	name           TEXT NOT NULL,
	version        TEXT NOT NULL,
	selector       TEXT NOT NULL,
	deployed_at    INTEGER NOT NULL,
	deployed_by    TEXT NOT NULL,
	rolled_back_at INTEGER,
	rolled_back_by TEXT,
	FOREIGN KEY (name, version) REFERENCES models (name, version)
);
CREATE INDEX model_deployments_stack ON model_deployments (name, selector, seq);
`

// PutModel stores a model version unless it is there already.
func (s *SQLiteStore) PutModel(ctx context.Context, m cpapi.Model, file []byte, audit AuditEntry) (bool, error) {
	meta, err := json.Marshal(m)
	if err != nil {
		return false, fmt.Errorf("controlplane: put model: %w", err)
	}
	created := false
	err = s.inTx(ctx, "put model", func(ctx context.Context, tx *sql.Tx) error {
		var digest string
		err := tx.QueryRowContext(ctx, `SELECT digest FROM models WHERE name = ? AND version = ?`, m.Name, m.Version).Scan(&digest)
		switch {
		case err == nil && digest == m.Digest:
			audit.Result = "ok (already stored)"
		case err == nil:
			return fmt.Errorf("controlplane: model %s version %s is stored with digest %s; this file has %s (push it under a new version): %w",
				m.Name, m.Version, digest, m.Digest, cpapi.ErrConflict)
		case errors.Is(err, sql.ErrNoRows):
			if _, err := tx.ExecContext(ctx, `INSERT INTO models (name, version, digest, meta, file, pushed_at) VALUES (?, ?, ?, ?, ?, ?)`,
				m.Name, m.Version, m.Digest, string(meta), file, nanos(m.PushedAt)); err != nil {
				return fmt.Errorf("controlplane: put model: %w", err)
			}
			created = true
		default:
			return fmt.Errorf("controlplane: put model: %w", err)
		}
		_, err = s.appendAudit(ctx, tx, audit)
		return err
	})
	return created, err
}

func scanModel(sc interface{ Scan(...any) error }) (cpapi.Model, error) {
	var meta string
	var m cpapi.Model
	if err := sc.Scan(&meta); err != nil {
		return m, err
	}
	if err := json.Unmarshal([]byte(meta), &m); err != nil {
		return m, fmt.Errorf("stored model description: %w", err)
	}
	return m, nil
}

// ListModels returns every version by name and push time.
func (s *SQLiteStore) ListModels(ctx context.Context) ([]cpapi.Model, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT meta FROM models ORDER BY name, pushed_at, version`)
	if err != nil {
		return nil, fmt.Errorf("controlplane: list models: %w", err)
	}
	defer rows.Close()
	out := []cpapi.Model{}
	for rows.Next() {
		m, err := scanModel(rows)
		if err != nil {
			return nil, fmt.Errorf("controlplane: list models: %w", err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("controlplane: list models: %w", err)
	}
	return out, nil
}

// GetModel describes one version.
func (s *SQLiteStore) GetModel(ctx context.Context, name, version string) (cpapi.Model, error) {
	if err := s.check(); err != nil {
		return cpapi.Model{}, err
	}
	m, err := scanModel(s.r.QueryRowContext(ctx, `SELECT meta FROM models WHERE name = ? AND version = ?`, name, version))
	if errors.Is(err, sql.ErrNoRows) {
		return m, fmt.Errorf("controlplane: model %s version %s: %w", name, version, cpapi.ErrNotFound)
	}
	if err != nil {
		return m, fmt.Errorf("controlplane: get model: %w", err)
	}
	return m, nil
}

// ModelFile returns the signed file of one version.
func (s *SQLiteStore) ModelFile(ctx context.Context, name, version string) ([]byte, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	var b []byte
	err := s.r.QueryRowContext(ctx, `SELECT file FROM models WHERE name = ? AND version = ?`, name, version).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("controlplane: model %s version %s: %w", name, version, cpapi.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("controlplane: model file: %w", err)
	}
	return b, nil
}

const deploymentColumns = `seq, name, version, selector, deployed_at, deployed_by, rolled_back_at, rolled_back_by`

// scanDeployment scans deploymentColumns, then extra.
func scanDeployment(sc interface{ Scan(...any) error }, extra ...any) (cpapi.ModelDeployment, error) {
	var d cpapi.ModelDeployment
	var at int64
	var rbAt sql.NullInt64
	var rbBy sql.NullString
	if err := sc.Scan(append([]any{&d.Seq, &d.Name, &d.Version, &d.Selector, &at, &d.DeployedBy, &rbAt, &rbBy}, extra...)...); err != nil {
		return d, err
	}
	d.DeployedAt, d.RolledBackAt, d.RolledBackBy = fromNanos(at), timePtr(rbAt), rbBy.String
	return d, nil
}

// activeDeployment returns the active deployment of (name, selector), or
// sql.ErrNoRows.
func activeDeployment(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, name, selector string) (cpapi.ModelDeployment, error) {
	d, err := scanDeployment(q.QueryRowContext(ctx, `SELECT `+deploymentColumns+` FROM model_deployments
		WHERE name = ? AND selector = ? AND rolled_back_at IS NULL ORDER BY seq DESC LIMIT 1`, name, selector))
	d.Active = err == nil
	return d, err
}

// DeployModel pushes a deployment unless its version is active already.
func (s *SQLiteStore) DeployModel(ctx context.Context, d cpapi.ModelDeployment, audit AuditEntry) (cpapi.ModelDeployment, bool, error) {
	var out cpapi.ModelDeployment
	changed := false
	err := s.inTx(ctx, "deploy model", func(ctx context.Context, tx *sql.Tx) error {
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM models WHERE name = ? AND version = ?`, d.Name, d.Version).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("controlplane: model %s version %s is not in the registry (push it first): %w", d.Name, d.Version, cpapi.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("controlplane: deploy model: %w", err)
		}
		cur, err := activeDeployment(ctx, tx, d.Name, d.Selector)
		switch {
		case err == nil && cur.Version == d.Version:
			out = cur
			audit.Result = "ok (already active)"
		case err == nil || errors.Is(err, sql.ErrNoRows):
			out, err = scanDeployment(tx.QueryRowContext(ctx, `INSERT INTO model_deployments (name, version, selector, deployed_at, deployed_by)
				VALUES (?, ?, ?, ?, ?) RETURNING `+deploymentColumns, d.Name, d.Version, d.Selector, nanos(d.DeployedAt), d.DeployedBy))
			if err != nil {
				return fmt.Errorf("controlplane: deploy model: %w", err)
			}
			out.Active, changed = true, true
		default:
			return fmt.Errorf("controlplane: deploy model: %w", err)
		}
		_, err = s.appendAudit(ctx, tx, audit)
		return err
	})
	return out, changed, err
}

// RollbackModel pops the deployment stack of (name, selector).
func (s *SQLiteStore) RollbackModel(ctx context.Context, name, selector string, at time.Time, by string, audit AuditEntry) (cpapi.ModelDeployment, cpapi.ModelDeployment, error) {
	var rolled, active cpapi.ModelDeployment
	err := s.inTx(ctx, "roll back model", func(ctx context.Context, tx *sql.Tx) error {
		cur, err := activeDeployment(ctx, tx, name, selector)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("controlplane: model %s is not deployed to %s: %w", name, selector, cpapi.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("controlplane: roll back model: %w", err)
		}
		prev, err := scanDeployment(tx.QueryRowContext(ctx, `SELECT `+deploymentColumns+` FROM model_deployments
			WHERE name = ? AND selector = ? AND rolled_back_at IS NULL AND seq < ? ORDER BY seq DESC LIMIT 1`, name, selector, cur.Seq))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("controlplane: model %s on %s: version %s is the first deployment, there is none to return to: %w", name, selector, cur.Version, cpapi.ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("controlplane: roll back model: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE model_deployments SET rolled_back_at = ?, rolled_back_by = ? WHERE seq = ?`, nanos(at), by, cur.Seq); err != nil {
			return fmt.Errorf("controlplane: roll back model: %w", err)
		}
		t := fromNanos(nanos(at))
		cur.RolledBackAt, cur.RolledBackBy, cur.Active = &t, by, false
		prev.Active = true
		rolled, active = cur, prev
		_, err = s.appendAudit(ctx, tx, audit)
		return err
	})
	return rolled, active, err
}

// UndeployModel empties the deployment stack of (name, selector).
func (s *SQLiteStore) UndeployModel(ctx context.Context, name, selector string, at time.Time, by string, audit AuditEntry) ([]cpapi.ModelDeployment, error) {
	var ended []cpapi.ModelDeployment
	err := s.inTx(ctx, "undeploy model", func(ctx context.Context, tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT `+deploymentColumns+` FROM model_deployments
			WHERE name = ? AND selector = ? AND rolled_back_at IS NULL ORDER BY seq DESC`, name, selector)
		if err != nil {
			return fmt.Errorf("controlplane: undeploy model: %w", err)
		}
		for rows.Next() {
			d, err := scanDeployment(rows)
			if err != nil {
				rows.Close()
				return fmt.Errorf("controlplane: undeploy model: %w", err)
			}
			ended = append(ended, d)
		}
		if err := rows.Close(); err != nil {
			return fmt.Errorf("controlplane: undeploy model: %w", err)
		}
		if len(ended) == 0 {
			return fmt.Errorf("controlplane: model %s is not deployed to %s: %w", name, selector, cpapi.ErrNotFound)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE model_deployments SET rolled_back_at = ?, rolled_back_by = ?
			WHERE name = ? AND selector = ? AND rolled_back_at IS NULL`, nanos(at), by, name, selector); err != nil {
			return fmt.Errorf("controlplane: undeploy model: %w", err)
		}
		t := fromNanos(nanos(at))
		for i := range ended {
			ended[i].RolledBackAt, ended[i].RolledBackBy, ended[i].Active = &t, by, false
		}
		_, err = s.appendAudit(ctx, tx, audit)
		return err
	})
	return ended, err
}

// ModelDeployments returns deployments newest first.
func (s *SQLiteStore) ModelDeployments(ctx context.Context, name string, activeOnly bool) ([]cpapi.ModelDeployment, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT `+deploymentColumns+`,
		seq = (SELECT MAX(seq) FROM model_deployments m WHERE m.name = d.name AND m.selector = d.selector AND m.rolled_back_at IS NULL) AS active
		FROM model_deployments d WHERE (? = '' OR name = ?) ORDER BY seq DESC`, name, name)
	if err != nil {
		return nil, fmt.Errorf("controlplane: model deployments: %w", err)
	}
	defer rows.Close()
	out := []cpapi.ModelDeployment{}
	for rows.Next() {
		var active sql.NullBool
		d, err := scanDeployment(rows, &active)
		if err != nil {
			return nil, fmt.Errorf("controlplane: model deployments: %w", err)
		}
		d.Active = active.Bool
		if activeOnly && !d.Active {
			continue
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("controlplane: model deployments: %w", err)
	}
	return out, nil
}
