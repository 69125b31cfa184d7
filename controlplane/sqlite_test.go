package controlplane

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

func openTestStore(t *testing.T) *SQLiteStore {
	t.Helper()
	st, err := OpenSQLite(filepath.Join(t.TempDir(), "s.db"), SQLiteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func enrollDirect(t *testing.T, st *SQLiteStore, id string, now time.Time) {
	t.Helper()
	ctx := context.Background()
	tok := cpapi.EnrollmentToken{ID: "enr_" + id, Hash: "h_" + id, Labels: map[string]string{"a": "b"}, CreatedAt: now, CreatedBy: "t", ExpiresAt: now.Add(time.Hour)}
	if err := st.CreateEnrollmentTokens(ctx, []cpapi.EnrollmentToken{tok}, AuditEntry{Time: now, Actor: "t", Action: "x", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	a := cpapi.Agent{ID: id, Name: id, Labels: tok.Labels, FirstSeen: now, LastSeen: now, CertSerial: "serial-" + id, CertNotAfter: now.Add(time.Hour)}
	if err := st.EnrollAgent(ctx, tok.ID, a, "", now, AuditEntry{Time: now, Actor: "t", Action: "enroll", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
}

func TestHeartbeatGroupCommitKeepsFullDurabilityForOtherWrites(t *testing.T) {
	st := openTestStore(t)
	now := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	const agents = 20
	for i := range agents {
		enrollDirect(t, st, "ag_"+string(rune('a'+i)), now)
	}
	var wg sync.WaitGroup
	errs := make(chan error, agents*10)
	for i := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 10 {
				at := now.Add(time.Duration(k+1) * time.Second)
				a, err := st.RecordHeartbeat(context.Background(), "ag_"+string(rune('a'+i)), cpapi.Heartbeat{Version: "v2", Health: &cpapi.Health{Status: "ok"}}, at)
				if err != nil {
					errs <- err
					return
				}
				if a.Labels["a"] != "b" {
					errs <- errors.New("labels missing from heartbeat answer")
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	agentsNow, err := st.ListAgents(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agentsNow {
		if !a.LastSeen.Equal(now.Add(10*time.Second)) || a.Version != "v2" || a.Health == nil {
			t.Errorf("agent %s after heartbeats: %+v", a.ID, a)
		}
	}
	// Heartbeat commits leave the writer at NORMAL; the next other write
	// switches it back to FULL before committing.
	syncOf := func() int {
		t.Helper()
		var v int
		if err := st.w.QueryRow("PRAGMA synchronous").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := syncOf(); v != 1 {
		t.Errorf("writer synchronous = %d after heartbeats, want 1 (NORMAL)", v)
	}
	if _, err := st.AppendAudit(context.Background(), AuditEntry{Time: now, Actor: "t", Action: "x", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	if v := syncOf(); v != 2 {
		t.Fatalf("writer synchronous = %d after an audited write, want 2 (FULL)", v)
	}
	// Unknown agent and closed store.
	if _, err := st.RecordHeartbeat(context.Background(), "ag_none", cpapi.Heartbeat{}, now); !errors.Is(err, cpapi.ErrNotFound) {
		t.Errorf("unknown agent: %v", err)
	}
	st.Close()
	if _, err := st.RecordHeartbeat(context.Background(), "ag_a", cpapi.Heartbeat{}, now); !errors.Is(err, ErrClosed) {
		t.Errorf("after close: %v", err)
	}
}

func TestStoreIngestChunksAndDuplicates(t *testing.T) {
	st := openTestStore(t)
	ctx := context.Background()
	now := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	// A batch larger than one insert chunk plus a remainder, two series.
	b := seriesBatch(readingsChunk*2+7, 2, now)
	res, err := st.IngestTelemetry(ctx, "ag_x", b, now)
	if err != nil || res.Accepted != len(b.Readings) {
		t.Fatalf("%+v %v", res, err)
	}
	q, err := st.QueryTelemetry(ctx, cpapi.TelemetryQuery{Agent: "ag_x", From: now.Add(-time.Hour), To: now.Add(24 * time.Hour), Bucket: time.Hour * 100, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, s := range q.Series {
		n += s.Buckets[0].Count
	}
	if len(q.Series) != 2 || n != int64(len(b.Readings)) {
		t.Fatalf("%d series, %d readings", len(q.Series), n)
	}
	// Duplicate.
	res, err = st.IngestTelemetry(ctx, "ag_x", b, now)
	if err != nil || !res.Duplicate {
		t.Fatalf("duplicate: %+v %v", res, err)
	}
	// A cancelled caller gets an error and nothing is written.
	next := cpapi.TelemetryBatch{BatchSeq: 2, Epoch: testEpoch, Readings: []cpapi.Reading{{Device: "new", Metric: "m", TS: now, Value: 1}}}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := st.IngestTelemetry(cctx, "ag_x", next, now); err == nil {
		t.Fatal("ingest with cancelled context succeeded")
	}
	if res, err := st.IngestTelemetry(ctx, "ag_x", next, now); err != nil || res.Accepted != 1 || res.Duplicate {
		t.Fatalf("batch 2 after the cancelled attempt: %+v %v", res, err)
	}
}

func TestBackgroundCheckpointCopiesWALIntoDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cp.db")
	st, err := OpenSQLite(path, SQLiteOptions{CheckpointInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	size := func() int64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	before := size()
	now := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, err := st.IngestTelemetry(context.Background(), "ag_cp", seriesBatch(5000, 10, now), now); err != nil {
		t.Fatal(err)
	}
	// Commits do not checkpoint (wal_autocheckpoint is off); the
	// background checkpointer must bring the rows into the main file.
	deadline := time.Now().Add(5 * time.Second)
	for size() <= before+64<<10 {
		if time.Now().After(deadline) {
			t.Fatalf("database file still %d bytes (was %d): no checkpoint", size(), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestMigrateTelemetryBatchesToEpochs: a version 1 database (batches
// keyed by agent and batch_seq, no model registry) opens as the current
// version; its batches are kept
// under epoch "" and no longer shadow new uploads of the same batch_seq.
func TestMigrateTelemetryBatchesToEpochs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v1.db")
	st, err := OpenSQLite(path, SQLiteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`DROP TABLE device_identities`, // version 6
		`DROP TABLE enrollments`,       // version 5
		`DROP TABLE fl_updates`,        // version 4
		`DROP TABLE fl_rounds`,
		`DROP TABLE fl_jobs`,
		`DROP TABLE model_deployments`, // version 3
		`DROP TABLE models`,
		`DROP TABLE telemetry_batches`,
		`CREATE TABLE telemetry_batches (agent_id TEXT NOT NULL, batch_seq INTEGER NOT NULL, received_at INTEGER NOT NULL,
			readings INTEGER NOT NULL, PRIMARY KEY (agent_id, batch_seq)) WITHOUT ROWID`,
		`INSERT INTO telemetry_batches VALUES ('ag_old', 1, 5, 3)`,
		`PRAGMA user_version = 1`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()

	st, err = OpenSQLite(path, SQLiteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var v, n int
	var epoch string
	if err := st.w.QueryRow(`PRAGMA user_version`).Scan(&v); err != nil || v != schemaVersion {
		t.Fatalf("user_version %d (%v)", v, err)
	}
	if err := st.w.QueryRow(`SELECT count(*) FROM models`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("model registry after migration: %d rows (%v)", n, err)
	}
	if err := st.w.QueryRow(`SELECT count(*), max(epoch) FROM telemetry_batches WHERE agent_id = 'ag_old' AND batch_seq = 1 AND readings = 3`).Scan(&n, &epoch); err != nil || n != 1 || epoch != "" {
		t.Fatalf("old batch after migration: %d rows, epoch %q (%v)", n, epoch, err)
	}
	now := time.Now().UTC()
	b := cpapi.TelemetryBatch{BatchSeq: 1, Epoch: testEpoch, Readings: []cpapi.Reading{{Device: "d", Metric: "m", TS: now, Value: 1}}}
	if res, err := st.IngestTelemetry(context.Background(), "ag_old", b, now); err != nil || res.Duplicate || res.Accepted != 1 {
		t.Fatalf("new upload after migration: %+v %v", res, err)
	}
}
