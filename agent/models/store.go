package models

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" driver

	"github.com/edgefleet/edgefleet/clock"
)

// StoreFile is the predictions database in the data directory.
const StoreFile = "predictions.db"

// StoreConfig bounds the predictions kept.
type StoreConfig struct {
	// Path of the database. Required.
	Path string
	// MaxRows bounds the predictions kept (the oldest go first, a round
	// at a time: the newest MaxRows stay, with less than a round more).
	// Default 100000.
	MaxRows int64
	// MaxAge bounds how long a prediction is kept. Default 7 days. With
	// Outbox, only published predictions age out.
	MaxAge time.Duration
	// Outbox makes the store the outbox of devices/{id}/inference: an
	// Outbox publishes its predictions in order and marks them published
	// (MarkPublished). The age bound then never deletes an unpublished
	// prediction; the count bound (MaxRows) still does, oldest first, and
	// counts them (UnpublishedDropped): it is what bounds the disk while
	// the broker is away.
	Outbox bool
	// Clock stamps the database's creation (Epoch). Nil means
	// clock.Real().
	Clock clock.Clock
}

// Store keeps recent predictions in SQLite, bounded by count and age.
// A round of predictions (those of one drained batch of readings) is one
// row, its predictions encoded in a blob: storing each as a row of its
// own cost about 18 µs of CPU a prediction (insert, index, trim), a
// round's row a few microseconds per round. Predictions are derived
// data: the database syncs to the disk at WAL checkpoints
// (synchronous=NORMAL), so a power loss may lose the last ones, never
// corrupt it. Safe for concurrent use.
type Store struct {
	cfg StoreConfig
	db  *sql.DB

	mu        sync.Mutex   // serialises writes
	total     int64        // predictions stored through the newest row
	since     int64        // predictions added since the bounds were last applied
	published int64        // predictions published through this sequence number (Outbox)
	epoch     int64        // creation time of the database, Unix µs
	newest    atomic.Int64 // total, read without the lock
	dropped   atomic.Int64
	added     chan struct{} // signalled after each stored round
}

// StoredPrediction is one stored prediction.
type StoredPrediction struct {
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
	// upto, the key: predictions stored through this row (a running
	// total), so the count bound deletes a range of keys; n: predictions
	// in this row.
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS prediction_rounds (
		upto INTEGER PRIMARY KEY,
		at_us INTEGER NOT NULL,
		n INTEGER NOT NULL,
		data BLOB NOT NULL)`); err != nil {
		db.Close()
		return nil, fmt.Errorf("models: open %s: create schema: %w", cfg.Path, err)
	}
	// outbox: one row, how far the predictions were published (a
	// sequence number, see Pending) and the database's epoch.
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS outbox (
		id INTEGER PRIMARY KEY CHECK (id = 1),
		published INTEGER NOT NULL,
		epoch INTEGER NOT NULL)`); err != nil {
		db.Close()
		return nil, fmt.Errorf("models: open %s: create schema: %w", cfg.Path, err)
	}
	// A database from before the outbox: what it holds was published
	// then (or given up), and is not sent again.
	if _, err := db.ExecContext(ctx, `INSERT OR IGNORE INTO outbox (id, published, epoch)
		VALUES (1, (SELECT coalesce(max(upto), 0) FROM prediction_rounds), ?)`,
		clock.Or(cfg.Clock).Now().UnixMicro()); err != nil {
		db.Close()
		return nil, fmt.Errorf("models: open %s: %w", cfg.Path, err)
	}
	st := &Store{cfg: cfg, db: db, added: make(chan struct{}, 1)}
	if err := db.QueryRowContext(ctx, `SELECT coalesce(max(upto), 0) FROM prediction_rounds`).Scan(&st.total); err != nil {
		db.Close()
		return nil, fmt.Errorf("models: open %s: %w", cfg.Path, err)
	}
	if err := db.QueryRowContext(ctx, `SELECT published, epoch FROM outbox WHERE id = 1`).Scan(&st.published, &st.epoch); err != nil {
		db.Close()
		return nil, fmt.Errorf("models: open %s: %w", cfg.Path, err)
	}
	if !cfg.Outbox {
		st.published = st.total
	}
	st.newest.Store(st.total)
	return st, nil
}

// Epoch is the database's creation time (Unix µs): with a prediction's
// sequence number it makes the prediction's id (see PredictionID).
func (s *Store) Epoch() int64 { return s.epoch }

// Total is the sequence number of the newest stored prediction (the
// first is 1).
func (s *Store) Total() int64 { return s.newest.Load() }

// Published is the sequence number through which predictions were
// published (MarkPublished) or dropped unpublished by the count bound.
func (s *Store) Published() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.published
}

// UnpublishedDropped is how many predictions the count bound deleted
// before they were published, since the store was opened.
func (s *Store) UnpublishedDropped() int64 { return s.dropped.Load() }

// Added is signalled (capacity 1) after predictions are stored.
func (s *Store) Added() <-chan struct{} { return s.added }

// MarkPublished records durably that the predictions through sequence
// number seq were published. A mark below the current one is ignored.
func (s *Store) MarkPublished(ctx context.Context, seq int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq <= s.published {
		return nil
	}
	seq = min(seq, s.total)
	if _, err := s.db.ExecContext(ctx, `UPDATE outbox SET published = ? WHERE id = 1`, seq); err != nil {
		return fmt.Errorf("models: marking predictions published: %w", err)
	}
	s.published = seq
	return nil
}

// PredictionID is the stable id of the prediction of sequence number
// seq in a database of the given epoch: "EPOCH-SEQ", both decimal. It is
// the same each time the prediction is published.
func PredictionID(epoch, seq int64) string {
	return fmt.Sprintf("%d-%d", epoch, seq)
}

// roundAfter returns the oldest stored round holding predictions after
// sequence number seq: the sequence number of its first prediction and
// of its last, and its encoding. ok is false when there is none.
func (s *Store) roundAfter(ctx context.Context, seq int64) (first, last int64, data []byte, ok bool, err error) {
	var n int64
	err = s.db.QueryRowContext(ctx, `SELECT upto, n, data FROM prediction_rounds WHERE upto > ? ORDER BY upto LIMIT 1`, seq).Scan(&last, &n, &data)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, 0, nil, false, nil
	}
	if err != nil {
		return 0, 0, nil, false, fmt.Errorf("models: reading predictions to publish: %w", err)
	}
	return last - n + 1, last, data, true, nil
}

// Close closes the database.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db.Close()
}

// Add stores predictions as one row. The bounds are applied each time
// MaxRows/16 more were added (so at most about 6% more than MaxRows are
// kept), and at least every 4096.
func (s *Store) Add(ctx context.Context, ps []StoredPrediction) error {
	if len(ps) == 0 {
		return nil
	}
	b := []byte{roundFormat}
	for i := range ps {
		p := &ps[i]
		b = appendPrediction(b, p.Device, p.Model, p.Version, p.Label, p.Class, p.ReadingTime.UnixMicro(), p.At.UnixMicro(), p.Probabilities)
	}
	return s.AddRound(ctx, len(ps), ps[len(ps)-1].At, b)
}

// AddRound stores n predictions encoded in round (roundFormat, then
// appendPrediction for each), the newest at at, as Add does.
func (s *Store) AddRound(ctx context.Context, n int, at time.Time, round []byte) error {
	if n == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	total := s.total + int64(n)
	if _, err := s.db.ExecContext(ctx, `INSERT INTO prediction_rounds (at_us, upto, n, data) VALUES (?, ?, ?, ?)`,
		at.UnixMicro(), total, n, round); err != nil {
		return fmt.Errorf("models: storing predictions: %w", err)
	}
	s.total = total
	s.newest.Store(total)
	if !s.cfg.Outbox {
		s.published = total
	}
	select {
	case s.added <- struct{}{}:
	default:
	}
	s.since += int64(n)
	if s.since >= min(s.cfg.MaxRows/16+1, 4096) {
		s.since = 0
		return s.trimLocked(ctx, at)
	}
	return nil
}

// Trim applies the bounds now: the newest MaxRows predictions (whole
// rounds) younger than MaxAge stay.
func (s *Store) Trim(ctx context.Context, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.trimLocked(ctx, now)
}

func (s *Store) trimLocked(ctx context.Context, now time.Time) error {
	// A round is deleted once all its predictions are past the newest
	// MaxRows: its upto is at most total-MaxRows (a key range). Rounds
	// past MaxAge are looked for among the oldest 1000, so a trim never
	// scans the table (older ones go at the next trims). Only published
	// rounds age out; the count bound deletes unpublished ones too,
	// counting them, and moves the published mark past them.
	limit := s.total - s.cfg.MaxRows
	if limit > s.published {
		var lost, last int64
		if err := s.db.QueryRowContext(ctx, `SELECT coalesce(sum(upto - max(upto - n, ?)), 0), coalesce(max(upto), 0)
			FROM prediction_rounds WHERE upto <= ? AND upto > ?`, s.published, limit, s.published).Scan(&lost, &last); err != nil {
			return fmt.Errorf("models: trimming predictions: %w", err)
		}
		if last > s.published {
			if _, err := s.db.ExecContext(ctx, `UPDATE outbox SET published = ? WHERE id = 1`, last); err != nil {
				return fmt.Errorf("models: trimming predictions: %w", err)
			}
			s.published = last
			s.dropped.Add(lost)
		}
	}
	if _, err := s.db.ExecContext(ctx, `DELETE FROM prediction_rounds WHERE upto <= ?`, limit); err != nil {
		return fmt.Errorf("models: trimming predictions: %w", err)
	}
	if _, err := s.db.ExecContext(ctx, `DELETE FROM prediction_rounds WHERE upto IN
		(SELECT upto FROM prediction_rounds ORDER BY upto LIMIT 1000) AND at_us < ? AND upto <= ?`, now.Add(-s.cfg.MaxAge).UnixMicro(), s.published); err != nil {
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
	rows, err := s.db.QueryContext(ctx, `SELECT data FROM prediction_rounds ORDER BY upto DESC`)
	if err != nil {
		return nil, fmt.Errorf("models: reading predictions: %w", err)
	}
	defer rows.Close()
	var out []StoredPrediction
	for rows.Next() && len(out) < limit {
		var blob []byte
		if err := rows.Scan(&blob); err != nil {
			return nil, fmt.Errorf("models: reading predictions: %w", err)
		}
		round, err := decodeRound(blob)
		if err != nil {
			return nil, err
		}
		for i := len(round) - 1; i >= 0 && len(out) < limit; i-- {
			if p := round[i]; (device == "" || p.Device == device) && (model == "" || p.Model == model) {
				out = append(out, p)
			}
		}
	}
	return out, rows.Err()
}

// Count is how many predictions are stored.
func (s *Store) Count(ctx context.Context) (int64, error) {
	var n int64
	if err := s.db.QueryRowContext(ctx, `SELECT coalesce(sum(n), 0) FROM prediction_rounds`).Scan(&n); err != nil {
		return 0, fmt.Errorf("models: counting predictions: %w", err)
	}
	return n, nil
}

// roundFormat is the first byte of an encoded round.
const roundFormat = 1

// appendPrediction appends one prediction of a round: device, model,
// version, label (length-prefixed), class, reading and prediction times
// (Unix µs), probabilities (count, float64 little-endian). A round is
// the byte roundFormat followed by its predictions.
func appendPrediction(b []byte, device, model, version, label string, class int, readingUS, atUS int64, probs []float64) []byte {
	for _, s := range [...]string{device, model, version, label} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = binary.AppendUvarint(b, uint64(class))
	b = binary.AppendVarint(b, readingUS)
	b = binary.AppendVarint(b, atUS)
	b = binary.AppendUvarint(b, uint64(len(probs)))
	for _, v := range probs {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
	}
	return b
}

// errRound reports a stored round that does not decode.
var errRound = errors.New("models: stored prediction round is malformed")

// decodeRound reads a round appendPrediction wrote.
func decodeRound(b []byte) ([]StoredPrediction, error) {
	if len(b) < 1 || b[0] != roundFormat {
		return nil, fmt.Errorf("%w: format byte", errRound)
	}
	b = b[1:]
	var out []StoredPrediction
	for i := 0; len(b) > 0; i++ {
		var p StoredPrediction
		var err error
		if b, err = decodePrediction(b, &p, i); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// decodePrediction reads the prediction at the start of b (the i-th of
// its round) into p and returns the rest of b.
func decodePrediction(b []byte, p *StoredPrediction, i int) ([]byte, error) {
	uv := func() (uint64, bool) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, false
		}
		b = b[n:]
		return v, true
	}
	sv := func() (int64, bool) {
		v, n := binary.Varint(b)
		if n <= 0 {
			return 0, false
		}
		b = b[n:]
		return v, true
	}
	str := func() (string, bool) {
		n, ok := uv()
		if !ok || n > uint64(len(b)) {
			return "", false
		}
		s := string(b[:n])
		b = b[n:]
		return s, true
	}
	var ok1, ok2, ok3, ok4 bool
	p.Device, ok1 = str()
	p.Model, ok2 = str()
	p.Version, ok3 = str()
	p.Label, ok4 = str()
	class, ok5 := uv()
	rus, ok6 := sv()
	aus, ok7 := sv()
	k, ok8 := uv()
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7 && ok8) || k > uint64(len(b))/8 || class > math.MaxInt32 {
		return nil, fmt.Errorf("%w: prediction %d", errRound, i)
	}
	p.Class = int(class)
	p.ReadingTime, p.At = time.UnixMicro(rus).UTC(), time.UnixMicro(aus).UTC()
	p.Probabilities = make([]float64, k)
	for j := range p.Probabilities {
		p.Probabilities[j] = math.Float64frombits(binary.LittleEndian.Uint64(b))
		b = b[8:]
	}
	return b, nil
}
