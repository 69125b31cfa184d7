package controlplane

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// schemaVersion is stored in PRAGMA user_version. schemaSQL creates the
// current version; migrations[v] brings version v to v+1.
const schemaVersion = 6

// migrations: version 2 keys telemetry_batches by (agent_id, epoch,
// batch_seq) and records each batch's digest. Batches stored before
// keep the empty epoch and no digest: no agent sends an empty epoch, so they
// match no new upload. Version 3 adds the model registry, version 4
// federated learning (sqlite_fl.go). Version 5 adds enrollment answers
// (enrollments), kept so that a retried enrollment is answered again;
// agents enrolled before have none, and their tokens refuse every retry
// as before. Version 6 adds the device identities (sqlite_devices.go).
var migrations = map[int]string{
	5: devicesSQL,
	4: enrollmentsSQL,
	3: flSQL,
	2: modelsSQL,
	1: `
ALTER TABLE telemetry_batches RENAME TO telemetry_batches_v1;
` + telemetryBatchesSQL + `
INSERT INTO telemetry_batches (agent_id, epoch, batch_seq, received_at, readings, digest)
	SELECT agent_id, '', batch_seq, received_at, readings, NULL FROM telemetry_batches_v1;
DROP TABLE telemetry_batches_v1;
`,
}

// telemetryBatchesSQL is the idempotency record of telemetry uploads:
// one row per accepted batch, with the SHA-256 digest of its decoded
// readings (batchDigest).
const telemetryBatchesSQL = `
CREATE TABLE telemetry_batches (
	agent_id    TEXT NOT NULL,
	epoch       TEXT NOT NULL,
	batch_seq   INTEGER NOT NULL,
	received_at INTEGER NOT NULL,
	readings    INTEGER NOT NULL,
	digest      BLOB,
	PRIMARY KEY (agent_id, epoch, batch_seq)
) WITHOUT ROWID;
`

const schemaSQL = `
CREATE TABLE enrollment_tokens (
	id         TEXT PRIMARY KEY,
	hash       TEXT NOT NULL UNIQUE,
	labels     TEXT NOT NULL,
	created_at INTEGER NOT NULL,
	created_by TEXT NOT NULL,
	expires_at INTEGER NOT NULL,
	used_at    INTEGER,
	used_by    TEXT
);
CREATE TABLE agents (
	id                  TEXT PRIMARY KEY,
	name                TEXT NOT NULL,
	labels              TEXT NOT NULL,
	version             TEXT NOT NULL,
	os                  TEXT NOT NULL,
	arch                TEXT NOT NULL,
	first_seen          INTEGER NOT NULL,
	last_seen           INTEGER NOT NULL,
	health              TEXT,
	resources           TEXT,
	cert_serial         TEXT NOT NULL UNIQUE,
	cert_not_after      INTEGER NOT NULL,
	xwing_public        BLOB,
	mldsa_public        BLOB,
	enrollment_token_id TEXT NOT NULL REFERENCES enrollment_tokens(id),
	decommissioned_at   INTEGER
);
CREATE TABLE revoked_certs (
	serial     TEXT PRIMARY KEY,
	agent_id   TEXT NOT NULL REFERENCES agents(id),
	revoked_at INTEGER NOT NULL
);
CREATE TABLE api_tokens (
	id         TEXT PRIMARY KEY,
	hash       TEXT NOT NULL UNIQUE,
	name       TEXT NOT NULL,
	role       TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
	created_at INTEGER NOT NULL,
	created_by TEXT NOT NULL,
	expires_at INTEGER,
	revoked_at INTEGER
);
CREATE TABLE audit_log (
	seq       INTEGER PRIMARY KEY,
	time      INTEGER NOT NULL,
	actor     TEXT NOT NULL,
	action    TEXT NOT NULL,
	target    TEXT NOT NULL,
	result    TEXT NOT NULL,
	prev_hash TEXT NOT NULL,
	hash      TEXT NOT NULL
);
CREATE TABLE audit_head (
	id   INTEGER PRIMARY KEY CHECK (id = 1),
	seq  INTEGER NOT NULL,
	hash TEXT NOT NULL
);
CREATE TABLE series (
	id       INTEGER PRIMARY KEY,
	agent_id TEXT NOT NULL,
	device   TEXT NOT NULL,
	metric   TEXT NOT NULL,
	UNIQUE (agent_id, device, metric)
);
CREATE INDEX series_device ON series (device, metric);
CREATE TABLE readings (
	series_id INTEGER NOT NULL,
	ts        INTEGER NOT NULL,
	value     REAL NOT NULL,
	PRIMARY KEY (series_id, ts)
) WITHOUT ROWID;
` + telemetryBatchesSQL + modelsSQL + flSQL + enrollmentsSQL + devicesSQL

// SQLiteStore is the default Store: one SQLite database in WAL mode. All
// writes go through a single connection (SQLite admits one writer at a
// time, so queueing in Go is cheaper than retrying on SQLITE_BUSY); reads
// use a small pool of read-only connections that see the last committed
// state.
type SQLiteStore struct {
	path string
	sync string
	w    *sql.DB
	r    *sql.DB

	stHeartbeat  *sql.Stmt
	stBatch      *sql.Stmt
	stReading    *sql.Stmt
	stReadings   *sql.Stmt // readingsChunk rows at once
	stSeriesGet  *sql.Stmt
	stSeriesPut  *sql.Stmt
	stAuditHead  *sql.Stmt
	stAuditPut   *sql.Stmt
	stAuditMove  *sql.Stmt
	stGetAgentID *sql.Stmt

	seriesMu sync.RWMutex
	series   map[seriesKey]int64

	// connSync is the synchronous setting of the write connection as
	// last set ("" when unknown).
	syncMu   sync.Mutex
	connSync string

	cpStopped chan struct{}

	hbQueue   chan *heartbeatReq
	hbStop    chan struct{}
	hbStopped chan struct{}

	closed atomic.Bool
}

type seriesKey struct{ agent, device, metric string }

// readingsChunk is the number of rows per multi-row INSERT: one statement
// execution per 128 readings instead of one per reading.
const readingsChunk = 128

var _ Store = (*SQLiteStore)(nil)

// SQLiteOptions tunes OpenSQLite.
type SQLiteOptions struct {
	// Synchronous is SQLite's synchronous setting: "FULL" (default; every
	// commit is on disk before the call returns) or "NORMAL" (a commit may
	// be lost on power failure, never on a process crash; faster).
	// Heartbeats are always committed with NORMAL: they are superseded
	// every few seconds, and are made durable by the next FULL commit.
	Synchronous string
	// Readers is the size of the read connection pool (default 4).
	Readers int
	// CheckpointInterval is how often a background goroutine copies the
	// write-ahead log into the database (default 1s). Commits never do it
	// themselves, so its fsync does not stall them.
	CheckpointInterval time.Duration
	// Logger receives checkpoint failures (nil: discarded).
	Logger *slog.Logger
}

// OpenSQLite opens or creates the database at path and brings its schema
// up to date.
func OpenSQLite(path string, opts SQLiteOptions) (*SQLiteStore, error) {
	if path == "" || strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("%w: sqlite path %q must be non-empty and contain no '?' or '#'", ErrInvalidConfig, path)
	}
	sync := strings.ToUpper(opts.Synchronous)
	if sync == "" {
		sync = "FULL"
	}
	if sync != "FULL" && sync != "NORMAL" {
		return nil, fmt.Errorf("%w: sqlite synchronous %q (want FULL or NORMAL)", ErrInvalidConfig, opts.Synchronous)
	}
	readers := opts.Readers
	if readers <= 0 {
		readers = 4
	}
	if opts.CheckpointInterval <= 0 {
		opts.CheckpointInterval = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	base := "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(" + sync + ")"
	w, err := sql.Open("sqlite", base+"&_pragma=journal_mode(WAL)&_pragma=wal_autocheckpoint(0)&_pragma=journal_size_limit(67108864)&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("controlplane: open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	s := &SQLiteStore{path: path, sync: sync, connSync: sync, w: w, series: make(map[seriesKey]int64),
		hbQueue: make(chan *heartbeatReq, maxHeartbeatGroup), hbStop: make(chan struct{}), hbStopped: make(chan struct{}),
		cpStopped: make(chan struct{})}
	if err := s.migrate(); err != nil {
		w.Close()
		return nil, err
	}
	r, err := sql.Open("sqlite", base+"&_pragma=query_only(1)")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("controlplane: open %s: %w", path, err)
	}
	r.SetMaxOpenConns(readers)
	r.SetMaxIdleConns(readers)
	s.r = r
	if err := s.prepare(); err != nil {
		close(s.hbStopped)
		close(s.cpStopped)
		s.Close()
		return nil, err
	}
	go s.heartbeatWriter()
	go s.checkpointer(opts.CheckpointInterval, opts.Logger)
	return s, nil
}

func (s *SQLiteStore) migrate() error {
	ctx := context.Background()
	var v int
	if err := s.w.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("controlplane: open %s: %w", s.path, err)
	}
	switch {
	case v == schemaVersion:
		return nil
	case v < 0 || v > schemaVersion:
		return fmt.Errorf("controlplane: %s has schema version %d; this build knows version %d", s.path, v, schemaVersion)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("controlplane: migrate %s: %w", s.path, err)
	}
	defer tx.Rollback()
	if v == 0 {
		if _, err := tx.ExecContext(ctx, schemaSQL); err != nil {
			return fmt.Errorf("controlplane: migrate %s: %w", s.path, err)
		}
	}
	for ; v > 0 && v < schemaVersion; v++ {
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			return fmt.Errorf("controlplane: migrate %s from schema version %d to %d: %w", s.path, v, v+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", schemaVersion)); err != nil {
		return fmt.Errorf("controlplane: migrate %s: %w", s.path, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("controlplane: migrate %s: %w", s.path, err)
	}
	return nil
}

func (s *SQLiteStore) prepare() error {
	ctx := context.Background()
	for _, p := range []struct {
		st  **sql.Stmt
		sql string
	}{
		{&s.stHeartbeat, `UPDATE agents SET last_seen = ?,
			name = CASE WHEN ? = '' THEN name ELSE ? END,
			version = CASE WHEN ? = '' THEN version ELSE ? END,
			os = CASE WHEN ? = '' THEN os ELSE ? END,
			arch = CASE WHEN ? = '' THEN arch ELSE ? END,
			health = COALESCE(?, health),
			resources = COALESCE(?, resources)
			WHERE id = ? AND decommissioned_at IS NULL
			RETURNING ` + agentColumns},
		{&s.stBatch, `INSERT INTO telemetry_batches (agent_id, epoch, batch_seq, received_at, readings, digest) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT DO NOTHING`},
		{&s.stReading, `INSERT INTO readings (series_id, ts, value) VALUES (?, ?, ?)
			ON CONFLICT (series_id, ts) DO UPDATE SET value = excluded.value`},
		{&s.stReadings, `INSERT INTO readings (series_id, ts, value) VALUES ` +
			strings.TrimSuffix(strings.Repeat("(?, ?, ?), ", readingsChunk), ", ") + `
			ON CONFLICT (series_id, ts) DO UPDATE SET value = excluded.value`},
		{&s.stSeriesGet, `SELECT id FROM series WHERE agent_id = ? AND device = ? AND metric = ?`},
		{&s.stSeriesPut, `INSERT INTO series (agent_id, device, metric) VALUES (?, ?, ?) RETURNING id`},
		{&s.stAuditHead, `SELECT seq, hash FROM audit_head WHERE id = 1`},
		{&s.stAuditPut, `INSERT INTO audit_log (seq, time, actor, action, target, result, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`},
		{&s.stAuditMove, `INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?)
			ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash`},
		{&s.stGetAgentID, `SELECT decommissioned_at FROM agents WHERE id = ?`},
	} {
		st, err := s.w.PrepareContext(ctx, p.sql)
		if err != nil {
			return fmt.Errorf("controlplane: prepare: %w", err)
		}
		*p.st = st
	}
	return nil
}

// Close closes the database.
func (s *SQLiteStore) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.hbStop)
	<-s.hbStopped
	<-s.cpStopped
	var errs []error
	if _, err := s.w.Exec("PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		errs = append(errs, err)
	}
	for _, st := range []*sql.Stmt{s.stHeartbeat, s.stBatch, s.stReading, s.stReadings, s.stSeriesGet, s.stSeriesPut, s.stAuditHead, s.stAuditPut, s.stAuditMove, s.stGetAgentID} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	if s.r != nil {
		errs = append(errs, s.r.Close())
	}
	errs = append(errs, s.w.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("controlplane: close %s: %w", s.path, err)
	}
	return nil
}

func (s *SQLiteStore) check() error {
	if s.closed.Load() {
		return ErrClosed
	}
	return nil
}

// inTx runs fn in a write transaction and commits it if fn succeeds.
//
// Write transactions are short and are not interrupted when the caller's
// context is cancelled: a client that hangs up must not leave the single
// writer connection mid-transaction, and a context without a Done channel
// spares the driver a watcher goroutine per statement.
func (s *SQLiteStore) inTx(ctx context.Context, op string, fn func(context.Context, *sql.Tx) error) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ctx = context.WithoutCancel(ctx)
	conn, err := s.writer(ctx, s.sync)
	if err != nil {
		return fmt.Errorf("controlplane: %s: %w", op, err)
	}
	defer conn.Close()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("controlplane: %s: begin: %w", op, err)
	}
	if err := fn(ctx, tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("controlplane: %s: commit: %w", op, err)
	}
	return nil
}

// writer takes the single write connection and makes sure its
// synchronous setting is mode. The setting is tracked so that a run of
// heartbeat group commits (NORMAL) or of other writes (FULL) issues no
// PRAGMA at all.
func (s *SQLiteStore) writer(ctx context.Context, mode string) (*sql.Conn, error) {
	conn, err := s.w.Conn(ctx)
	if err != nil {
		return nil, err
	}
	s.syncMu.Lock()
	cur := s.connSync
	s.syncMu.Unlock()
	if cur == mode {
		return conn, nil
	}
	_, err = conn.ExecContext(ctx, "PRAGMA synchronous = "+mode)
	s.syncMu.Lock()
	if err != nil {
		s.connSync = ""
	} else {
		s.connSync = mode
	}
	s.syncMu.Unlock()
	if err != nil {
		// Never write through a connection whose durability is unknown.
		conn.Raw(func(any) error { return driver.ErrBadConn })
		conn.Close()
		return nil, fmt.Errorf("set synchronous %s: %w", mode, err)
	}
	return conn, nil
}

func nanos(t time.Time) int64 { return t.UnixNano() }

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }

func nullNanos(t *time.Time) sql.NullInt64 {
	if t == nil {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: nanos(*t), Valid: true}
}

func timePtr(n sql.NullInt64) *time.Time {
	if !n.Valid {
		return nil
	}
	t := fromNanos(n.Int64)
	return &t
}

func marshalLabels(l map[string]string) string {
	if l == nil {
		l = map[string]string{}
	}
	b, _ := json.Marshal(l)
	return string(b)
}

func unmarshalLabels(s string) (map[string]string, error) {
	l := map[string]string{}
	if err := json.Unmarshal([]byte(s), &l); err != nil {
		return nil, fmt.Errorf("controlplane: stored labels: %w", err)
	}
	return l, nil
}

func marshalNullable(v any) sql.NullString {
	switch x := v.(type) {
	case *cpapi.Health:
		if x == nil {
			return sql.NullString{}
		}
	case *cpapi.Resources:
		if x == nil {
			return sql.NullString{}
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return sql.NullString{}
	}
	return sql.NullString{String: string(b), Valid: true}
}

// checkpointer runs passive WAL checkpoints on a read connection until
// the store closes. Passive checkpoints never block the writer.
func (s *SQLiteStore) checkpointer(every time.Duration, log *slog.Logger) {
	defer close(s.cpStopped)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.hbStop:
			return
		case <-t.C:
		}
		var busy, logPages, done int
		if err := s.r.QueryRow("PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &logPages, &done); err != nil {
			log.Warn("WAL checkpoint failed", "db", s.path, "err", err)
		}
	}
}
