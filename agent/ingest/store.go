package ingest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/edgefleet/edgefleet/clock"
)

// StoreConfig configures a Store. Zero fields take the defaults named in
// their comments.
type StoreConfig struct {
	// Path is the SQLite database file (created when absent). Required.
	Path string
	// Clock is the time source for retention, the outbox and dead-letter
	// times. Nil means clock.Real().
	Clock clock.Clock
	// Logger receives the store's logs. Nil discards them.
	Logger *slog.Logger
	// Registry receives the store's metrics. Nil leaves them unregistered.
	Registry *prometheus.Registry
	// Retention bounds the raw readings, rollups and dead letters kept.
	Retention RetentionConfig
	// Outbox bounds the uplink's outbox.
	Outbox OutboxConfig
	// HighWaterBytes is the database size (used pages) above which the
	// store reports backpressure (Pressure), after retention could not
	// bring it down: the ingestor then stops committing and acknowledging
	// until it falls below 90% of this. Default 768 MiB.
	HighWaterBytes int64
	// MaxDeadLetters bounds the dead-letter table; beyond it the oldest
	// dead letters are deleted, and counted (DeadLettersEvicted).
	// Default 10000.
	MaxDeadLetters int
	// MaxDeadLetterPayload is how many bytes of a dead-lettered payload
	// are kept (the original size is recorded). Default 4096.
	MaxDeadLetterPayload int
	// DedupMessages is how many of the latest receive-time messages are
	// remembered to recognize their redelivery (see the package
	// documentation). It should exceed the number of messages
	// delivered and not yet acknowledged at any moment (the broker's
	// in-flight window) and stay well below the 65535 MQTT packet ids.
	// Default 16384; -1 disables that de-duplication.
	DedupMessages int
	// WriteCacheKiB is the page cache of the connection commits use,
	// KiB. It holds the pages commits touch (the tables' right edges
	// and inner pages); below that, a commit reads pages again that the
	// previous one wrote, from the operating system's cache. Each cached
	// page costs about twice its size in resident memory. With 256 KiB
	// the backlog drain of `edge-agent bench ingest` (commits of up to
	// 1,000 messages over 30 series) measured 89,948 msg/s, as fast as
	// with 1024 KiB (84,250), and the whole agent about 1.5 MB smaller;
	// commits spread over many series (thousands of devices) may want
	// more. Default 256.
	WriteCacheKiB int
}

// RetentionConfig bounds what the store keeps. Rollups are always
// written with the readings they summarize, so deleting raw readings
// never loses them from the rollups.
type RetentionConfig struct {
	// RawMaxAge: raw readings (numeric and text) older than this are
	// deleted. Default 7 days.
	RawMaxAge time.Duration
	// MaxBytes: when the database's used size exceeds this, the oldest
	// raw readings are deleted until it does not. Default 512 MiB.
	MaxBytes int64
	// MinuteMaxAge: per-minute rollups older than this are deleted.
	// Default 31 days.
	MinuteMaxAge time.Duration
	// HourMaxAge: per-hour rollups older than this are deleted.
	// Default 400 days.
	HourMaxAge time.Duration
	// DeadLetterMaxAge: dead letters older than this are deleted (and
	// counted). Default 30 days.
	DeadLetterMaxAge time.Duration
}

// OutboxConfig bounds the outbox.
type OutboxConfig struct {
	// Disabled keeps no outbox (an agent without an uplink).
	Disabled bool
	// MaxBytes bounds the payload bytes of pending batches. Past it,
	// raw-reading rows never claimed by the uplink (a claimed row may
	// have reached the control plane) whose readings all lie before the
	// current minute are replaced, oldest first, by batches of
	// per-minute rollups of their numeric readings (their string and
	// data readings are carried over unchanged); the replaced readings
	// are counted (OutboxEvicted). When nothing more can be replaced and
	// the outbox is still over MaxBytes, the store reports backpressure
	// until it falls below 90%. Default 256 MiB: about 18 minutes of
	// 5,000 messages/s of three metrics (about 15 bytes per reading) with
	// the uplink away.
	MaxBytes int64
	// GroupReadings is how many readings ClaimOutbox gathers into one
	// claimed batch at most, from consecutive outbox rows of the same
	// kind (a row with more forms a batch alone). One group commit
	// writes one row; grouping them at claim time makes one upload of
	// many commits. Default 1,000: at 5,000 messages/s of three metrics,
	// about 15 uploads a second instead of 150 (larger batches cost
	// more transient memory per upload).
	GroupReadings int
}

func (c StoreConfig) withDefaults() (StoreConfig, error) {
	if c.Path == "" || strings.ContainsAny(c.Path, "?#") {
		return c, fmt.Errorf("%w: store path %q is empty or holds ? or #", ErrInvalidConfig, c.Path)
	}
	c.Clock = clock.Or(c.Clock)
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	r := &c.Retention
	if r.RawMaxAge == 0 {
		r.RawMaxAge = 7 * 24 * time.Hour
	}
	if r.MaxBytes == 0 {
		r.MaxBytes = 512 << 20
	}
	if r.MinuteMaxAge == 0 {
		r.MinuteMaxAge = 31 * 24 * time.Hour
	}
	if r.HourMaxAge == 0 {
		r.HourMaxAge = 400 * 24 * time.Hour
	}
	if r.DeadLetterMaxAge == 0 {
		r.DeadLetterMaxAge = 30 * 24 * time.Hour
	}
	if c.Outbox.GroupReadings == 0 {
		c.Outbox.GroupReadings = 1000
	}
	if c.Outbox.MaxBytes == 0 {
		c.Outbox.MaxBytes = 256 << 20
	}
	if c.HighWaterBytes == 0 {
		c.HighWaterBytes = 768 << 20
	}
	if c.MaxDeadLetters == 0 {
		c.MaxDeadLetters = 10000
	}
	if c.MaxDeadLetterPayload == 0 {
		c.MaxDeadLetterPayload = 4096
	}
	if c.DedupMessages == 0 {
		c.DedupMessages = 16384
	}
	if c.WriteCacheKiB == 0 {
		c.WriteCacheKiB = 256
	}
	switch {
	case r.RawMaxAge < time.Minute:
		return c, fmt.Errorf("%w: Retention.RawMaxAge %s below 1m", ErrInvalidConfig, r.RawMaxAge)
	case r.MinuteMaxAge < r.RawMaxAge:
		return c, fmt.Errorf("%w: Retention.MinuteMaxAge %s below RawMaxAge %s (rollups are kept longer)", ErrInvalidConfig, r.MinuteMaxAge, r.RawMaxAge)
	case r.HourMaxAge < r.MinuteMaxAge:
		return c, fmt.Errorf("%w: Retention.HourMaxAge %s below MinuteMaxAge %s", ErrInvalidConfig, r.HourMaxAge, r.MinuteMaxAge)
	case r.DeadLetterMaxAge < time.Minute:
		return c, fmt.Errorf("%w: Retention.DeadLetterMaxAge %s below 1m", ErrInvalidConfig, r.DeadLetterMaxAge)
	case r.MaxBytes < 1<<20:
		return c, fmt.Errorf("%w: Retention.MaxBytes %d below 1 MiB", ErrInvalidConfig, r.MaxBytes)
	case c.HighWaterBytes < r.MaxBytes:
		return c, fmt.Errorf("%w: HighWaterBytes %d below Retention.MaxBytes %d", ErrInvalidConfig, c.HighWaterBytes, r.MaxBytes)
	case c.Outbox.GroupReadings < 1 || c.Outbox.GroupReadings > 1_000_000:
		return c, fmt.Errorf("%w: Outbox.GroupReadings %d outside 1..1000000", ErrInvalidConfig, c.Outbox.GroupReadings)
	case c.Outbox.MaxBytes < 64<<10:
		return c, fmt.Errorf("%w: Outbox.MaxBytes %d below 64 KiB", ErrInvalidConfig, c.Outbox.MaxBytes)
	case c.MaxDeadLetters < 1:
		return c, fmt.Errorf("%w: MaxDeadLetters %d below 1", ErrInvalidConfig, c.MaxDeadLetters)
	case c.MaxDeadLetterPayload < 64 || c.MaxDeadLetterPayload > 1<<20:
		return c, fmt.Errorf("%w: MaxDeadLetterPayload %d outside 64..1MiB", ErrInvalidConfig, c.MaxDeadLetterPayload)
	case c.DedupMessages < -1 || c.DedupMessages > 60000:
		return c, fmt.Errorf("%w: DedupMessages %d outside -1..60000", ErrInvalidConfig, c.DedupMessages)
	case c.WriteCacheKiB < 64 || c.WriteCacheKiB > 1<<20:
		return c, fmt.Errorf("%w: WriteCacheKiB %d outside 64..1048576", ErrInvalidConfig, c.WriteCacheKiB)
	}
	return c, nil
}

// Store is the ingestion database: time series, rollups, dead letters,
// the device list and the outbox, in one SQLite file (WAL,
// synchronous=FULL: a commit has reached the disk when it returns).
// Writes are serialized inside the store; reads run concurrently. Its
// methods are safe for concurrent use.
type Store struct {
	cfg   StoreConfig
	db    *sql.DB
	log   *slog.Logger
	m     *storeMetrics
	epoch string // this database's epoch (epochs row 1)

	wmu    sync.Mutex // serializes writes; guards everything below
	wconn  *sql.Conn  // the one connection writes use
	stmts  *stmts
	cache  map[string]*devEntry
	closed bool
	// counters mirrored from meta
	ctr map[string]int64
	// outbox pending totals
	obBytes, obBatches, obReadings int64
	// backpressure state (hysteresis)
	pressure     string
	recentMax    int64 // highest recent_messages seq
	recentPruned int64 // recent_messages seqs at or below this are deleted
	commitScr    commitScratch
	usedBytesMem int64 // database used bytes at the last check

	commitHook func([]*envelope) error // tests: fail a commit on demand

	damaged atomic.Pointer[error] // see Damaged

	commits        atomic.Int64 // write transactions committed, for the checkpointer
	sizeChecked    int64        // commits at the last database size reading
	ckStop, ckDone chan struct{}
}

type devEntry struct {
	id     int64
	series map[string]*seriesEntry
}

type seriesEntry struct {
	id    int64
	maxTS int64  // latest time of its numeric readings in the table (or in the current commit)
	gen   uint64 // commitScratch.gen of the commit that assigned slot
	slot  int32
}

// readCacheKiB is the page cache of each connection but the writer's
// (queries, outbox claims, checkpoints), KiB: they read little at a
// time, and each holds its own cache.
const readCacheKiB = 64

// DSN returns the SQLite data source name the store opens path with.
func DSN(path string) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "foreign_keys(OFF)")
	q.Add("_pragma", "temp_store(MEMORY)")
	q.Add("_pragma", fmt.Sprintf("cache_size(%d)", -readCacheKiB))
	q.Add("_pragma", "wal_autocheckpoint(0)") // checkpoints run in the background
	q.Set("_txlock", "immediate")
	return path + "?" + q.Encode()
}

// OpenStore opens (creating if needed) the store at cfg.Path.
func OpenStore(cfg StoreConfig) (*Store, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", DSN(cfg.Path))
	if err != nil {
		return nil, fmt.Errorf("ingest: open %s: %w", cfg.Path, err)
	}
	db.SetMaxOpenConns(4)
	db.SetMaxIdleConns(2)
	s := &Store{cfg: cfg, db: db, log: cfg.Logger, cache: map[string]*devEntry{}, ctr: map[string]int64{}}
	if err := s.init(); err != nil {
		db.Close()
		return nil, err
	}
	m, err := newStoreMetrics(cfg.Registry, s)
	if err != nil {
		s.wconn.Close()
		db.Close()
		return nil, fmt.Errorf("ingest: register store metrics: %w", err)
	}
	s.m = m
	s.ckStop, s.ckDone = make(chan struct{}), make(chan struct{})
	go s.runCheckpointer()
	return s, nil
}

// checkpointInterval is how often the WAL is copied back into the
// database file. It runs on the system clock, not StoreConfig.Clock: it
// bounds how far the WAL grows on disk, which real commits fill in real
// time.
const checkpointInterval = 500 * time.Millisecond

// runCheckpointer checkpoints the WAL in the background. Connections
// open with wal_autocheckpoint off, so no commit pays for a checkpoint
// (copying pages into the database and syncing it) on its way to the
// acknowledgement; here a PASSIVE checkpoint runs beside the writer.
func (s *Store) runCheckpointer() {
	defer close(s.ckDone)
	t := time.NewTicker(checkpointInterval)
	defer t.Stop()
	var last int64
	for {
		select {
		case <-s.ckStop:
			return
		case <-t.C:
		}
		if n := s.commits.Load(); n != last {
			last = n
			start := time.Now()
			var busy, logFrames, done int64
			if err := s.db.QueryRow(`PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &logFrames, &done); err != nil {
				s.log.Warn("wal checkpoint", "err", err)
				continue
			}
			s.log.Debug("wal checkpoint", "frames", logFrames, "checkpointed", done, "took", time.Since(start))
		}
	}
}

func (s *Store) init() error {
	ctx := context.Background()
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("ingest: open %s: %w", s.cfg.Path, err)
	}
	s.wconn = conn
	if _, err := conn.ExecContext(ctx, fmt.Sprintf("PRAGMA cache_size = %d", -s.cfg.WriteCacheKiB)); err != nil {
		conn.Close()
		return fmt.Errorf("ingest: open %s: cache size: %w", s.cfg.Path, err)
	}
	// Schema and counters in one transaction (one sync, not one each).
	if err := func() error {
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		for _, q := range schema {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("create schema: %w", err)
			}
		}
		var ver int64
		err = tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, metaSchema).Scan(&ver)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			if _, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES (?, ?)`, metaSchema, schemaVersion); err != nil {
				return err
			}
		case err != nil:
			return fmt.Errorf("read schema version: %w", err)
		case ver > schemaVersion:
			return fmt.Errorf("%w: %s has schema %d, this build knows %d", ErrSchema, s.cfg.Path, ver, schemaVersion)
		case ver < schemaVersion:
			for v := ver; v < schemaVersion; v++ {
				for _, q := range migrations[v] {
					if _, err := tx.ExecContext(ctx, q); err != nil {
						return fmt.Errorf("migrate schema %d to %d: %w", v, v+1, err)
					}
				}
			}
			if _, err := tx.ExecContext(ctx, `UPDATE meta SET value = ? WHERE key = ?`, schemaVersion, metaSchema); err != nil {
				return err
			}
		}
		for _, q := range indexes {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("create index: %w", err)
			}
		}
		// A new database, or one from before epochs, gets its epoch now.
		epoch, err := newEpoch()
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO epochs (id, epoch) VALUES (1, ?)`, epoch); err != nil {
			return fmt.Errorf("record epoch: %w", err)
		}
		for _, k := range metaKeys {
			if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO meta (key, value) VALUES (?, 0)`, k); err != nil {
				return err
			}
		}
		return tx.Commit()
	}(); err != nil {
		conn.Close()
		if errors.Is(err, ErrSchema) {
			return err
		}
		return fmt.Errorf("ingest: init %s: %w", s.cfg.Path, err)
	}
	if err := conn.QueryRowContext(ctx, `SELECT epoch FROM epochs WHERE id = 1`).Scan(&s.epoch); err != nil {
		conn.Close()
		return fmt.Errorf("ingest: read epoch of %s: %w", s.cfg.Path, err)
	}
	rows, err := conn.QueryContext(ctx, `SELECT key, value FROM meta`)
	if err != nil {
		conn.Close()
		return fmt.Errorf("ingest: read counters of %s: %w", s.cfg.Path, err)
	}
	for rows.Next() {
		var k string
		var v int64
		if err := rows.Scan(&k, &v); err != nil {
			rows.Close()
			conn.Close()
			return fmt.Errorf("ingest: read counters of %s: %w", s.cfg.Path, err)
		}
		s.ctr[k] = v
	}
	rows.Close()
	if err := conn.QueryRowContext(ctx, `SELECT COALESCE(SUM(bytes),0), COUNT(*), COALESCE(SUM(readings),0) FROM outbox`).
		Scan(&s.obBytes, &s.obBatches, &s.obReadings); err != nil {
		conn.Close()
		return fmt.Errorf("ingest: read outbox of %s: %w", s.cfg.Path, err)
	}
	if err := conn.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq),0) FROM recent_messages`).Scan(&s.recentMax); err != nil {
		conn.Close()
		return fmt.Errorf("ingest: read %s: %w", s.cfg.Path, err)
	}
	st, err := prepareStmts(ctx, s.db)
	if err != nil {
		conn.Close()
		return fmt.Errorf("ingest: prepare statements on %s: %w", s.cfg.Path, err)
	}
	s.stmts = st
	used, err := s.usedBytes(ctx)
	if err != nil {
		conn.Close()
		return err
	}
	s.usedBytesMem = used
	return nil
}

// Close closes the store. It waits for a write in progress.
func (s *Store) Close() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	close(s.ckStop)
	<-s.ckDone
	if _, err := s.wconn.ExecContext(context.Background(), `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		s.log.Warn("wal checkpoint at close", "err", err)
	}
	s.stmts.close()
	err := s.wconn.Close()
	if err2 := s.db.Close(); err == nil {
		err = err2
	}
	if err != nil {
		return fmt.Errorf("ingest: close %s: %w", s.cfg.Path, err)
	}
	return nil
}

// Path returns the database file.
func (s *Store) Path() string { return s.cfg.Path }

// stmts are the statements writes use, prepared once and bound to the
// write connection's transactions with Tx.StmtContext.
type stmts struct {
	devGet, devIns, devUpd            *sql.Stmt
	serGet, serIns, serLast           *sql.Stmt
	serLastText                       *sql.Stmt
	insReading, insText               *sql.Stmt
	insMany                           map[int]*sql.Stmt
	serMax                            *sql.Stmt
	rollup                            *sql.Stmt
	recentGet, recentIns, recentPrune *sql.Stmt
	deadIns                           *sql.Stmt
	obIns                             *sql.Stmt
	metaAdd                           *sql.Stmt
	all                               []*sql.Stmt
}

// prepareStmts prepares on the pool, not on the write connection: a
// statement prepared on a *sql.Conn is prepared again by every
// Tx.StmtContext, one prepared on the *sql.DB is reused per connection.
func prepareStmts(ctx context.Context, c *sql.DB) (*stmts, error) {
	st := &stmts{}
	var err error
	p := func(q string) *sql.Stmt {
		if err != nil {
			return nil
		}
		var x *sql.Stmt
		x, err = c.PrepareContext(ctx, q)
		if x != nil {
			st.all = append(st.all, x)
		}
		return x
	}
	st.devGet = p(`SELECT id FROM devices WHERE name = ?`)
	st.devIns = p(`INSERT INTO devices (name, first_seen, last_seen) VALUES (?, ?, ?)`)
	st.devUpd = p(`UPDATE devices SET last_seen = max(last_seen, ?), messages = messages + ?, readings = readings + ? WHERE id = ?`)
	st.serGet = p(`SELECT id FROM series WHERE device = ? AND metric = ?`)
	st.serIns = p(`INSERT INTO series (device, metric, unit, kind) VALUES (?, ?, ?, ?)`)
	st.serLast = p(`UPDATE series SET last_ts = ?, last_value = ?, last_text = NULL, unit = ?, kind = ?
		WHERE id = ? AND (last_ts IS NULL OR last_ts <= ?)`)
	st.serLastText = p(`UPDATE series SET last_ts = ?, last_value = NULL, last_text = ?, unit = ?, kind = ?
		WHERE id = ? AND (last_ts IS NULL OR last_ts <= ?)`)
	st.insReading = p(`INSERT OR IGNORE INTO readings (series, ts, value) VALUES (?, ?, ?)`)
	st.insMany = map[int]*sql.Stmt{}
	for _, n := range insertChunks {
		st.insMany[n] = p(`INSERT OR IGNORE INTO readings (series, ts, value) VALUES ` +
			strings.TrimSuffix(strings.Repeat("(?, ?, ?), ", n), ", "))
	}
	st.serMax = p(`SELECT MAX(ts) FROM readings WHERE series = ?`)
	st.insText = p(`INSERT OR IGNORE INTO text_readings (series, ts, kind, value) VALUES (?, ?, ?, ?)`)
	st.rollup = p(`INSERT INTO rollups (res, series, bucket, count, sum, min, max) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (res, series, bucket) DO UPDATE SET count = count + excluded.count, sum = sum + excluded.sum,
		min = min(min, excluded.min), max = max(max, excluded.max)`)
	st.recentGet = p(`SELECT 1 FROM recent_messages WHERE key = ? AND seq > ? LIMIT 1`)
	st.recentIns = p(`INSERT INTO recent_messages (seq, key) VALUES (?, ?)`)
	st.recentPrune = p(`DELETE FROM recent_messages WHERE seq <= ?`)
	st.deadIns = p(`INSERT INTO dead_letters (at, topic, reason, error, payload, payload_size, msg) VALUES (?, ?, ?, ?, ?, ?, ?)`)
	st.obIns = p(`INSERT INTO outbox (kind, created, readings, min_ts, max_ts, bytes, payload) VALUES (?, ?, ?, ?, ?, ?, ?)`)
	st.metaAdd = p(`UPDATE meta SET value = value + ? WHERE key = ?`)
	if err != nil {
		st.close()
		return nil, err
	}
	return st, nil
}

func (st *stmts) close() {
	for _, x := range st.all {
		x.Close()
	}
}

// usedBytes returns the database's used size: pages in use times the
// page size (free pages are reused before the file grows).
func (s *Store) usedBytes(ctx context.Context) (int64, error) {
	var pages, free, size int64
	if err := s.wconn.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages); err != nil {
		return 0, fmt.Errorf("ingest: page_count: %w", err)
	}
	if err := s.wconn.QueryRowContext(ctx, `PRAGMA freelist_count`).Scan(&free); err != nil {
		return 0, fmt.Errorf("ingest: freelist_count: %w", err)
	}
	if err := s.wconn.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&size); err != nil {
		return 0, fmt.Errorf("ingest: page_size: %w", err)
	}
	return (pages - free) * size, nil
}

// withTx runs fn in a write transaction on the write connection. The
// caller holds s.wmu.
func (s *Store) withTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	if s.closed {
		return ErrClosed
	}
	tx, err := s.wconn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("ingest: begin: %w", err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return s.noteDamage(err)
	}
	if err := tx.Commit(); err != nil {
		return s.noteDamage(fmt.Errorf("ingest: commit: %w", err))
	}
	s.commits.Add(1)
	return nil
}

// addMeta adds deltas to meta counters inside tx; the in-memory mirror
// is updated by applyMeta after the commit.
func addMeta(ctx context.Context, tx *sql.Tx, st *sql.Stmt, deltas map[string]int64) error {
	s := tx.StmtContext(ctx, st)
	for k, d := range deltas {
		if d == 0 {
			continue
		}
		if _, err := s.ExecContext(ctx, d, k); err != nil {
			return fmt.Errorf("ingest: update counter %s: %w", k, err)
		}
	}
	return nil
}

func (s *Store) applyMeta(deltas map[string]int64) {
	for k, d := range deltas {
		s.ctr[k] += d
	}
}

// Counters returns the store's lifetime counters (see StoreStats).
func (s *Store) counter(k string) int64 {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.ctr[k]
}
