package ingest

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestIngestorFullDatabaseHoldsBack: when the database cannot grow
// (SQLITE_FULL, as on a full disk; here max_page_count caps it), the
// ingestor retries without acknowledging and without dead-lettering
// valid messages, reports disk_full pressure, and stores every message
// once space returns, its readings in the outbox too.
func TestIngestorFullDatabaseHoldsBack(t *testing.T) {
	dir := t.TempDir()
	st, err := OpenStore(StoreConfig{Path: dir + "/" + StoreFile})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	var pages int64
	if err := st.wconn.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	// Room for a few commits, then the database is full.
	if _, err := st.wconn.ExecContext(ctx, fmt.Sprintf(`PRAGMA max_page_count = %d`, pages+40)); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	in := newTestIngestor(t, Config{Store: st, Registry: reg, BatchMessages: 50, BatchDelay: time.Millisecond,
		MinFreeBytes: -1})
	const total = 3000
	msgs := make([]*fakeMsg, total)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range msgs {
			msgs[i] = &fakeMsg{topic: fmt.Sprintf("devices/d%d/telemetry", i%7), pid: uint16(i + 1),
				payload: []byte(fmt.Sprintf(`{"a_metric_%d":%d,"b":%d,"ts":%.6f}`, i%13, i, i, float64(testNow.UnixMicro()+int64(i))/1e6))}
			if err := in.Handle(msgs[i]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	waitFor(t, "disk_full backpressure", func() bool { return in.Stats().Backpressure == pressureDisk })
	if v := metricValue(t, reg, "edgefleet_ingest_backpressure", map[string]string{"reason": pressureDisk}); v != 1 {
		t.Fatalf("disk_full gauge %v", v)
	}
	time.Sleep(time.Second) // several retries, long enough for the batch to be split before the fix
	a1 := in.Stats().Acked
	if a1 == total {
		t.Fatal("everything acknowledged although the database is full")
	}
	if s, _ := st.Stats(ctx); s.DeadLetters != 0 {
		t.Fatalf("%d valid messages dead-lettered while the database was full", s.DeadLetters)
	}
	for i, m := range msgs[a1:] {
		if m != nil && m.acked.Load() != 0 {
			t.Fatalf("message %d acknowledged while the database was full", int(a1)+i)
		}
	}
	// Space returns.
	if _, err := st.wconn.ExecContext(ctx, `PRAGMA max_page_count = 1073741823`); err != nil {
		t.Fatal(err)
	}
	<-done
	waitFor(t, "all acknowledged", func() bool { return in.Stats().Acked == total })
	for i, m := range msgs {
		if m.acked.Load() != 1 {
			t.Fatalf("message %d acknowledged %d times", i, m.acked.Load())
		}
	}
	s, _ := st.Stats(ctx)
	if s.Readings != 2*total || s.DeadLetters != 0 || s.OutboxPending != 2*total {
		t.Fatalf("stored %d readings (%d in the outbox) and %d dead letters, want %d and 0", s.Readings, s.OutboxPending, s.DeadLetters, 2*total)
	}
	waitFor(t, "pressure off", func() bool { return in.Stats().Backpressure == "" })
}

// TestIngestorDiskReserve: under MinFreeBytes free on the store's file
// system the ingestor holds back (disk_full) before the disk fills, and
// resumes once MinFreeBytes plus a tenth is free again.
func TestIngestorDiskReserve(t *testing.T) {
	reg := prometheus.NewRegistry()
	in, err := New(Config{DataDir: t.TempDir(), Registry: reg, BatchMessages: 10, BatchDelay: time.Millisecond,
		PressureInterval: 5 * time.Millisecond, MinFreeBytes: 10 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var free atomic.Int64
	free.Store(100 << 20)
	in.statfs = func(dir string) (int64, error) {
		if dir != in.dir {
			t.Errorf("statfs of %s, want the store's directory %s", dir, in.dir)
		}
		return free.Load(), nil
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer in.Stop()
	n, base := 0, time.Now().Unix()-3600
	send := func(k int) []*fakeMsg {
		var ms []*fakeMsg
		for range k {
			n++
			m := &fakeMsg{topic: "devices/a/telemetry", pid: uint16(n), payload: []byte(fmt.Sprintf(`{"v":%d,"ts":%d}`, n, base+int64(n)))}
			ms = append(ms, m)
			if err := in.Handle(m); err != nil {
				t.Fatal(err)
			}
		}
		return ms
	}
	first := send(5)
	waitFor(t, "acknowledged with room to spare", func() bool { return allAcked(first) })
	free.Store(10<<20 - 1)
	// The free space is read after a commit and every PressureInterval:
	// whichever comes first sets disk_full, so the probe is committed
	// before (acknowledged) or held after (acknowledged when space
	// returns); it is never lost.
	probe := send(1)
	waitFor(t, "disk_full backpressure", func() bool { return in.Stats().Backpressure == pressureDisk })
	if v := metricValue(t, reg, "edgefleet_ingest_backpressure", map[string]string{"reason": pressureDisk}); v != 1 {
		t.Fatalf("disk_full gauge %v", v)
	}
	if st := in.Stats(); st.DiskFreeBytes != 10<<20-1 || st.MinFreeBytes != 10<<20 {
		t.Fatalf("stats %+v", st)
	}
	held := send(5)
	time.Sleep(100 * time.Millisecond)
	free.Store(10<<20 + 1) // above the reserve, not above its tenth more: still held
	time.Sleep(100 * time.Millisecond)
	for _, m := range held {
		if m.acked.Load() != 0 {
			t.Fatal("a message was acknowledged under the disk reserve")
		}
	}
	free.Store(11<<20 + 1)
	waitFor(t, "held messages acknowledged", func() bool { return allAcked(held) && allAcked(probe) })
	waitFor(t, "backpressure off", func() bool { return in.Stats().Backpressure == "" })
	if st, _ := in.Store().Stats(context.Background()); st.Readings != 11 || st.DeadLetters != 0 {
		t.Fatalf("store %+v", st)
	}
}

// TestIngestorSplitBatchDiskFull: a batch already being committed message
// by message (its whole commit kept failing for another reason) meets a
// full disk: the messages are held, not dead-lettered.
func TestIngestorSplitBatchDiskFull(t *testing.T) {
	st, err := OpenStore(StoreConfig{Path: t.TempDir() + "/" + StoreFile})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var full atomic.Bool
	full.Store(true)
	st.commitHook = func(envs []*envelope) error {
		switch {
		case len(envs) > 1:
			return errors.New("simulated refusal of the whole batch")
		case envs[0].err == nil && full.Load():
			return fmt.Errorf("simulated write: %w", syscall.ENOSPC)
		}
		return nil
	}
	in := newTestIngestor(t, Config{Store: st, BatchDelay: 20 * time.Millisecond, MinFreeBytes: -1})
	var msgs []*fakeMsg
	for i := range 10 {
		m := &fakeMsg{topic: "devices/a/telemetry", payload: []byte(fmt.Sprintf(`{"v":%d}`, i)), pid: uint16(i + 1)}
		msgs = append(msgs, m)
		in.Handle(m)
	}
	waitFor(t, "disk_full backpressure", func() bool { return in.Stats().Backpressure == pressureDisk })
	time.Sleep(200 * time.Millisecond)
	for i, m := range msgs {
		if m.acked.Load() != 0 {
			t.Fatalf("message %d acknowledged while the disk is full", i)
		}
	}
	if s, _ := st.Stats(context.Background()); s.DeadLetters != 0 {
		t.Fatalf("%d messages dead-lettered because the disk is full", s.DeadLetters)
	}
	full.Store(false)
	waitFor(t, "acknowledgements", func() bool { return allAcked(msgs) })
	if s, _ := st.Stats(context.Background()); s.Readings != 10 || s.DeadLetters != 0 {
		t.Fatalf("stats %+v", s)
	}
}
