package ingest

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/sqlitecheck"
	"github.com/edgefleet/edgefleet/internal/testutil"
)

// outboxFileRows reads the outbox of the database at path: each row's
// identity ("epoch/seq": its seq in the epoch that numbered it) and its
// payload.
func outboxFileRows(t *testing.T, path string) map[string]string {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT e.epoch, CASE WHEN o.eseq != 0 THEN o.eseq ELSE o.seq END, o.payload
		FROM outbox o JOIN epochs e ON e.id = o.epoch`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var epoch string
		var seq int64
		var p []byte
		if err := rows.Scan(&epoch, &seq, &p); err != nil {
			t.Fatal(err)
		}
		out[fmt.Sprintf("%s/%d", epoch, seq)] = string(p)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// filledStore writes three devices' readings (and their outbox batches)
// to a closed ingestion database of a few MiB and returns its path and
// how many readings and outbox rows it holds.
func filledStore(t *testing.T) (string, int64, map[string]string) {
	t.Helper()
	clk := newFakeClock()
	path := filepath.Join(t.TempDir(), StoreFile)
	s, err := OpenStore(StoreConfig{Path: path, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	from := testNow.Add(-2 * time.Hour)
	for _, dev := range []string{"d1", "d2", "d3"} {
		fill(t, s, clk, dev, 12000, from, 100*time.Millisecond)
	}
	st := stats(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path, st.Readings + st.TextReadings, outboxFileRows(t, path)
}

func TestSalvageHealthyCopiesEverything(t *testing.T) {
	path, held, outbox := filledStore(t)
	dst := filepath.Join(t.TempDir(), StoreFile)
	rep, err := Salvage(context.Background(), StoreConfig{Path: dst}, path)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Readings != held || rep.ReadingsLost != 0 || rep.OutboxBatches != int64(len(outbox)) || rep.OutboxLost != 0 {
		t.Fatalf("report %+v; held %d readings, %d outbox rows", rep, held, len(outbox))
	}
	got := outboxFileRows(t, dst)
	for id, p := range outbox {
		if got[id] != p {
			t.Fatalf("outbox row %s not copied as it was", id)
		}
	}
	s := openTestStore(t, StoreConfig{Path: dst})
	if st := stats(t, s); st.Readings != held || st.Devices != 3 || st.OutboxPendingBatches != int64(len(outbox)) {
		t.Fatalf("salvaged store: %+v", st)
	}
	// The batches are offered under their old identity; the new
	// database's own rows will be numbered in a new epoch.
	batches, err := s.ClaimOutbox(context.Background(), 1000, time.Minute)
	if err != nil || len(batches) == 0 {
		t.Fatalf("claim: %d batches, %v", len(batches), err)
	}
	for _, b := range batches {
		if _, ok := outbox[fmt.Sprintf("%s/%d", b.Epoch, b.EpochSeq)]; !ok || b.Epoch == s.Epoch() {
			t.Fatalf("batch offered as %s/%d, not under its old identity", b.Epoch, b.EpochSeq)
		}
	}
}

// TestSalvageCorruptKeepsWhatReads: a 4 KiB page in the middle of an
// ingestion database's readings overwritten; Salvage copies the rows that still read, counts
// the lost ones, and the new database is sound and opens as a store.
func TestSalvageCorruptKeepsWhatReads(t *testing.T) {
	path, held, outbox := filledStore(t)
	testutil.CorruptTablePage(t, path, "readings")
	if err := sqlitecheck.Check(context.Background(), path); !sqlitecheck.IsCorrupt(err) {
		t.Fatalf("quick_check of the damaged file: %v", err)
	}
	dst := filepath.Join(t.TempDir(), StoreFile)
	rep, err := Salvage(context.Background(), StoreConfig{Path: dst}, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("held %d readings, %d outbox rows; salvage: %+v", held, len(outbox), rep)
	if rep.Readings == 0 || rep.Readings >= held {
		t.Fatalf("salvaged %d of %d readings: want most, not all", rep.Readings, held)
	}
	// One 4 KiB page holds a few hundred readings: reading goes on past it.
	if rep.ReadingsLost > 600 {
		t.Fatalf("lost %d readings to one damaged page", rep.ReadingsLost)
	}
	if rep.Readings+rep.ReadingsLost != held {
		t.Fatalf("salvaged %d + lost %d != held %d", rep.Readings, rep.ReadingsLost, held)
	}
	unreadable := 0
	for _, c := range rep.Tables {
		unreadable += c.Unreadable
	}
	if unreadable == 0 {
		t.Fatal("no unreadable range counted")
	}
	if err := sqlitecheck.Check(context.Background(), dst); err != nil {
		t.Fatalf("salvaged database: %v", err)
	}
	got := outboxFileRows(t, dst)
	for id, p := range got {
		if outbox[id] != p {
			t.Fatalf("outbox row %s changed identity or content", id)
		}
	}
	if int64(len(got)) != rep.OutboxBatches {
		t.Fatalf("outbox: %d rows, report says %d", len(got), rep.OutboxBatches)
	}
	s := openTestStore(t, StoreConfig{Path: dst})
	if st := stats(t, s); st.Readings+st.TextReadings != rep.Readings {
		t.Fatalf("salvaged store holds %d readings, report says %d", st.Readings+st.TextReadings, rep.Readings)
	}
}

func TestSkipUnreadable(t *testing.T) {
	for _, tc := range []struct {
		bad, from, to int64 // keys in [from, to) are unreadable (to 0: all from on)
		want          int64
		ok            bool
	}{
		{bad: 100, from: 100, to: 5000, want: 5000, ok: true},
		{bad: 100, from: 100, to: 101, want: 101, ok: true},
		{bad: math.MinInt64, from: math.MinInt64, to: 1 << 40, want: 1 << 40, ok: true},
		{bad: 7, from: 0, to: 0, ok: false},
		{bad: math.MaxInt64 - 3, from: 0, to: math.MaxInt64, want: math.MaxInt64, ok: true},
	} {
		probes := 0
		got, ok := skipUnreadable(tc.bad, func(k int64) bool {
			probes++
			return k < tc.from || (tc.to != 0 && k >= tc.to)
		})
		if ok != tc.ok || (ok && got != tc.want) || probes > 130 {
			t.Errorf("skip from %d over [%d,%d): %d %v after %d probes, want %d %v", tc.bad, tc.from, tc.to, got, ok, probes, tc.want, tc.ok)
		}
	}
}

// TestStoreNotesDamage: a page of an open store's file overwritten; the
// commit that meets it fails and the store reports itself damaged.
func TestStoreNotesDamage(t *testing.T) {
	path, _, _ := filledStore(t)
	clk := newFakeClock()
	s := openTestStore(t, StoreConfig{Path: path, Clock: clk})
	if s.Damaged() != nil {
		t.Fatalf("healthy store damaged: %v", s.Damaged())
	}
	testutil.CorruptTablePage(t, path, "readings")
	var err error
	for i := 0; i < 50 && err == nil; i++ {
		var envs []*envelope
		for _, dev := range []string{"d1", "d2", "d3"} {
			// Readings inside each series' time range touch its pages.
			ts := testNow.Add(-2*time.Hour + time.Duration(i)*23*time.Second + 50*time.Millisecond)
			envs = append(envs, env(t, clk, "devices/"+dev+"/telemetry", fmt.Sprintf(`{"v":1,"ts":%.6f}`, float64(ts.UnixMicro())/1e6)))
		}
		_, err = s.commit(context.Background(), envs)
	}
	if err == nil {
		t.Fatal("commits over a damaged page succeeded")
	}
	if d := s.Damaged(); d == nil || !sqlitecheck.IsCorrupt(d) {
		t.Fatalf("Damaged() = %v after %v", d, err)
	}
}
