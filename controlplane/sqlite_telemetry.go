package controlplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// Telemetry ingest and queries of SQLiteStore.

// batchDigest is the SHA-256 of a batch's decoded readings, in order:
// per reading the device and metric (each as 4-byte big-endian length
// and bytes), the time in Unix nanoseconds and the value's IEEE 754 bits
// (8 bytes big-endian each). A retry of a batch has the same readings,
// hence the same digest, however it was encoded or sealed.
func batchDigest(rs []cpapi.Reading) []byte {
	h := sha256.New()
	var buf []byte
	for i := range rs {
		r := &rs[i]
		buf = binary.BigEndian.AppendUint32(buf[:0], uint32(len(r.Device)))
		buf = append(buf, r.Device...)
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(r.Metric)))
		buf = append(buf, r.Metric...)
		buf = binary.BigEndian.AppendUint64(buf, uint64(r.TS.UnixNano()))
		buf = binary.BigEndian.AppendUint64(buf, math.Float64bits(r.Value))
		h.Write(buf)
	}
	return h.Sum(nil)
}

// IngestTelemetry stores a batch once per (agent, epoch, batch_seq); the
// same identity with other readings is refused (cpapi.ErrBatchConflict).
func (s *SQLiteStore) IngestTelemetry(ctx context.Context, agentID string, b cpapi.TelemetryBatch, receivedAt time.Time) (cpapi.IngestResult, error) {
	res := cpapi.IngestResult{BatchSeq: b.BatchSeq}
	if b.BatchSeq > 1<<63-1 {
		return res, fmt.Errorf("controlplane: batch_seq %d out of range: %w", b.BatchSeq, cpapi.ErrBadRequest)
	}
	if err := cpapi.ValidEpoch(b.Epoch); err != nil {
		return res, fmt.Errorf("controlplane: epoch: %v: %w", err, cpapi.ErrBadRequest)
	}
	digest := batchDigest(b.Readings)
	var added map[seriesKey]int64
	err := s.inTx(ctx, "ingest telemetry", func(ctx context.Context, tx *sql.Tx) error {
		r, err := tx.StmtContext(ctx, s.stBatch).ExecContext(ctx, agentID, b.Epoch, int64(b.BatchSeq), nanos(receivedAt), len(b.Readings), digest)
		if err != nil {
			return fmt.Errorf("controlplane: ingest telemetry: record batch: %w", err)
		}
		if n, _ := r.RowsAffected(); n == 0 {
			var had []byte
			var hadReadings int64
			var at int64
			if err := tx.QueryRowContext(ctx, `SELECT digest, readings, received_at FROM telemetry_batches WHERE agent_id = ? AND epoch = ? AND batch_seq = ?`,
				agentID, b.Epoch, int64(b.BatchSeq)).Scan(&had, &hadReadings, &at); err != nil {
				return fmt.Errorf("controlplane: ingest telemetry: read batch record: %w", err)
			}
			if !bytes.Equal(had, digest) {
				return fmt.Errorf("%w: epoch %q batch_seq %d was stored at %s with other readings (%d then, %d in this upload); this upload is refused and what is stored is unchanged",
					cpapi.ErrBatchConflict, b.Epoch, b.BatchSeq, fromNanos(at).Format(time.RFC3339), hadReadings, len(b.Readings))
			}
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
