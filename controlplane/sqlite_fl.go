package controlplane

import (
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// Federated learning in SQLiteStore: jobs with the coordinator's state
// (coord.State, JSON), round attempts with their metrics and the global
// model after each aggregated round, and the accepted updates by (job,
// round, attempt, agent): that key is what makes an update count once,
// across restarts too. An update is stored as it arrived, sealed under
// the telemetry key: no client's delta is in clear at rest.

const flSQL = `
CREATE TABLE fl_jobs (
	id            TEXT PRIMARY KEY,
	meta          TEXT NOT NULL,
	state         TEXT NOT NULL,
	status        TEXT NOT NULL,
	created_at    INTEGER NOT NULL
);
CREATE TABLE fl_rounds (
	job_id  TEXT NOT NULL REFERENCES fl_jobs (id),
	round   INTEGER NOT NULL,
	attempt INTEGER NOT NULL,
	record  TEXT NOT NULL,
	global  BLOB,
	PRIMARY KEY (job_id, round, attempt)
);
CREATE TABLE fl_updates (
	job_id      TEXT NOT NULL REFERENCES fl_jobs (id),
	round       INTEGER NOT NULL,
	attempt     INTEGER NOT NULL,
	agent_id    TEXT NOT NULL,
	examples    INTEGER NOT NULL,
	envelope    BLOB NOT NULL,
	received_at INTEGER NOT NULL,
	PRIMARY KEY (job_id, round, attempt, agent_id)
) WITHOUT ROWID;
`

// FLSave is one atomic change of a job: its description and the
// coordinator's state, and optionally an accepted update, round records
// (inserted or replaced) with the global model after them, and an audit
// entry.
type FLSave struct {
	Job    cpapi.FLJob
	State  []byte
	Update *FLStoredUpdate
	Rounds []cpapi.FLRound
	// Globals holds the global model after round n (aggregated attempts).
	Globals map[int][]float64
	Audit   *AuditEntry
	// Create inserts the job instead of updating it.
	Create bool
}

// FLStoredUpdate is an accepted update: its sealed envelope, opened with
// cpapi.FLUpdateAAD(Agent, job, Round, Attempt).
type FLStoredUpdate struct {
	Round, Attempt int
	Agent          string
	Examples       int
	Envelope       []byte
	ReceivedAt     int64
}

func encodeF64(v []float64) []byte {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(x))
	}
	return b
}

func decodeF64(b []byte) ([]float64, error) {
	if len(b)%8 != 0 {
		return nil, fmt.Errorf("stored global model of %d bytes", len(b))
	}
	v := make([]float64, len(b)/8)
	for i := range v {
		v[i] = math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
	}
	return v, nil
}

// SaveFL writes a change of a job in one transaction. An update stored
// before under the same (job, round, attempt, agent) fails with
// cpapi.ErrConflict and writes nothing.
func (s *SQLiteStore) SaveFL(ctx context.Context, f FLSave) error {
	meta, err := json.Marshal(f.Job)
	if err != nil {
		return fmt.Errorf("controlplane: save fl job: %w", err)
	}
	return s.inTx(ctx, "save fl job", func(ctx context.Context, tx *sql.Tx) error {
		if f.Create {
			if _, err := tx.ExecContext(ctx, `INSERT INTO fl_jobs (id, meta, state, status, created_at) VALUES (?, ?, ?, ?, ?)`,
				f.Job.ID, string(meta), string(f.State), f.Job.Status, nanos(f.Job.Created)); err != nil {
				return fmt.Errorf("controlplane: create fl job %s: %w", f.Job.ID, err)
			}
		} else {
			res, err := tx.ExecContext(ctx, `UPDATE fl_jobs SET meta = ?, state = ?, status = ? WHERE id = ?`, string(meta), string(f.State), f.Job.Status, f.Job.ID)
			if err != nil {
				return fmt.Errorf("controlplane: save fl job %s: %w", f.Job.ID, err)
			}
			if n, _ := res.RowsAffected(); n != 1 {
				return fmt.Errorf("controlplane: fl job %s: %w", f.Job.ID, cpapi.ErrNotFound)
			}
		}
		if u := f.Update; u != nil {
			var one int
			err := tx.QueryRowContext(ctx, `SELECT 1 FROM fl_updates WHERE job_id = ? AND round = ? AND attempt = ? AND agent_id = ?`,
				f.Job.ID, u.Round, u.Attempt, u.Agent).Scan(&one)
			if err == nil {
				return fmt.Errorf("controlplane: update of agent %s for job %s round %d attempt %d is stored already: %w", u.Agent, f.Job.ID, u.Round, u.Attempt, cpapi.ErrConflict)
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("controlplane: save fl update: %w", err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO fl_updates (job_id, round, attempt, agent_id, examples, envelope, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
				f.Job.ID, u.Round, u.Attempt, u.Agent, u.Examples, u.Envelope, u.ReceivedAt); err != nil {
				return fmt.Errorf("controlplane: save fl update: %w", err)
			}
		}
		for _, r := range f.Rounds {
			rec, err := json.Marshal(r)
			if err != nil {
				return fmt.Errorf("controlplane: save fl round: %w", err)
			}
			var global []byte
			if g, ok := f.Globals[r.Round]; ok && r.Phase == "aggregated" {
				global = encodeF64(g)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO fl_rounds (job_id, round, attempt, record, global) VALUES (?, ?, ?, ?, ?)
				ON CONFLICT (job_id, round, attempt) DO UPDATE SET record = excluded.record, global = COALESCE(excluded.global, global)`,
				f.Job.ID, r.Round, r.Attempt, string(rec), global); err != nil {
				return fmt.Errorf("controlplane: save fl round: %w", err)
			}
		}
		if f.Audit != nil {
			if _, err := s.appendAudit(ctx, tx, *f.Audit); err != nil {
				return err
			}
		}
		return nil
	})
}

// FLJobs returns every job with its coordinator state, newest first.
func (s *SQLiteStore) FLJobs(ctx context.Context) ([]cpapi.FLJob, [][]byte, error) {
	if err := s.check(); err != nil {
		return nil, nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT meta, state FROM fl_jobs ORDER BY created_at DESC, id`)
	if err != nil {
		return nil, nil, fmt.Errorf("controlplane: list fl jobs: %w", err)
	}
	defer rows.Close()
	jobs, states := []cpapi.FLJob{}, [][]byte{}
	for rows.Next() {
		var meta, state string
		var j cpapi.FLJob
		if err := rows.Scan(&meta, &state); err != nil {
			return nil, nil, fmt.Errorf("controlplane: list fl jobs: %w", err)
		}
		if err := json.Unmarshal([]byte(meta), &j); err != nil {
			return nil, nil, fmt.Errorf("controlplane: stored fl job: %w", err)
		}
		jobs, states = append(jobs, j), append(states, []byte(state))
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("controlplane: list fl jobs: %w", err)
	}
	return jobs, states, nil
}

// FLRounds returns a job's stored round attempts in order.
func (s *SQLiteStore) FLRounds(ctx context.Context, job string) ([]cpapi.FLRound, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT record FROM fl_rounds WHERE job_id = ? ORDER BY round, attempt`, job)
	if err != nil {
		return nil, fmt.Errorf("controlplane: fl rounds: %w", err)
	}
	defer rows.Close()
	out := []cpapi.FLRound{}
	for rows.Next() {
		var rec string
		var r cpapi.FLRound
		if err := rows.Scan(&rec); err != nil {
			return nil, fmt.Errorf("controlplane: fl rounds: %w", err)
		}
		if err := json.Unmarshal([]byte(rec), &r); err != nil {
			return nil, fmt.Errorf("controlplane: stored fl round: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// FLGlobal returns the global model after an aggregated round.
func (s *SQLiteStore) FLGlobal(ctx context.Context, job string, round int) ([]float64, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	var b []byte
	err := s.r.QueryRowContext(ctx, `SELECT global FROM fl_rounds WHERE job_id = ? AND round = ? AND global IS NOT NULL`, job, round).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("controlplane: fl job %s round %d: no global model: %w", job, round, cpapi.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("controlplane: fl global model: %w", err)
	}
	return decodeF64(b)
}

// FLUpdates returns the accepted updates of one round attempt, sealed,
// by agent.
func (s *SQLiteStore) FLUpdates(ctx context.Context, job string, round, attempt int) ([]FLStoredUpdate, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT agent_id, examples, envelope, received_at FROM fl_updates WHERE job_id = ? AND round = ? AND attempt = ? ORDER BY agent_id`, job, round, attempt)
	if err != nil {
		return nil, fmt.Errorf("controlplane: fl updates: %w", err)
	}
	defer rows.Close()
	var out []FLStoredUpdate
	for rows.Next() {
		u := FLStoredUpdate{Round: round, Attempt: attempt}
		if err := rows.Scan(&u.Agent, &u.Examples, &u.Envelope, &u.ReceivedAt); err != nil {
			return nil, fmt.Errorf("controlplane: fl updates: %w", err)
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// FLUpdateCounts returns, per (round, attempt) "r/a", how many updates
// are stored for a job and how many distinct agents sent them; a test of
// the count-once rule reads it.
func (s *SQLiteStore) FLUpdateCounts(ctx context.Context, job string) (map[string][2]int, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT round, attempt, COUNT(*), COUNT(DISTINCT agent_id) FROM fl_updates WHERE job_id = ? GROUP BY round, attempt`, job)
	if err != nil {
		return nil, fmt.Errorf("controlplane: fl update counts: %w", err)
	}
	defer rows.Close()
	out := map[string][2]int{}
	for rows.Next() {
		var r, a, n, d int
		if err := rows.Scan(&r, &a, &n, &d); err != nil {
			return nil, err
		}
		out[fmt.Sprintf("%d/%d", r, a)] = [2]int{n, d}
	}
	return out, rows.Err()
}
