package crdt

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// DefaultTombstoneTTL is the tombstone TTL used when Options.TombstoneTTL is
// zero.
const DefaultTombstoneTTL = 7 * 24 * time.Hour

// schemaVersion is stored in PRAGMA user_version.
const schemaVersion = 1

// Options configure a Store.
type Options struct {
	ReplicaID    string           // required; this replica's id (1..64 bytes)
	Wall         func() time.Time // nil = time.Now
	MaxDrift     time.Duration    // 0 = DefaultMaxDrift (1 minute)
	Logger       *slog.Logger     // nil = discard
	TombstoneTTL time.Duration    // 0 = DefaultTombstoneTTL (7 days); see Compact
	// Registerer receives the store's Prometheus metrics; nil leaves them
	// unregistered.
	Registerer prometheus.Registerer
	// Fleet and MinWall let the clock tell when the local wall clock is
	// wrong and what to judge drift against then (ClockConfig); nil and
	// zero mean the wall clock is judged against the last timestamp only.
	Fleet   func() []time.Time
	MinWall time.Time
}

// Store is a replica's CRDT state in one SQLite database: an op log, the
// state of every collection in per-type tables, the replica's sequence
// number, hybrid logical clock and version vector. Every change (a local op,
// a Merge call, a Compact call) is one transaction, and the sequence number,
// clock and version vector are persisted in the same transaction as the ops
// they account for, so a crash never loses or reorders acknowledged ops and
// the clock never goes backwards across restarts.
//
// Store is safe for concurrent use. Writes are serialized; reads run
// concurrently on WAL snapshots.
type Store struct {
	db      *sql.DB
	path    string
	id      string
	log     *slog.Logger
	ttl     time.Duration
	clock   *Clock
	metrics *metrics
	closed  atomic.Bool
	damaged atomic.Pointer[error] // see Damaged

	// wc is the connection every write transaction runs on: one
	// connection keeps its page cache warm across transactions (a pool
	// would rotate connections, and each would re-read pages another one
	// changed). Reads use the rest of the pool.
	wc *sql.Conn

	mu    sync.Mutex // serializes writes and guards the fields below
	seq   uint64
	vv    VersionVector // includes this replica's own entry (= seq)
	colls map[string]typeSet
	// horizon is the compaction horizon (see Horizon); hold, when set,
	// is why local ops are refused (see HoldLocalOps).
	horizon    VersionVector
	horizonHLC Timestamp
	hold       string

	st statements
}

// typeSet is a set of collection types, one bit each.
type typeSet uint8

func typeBit(t Type) typeSet {
	switch t {
	case TypeLWW:
		return 1
	case TypeORSet:
		return 2
	case TypeCounter:
		return 4
	case TypeMVReg:
		return 8
	}
	return 0
}

const schema = `
CREATE TABLE IF NOT EXISTS meta (
	id      INTEGER PRIMARY KEY CHECK (id = 1),
	replica TEXT    NOT NULL,
	seq     INTEGER NOT NULL,
	hlc     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vv (
	origin TEXT    PRIMARY KEY,
	seq    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ops (
	origin   TEXT    NOT NULL,
	seq      INTEGER NOT NULL,
	hlc      INTEGER NOT NULL,
	type     TEXT    NOT NULL,
	coll     TEXT    NOT NULL,
	key      TEXT    NOT NULL,
	kind     INTEGER NOT NULL,
	value    BLOB,
	p        INTEGER NOT NULL DEFAULT 0,
	n        INTEGER NOT NULL DEFAULT 0,
	observed BLOB,
	PRIMARY KEY (origin, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS colls (
	name TEXT NOT NULL,
	type TEXT NOT NULL,
	PRIMARY KEY (name, type)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lww (
	coll    TEXT    NOT NULL,
	key     TEXT    NOT NULL,
	hlc     INTEGER NOT NULL,
	origin  TEXT    NOT NULL,
	seq     INTEGER NOT NULL,
	deleted INTEGER NOT NULL,
	value   BLOB,
	PRIMARY KEY (coll, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS orset (
	origin TEXT    NOT NULL,
	seq    INTEGER NOT NULL,
	coll   TEXT    NOT NULL,
	elem   TEXT    NOT NULL,
	PRIMARY KEY (origin, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS orset_elem ON orset (coll, elem);
CREATE TABLE IF NOT EXISTS counter (
	coll   TEXT    NOT NULL,
	key    TEXT    NOT NULL,
	origin TEXT    NOT NULL,
	p      INTEGER NOT NULL,
	n      INTEGER NOT NULL,
	PRIMARY KEY (coll, key, origin)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mvreg (
	origin TEXT    NOT NULL,
	seq    INTEGER NOT NULL,
	coll   TEXT    NOT NULL,
	key    TEXT    NOT NULL,
	hlc    INTEGER NOT NULL,
	value  BLOB,
	PRIMARY KEY (origin, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS mvreg_key ON mvreg (coll, key);
CREATE TABLE IF NOT EXISTS horizon (
	origin TEXT    PRIMARY KEY,
	seq    INTEGER NOT NULL,
	hlc    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS removed (
	type   TEXT    NOT NULL,
	origin TEXT    NOT NULL,
	seq    INTEGER NOT NULL,
	PRIMARY KEY (type, origin, seq)
) WITHOUT ROWID;
`

// statements are prepared once on the *sql.DB and bound to transactions
// with Tx.StmtContext (database/sql reuses the per-connection preparation).
type statements struct {
	insOp, insOpIgnore, setMeta, upsertVV, insColl *sql.Stmt
	lwwUpsert, orsetAdd, orsetDel, insRemoved      *sql.Stmt
	orsetTags, counterUpsert, counterOwn           *sql.Stmt
	mvIns, mvDel, mvDots, opByDot                  *sql.Stmt
	lwwGet, lwwList, setContains, setMembers       *sql.Stmt
	counterRows, mvGet, opsRange                   *sql.Stmt
	all                                            []*sql.Stmt
}

var statementSQL = map[string]string{
	"insOp":       `INSERT INTO ops (origin, seq, hlc, type, coll, key, kind, value, p, n, observed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
	"insOpIgnore": `INSERT OR IGNORE INTO ops (origin, seq, hlc, type, coll, key, kind, value, p, n, observed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
	"setMeta":     `UPDATE meta SET seq = ?, hlc = ? WHERE id = 1`,
	"upsertVV":    `INSERT INTO vv (origin, seq) VALUES (?, ?) ON CONFLICT (origin) DO UPDATE SET seq = max(seq, excluded.seq)`,
	"insColl":     `INSERT OR IGNORE INTO colls (name, type) VALUES (?, ?)`,
	"lwwUpsert": `INSERT INTO lww (coll, key, hlc, origin, seq, deleted, value) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (coll, key) DO UPDATE SET hlc = excluded.hlc, origin = excluded.origin, seq = excluded.seq,
			deleted = excluded.deleted, value = excluded.value
		WHERE (excluded.hlc, excluded.origin, excluded.seq) > (lww.hlc, lww.origin, lww.seq)`,
	"orsetAdd": `INSERT OR IGNORE INTO orset (origin, seq, coll, elem) SELECT ?1, ?2, ?3, ?4
		WHERE NOT EXISTS (SELECT 1 FROM removed WHERE type = 'orset' AND origin = ?1 AND seq = ?2)`,
	"orsetDel":      `DELETE FROM orset WHERE origin = ? AND seq = ?`,
	"insRemoved":    `INSERT OR IGNORE INTO removed (type, origin, seq) VALUES (?, ?, ?)`,
	"orsetTags":     `SELECT origin, seq FROM orset WHERE coll = ? AND elem = ? ORDER BY origin, seq`,
	"counterUpsert": `INSERT INTO counter (coll, key, origin, p, n) VALUES (?, ?, ?, ?, ?) ON CONFLICT (coll, key, origin) DO UPDATE SET p = max(p, excluded.p), n = max(n, excluded.n)`,
	"counterOwn":    `SELECT p, n FROM counter WHERE coll = ? AND key = ? AND origin = ?`,
	"mvIns": `INSERT OR IGNORE INTO mvreg (origin, seq, coll, key, hlc, value) SELECT ?1, ?2, ?3, ?4, ?5, ?6
		WHERE NOT EXISTS (SELECT 1 FROM removed WHERE type = 'mvreg' AND origin = ?1 AND seq = ?2)`,
	"mvDel":       `DELETE FROM mvreg WHERE origin = ? AND seq = ?`,
	"mvDots":      `SELECT origin, seq FROM mvreg WHERE coll = ? AND key = ? ORDER BY origin, seq`,
	"opByDot":     `SELECT hlc, kind, coll, key FROM ops WHERE origin = ? AND seq = ?`,
	"lwwGet":      `SELECT hlc, origin, deleted, value FROM lww WHERE coll = ? AND key = ?`,
	"lwwList":     `SELECT key, hlc, origin, deleted, value FROM lww WHERE coll = ? ORDER BY key`,
	"setContains": `SELECT EXISTS (SELECT 1 FROM orset WHERE coll = ? AND elem = ?)`,
	"setMembers":  `SELECT DISTINCT elem FROM orset WHERE coll = ? ORDER BY elem`,
	"counterRows": `SELECT origin, p, n FROM counter WHERE coll = ? AND key = ?`,
	"opsRange":    `SELECT ` + opColumns + ` FROM ops WHERE origin = ? AND seq > ? AND seq <= ? ORDER BY seq`,
	"mvGet":       `SELECT origin, seq, hlc, value FROM mvreg WHERE coll = ? AND key = ? ORDER BY hlc DESC, origin, seq`,
}

func (s *Store) prepare(ctx context.Context) error {
	targets := map[string]**sql.Stmt{
		"insOp": &s.st.insOp, "insOpIgnore": &s.st.insOpIgnore, "setMeta": &s.st.setMeta,
		"upsertVV": &s.st.upsertVV, "insColl": &s.st.insColl, "lwwUpsert": &s.st.lwwUpsert,
		"orsetAdd": &s.st.orsetAdd, "orsetDel": &s.st.orsetDel, "insRemoved": &s.st.insRemoved,
		"orsetTags": &s.st.orsetTags, "counterUpsert": &s.st.counterUpsert, "counterOwn": &s.st.counterOwn,
		"mvIns": &s.st.mvIns, "mvDel": &s.st.mvDel, "mvDots": &s.st.mvDots, "opByDot": &s.st.opByDot,
		"lwwGet": &s.st.lwwGet, "lwwList": &s.st.lwwList, "setContains": &s.st.setContains,
		"setMembers": &s.st.setMembers, "counterRows": &s.st.counterRows, "mvGet": &s.st.mvGet, "opsRange": &s.st.opsRange,
	}
	for name, dst := range targets {
		st, err := s.db.PrepareContext(ctx, statementSQL[name])
		if err != nil {
			return fmt.Errorf("crdt: open: prepare %s: %w", name, err)
		}
		*dst = st
		s.st.all = append(s.st.all, st)
	}
	return nil
}

// DSN returns the database/sql data source name the store uses for path:
// WAL journal, synchronous=FULL, a busy timeout, and BEGIN IMMEDIATE for
// write transactions. Exported so benchmarks can open baseline databases
// with exactly the same settings.
func DSN(path string) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Set("_txlock", "immediate")
	return path + "?" + q.Encode()
}

// Open opens (creating if needed) the store at path and restores its
// sequence number, clock and version vector. A database created for another
// replica id is refused with ErrReplicaMismatch. Only one Store may have a
// database file open at a time (they would issue the same sequence
// numbers).
func Open(path string, opts Options) (*Store, error) {
	if err := checkOrigin(opts.ReplicaID, "replica id"); err != nil {
		return nil, fmt.Errorf("crdt: open: %v", err)
	}
	if path == "" || strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("crdt: open: invalid database path %q", path)
	}
	if opts.MaxDrift < 0 {
		return nil, fmt.Errorf("crdt: open: negative MaxDrift %s", opts.MaxDrift)
	}
	if opts.TombstoneTTL < 0 {
		return nil, fmt.Errorf("crdt: open: negative TombstoneTTL %s", opts.TombstoneTTL)
	}
	if opts.TombstoneTTL == 0 {
		opts.TombstoneTTL = DefaultTombstoneTTL
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", DSN(path))
	if err != nil {
		return nil, fmt.Errorf("crdt: open %s: %w", path, err)
	}
	db.SetMaxOpenConns(4)
	db.SetMaxIdleConns(4)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	s := &Store{
		db: db, path: path, id: opts.ReplicaID, log: logger.With("replica", opts.ReplicaID),
		ttl: opts.TombstoneTTL, metrics: m, colls: map[string]typeSet{},
	}
	if err := s.init(opts); err != nil {
		s.closeStatements()
		if s.wc != nil {
			s.wc.Close()
		}
		db.Close()
		return nil, err
	}
	s.log.Debug("crdt store opened", "path", path, "seq", s.seq, "hlc", s.clock.Last().String())
	return s, nil
}

func (s *Store) init(opts Options) error {
	ctx := context.Background()
	var mode string
	if err := s.db.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil {
		return fmt.Errorf("crdt: open %s: %w", s.path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("crdt: open %s: journal mode is %q, want wal", s.path, mode)
	}
	var version int
	if err := s.db.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&version); err != nil {
		return fmt.Errorf("crdt: open %s: %w", s.path, err)
	}
	if version > schemaVersion {
		return fmt.Errorf("crdt: open %s: schema version %d is newer than this build's %d", s.path, version, schemaVersion)
	}
	wc, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("crdt: open %s: %w", s.path, err)
	}
	s.wc = wc
	tx, err := s.wc.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("crdt: open %s: %w", s.path, err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, schema); err != nil {
		return fmt.Errorf("crdt: open %s: create schema: %w", s.path, err)
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, schemaVersion)); err != nil {
		return fmt.Errorf("crdt: open %s: %w", s.path, err)
	}
	var (
		replica  string
		seq, hlc int64
	)
	err = tx.QueryRowContext(ctx, `SELECT replica, seq, hlc FROM meta WHERE id = 1`).Scan(&replica, &seq, &hlc)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		replica = s.id
		if _, err := tx.ExecContext(ctx, `INSERT INTO meta (id, replica, seq, hlc) VALUES (1, ?, 0, 0)`, s.id); err != nil {
			return fmt.Errorf("crdt: open %s: %w", s.path, err)
		}
	case err != nil:
		return s.corrupt(fmt.Errorf("crdt: open %s: read meta: %w", s.path, err))
	}
	if replica != s.id {
		return fmt.Errorf("%w: %s was created by replica %q, not %q", ErrReplicaMismatch, s.path, replica, s.id)
	}
	if seq < 0 || hlc < 0 {
		return s.corrupt(fmt.Errorf("%w: meta: seq %d, hlc %d", ErrCorrupt, seq, hlc))
	}
	// The own sequence number is persisted with every local op; an op log
	// holding a later own op means the meta row is damaged, and reusing its
	// sequence numbers would fork history, so continue after it.
	var maxOwn sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT max(seq) FROM ops WHERE origin = ?`, s.id).Scan(&maxOwn); err != nil {
		return fmt.Errorf("crdt: open %s: %w", s.path, err)
	}
	if maxOwn.Valid && maxOwn.Int64 > seq {
		s.log.Warn("crdt: meta sequence behind op log, continuing after the log", "meta_seq", seq, "log_seq", maxOwn.Int64)
		seq = maxOwn.Int64
	}
	s.seq = uint64(seq)
	s.vv, err = readVV(ctx, tx, s.id, s.seq)
	if err != nil {
		return s.corrupt(fmt.Errorf("crdt: open %s: %w", s.path, err))
	}
	if s.horizon, s.horizonHLC, err = readHorizon(ctx, tx); err != nil {
		return s.corrupt(fmt.Errorf("crdt: open %s: %w", s.path, err))
	}
	if s.colls, err = s.readColls(ctx, tx); err != nil {
		return fmt.Errorf("crdt: open %s: %w", s.path, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("crdt: open %s: %w", s.path, err)
	}
	s.clock = NewClockConfig(ClockConfig{Wall: opts.Wall, MaxDrift: opts.MaxDrift, Last: Timestamp(hlc),
		Fleet: opts.Fleet, MinWall: opts.MinWall, Logger: s.log})
	return s.prepare(ctx)
}

// readColls reads the colls table into the cache of collection types.
func (s *Store) readColls(ctx context.Context, tx *sql.Tx) (map[string]typeSet, error) {
	colls := map[string]typeSet{}
	rows, err := tx.QueryContext(ctx, `SELECT name, type FROM colls`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return nil, s.corrupt(fmt.Errorf("%w: colls: %v", ErrCorrupt, err))
		}
		if !Type(typ).Valid() {
			// Only the type-mismatch check of local ops relies on this
			// cache; Collections reports the damaged row.
			s.corrupt(fmt.Errorf("%w: colls: collection %q has unknown type %q (ignored)", ErrCorrupt, name, typ))
			continue
		}
		colls[name] |= typeBit(Type(typ))
	}
	return colls, rows.Err()
}

// readVV reads the version vector persisted in the vv table plus the own
// entry from meta.
func readVV(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, self string, seq uint64) (VersionVector, error) {
	rows, err := q.QueryContext(ctx, `SELECT origin, seq FROM vv`)
	if err != nil {
		return nil, fmt.Errorf("read version vector: %w", err)
	}
	defer rows.Close()
	vv := VersionVector{}
	for rows.Next() {
		var (
			o string
			n int64
		)
		if err := rows.Scan(&o, &n); err != nil {
			return nil, fmt.Errorf("%w: vv: %v", ErrCorrupt, err)
		}
		if checkOrigin(o, "") != nil || n < 0 {
			return nil, fmt.Errorf("%w: vv: entry %q = %d", ErrCorrupt, o, n)
		}
		if n > 0 {
			vv[o] = uint64(n)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read version vector: %w", err)
	}
	if seq > 0 {
		vv[self] = seq
	} else {
		delete(vv, self)
	}
	return vv, nil
}

// corrupt counts and logs an error about a corrupt row and returns it;
// a failure of the storage itself it marks ErrUnavailable, and one
// showing the file damaged it notes for Damaged.
func (s *Store) corrupt(err error) error {
	s.noteDamage(err)
	if errors.Is(err, ErrCorrupt) {
		s.metrics.corrupt.Inc()
		s.log.Error("crdt: corrupt row", "err", err)
	}
	return unavailable(err)
}

func (s *Store) closeStatements() {
	for _, st := range s.st.all {
		st.Close()
	}
	s.st.all = nil
}

// Close closes the database. Calls after Close return ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Swap(true) {
		return nil
	}
	s.closeStatements()
	s.wc.Close()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("crdt: close: %w", err)
	}
	return nil
}

// ReplicaID returns this replica's id.
func (s *Store) ReplicaID() string { return s.id }

// Clock returns the store's hybrid logical clock.
func (s *Store) Clock() *Clock { return s.clock }

// Stats returns the store's size.
func (s *Store) Stats(ctx context.Context) (StoreStats, error) {
	if s.closed.Load() {
		return StoreStats{}, ErrClosed
	}
	var st StoreStats
	err := s.db.QueryRowContext(ctx, `SELECT
		(SELECT count(*) FROM ops),
		(SELECT count(*) FROM lww WHERE deleted <> 0) + (SELECT count(*) FROM removed),
		(SELECT count(*) FROM colls)`).Scan(&st.Ops, &st.Tombstones, &st.Collections)
	if err != nil {
		return StoreStats{}, fmt.Errorf("crdt: stats: %w", err)
	}
	for _, p := range []string{s.path, s.path + "-wal"} {
		if fi, err := os.Stat(p); err == nil {
			st.DBBytes += fi.Size()
		}
	}
	return st, nil
}
