package controlplane

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// Telemetry ingest and queries of SQLiteStore.

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
