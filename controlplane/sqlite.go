package controlplane

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// schemaVersion is stored in PRAGMA user_version.
const schemaVersion = 1

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
CREATE TABLE telemetry_batches (
	agent_id    TEXT NOT NULL,
	batch_seq   INTEGER NOT NULL,
	received_at INTEGER NOT NULL,
	readings    INTEGER NOT NULL,
	PRIMARY KEY (agent_id, batch_seq)
) WITHOUT ROWID;
`

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
	switch v {
	case schemaVersion:
		return nil
	case 0:
	default:
		return fmt.Errorf("controlplane: %s has schema version %d; this build knows version %d", s.path, v, schemaVersion)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("controlplane: migrate %s: %w", s.path, err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, schemaSQL); err != nil {
		return fmt.Errorf("controlplane: migrate %s: %w", s.path, err)
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
		{&s.stBatch, `INSERT INTO telemetry_batches (agent_id, batch_seq, received_at, readings) VALUES (?, ?, ?, ?)
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

// EnrollAgent consumes the token and inserts the agent atomically.
func (s *SQLiteStore) EnrollAgent(ctx context.Context, tokenID string, a cpapi.Agent, now time.Time, audit AuditEntry) error {
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
		_, err = s.appendAudit(ctx, tx, audit)
		return err
	})
}

func nilIfEmpty(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

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

// IngestTelemetry stores a batch once per (agent, batch_seq).
func (s *SQLiteStore) IngestTelemetry(ctx context.Context, agentID string, b cpapi.TelemetryBatch, receivedAt time.Time) (cpapi.IngestResult, error) {
	res := cpapi.IngestResult{BatchSeq: b.BatchSeq}
	if b.BatchSeq > 1<<63-1 {
		return res, fmt.Errorf("controlplane: batch_seq %d out of range: %w", b.BatchSeq, cpapi.ErrBadRequest)
	}
	var added map[seriesKey]int64
	err := s.inTx(ctx, "ingest telemetry", func(ctx context.Context, tx *sql.Tx) error {
		r, err := tx.StmtContext(ctx, s.stBatch).ExecContext(ctx, agentID, int64(b.BatchSeq), nanos(receivedAt), len(b.Readings))
		if err != nil {
			return fmt.Errorf("controlplane: ingest telemetry: record batch: %w", err)
		}
		if n, _ := r.RowsAffected(); n == 0 {
			res.Duplicate = true
			return nil
		}
		one := tx.StmtContext(ctx, s.stReading)
		defer one.Close()
		var many *sql.Stmt
		if len(b.Readings) >= readingsChunk {
			many = tx.StmtContext(ctx, s.stReadings)
			defer many.Close()
		}
		var get, put *sql.Stmt
		defer func() {
			if get != nil {
				get.Close()
				put.Close()
			}
		}()
		s.seriesMu.RLock()
		defer s.seriesMu.RUnlock()
		args := make([]any, 0, 3*readingsChunk)
		for i := range b.Readings {
			rd := &b.Readings[i]
			key := seriesKey{agentID, rd.Device, rd.Metric}
			sid, ok := s.series[key]
			if !ok {
				sid, ok = added[key]
			}
			if !ok {
				if get == nil {
					get, put = tx.StmtContext(ctx, s.stSeriesGet), tx.StmtContext(ctx, s.stSeriesPut)
				}
				err := get.QueryRowContext(ctx, key.agent, key.device, key.metric).Scan(&sid)
				if errors.Is(err, sql.ErrNoRows) {
					err = put.QueryRowContext(ctx, key.agent, key.device, key.metric).Scan(&sid)
				}
				if err != nil {
					return fmt.Errorf("controlplane: ingest telemetry: series %s/%s: %w", rd.Device, rd.Metric, err)
				}
				if added == nil {
					added = make(map[seriesKey]int64)
				}
				added[key] = sid
			}
			args = append(args, sid, nanos(rd.TS), rd.Value)
			if len(args) == cap(args) {
				if _, err := many.ExecContext(ctx, args...); err != nil {
					return fmt.Errorf("controlplane: ingest telemetry: readings[%d..%d]: %w", i+1-readingsChunk, i, err)
				}
				args = args[:0]
			}
		}
		for j := 0; j < len(args); j += 3 {
			if _, err := one.ExecContext(ctx, args[j:j+3]...); err != nil {
				return fmt.Errorf("controlplane: ingest telemetry: reading %d from the end: %w", (len(args)-j)/3, err)
			}
		}
		return nil
	})
	if err != nil {
		return cpapi.IngestResult{BatchSeq: b.BatchSeq}, err
	}
	if len(added) > 0 {
		s.seriesMu.Lock()
		maps.Copy(s.series, added)
		s.seriesMu.Unlock()
	}
	if !res.Duplicate {
		res.Accepted = len(b.Readings)
	}
	return res, nil
}

// maxQuerySeries caps how many series one query may touch.
const maxQuerySeries = 1000

// QueryTelemetry answers a query from the read pool.
func (s *SQLiteStore) QueryTelemetry(ctx context.Context, q cpapi.TelemetryQuery) (cpapi.TelemetryResult, error) {
	res := cpapi.TelemetryResult{From: q.From.UTC(), To: q.To.UTC(), Series: []cpapi.Series{}}
	if err := s.check(); err != nil {
		return res, err
	}
	if q.Bucket > 0 {
		res.BucketSeconds = q.Bucket.Seconds()
	}
	conn, err := s.r.Conn(ctx)
	if err != nil {
		return res, fmt.Errorf("controlplane: query telemetry: %w", err)
	}
	defer conn.Close()
	// One read transaction gives every series the same snapshot.
	tx, err := conn.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return res, fmt.Errorf("controlplane: query telemetry: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT id, agent_id, device, metric FROM series
		WHERE (?1 = '' OR agent_id = ?1) AND (?2 = '' OR device = ?2) AND (?3 = '' OR metric = ?3)
		ORDER BY agent_id, device, metric LIMIT ?4`, q.Agent, q.Device, q.Metric, maxQuerySeries+1)
	if err != nil {
		return res, fmt.Errorf("controlplane: query telemetry: series: %w", err)
	}
	type sel struct {
		id int64
		s  cpapi.Series
	}
	var sels []sel
	for rows.Next() {
		var x sel
		if err := rows.Scan(&x.id, &x.s.Agent, &x.s.Device, &x.s.Metric); err != nil {
			rows.Close()
			return res, fmt.Errorf("controlplane: query telemetry: series: %w", err)
		}
		sels = append(sels, x)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return res, fmt.Errorf("controlplane: query telemetry: series: %w", err)
	}
	if len(sels) > maxQuerySeries {
		return res, fmt.Errorf("controlplane: query matches more than %d series; filter by agent, device or metric: %w", maxQuerySeries, cpapi.ErrBadRequest)
	}
	from, to := nanos(q.From), nanos(q.To)
	remaining := q.Limit
	for _, x := range sels {
		if q.Bucket > 0 {
			bn := int64(q.Bucket)
			rows, err := tx.QueryContext(ctx, `SELECT ts / ?1 AS b, min(value), max(value), avg(value), count(*)
				FROM readings WHERE series_id = ?2 AND ts >= ?3 AND ts < ?4 GROUP BY b ORDER BY b`, bn, x.id, from, to)
			if err != nil {
				return res, fmt.Errorf("controlplane: query telemetry: buckets: %w", err)
			}
			for rows.Next() {
				var bi int64
				var bk cpapi.Bucket
				if err := rows.Scan(&bi, &bk.Min, &bk.Max, &bk.Avg, &bk.Count); err != nil {
					rows.Close()
					return res, fmt.Errorf("controlplane: query telemetry: buckets: %w", err)
				}
				bk.Start = fromNanos(bi * bn)
				x.s.Buckets = append(x.s.Buckets, bk)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return res, fmt.Errorf("controlplane: query telemetry: buckets: %w", err)
			}
		} else {
			if remaining <= 0 {
				res.Truncated = true
				break
			}
			rows, err := tx.QueryContext(ctx, `SELECT ts, value FROM readings
				WHERE series_id = ? AND ts >= ? AND ts < ? ORDER BY ts LIMIT ?`, x.id, from, to, remaining+1)
			if err != nil {
				return res, fmt.Errorf("controlplane: query telemetry: points: %w", err)
			}
			for rows.Next() {
				var ts int64
				var p cpapi.Point
				if err := rows.Scan(&ts, &p.Value); err != nil {
					rows.Close()
					return res, fmt.Errorf("controlplane: query telemetry: points: %w", err)
				}
				if remaining == 0 {
					res.Truncated = true
					break
				}
				p.TS = fromNanos(ts)
				x.s.Points = append(x.s.Points, p)
				remaining--
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return res, fmt.Errorf("controlplane: query telemetry: points: %w", err)
			}
		}
		if len(x.s.Points) > 0 || len(x.s.Buckets) > 0 {
			res.Series = append(res.Series, x.s)
		}
	}
	return res, nil
}

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
