package ingest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// TestStoreEpoch: a store's epoch is made with its database and kept
// across reopening; a database made anew (the old one lost) gets another,
// so its batches, numbered from 1 again, have new identities.
func TestStoreEpoch(t *testing.T) {
	clk := newFakeClock()
	path := filepath.Join(t.TempDir(), StoreFile)
	s := openTestStore(t, StoreConfig{Path: path, Clock: clk})
	first := s.Epoch()
	if !validEpoch(first) || len(first) != 32 {
		t.Fatalf("epoch %q", first)
	}
	fill(t, s, clk, "a", 3, testNow.Add(-time.Minute), time.Second)
	bs, err := s.ClaimOutbox(context.Background(), 10, time.Minute)
	if err != nil || len(bs) != 1 || bs[0].Epoch != first || bs[0].EpochSeq != bs[0].Seq || bs[0].Seq != 1 {
		t.Fatalf("batch of the store's own rows: %+v %v", bs, err)
	}
	s.Close()
	s = openTestStore(t, StoreConfig{Path: path, Clock: clk})
	if s.Epoch() != first {
		t.Fatalf("epoch %q after reopening, was %q", s.Epoch(), first)
	}
	s.Close()
	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	s = openTestStore(t, StoreConfig{Path: path, Clock: clk})
	fill(t, s, clk, "a", 3, testNow.Add(-time.Minute), time.Second)
	bs, err = s.ClaimOutbox(context.Background(), 10, time.Minute)
	if err != nil || len(bs) != 1 || bs[0].Seq != 1 || bs[0].Epoch == first || bs[0].Epoch != s.Epoch() || !validEpoch(s.Epoch()) {
		t.Fatalf("a database made anew must number its batches in a new epoch: %+v (old epoch %s) %v", bs, first, err)
	}
}

// TestStoreMigratesToEpochs: a schema 3 store gets an epoch when it is
// opened; its pending rows are numbered in it by their seq.
func TestStoreMigratesToEpochs(t *testing.T) {
	clk := newFakeClock()
	path := filepath.Join(t.TempDir(), StoreFile)
	s := openTestStore(t, StoreConfig{Path: path, Clock: clk, Outbox: OutboxConfig{GroupReadings: 3}})
	fill(t, s, clk, "a", 3, testNow.Add(-time.Minute), time.Second)
	fill(t, s, clk, "a", 2, testNow.Add(-30*time.Second), time.Second)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	execSQL(t, path,
		`ALTER TABLE outbox DROP COLUMN epoch`,
		`ALTER TABLE outbox DROP COLUMN eseq`,
		`DROP TABLE epochs`,
		`UPDATE meta SET value = 3 WHERE key = '`+metaSchema+`'`)
	s = openTestStore(t, StoreConfig{Path: path, Clock: clk, Outbox: OutboxConfig{GroupReadings: 3}})
	if !validEpoch(s.Epoch()) {
		t.Fatalf("migrated store's epoch %q", s.Epoch())
	}
	bs, err := s.ClaimOutbox(context.Background(), 10, time.Minute)
	if err != nil || len(bs) != 2 {
		t.Fatalf("claim after migration: %+v %v", bs, err)
	}
	for _, b := range bs {
		if b.Epoch != s.Epoch() || b.EpochSeq != b.Seq {
			t.Fatalf("migrated batch %+v, epoch %s", b, s.Epoch())
		}
	}
	s.Close()
	s = openTestStore(t, StoreConfig{Path: path, Clock: clk})
	if !validEpoch(s.Epoch()) || s.Epoch() != bs[0].Epoch {
		t.Fatalf("epoch %q after reopening, was %q", s.Epoch(), bs[0].Epoch)
	}
}

// outboxRows reads the outbox of a closed store as ImportOutbox takes
// it (as a salvage of that database would).
func outboxRows(t *testing.T, s *Store) []OutboxRow {
	t.Helper()
	rows, err := s.db.Query(`SELECT o.seq, o.eseq, o.grp, o.created, o.payload, e.epoch,
		(SELECT CASE WHEN f.eseq = 0 THEN f.seq ELSE f.eseq END FROM outbox f WHERE f.seq = o.grp)
		FROM outbox o JOIN epochs e ON e.id = o.epoch ORDER BY o.seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []OutboxRow
	for rows.Next() {
		var seq, eseq, grp, created int64
		var group *int64
		var r OutboxRow
		if err := rows.Scan(&seq, &eseq, &grp, &created, &r.Payload, &r.Epoch, &group); err != nil {
			t.Fatal(err)
		}
		r.Seq, r.Created = seq, time.UnixMicro(created)
		if eseq != 0 {
			r.Seq = eseq
		}
		if grp != 0 && group != nil {
			r.Group = *group
		}
		out = append(out, r)
	}
	return out
}

// TestOutboxImportKeepsEpochs: rows of an old database imported into a
// new one keep their epoch and numbers: the batch claimed (and perhaps
// delivered) from the old database is offered again with the same
// identity and readings, rows never claimed form batches of the old
// epoch, and no batch mixes them with the new database's rows.
func TestOutboxImportKeepsEpochs(t *testing.T) {
	clk := newFakeClock()
	ctx := context.Background()
	cfg := StoreConfig{Clock: clk, Outbox: OutboxConfig{GroupReadings: 5}}
	old := openTestStore(t, cfg)
	for i := 0; i < 4; i++ { // 4 rows of 2 readings
		fill(t, old, clk, "a", 2, testNow.Add(time.Duration(i-10)*time.Minute), time.Second)
	}
	claimed, err := old.ClaimOutbox(ctx, 1, time.Minute) // rows 1-2 form batch 1
	if err != nil || len(claimed) != 1 || claimed[0].Rows != 2 || claimed[0].EpochSeq != 1 {
		t.Fatalf("claim from the old store: %+v %v", claimed, err)
	}
	salvage := outboxRows(t, old)
	if len(salvage) != 4 || salvage[0].Group != 1 || salvage[1].Group != 1 || salvage[2].Group != 0 {
		t.Fatalf("salvaged rows %+v", salvage)
	}

	s := openTestStore(t, cfg)
	fill(t, s, clk, "b", 2, testNow.Add(-2*time.Minute), time.Second) // the new store's row 1
	if err := s.ImportOutbox(ctx, salvage); err != nil {
		t.Fatal(err)
	}
	fill(t, s, clk, "b", 2, testNow.Add(-time.Minute), time.Second) // and row 6
	if st := stats(t, s); st.OutboxPendingBatches != 6 || st.OutboxPending != 12 {
		t.Fatalf("stats after import: %+v", st)
	}
	bs, err := s.ClaimOutbox(ctx, 10, time.Minute)
	if err != nil || len(bs) != 4 {
		t.Fatalf("claim after import: %+v %v", bs, err)
	}
	// The batch claimed before comes first, as it was.
	if b := bs[0]; b.Epoch != old.Epoch() || b.EpochSeq != 1 || b.Rows != 2 || !reflect.DeepEqual(b.Readings, claimed[0].Readings) {
		t.Fatalf("batch claimed in the old store: %+v, was %+v", b, claimed[0])
	}
	// Then the new store's row 1 alone: the old epoch's rows 3-4 follow
	// it, but do not join it.
	if b := bs[1]; b.Epoch != s.Epoch() || b.EpochSeq != 1 || b.Rows != 1 {
		t.Fatalf("the new store's first batch: %+v", b)
	}
	if b := bs[2]; b.Epoch != old.Epoch() || b.EpochSeq != 3 || b.Rows != 2 || b.Count != 4 {
		t.Fatalf("old rows never claimed: %+v", b)
	}
	if b := bs[3]; b.Epoch != s.Epoch() || b.EpochSeq != b.Seq || b.Seq != 6 || b.Rows != 1 {
		t.Fatalf("the new store's later row: %+v", b)
	}
	// Refused, importing nothing: the store's own epoch, a malformed
	// epoch or payload, and rows imported before.
	for name, rows := range map[string][]OutboxRow{
		"own epoch":   {{Epoch: s.Epoch(), Seq: 9, Payload: salvage[0].Payload}},
		"bad epoch":   {{Epoch: "a b", Seq: 9, Payload: salvage[0].Payload}},
		"zero seq":    {{Epoch: "other", Seq: 0, Payload: salvage[0].Payload}},
		"bad payload": {{Epoch: "other", Seq: 9, Payload: []byte("EO")}},
		"again":       {{Epoch: "other", Seq: 9, Payload: salvage[0].Payload}, {Epoch: old.Epoch(), Seq: 1, Payload: salvage[0].Payload}},
	} {
		err := s.ImportOutbox(ctx, rows)
		if err == nil || (!errors.Is(err, ErrInvalidConfig) && !errors.Is(err, ErrCorrupt)) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if st := stats(t, s); st.OutboxPendingBatches != 6 {
		t.Fatalf("a refused import left rows: %+v", st)
	}
	if n, err := s.AckOutbox(ctx, bs[0].Seq, bs[1].Seq, bs[2].Seq, bs[3].Seq); err != nil || n != 4 {
		t.Fatalf("ack: %d %v", n, err)
	}
	if st := stats(t, s); st.OutboxPendingBatches != 0 || st.OutboxPending != 0 {
		t.Fatalf("stats after ack: %+v", st)
	}
}
