package dkms

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// SQLiteStore is the Store of a single SQLite file (modernc.org/sqlite, no
// cgo). It runs with secure_delete on, so erased key material is overwritten
// in the database file, and checkpoints its write-ahead log after material is
// destroyed (see Scrub). Safe for concurrent use.
type SQLiteStore struct {
	db   *sql.DB
	path string
}

const sqliteSchema = `
CREATE TABLE IF NOT EXISTS meta (
	k TEXT PRIMARY KEY,
	v BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
	name       TEXT PRIMARY KEY,
	purpose    TEXT NOT NULL,
	policy     BLOB NOT NULL,
	primary_v  INTEGER NOT NULL,
	latest_v   INTEGER NOT NULL,
	created_ns INTEGER NOT NULL,
	rotated_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS key_versions (
	name        TEXT NOT NULL,
	version     INTEGER NOT NULL,
	state       INTEGER NOT NULL,
	wrapped     BLOB,
	created_ns  INTEGER NOT NULL,
	changed_ns  INTEGER NOT NULL,
	activate_ns INTEGER NOT NULL,
	prevrm_ns   INTEGER NOT NULL,
	PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS agents (
	id            TEXT PRIMARY KEY,
	public_key    BLOB NOT NULL,
	labels        BLOB NOT NULL,
	registered_ns INTEGER NOT NULL,
	revoked_ns    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
	name TEXT PRIMARY KEY,
	data BLOB NOT NULL
);
`

// sqliteDSN returns the data source name path is opened with.
func sqliteDSN(path string) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "secure_delete(ON)")
	q.Set("_txlock", "immediate")
	return path + "?" + q.Encode()
}

// OpenSQLite opens (creating if needed) the key store in the SQLite file at
// path.
func OpenSQLite(path string) (*SQLiteStore, error) {
	if path == "" {
		return nil, fmt.Errorf("dkms: sqlite store needs a path: %w", ErrInvalidConfig)
	}
	db, err := sql.Open("sqlite", sqliteDSN(path))
	if err != nil {
		return nil, fmt.Errorf("dkms: open %s: %w", path, err)
	}
	db.SetMaxOpenConns(4)
	if _, err := db.Exec(sqliteSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("dkms: create schema in %s: %w", path, err)
	}
	return &SQLiteStore{db: db, path: path}, nil
}

// Path is the database file.
func (s *SQLiteStore) Path() string { return s.path }

// Close closes the database.
func (s *SQLiteStore) Close() error { return s.db.Close() }

// Update runs fn in a write transaction (BEGIN IMMEDIATE).
func (s *SQLiteStore) Update(ctx context.Context, fn func(Tx) error) error {
	return s.run(ctx, false, fn)
}

// View runs fn in a read-only transaction.
func (s *SQLiteStore) View(ctx context.Context, fn func(Tx) error) error {
	return s.run(ctx, true, fn)
}

func (s *SQLiteStore) run(ctx context.Context, readOnly bool, fn func(Tx) error) error {
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: readOnly})
	if err != nil {
		return fmt.Errorf("dkms: begin transaction: %w", err)
	}
	if err := fn(&sqliteTx{tx: tx}); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("dkms: commit: %w", err)
	}
	return nil
}

// Scrub checkpoints and truncates the write-ahead log so that pages which
// held erased key material leave it. The key service calls it after
// destroying material.
func (s *SQLiteStore) Scrub(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		return fmt.Errorf("dkms: checkpoint %s: %w", s.path, err)
	}
	return nil
}

// Blob returns a BlobStore that keeps one named value in this database (an
// agent's encrypted keyring, for instance).
func (s *SQLiteStore) Blob(name string) BlobStore { return sqliteBlob{s: s, name: name} }

type sqliteBlob struct {
	s    *SQLiteStore
	name string
}

func (b sqliteBlob) Load(ctx context.Context) ([]byte, error) {
	var data []byte
	err := b.s.db.QueryRowContext(ctx, "SELECT data FROM blobs WHERE name = ?", b.name).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dkms: load blob %q: %w", b.name, err)
	}
	return data, nil
}

func (b sqliteBlob) Save(ctx context.Context, data []byte) error {
	_, err := b.s.db.ExecContext(ctx, "INSERT INTO blobs (name, data) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET data = excluded.data", b.name, data)
	if err != nil {
		return fmt.Errorf("dkms: save blob %q: %w", b.name, err)
	}
	return nil
}

type sqliteTx struct{ tx *sql.Tx }

func nsOf(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func timeOf(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

func notFound(err error, what string) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("dkms: %s: %w", what, ErrNotFound)
	}
	return fmt.Errorf("dkms: read %s: %w", what, err)
}

func (t *sqliteTx) GetMeta(key string) ([]byte, error) {
	var v []byte
	if err := t.tx.QueryRow("SELECT v FROM meta WHERE k = ?", key).Scan(&v); err != nil {
		return nil, notFound(err, "meta "+key)
	}
	return v, nil
}

func (t *sqliteTx) PutMeta(key string, value []byte) error {
	if _, err := t.tx.Exec("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", key, value); err != nil {
		return fmt.Errorf("dkms: write meta %s: %w", key, err)
	}
	return nil
}

func (t *sqliteTx) DeleteMeta(key string) error {
	if _, err := t.tx.Exec("DELETE FROM meta WHERE k = ?", key); err != nil {
		return fmt.Errorf("dkms: delete meta %s: %w", key, err)
	}
	return nil
}

const keyCols = "name, purpose, policy, primary_v, latest_v, created_ns, rotated_ns"

func scanKey(sc interface{ Scan(...any) error }) (*KeyRecord, error) {
	var (
		k                KeyRecord
		purpose          string
		policy           []byte
		created, rotated int64
	)
	if err := sc.Scan(&k.Name, &purpose, &policy, &k.Primary, &k.Latest, &created, &rotated); err != nil {
		return nil, err
	}
	k.Purpose = Purpose(purpose)
	if err := json.Unmarshal(policy, &k.Policy); err != nil {
		return nil, fmt.Errorf("dkms: stored policy of key %q: %v: %w", k.Name, err, ErrMalformed)
	}
	k.CreatedAt, k.RotatedAt = timeOf(created), timeOf(rotated)
	return &k, nil
}

func (t *sqliteTx) GetKey(name string) (*KeyRecord, error) {
	k, err := scanKey(t.tx.QueryRow("SELECT "+keyCols+" FROM keys WHERE name = ?", name))
	if err != nil {
		return nil, notFound(err, fmt.Sprintf("key %q", name))
	}
	return k, nil
}

func (t *sqliteTx) PutKey(k *KeyRecord) error {
	policy, err := json.Marshal(k.Policy)
	if err != nil {
		return fmt.Errorf("dkms: encode policy of key %q: %w", k.Name, err)
	}
	_, err = t.tx.Exec(`INSERT INTO keys (`+keyCols+`) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT(name) DO UPDATE SET purpose = excluded.purpose, policy = excluded.policy,
		primary_v = excluded.primary_v, latest_v = excluded.latest_v, created_ns = excluded.created_ns, rotated_ns = excluded.rotated_ns`,
		k.Name, string(k.Purpose), policy, k.Primary, k.Latest, nsOf(k.CreatedAt), nsOf(k.RotatedAt))
	if err != nil {
		return fmt.Errorf("dkms: write key %q: %w", k.Name, err)
	}
	return nil
}

func (t *sqliteTx) ListKeys() ([]*KeyRecord, error) {
	rows, err := t.tx.Query("SELECT " + keyCols + " FROM keys ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("dkms: list keys: %w", err)
	}
	defer rows.Close()
	var out []*KeyRecord
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, fmt.Errorf("dkms: list keys: %w", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("dkms: list keys: %w", err)
	}
	return out, nil
}

const versionCols = "name, version, state, wrapped, created_ns, changed_ns, activate_ns, prevrm_ns"

func scanVersion(sc interface{ Scan(...any) error }) (*VersionRecord, error) {
	var (
		v                                  VersionRecord
		created, changed, activate, prevrm int64
	)
	if err := sc.Scan(&v.Name, &v.Version, &v.State, &v.Wrapped, &created, &changed, &activate, &prevrm); err != nil {
		return nil, err
	}
	v.CreatedAt, v.ChangedAt, v.ActivateAt, v.PrevRemoveAt = timeOf(created), timeOf(changed), timeOf(activate), timeOf(prevrm)
	return &v, nil
}

func (t *sqliteTx) GetVersion(name string, version uint32) (*VersionRecord, error) {
	v, err := scanVersion(t.tx.QueryRow("SELECT "+versionCols+" FROM key_versions WHERE name = ? AND version = ?", name, version))
	if err != nil {
		return nil, notFound(err, fmt.Sprintf("key %q version %d", name, version))
	}
	return v, nil
}

func (t *sqliteTx) PutVersion(v *VersionRecord) error {
	_, err := t.tx.Exec(`INSERT INTO key_versions (`+versionCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT(name, version) DO UPDATE SET state = excluded.state, wrapped = excluded.wrapped,
		created_ns = excluded.created_ns, changed_ns = excluded.changed_ns, activate_ns = excluded.activate_ns, prevrm_ns = excluded.prevrm_ns`,
		v.Name, v.Version, v.State, v.Wrapped, nsOf(v.CreatedAt), nsOf(v.ChangedAt), nsOf(v.ActivateAt), nsOf(v.PrevRemoveAt))
	if err != nil {
		return fmt.Errorf("dkms: write key %q version %d: %w", v.Name, v.Version, err)
	}
	return nil
}

func (t *sqliteTx) ListVersions(name string) ([]*VersionRecord, error) {
	rows, err := t.tx.Query("SELECT "+versionCols+" FROM key_versions WHERE name = ? ORDER BY version", name)
	if err != nil {
		return nil, fmt.Errorf("dkms: list versions of %q: %w", name, err)
	}
	defer rows.Close()
	var out []*VersionRecord
	for rows.Next() {
		v, err := scanVersion(rows)
		if err != nil {
			return nil, fmt.Errorf("dkms: list versions of %q: %w", name, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("dkms: list versions of %q: %w", name, err)
	}
	return out, nil
}

const agentCols = "id, public_key, labels, registered_ns, revoked_ns"

func scanAgent(sc interface{ Scan(...any) error }) (*AgentRecord, error) {
	var (
		a                   AgentRecord
		labels              []byte
		registered, revoked int64
	)
	if err := sc.Scan(&a.ID, &a.PublicKey, &labels, &registered, &revoked); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(labels, &a.Labels); err != nil {
		return nil, fmt.Errorf("dkms: stored labels of agent %q: %v: %w", a.ID, err, ErrMalformed)
	}
	a.RegisteredAt, a.RevokedAt = timeOf(registered), timeOf(revoked)
	return &a, nil
}

func (t *sqliteTx) GetAgent(id string) (*AgentRecord, error) {
	a, err := scanAgent(t.tx.QueryRow("SELECT "+agentCols+" FROM agents WHERE id = ?", id))
	if err != nil {
		return nil, notFound(err, fmt.Sprintf("agent %q", id))
	}
	return a, nil
}

func (t *sqliteTx) PutAgent(a *AgentRecord) error {
	labels, err := json.Marshal(a.Labels)
	if err != nil {
		return fmt.Errorf("dkms: encode labels of agent %q: %w", a.ID, err)
	}
	_, err = t.tx.Exec(`INSERT INTO agents (`+agentCols+`) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT(id) DO UPDATE SET public_key = excluded.public_key, labels = excluded.labels,
		registered_ns = excluded.registered_ns, revoked_ns = excluded.revoked_ns`,
		a.ID, a.PublicKey, labels, nsOf(a.RegisteredAt), nsOf(a.RevokedAt))
	if err != nil {
		return fmt.Errorf("dkms: write agent %q: %w", a.ID, err)
	}
	return nil
}

func (t *sqliteTx) ListAgents() ([]*AgentRecord, error) {
	rows, err := t.tx.Query("SELECT " + agentCols + " FROM agents ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("dkms: list agents: %w", err)
	}
	defer rows.Close()
	var out []*AgentRecord
	for rows.Next() {
		a, err := scanAgent(rows)
		if err != nil {
			return nil, fmt.Errorf("dkms: list agents: %w", err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("dkms: list agents: %w", err)
	}
	return out, nil
}
