package models

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"math"
	"net/url"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" driver
)

// StoreFile is the predictions database in the data directory.
const StoreFile = "predictions.db"

// StoreConfig bounds the predictions kept.
type StoreConfig struct {
	// Path of the database. Required.
	Path string
	// MaxRows bounds the predictions kept (the oldest go first). Default
	// 100000.
	MaxRows int64
	// MaxAge bounds how long a prediction is kept. Default 7 days.
	MaxAge time.Duration
}

// Store keeps recent predictions in SQLite, bounded by count and age.
// Predictions are derived data: the database syncs to the disk at WAL
// checkpoints (synchronous=NORMAL), so a power loss may lose the last
// ones, never corrupt it. Safe for concurrent use.
type Store struct {
	cfg StoreConfig
	db  *sql.DB

	mu    sync.Mutex // serialises writes
	ins   *sql.Stmt
	since int64 // predictions added since the bounds were last applied
}

// StoredPrediction is one stored prediction.
type StoredPrediction struct {
	ID            int64     `json:"id"`
	Device        string    `json:"device"`
	Model         string    `json:"model"`
	Version       string    `json:"version"`
	Class         int       `json:"class"`
	Label         string    `json:"label"`
	Probabilities []float64 `json:"probabilities"`
	ReadingTime   time.Time `json:"reading_time"`
	At            time.Time `json:"at"`
}

// OpenStore opens (creating if needed) the predictions database.
func OpenStore(cfg StoreConfig) (*Store, error) {
	if cfg.Path == "" {
		return nil, fmt.Errorf("models: predictions database path is empty")
	}
	if cfg.MaxRows <= 0 {
		cfg.MaxRows = 100000
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = 7 * 24 * time.Hour
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "cache_size(-128)") // KiB: writes append, reads are small
	db, err := sql.Open("sqlite", cfg.Path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("models: open %s: %w", cfg.Path, err)
	}
	db.SetMaxOpenConns(1)
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS predictions (
		id INTEGER PRIMARY KEY,
		device TEXT NOT NULL,
		model TEXT NOT NULL,
		version TEXT NOT NULL,
		class INTEGER NOT NULL,
		label TEXT NOT NULL,
		probs BLOB NOT NULL,
		reading_us INTEGER NOT NULL,
		at_us INTEGER NOT NULL)`); err != nil {
		db.Close()
		return nil, fmt.Errorf("models: open %s: create schema: %w", cfg.Path, err)
	}
	ins, err := db.PrepareContext(ctx, `INSERT INTO predictions (device, model, version, class, label, probs, reading_us, at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("models: open %s: %w", cfg.Path, err)
	}
	return &Store{cfg: cfg, db: db, ins: ins}, nil
}

// Close closes the database.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ins.Close()
	return s.db.Close()
}

// Add stores predictions in one transaction. The bounds are applied
// each time MaxRows/16 more were added (so at most about 6% more than
// MaxRows are kept), and at least every 4096.
func (s *Store) Add(ctx context.Context, ps []StoredPrediction) error {
	if len(ps) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("models: storing predictions: %w", err)
	}
	defer tx.Rollback()
	st := tx.StmtContext(ctx, s.ins)
	var blob []byte
	for i := range ps {
		p := &ps[i]
		blob = blob[:0]
		for _, v := range p.Probabilities {
			blob = binary.LittleEndian.AppendUint64(blob, math.Float64bits(v))
		}
		if _, err := st.ExecContext(ctx, p.Device, p.Model, p.Version, p.Class, p.Label, blob,
			p.ReadingTime.UnixMicro(), p.At.UnixMicro()); err != nil {
			return fmt.Errorf("models: storing predictions: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("models: storing predictions: %w", err)
	}
	s.since += int64(len(ps))
	if s.since >= min(s.cfg.MaxRows/16+1, 4096) {
		s.since = 0
		return s.trimLocked(ctx, ps[len(ps)-1].At)
	}
	return nil
}

// Trim applies the bounds now: the newest MaxRows predictions younger
// than MaxAge stay.
func (s *Store) Trim(ctx context.Context, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.trimLocked(ctx, now)
}

func (s *Store) trimLocked(ctx context.Context, now time.Time) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM predictions WHERE id <= (SELECT max(id) FROM predictions) - ?`, s.cfg.MaxRows); err != nil {
		return fmt.Errorf("models: trimming predictions: %w", err)
	}
	if _, err := s.db.ExecContext(ctx, `DELETE FROM predictions WHERE at_us < ?`, now.Add(-s.cfg.MaxAge).UnixMicro()); err != nil {
		return fmt.Errorf("models: trimming predictions: %w", err)
	}
	return nil
}

// Recent returns the newest predictions, newest first; empty device or
// model match all. limit <= 0 means 100.
func (s *Store) Recent(ctx context.Context, device, model string, limit int) ([]StoredPrediction, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.db.QueryContext(ctx, `SELECT id, device, model, version, class, label, probs, reading_us, at_us FROM predictions
		WHERE (?1 = '' OR device = ?1) AND (?2 = '' OR model = ?2) ORDER BY id DESC LIMIT ?3`, device, model, limit)
	if err != nil {
		return nil, fmt.Errorf("models: reading predictions: %w", err)
	}
	defer rows.Close()
	var out []StoredPrediction
	for rows.Next() {
		var p StoredPrediction
		var blob []byte
		var rus, aus int64
		if err := rows.Scan(&p.ID, &p.Device, &p.Model, &p.Version, &p.Class, &p.Label, &blob, &rus, &aus); err != nil {
			return nil, fmt.Errorf("models: reading predictions: %w", err)
		}
		for len(blob) >= 8 {
			p.Probabilities = append(p.Probabilities, math.Float64frombits(binary.LittleEndian.Uint64(blob)))
			blob = blob[8:]
		}
		p.ReadingTime, p.At = time.UnixMicro(rus).UTC(), time.UnixMicro(aus).UTC()
		out = append(out, p)
	}
	return out, rows.Err()
}

// Count is how many predictions are stored.
func (s *Store) Count(ctx context.Context) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM predictions`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("models: counting predictions: %w", err)
	}
	return n, nil
}
