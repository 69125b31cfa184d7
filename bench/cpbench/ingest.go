package cpbench

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// IngestBenchOptions configures RunIngestBench.
type IngestBenchOptions struct {
	// Dir receives two scratch databases (required; use an empty
	// directory on the disk the server would use).
	Dir string
	// Batches and BatchSize shape the workload (defaults 200 and 1000).
	Batches   int
	BatchSize int
	// Series is the number of distinct (device, metric) pairs (default 20).
	Series int
	// Synchronous is passed to SQLiteOptions (default FULL).
	Synchronous string
}

// IngestBenchReport compares the store's telemetry ingest with plain
// SQLite inserts of the same rows (one prepared INSERT into an unindexed
// table, one transaction per batch, same journal and sync settings).
type IngestBenchReport struct {
	Readings  int `json:"readings"`
	BatchSize int `json:"batch_size"`
	// StoreRate is readings per second through SQLiteStore.IngestTelemetry.
	StoreRate float64 `json:"store_readings_per_second"`
	// PlainRate is readings per second of the plain inserts.
	PlainRate float64 `json:"plain_sqlite_readings_per_second"`
	// Ratio is StoreRate / PlainRate.
	Ratio float64 `json:"ratio"`
}

// benchBatches builds n batches of size readings over series series, one
// reading per series per second.
func benchBatches(n, size, series int, start time.Time) []cpapi.TelemetryBatch {
	out := make([]cpapi.TelemetryBatch, n)
	k := 0
	for i := range out {
		b := cpapi.TelemetryBatch{BatchSeq: uint64(i + 1), Epoch: "bench", Readings: make([]cpapi.Reading, size)}
		for j := range b.Readings {
			s := k % series
			b.Readings[j] = cpapi.Reading{
				Device: fmt.Sprintf("device-%02d", s/4),
				Metric: [...]string{"temperature", "humidity", "co2", "light"}[s%4],
				TS:     start.Add(time.Duration(k/series) * time.Second),
				Value:  float64(k%1000) / 10,
			}
			k++
		}
		out[i] = b
	}
	return out
}

// plainSQLite is the baseline: the same rows inserted as they come.
type plainSQLite struct {
	db  *sql.DB
	ins *sql.Stmt
}

func openPlainSQLite(path, synchronous string) (*plainSQLite, error) {
	if synchronous == "" {
		synchronous = "FULL"
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=synchronous("+strings.ToUpper(synchronous)+")&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("cpbench: plain sqlite: %w", err)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS readings (agent_id TEXT, device TEXT, metric TEXT, ts INTEGER, value REAL)`); err != nil {
		db.Close()
		return nil, fmt.Errorf("cpbench: plain sqlite: %w", err)
	}
	ins, err := db.Prepare(`INSERT INTO readings (agent_id, device, metric, ts, value) VALUES (?, ?, ?, ?, ?)`)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("cpbench: plain sqlite: %w", err)
	}
	return &plainSQLite{db: db, ins: ins}, nil
}

func (p *plainSQLite) insert(ctx context.Context, agent string, b cpapi.TelemetryBatch) error {
	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("cpbench: plain sqlite: %w", err)
	}
	st := tx.StmtContext(ctx, p.ins)
	for _, r := range b.Readings {
		if _, err := st.ExecContext(ctx, agent, r.Device, r.Metric, r.TS.UnixNano(), r.Value); err != nil {
			tx.Rollback()
			return fmt.Errorf("cpbench: plain sqlite: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("cpbench: plain sqlite: %w", err)
	}
	return nil
}

func (p *plainSQLite) Close() error {
	p.ins.Close()
	return p.db.Close()
}

// RunIngestBench measures telemetry ingest into a fresh SQLiteStore and
// plain SQLite inserts of the same rows, both in opts.Dir.
func RunIngestBench(ctx context.Context, opts IngestBenchOptions) (IngestBenchReport, error) {
	if opts.Dir == "" {
		return IngestBenchReport{}, fmt.Errorf("%w: ingest bench: Dir is required", ErrInvalidOptions)
	}
	if opts.Batches <= 0 {
		opts.Batches = 200
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 1000
	}
	if opts.Series <= 0 {
		opts.Series = 20
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return IngestBenchReport{}, fmt.Errorf("cpbench: ingest bench: %w", err)
	}
	batches := benchBatches(opts.Batches, opts.BatchSize, opts.Series, time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC))
	rep := IngestBenchReport{Readings: opts.Batches * opts.BatchSize, BatchSize: opts.BatchSize}

	st, err := controlplane.OpenSQLite(filepath.Join(opts.Dir, "ingest-bench-store.db"), controlplane.SQLiteOptions{Synchronous: opts.Synchronous})
	if err != nil {
		return rep, err
	}
	start := time.Now()
	for _, b := range batches {
		if _, err := st.IngestTelemetry(ctx, "ag_bench", b, start); err != nil {
			st.Close()
			return rep, err
		}
	}
	rep.StoreRate = float64(rep.Readings) / time.Since(start).Seconds()
	if err := st.Close(); err != nil {
		return rep, err
	}

	p, err := openPlainSQLite(filepath.Join(opts.Dir, "ingest-bench-plain.db"), opts.Synchronous)
	if err != nil {
		return rep, err
	}
	defer p.Close()
	start = time.Now()
	for _, b := range batches {
		if err := p.insert(ctx, "ag_bench", b); err != nil {
			return rep, err
		}
	}
	rep.PlainRate = float64(rep.Readings) / time.Since(start).Seconds()
	rep.Ratio = rep.StoreRate / rep.PlainRate
	return rep, nil
}
