package ingest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// InspectReport describes an ingestion database: what `edge-agent
// inspect --json` prints.
type InspectReport struct {
	DataDir       string `json:"data_dir"`
	Database      string `json:"database"`
	SchemaVersion int64  `json:"schema_version"`
	// Readings is the number of numeric readings held (raw rows).
	Readings int64 `json:"readings"`
	// TextReadings is the number of string and data readings held.
	TextReadings int64 `json:"text_readings"`
	// DeadLetters is the number of dead letters held, by reason in
	// DeadLetterReasons.
	DeadLetters       int64            `json:"dead_letters"`
	DeadLetterReasons map[Reason]int64 `json:"dead_letter_reasons"`
	// OutboxPending is the number of readings in outbox batches not yet
	// acknowledged by the uplink (rollup batches count the readings they
	// summarize).
	OutboxPending        int64 `json:"outbox_pending"`
	OutboxPendingBatches int64 `json:"outbox_pending_batches"`
	OutboxPendingBytes   int64 `json:"outbox_pending_bytes"`
	// MinuteRollups and HourRollups count rollup rows.
	MinuteRollups int64 `json:"minute_rollups"`
	HourRollups   int64 `json:"hour_rollups"`
	// Devices lists the devices seen with their metrics.
	Devices []Device `json:"devices"`
	// Stats holds every counter of the store.
	Stats StoreStats `json:"stats"`
}

// Inspect reads the ingestion database of a data directory without
// changing it; the agent may be running or stopped. It returns ErrNoData
// when the directory holds no ingestion database.
func Inspect(dataDir string) (InspectReport, error) {
	path := filepath.Join(dataDir, StoreFile)
	rep := InspectReport{DataDir: dataDir, Database: path}
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return rep, fmt.Errorf("%w: %s", ErrNoData, path)
		}
		return rep, fmt.Errorf("ingest: inspect %s: %w", path, err)
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "query_only(1)")
	db, err := sql.Open("sqlite", path+"?"+q.Encode())
	if err != nil {
		return rep, fmt.Errorf("ingest: inspect %s: %w", path, err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// One read transaction: every figure comes from the same snapshot.
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return rep, fmt.Errorf("ingest: inspect %s: %w", path, err)
	}
	defer tx.Rollback()
	if err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, metaSchema).Scan(&rep.SchemaVersion); err != nil {
		return rep, fmt.Errorf("%w: %s has no ingestion schema: %v", ErrNoData, path, err)
	}
	if rep.SchemaVersion > schemaVersion {
		return rep, fmt.Errorf("%w: %s has schema %d, this build knows %d", ErrSchema, path, rep.SchemaVersion, schemaVersion)
	}
	if rep.Stats, err = readStats(ctx, tx); err != nil {
		return rep, err
	}
	st := rep.Stats
	rep.Readings, rep.TextReadings, rep.DeadLetters = st.Readings, st.TextReadings, st.DeadLetters
	rep.OutboxPending, rep.OutboxPendingBatches, rep.OutboxPendingBytes = st.OutboxPending, st.OutboxPendingBatches, st.OutboxPendingBytes
	rep.DeadLetterReasons = map[Reason]int64{}
	rows, err := tx.QueryContext(ctx, `SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason`)
	if err != nil {
		return rep, fmt.Errorf("ingest: inspect dead letters: %w", err)
	}
	for rows.Next() {
		var r string
		var n int64
		if err := rows.Scan(&r, &n); err != nil {
			rows.Close()
			return rep, fmt.Errorf("ingest: inspect dead letters: %w", err)
		}
		rep.DeadLetterReasons[Reason(r)] = n
	}
	rows.Close()
	if err := tx.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM rollups WHERE res = 60), (SELECT COUNT(*) FROM rollups WHERE res = 3600)`).
		Scan(&rep.MinuteRollups, &rep.HourRollups); err != nil {
		return rep, fmt.Errorf("ingest: inspect rollups: %w", err)
	}
	if rep.Devices, err = listDevices(ctx, tx); err != nil {
		return rep, err
	}
	if rep.Devices == nil {
		rep.Devices = []Device{}
	}
	return rep, nil
}
