package ingest

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// querier is what the read paths need: *sql.DB, *sql.Conn and *sql.Tx.
type querier interface {
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
}

// ReadingQuery selects raw readings. Empty Device or Metric match all;
// zero From/To leave the range open (From inclusive, To exclusive).
type ReadingQuery struct {
	Device string
	Metric string
	From   time.Time
	To     time.Time
	// Limit caps the result; 0 means 1000.
	Limit int
}

func timeRange(from, to time.Time) (int64, int64) {
	lo, hi := int64(-1<<62), int64(1<<62)
	if !from.IsZero() {
		lo = from.UnixMicro()
	}
	if !to.IsZero() {
		hi = to.UnixMicro()
	}
	return lo, hi
}

// Readings returns stored readings (numeric and text), ordered by
// device, metric and time. Rows do not repeat the unit and the
// numeric/boolean distinction: readings carry their series' unit and
// kind as of its latest reading.
func (s *Store) Readings(ctx context.Context, q ReadingQuery) ([]Reading, error) {
	if q.Limit <= 0 {
		q.Limit = 1000
	}
	lo, hi := timeRange(q.From, q.To)
	type ser struct {
		id                   int64
		device, metric, unit string
		kind                 Kind
	}
	var list []ser
	rows, err := s.db.QueryContext(ctx, `SELECT s.id, d.name, s.metric, s.unit, s.kind
		FROM series s JOIN devices d ON d.id = s.device
		WHERE (?1 = '' OR d.name = ?1) AND (?2 = '' OR s.metric = ?2) ORDER BY d.name, s.metric`, q.Device, q.Metric)
	if err != nil {
		return nil, fmt.Errorf("ingest: query readings: %w", err)
	}
	for rows.Next() {
		var x ser
		var kind int64
		if err := rows.Scan(&x.id, &x.device, &x.metric, &x.unit, &kind); err != nil {
			rows.Close()
			return nil, fmt.Errorf("ingest: query readings: %w", err)
		}
		x.kind = Kind(kind)
		list = append(list, x)
	}
	rows.Close()
	var out []Reading
	for _, x := range list {
		if len(out) >= q.Limit {
			break
		}
		rows, err := s.db.QueryContext(ctx, `
			SELECT ts, -1, value, NULL FROM readings WHERE series = ?1 AND ts >= ?2 AND ts < ?3
			UNION ALL
			SELECT ts, kind, 0, value FROM text_readings WHERE series = ?1 AND ts >= ?2 AND ts < ?3
			ORDER BY 1 LIMIT ?4`, x.id, lo, hi, q.Limit-len(out))
		if err != nil {
			return nil, fmt.Errorf("ingest: query readings: %w", err)
		}
		for rows.Next() {
			r := Reading{Device: x.device, Metric: x.metric, Unit: x.unit}
			var ts, kind int64
			var text []byte
			if err := rows.Scan(&ts, &kind, &r.Value, &text); err != nil {
				rows.Close()
				return nil, fmt.Errorf("ingest: query readings: %w", err)
			}
			r.Time = time.UnixMicro(ts).UTC()
			switch {
			case kind >= 0:
				r.Kind = Kind(kind)
			case x.kind == KindBool:
				r.Kind = KindBool
			default:
				r.Kind = KindNumber
			}
			r.Text = string(text)
			out = append(out, r)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("ingest: query readings: %w", err)
		}
	}
	return out, nil
}

// RollupQuery selects rollups. Resolution is time.Minute or time.Hour.
type RollupQuery struct {
	Device     string
	Metric     string
	Resolution time.Duration
	From, To   time.Time
	// Limit caps the result; 0 means 1000.
	Limit int
}

// Rollups returns stored rollups ordered by device, metric and bucket.
func (s *Store) Rollups(ctx context.Context, q RollupQuery) ([]Rollup, error) {
	if q.Resolution != time.Minute && q.Resolution != time.Hour {
		return nil, fmt.Errorf("%w: rollup resolution %s (want 1m or 1h)", ErrInvalidConfig, q.Resolution)
	}
	if q.Limit <= 0 {
		q.Limit = 1000
	}
	lo, hi := timeRange(q.From, q.To)
	rows, err := s.db.QueryContext(ctx, `
		SELECT d.name, s.metric, s.unit, r.bucket, r.count, r.sum, r.min, r.max
		FROM rollups r JOIN series s ON s.id = r.series JOIN devices d ON d.id = s.device
		WHERE r.res = ? AND r.bucket >= ? AND r.bucket < ? AND (?4 = '' OR d.name = ?4) AND (?5 = '' OR s.metric = ?5)
		ORDER BY d.name, s.metric, r.bucket LIMIT ?6`,
		int64(q.Resolution/time.Second), lo, hi, q.Device, q.Metric, q.Limit)
	if err != nil {
		return nil, fmt.Errorf("ingest: query rollups: %w", err)
	}
	defer rows.Close()
	var out []Rollup
	for rows.Next() {
		u := Rollup{Resolution: q.Resolution}
		var bucket int64
		if err := rows.Scan(&u.Device, &u.Metric, &u.Unit, &bucket, &u.Count, &u.Sum, &u.Min, &u.Max); err != nil {
			return nil, fmt.Errorf("ingest: query rollups: %w", err)
		}
		u.Start = time.UnixMicro(bucket).UTC()
		out = append(out, u)
	}
	return out, rows.Err()
}

// Device is a device seen by this agent, with its metrics.
type Device struct {
	ID        string    `json:"id"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	Messages  int64     `json:"messages"` // messages committed (dead letters excluded)
	Readings  int64     `json:"readings"` // readings stored
	// Rate is Messages per second between FirstSeen and LastSeen (0 with
	// fewer than two messages).
	Rate    float64      `json:"rate"`
	Metrics []MetricInfo `json:"metrics"`
}

// MetricInfo is one metric of a device and its latest reading.
type MetricInfo struct {
	Name     string    `json:"name"`
	Unit     string    `json:"unit,omitempty"`
	Kind     string    `json:"kind"`
	LastTime time.Time `json:"last_time"`
	Value    float64   `json:"value"`
	Text     string    `json:"text,omitempty"`
}

// Devices lists the devices seen, by id.
func (s *Store) Devices(ctx context.Context) ([]Device, error) { return listDevices(ctx, s.db) }

func listDevices(ctx context.Context, q querier) ([]Device, error) {
	rows, err := q.QueryContext(ctx, `SELECT d.id, d.name, d.first_seen, d.last_seen, d.messages, d.readings,
		s.metric, s.unit, s.kind, s.last_ts, s.last_value, s.last_text
		FROM devices d LEFT JOIN series s ON s.device = d.id ORDER BY d.name, s.metric`)
	if err != nil {
		return nil, fmt.Errorf("ingest: list devices: %w", err)
	}
	defer rows.Close()
	var out []Device
	lastID := int64(-1)
	for rows.Next() {
		var id, first, last, msgs, nread int64
		var name string
		var metric, unit sql.NullString
		var kind, lastTS sql.NullInt64
		var lastVal sql.NullFloat64
		var lastText []byte
		if err := rows.Scan(&id, &name, &first, &last, &msgs, &nread, &metric, &unit, &kind, &lastTS, &lastVal, &lastText); err != nil {
			return nil, fmt.Errorf("ingest: list devices: %w", err)
		}
		if id != lastID {
			lastID = id
			d := Device{ID: name, FirstSeen: time.UnixMicro(first).UTC(), LastSeen: time.UnixMicro(last).UTC(),
				Messages: msgs, Readings: nread, Metrics: []MetricInfo{}}
			if span := d.LastSeen.Sub(d.FirstSeen).Seconds(); msgs > 1 && span > 0 {
				d.Rate = float64(msgs-1) / span
			}
			out = append(out, d)
		}
		if metric.Valid {
			mi := MetricInfo{Name: metric.String, Unit: unit.String, Kind: Kind(kind.Int64).String(),
				Value: lastVal.Float64, Text: string(lastText)}
			if lastTS.Valid {
				mi.LastTime = time.UnixMicro(lastTS.Int64).UTC()
			}
			d := &out[len(out)-1]
			d.Metrics = append(d.Metrics, mi)
		}
	}
	return out, rows.Err()
}

// DeadLetter is a message that could not be ingested.
type DeadLetter struct {
	ID          int64     `json:"id"`
	At          time.Time `json:"at"` // receive time
	Topic       string    `json:"topic"`
	Reason      Reason    `json:"reason"`
	Error       string    `json:"error"`
	Payload     []byte    `json:"payload"`      // the first MaxDeadLetterPayload bytes
	PayloadSize int       `json:"payload_size"` // the payload's full size
	Truncated   bool      `json:"truncated"`
}

// DeadLetterQuery pages through dead letters in id order.
type DeadLetterQuery struct {
	// After returns dead letters with ids above it (the previous page's
	// Next); 0 starts at the beginning.
	After int64
	// Limit is the page size; 0 means 100, at most 1000.
	Limit int
	// Reason, when set, selects one reason.
	Reason Reason
}

// DeadLetterPage is one page of dead letters. Next is the After of the
// following page, 0 when this page is the last.
type DeadLetterPage struct {
	Items []DeadLetter `json:"items"`
	Next  int64        `json:"next"`
}

// DeadLetters returns one page of dead letters.
func (s *Store) DeadLetters(ctx context.Context, q DeadLetterQuery) (DeadLetterPage, error) {
	return listDeadLetters(ctx, s.db, q)
}

func listDeadLetters(ctx context.Context, db querier, q DeadLetterQuery) (DeadLetterPage, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	q.Limit = min(q.Limit, 1000)
	rows, err := db.QueryContext(ctx, `SELECT id, at, topic, reason, error, payload, payload_size FROM dead_letters
		WHERE id > ? AND (? = '' OR reason = ?) ORDER BY id LIMIT ?`, q.After, string(q.Reason), string(q.Reason), q.Limit+1)
	if err != nil {
		return DeadLetterPage{}, fmt.Errorf("ingest: list dead letters: %w", err)
	}
	defer rows.Close()
	page := DeadLetterPage{Items: []DeadLetter{}}
	for rows.Next() {
		var d DeadLetter
		var at int64
		var reason string
		if err := rows.Scan(&d.ID, &at, &d.Topic, &reason, &d.Error, &d.Payload, &d.PayloadSize); err != nil {
			return DeadLetterPage{}, fmt.Errorf("ingest: list dead letters: %w", err)
		}
		d.At, d.Reason = time.UnixMicro(at).UTC(), Reason(reason)
		d.Truncated = len(d.Payload) < d.PayloadSize
		if len(page.Items) == q.Limit {
			page.Next = page.Items[len(page.Items)-1].ID
			break
		}
		page.Items = append(page.Items, d)
	}
	return page, rows.Err()
}

// DeadLetterPurge selects dead letters to delete. Set criteria combine
// with AND; at least one must be set.
type DeadLetterPurge struct {
	IDs    []int64   // these ids
	Before time.Time // received before this time
	Reason Reason    // with this reason
	All    bool      // every dead letter (alone)
}

// PurgeDeadLetters deletes the selected dead letters and returns how many.
func (s *Store) PurgeDeadLetters(ctx context.Context, p DeadLetterPurge) (int64, error) {
	var where []string
	var args []any
	if len(p.IDs) > 0 {
		if len(p.IDs) > 10000 {
			return 0, fmt.Errorf("%w: purge of %d ids at once (at most 10000)", ErrInvalidConfig, len(p.IDs))
		}
		where = append(where, "id IN ("+inList(len(p.IDs))+")")
		for _, id := range p.IDs {
			args = append(args, id)
		}
	}
	if !p.Before.IsZero() {
		where = append(where, "at < ?")
		args = append(args, p.Before.UnixMicro())
	}
	if p.Reason != "" {
		where = append(where, "reason = ?")
		args = append(args, string(p.Reason))
	}
	switch {
	case p.All && len(where) > 0:
		return 0, fmt.Errorf("%w: purge: All excludes other criteria", ErrInvalidConfig)
	case p.All:
		where = []string{"1"}
	case len(where) == 0:
		return 0, fmt.Errorf("%w: purge: no criteria (set IDs, Before, Reason or All)", ErrInvalidConfig)
	}
	return s.exec(ctx, map[string]int64{metaDeadLetters: -1}, `DELETE FROM dead_letters WHERE `+strings.Join(where, " AND "), args...)
}

// StoreStats is a snapshot of the store's contents and counters.
type StoreStats struct {
	Readings             int64  `json:"readings"`               // numeric readings held (raw)
	TextReadings         int64  `json:"text_readings"`          // string and data readings held
	DeadLetters          int64  `json:"dead_letters"`           // dead letters held
	Devices              int64  `json:"devices"`                // devices seen
	Series               int64  `json:"series"`                 // device metrics seen
	Messages             int64  `json:"messages"`               // messages ever committed (stored or dead-lettered)
	StoredTotal          int64  `json:"stored_total"`           // readings ever stored
	DuplicateReadings    int64  `json:"duplicate_readings"`     // readings ignored as already stored
	DuplicateMessages    int64  `json:"duplicate_messages"`     // redelivered receive-time messages skipped
	DeadLettersEvicted   int64  `json:"dead_letters_evicted"`   // dead letters deleted by the count or age bound
	RetentionDeletedAge  int64  `json:"retention_deleted_age"`  // raw readings deleted by age
	RetentionDeletedSize int64  `json:"retention_deleted_size"` // raw readings deleted by the size bound
	OutboxPending        int64  `json:"outbox_pending"`         // readings in pending outbox batches
	OutboxPendingBatches int64  `json:"outbox_pending_batches"` // pending outbox batches
	OutboxPendingBytes   int64  `json:"outbox_pending_bytes"`   // their payload bytes
	OutboxEvicted        int64  `json:"outbox_evicted"`         // raw readings replaced by rollups in the outbox
	OutboxRollupBatches  int64  `json:"outbox_rollup_batches"`  // rollup batches made by eviction
	OutboxAckedBatches   int64  `json:"outbox_acked_batches"`   // batches acknowledged by the uplink
	OutboxAckedReadings  int64  `json:"outbox_acked_readings"`  // readings in them
	UsedBytes            int64  `json:"used_bytes"`             // database used size
	Backpressure         string `json:"backpressure,omitempty"` // "", "store" or "outbox" (last evaluation)
}

// Stats returns a snapshot of the store.
func (s *Store) Stats(ctx context.Context) (StoreStats, error) {
	st, err := readStats(ctx, s.db)
	if err != nil {
		return st, err
	}
	s.wmu.Lock()
	st.Backpressure = s.pressure
	s.wmu.Unlock()
	return st, nil
}

func readStats(ctx context.Context, db querier) (StoreStats, error) {
	var st StoreStats
	rows, err := db.QueryContext(ctx, `SELECT key, value FROM meta`)
	if err != nil {
		return st, fmt.Errorf("ingest: read counters: %w", err)
	}
	m := map[string]int64{}
	for rows.Next() {
		var k string
		var v int64
		if err := rows.Scan(&k, &v); err != nil {
			rows.Close()
			return st, fmt.Errorf("ingest: read counters: %w", err)
		}
		m[k] = v
	}
	rows.Close()
	st.Readings, st.TextReadings, st.DeadLetters = m[metaRawReadings], m[metaTextReadings], m[metaDeadLetters]
	st.Messages, st.StoredTotal = m[metaMessages], m[metaStoredReadings]
	st.DuplicateReadings, st.DuplicateMessages = m[metaDuplicates], m[metaDupMessages]
	st.DeadLettersEvicted = m[metaDeadEvicted]
	st.RetentionDeletedAge, st.RetentionDeletedSize = m[metaRetainedAge], m[metaRetainedSize]
	st.OutboxEvicted, st.OutboxRollupBatches = m[metaOutboxEvicted], m[metaOutboxRollups]
	st.OutboxAckedBatches, st.OutboxAckedReadings = m[metaOutboxAcked], m[metaOutboxAckedRead]
	if err := db.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM devices), (SELECT COUNT(*) FROM series),
		(SELECT COUNT(*) FROM outbox), COALESCE((SELECT SUM(readings) FROM outbox), 0), COALESCE((SELECT SUM(bytes) FROM outbox), 0)`).
		Scan(&st.Devices, &st.Series, &st.OutboxPendingBatches, &st.OutboxPending, &st.OutboxPendingBytes); err != nil {
		return st, fmt.Errorf("ingest: read stats: %w", err)
	}
	var pages, free, size int64
	if err := db.QueryRowContext(ctx, `SELECT * FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()`).Scan(&pages, &free, &size); err != nil {
		return st, fmt.Errorf("ingest: read size: %w", err)
	}
	st.UsedBytes = (pages - free) * size
	return st, nil
}

// SeriesPoint is one numeric reading of a series: Unix microseconds and
// value.
type SeriesPoint struct {
	TS    int64
	Value float64
}

// MaxSeriesPage bounds one page of SeriesPage.
const MaxSeriesPage = 10000

// SeriesPage returns up to limit numeric readings (numbers and booleans;
// text readings are not part of it) of one device's metric with times in
// (after, to), Unix microseconds, oldest first: a page of a walk through
// a series in bounded memory, the next page starting after the last
// time returned. A device or metric never seen has no readings. limit
// is capped at MaxSeriesPage; 0 means MaxSeriesPage.
func (s *Store) SeriesPage(ctx context.Context, device, metric string, after, to int64, limit int) ([]SeriesPoint, error) {
	if limit <= 0 || limit > MaxSeriesPage {
		limit = MaxSeriesPage
	}
	rows, err := s.db.QueryContext(ctx, `SELECT r.ts, r.value FROM readings r
		WHERE r.series = (SELECT s.id FROM series s JOIN devices d ON d.id = s.device WHERE d.name = ?1 AND s.metric = ?2)
		AND r.ts > ?3 AND r.ts < ?4 ORDER BY r.ts LIMIT ?5`, device, metric, after, to, limit)
	if err != nil {
		return nil, fmt.Errorf("ingest: read series %s/%s: %w", device, metric, err)
	}
	defer rows.Close()
	out := make([]SeriesPoint, 0, min(limit, 1024))
	for rows.Next() {
		var p SeriesPoint
		if err := rows.Scan(&p.TS, &p.Value); err != nil {
			return nil, fmt.Errorf("ingest: read series %s/%s: %w", device, metric, err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("ingest: read series %s/%s: %w", device, metric, err)
	}
	return out, nil
}

// DeviceNames lists the devices this agent has stored readings of, by
// name.
func (s *Store) DeviceNames(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name FROM devices ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("ingest: list device names: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, fmt.Errorf("ingest: list device names: %w", err)
		}
		out = append(out, n)
	}
	return out, rows.Err()
}
