package ingest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
)

// metricValue returns the value of a counter or gauge in reg whose
// labels include want (-1 when absent).
func metricValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// newFakeClock returns a manual clock at testNow.
func newFakeClock() *clock.Manual { return clock.NewManual(testNow) }

func openTestStore(t *testing.T, cfg StoreConfig) *Store {
	t.Helper()
	if cfg.Path == "" {
		cfg.Path = filepath.Join(t.TempDir(), StoreFile)
	}
	s, err := OpenStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// env decodes a message as the ingestor would.
func env(t *testing.T, c clock.Clock, topic, payload string) *envelope {
	t.Helper()
	d, err := NewDecoder(Limits{}, c)
	if err != nil {
		t.Fatal(err)
	}
	e := &envelope{topic: topic, payload: []byte(payload), recv: c.Now(), pid: 1}
	e.hash = messageHash(topic, e.payload)
	tp, _ := ParseTopicPattern("")
	dev, err := tp.Device(topic)
	if err != nil {
		e.err = err
		return e
	}
	e.device = dev
	e.readings, e.received, e.err = d.appendDecode(nil, dev, e.payload, e.recv)
	return e
}

func mustCommit(t *testing.T, s *Store, envs ...*envelope) commitResult {
	t.Helper()
	res, err := s.commit(context.Background(), envs)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func stats(t *testing.T, s *Store) StoreStats {
	t.Helper()
	st, err := s.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestStoreCommitDedupRollups(t *testing.T) {
	clk := newFakeClock()
	reg := prometheus.NewRegistry()
	s := openTestStore(t, StoreConfig{Clock: clk, Registry: reg})
	ts := testNow.Unix() - 30
	p1 := fmt.Sprintf(`{"temp":20,"hum":40,"ts":%d}`, ts)
	p2 := fmt.Sprintf(`[{"bt":%d,"n":"temp","u":"Cel","v":22},{"n":"state","vs":"ok"},{"n":"temp","u":"Cel","t":10,"v":24}]`, ts+1)
	res := mustCommit(t, s,
		env(t, clk, "devices/a/telemetry", p1),
		env(t, clk, "devices/a/telemetry", p2),
		env(t, clk, "devices/a/telemetry", `{"temp":"hot"}`),
		env(t, clk, "devices/b c/telemetry", `{"x":1}`),
	)
	if res.stored != 5 || res.deadLetters != 2 || res.duplicates != 0 || res.seq == 0 {
		t.Fatalf("first commit: %+v", res)
	}
	// Redelivery of the same messages: every timestamped reading is a duplicate.
	res = mustCommit(t, s, env(t, clk, "devices/a/telemetry", p1), env(t, clk, "devices/a/telemetry", p2))
	if res.stored != 0 || res.duplicates != 5 || res.seq != 0 {
		t.Fatalf("redelivery: %+v", res)
	}
	st := stats(t, s)
	if st.Readings != 4 || st.TextReadings != 1 || st.DeadLetters != 2 || st.Devices != 1 || st.Series != 3 ||
		st.Messages != 6 || st.DuplicateReadings != 5 || st.OutboxPending != 5 || st.OutboxPendingBatches != 1 {
		t.Fatalf("stats %+v", st)
	}
	if got := metricValue(t, reg, "edgefleet_ingest_dead_letters_total", map[string]string{"reason": "schema"}); got != 1 {
		t.Fatalf("dead letters{schema} = %v", got)
	}
	if got := metricValue(t, reg, "edgefleet_ingest_dead_letters_total", map[string]string{"reason": "bad_topic"}); got != 1 {
		t.Fatalf("dead letters{bad_topic} = %v", got)
	}
	ctx := context.Background()
	rs, err := s.Rollups(ctx, RollupQuery{Device: "a", Metric: "temp", Resolution: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	// temp: 20 (ts), 22 (ts+1), 24 (ts+11): one or two minutes.
	var n int64
	var sum, lo, hi float64 = 0, 1e9, -1e9
	for _, r := range rs {
		n += r.Count
		sum += r.Sum
		lo, hi = min(lo, r.Min), max(hi, r.Max)
	}
	if n != 3 || sum != 66 || lo != 20 || hi != 24 {
		t.Fatalf("minute rollups %+v", rs)
	}
	hr, err := s.Rollups(ctx, RollupQuery{Device: "a", Metric: "temp", Resolution: time.Hour})
	if err != nil || len(hr) != 1 || hr[0].Count != 3 || hr[0].Avg() != 22 {
		t.Fatalf("hour rollups %+v %v", hr, err)
	}
	devs, err := s.Devices(ctx)
	if err != nil || len(devs) != 1 || devs[0].ID != "a" || devs[0].Messages != 4 || devs[0].Readings != 5 || len(devs[0].Metrics) != 3 {
		t.Fatalf("devices %+v %v", devs, err)
	}
	for _, m := range devs[0].Metrics {
		if m.Name == "temp" && (m.Value != 24 || m.Unit != "Cel") || m.Name == "state" && m.Text != "ok" {
			t.Fatalf("metric %+v", m)
		}
	}
	got, err := s.Readings(ctx, ReadingQuery{Device: "a", Metric: "temp"})
	if err != nil || len(got) != 3 || got[0].Value != 20 || got[2].Value != 24 {
		t.Fatalf("readings %+v %v", got, err)
	}
}

func TestStoreReceiveTimeRedelivery(t *testing.T) {
	clk := newFakeClock()
	s := openTestStore(t, StoreConfig{Clock: clk})
	mk := func(pid uint16, dup bool) *envelope {
		e := env(t, clk, "devices/a/telemetry", `{"door":0}`)
		e.pid, e.dup = pid, dup
		clk.Advance(time.Millisecond)
		return e
	}
	// Identical payloads without times are distinct readings.
	if res := mustCommit(t, s, mk(1, false), mk(2, false)); res.stored != 2 {
		t.Fatalf("distinct identical payloads: %+v", res)
	}
	// A DUP redelivery with a known packet id is skipped.
	if res := mustCommit(t, s, mk(2, true)); res.stored != 0 || res.dupMessages != 1 {
		t.Fatalf("redelivery: %+v", res)
	}
	// A DUP message never seen (other packet id) is stored.
	if res := mustCommit(t, s, mk(3, true)); res.stored != 1 {
		t.Fatalf("queued DUP message: %+v", res)
	}
	// A message and its DUP copy in the same group commit (a publisher
	// sending a packet twice after a reconnect): stored once.
	if res := mustCommit(t, s, mk(4, false), mk(4, true)); res.stored != 1 || res.dupMessages != 1 {
		t.Fatalf("copy in the same commit: %+v", res)
	}
	// A packet id reused for a new, identical message (no DUP) is a new
	// reading.
	if res := mustCommit(t, s, mk(1, false)); res.stored != 1 {
		t.Fatalf("reused packet id: %+v", res)
	}
	if st := stats(t, s); st.DuplicateMessages != 2 || st.Readings != 5 {
		t.Fatalf("stats %+v", st)
	}
}

func TestStoreDedupWindow(t *testing.T) {
	clk := newFakeClock()
	s := openTestStore(t, StoreConfig{Clock: clk, DedupMessages: 10})
	var envs []*envelope
	for i := 0; i < 30; i++ {
		e := env(t, clk, "devices/a/telemetry", `{"x":1}`)
		e.pid = uint16(i)
		clk.Advance(time.Millisecond)
		envs = append(envs, e)
	}
	mustCommit(t, s, envs...)
	// pid 0 is beyond the 10-message window: a DUP with pid 0 is new;
	// pid 29 is within it: skipped.
	old := env(t, clk, "devices/a/telemetry", `{"x":1}`)
	old.pid, old.dup = 0, true
	clk.Advance(time.Millisecond)
	recent := env(t, clk, "devices/a/telemetry", `{"x":1}`)
	recent.pid, recent.dup = 29, true
	if res := mustCommit(t, s, old, recent); res.stored != 1 || res.dupMessages != 1 {
		t.Fatalf("window: %+v", res)
	}
}

// fill commits n timestamped messages of device dev, one reading each,
// starting at from and step apart.
func fill(t *testing.T, s *Store, clk *clock.Manual, dev string, n int, from time.Time, step time.Duration) {
	t.Helper()
	var envs []*envelope
	for i := 0; i < n; i++ {
		ts := from.Add(time.Duration(i) * step)
		envs = append(envs, env(t, clk, "devices/"+dev+"/telemetry",
			fmt.Sprintf(`{"v":%d,"ts":%.6f}`, i, float64(ts.UnixMicro())/1e6)))
		if len(envs) == 500 {
			mustCommit(t, s, envs...)
			envs = envs[:0]
		}
	}
	if len(envs) > 0 {
		mustCommit(t, s, envs...)
	}
}

func TestRetentionByAgeAndSize(t *testing.T) {
	clk := newFakeClock()
	s := openTestStore(t, StoreConfig{Clock: clk, Retention: RetentionConfig{RawMaxAge: 2 * time.Hour, MaxBytes: 1 << 20},
		HighWaterBytes: 64 << 20, Outbox: OutboxConfig{Disabled: true}})
	ctx := context.Background()
	// 3 hours of one reading per 10 s, ending now.
	fill(t, s, clk, "a", 1080, testNow.Add(-3*time.Hour), 10*time.Second)
	res, err := s.Retain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.RawByAge != 360 {
		t.Fatalf("deleted by age %d, want 360 (the first hour): %+v", res.RawByAge, res)
	}
	rs, _ := s.Readings(ctx, ReadingQuery{Limit: 1})
	if len(rs) != 1 || rs[0].Time.Before(testNow.Add(-2*time.Hour)) {
		t.Fatalf("oldest reading after retention: %+v", rs)
	}
	// Rollups keep the deleted hour.
	hr, _ := s.Rollups(ctx, RollupQuery{Resolution: time.Hour})
	var n int64
	for _, h := range hr {
		n += h.Count
	}
	if n != 1080 {
		t.Fatalf("hour rollups count %d, want 1080", n)
	}
	// Size: fill past 1 MiB, then retention deletes the oldest raw rows.
	fill(t, s, clk, "b", 40000, testNow.Add(-100*time.Minute), 100*time.Millisecond)
	before := stats(t, s)
	if before.UsedBytes <= 1<<20 {
		t.Fatalf("used %d: the test needs more than 1 MiB", before.UsedBytes)
	}
	res, err = s.Retain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	after := stats(t, s)
	if res.RawBySize == 0 || after.UsedBytes > 1<<20 || after.RetentionDeletedSize != res.RawBySize ||
		after.Readings != before.Readings-res.RawBySize {
		t.Fatalf("size retention: %+v, before %+v, after %+v", res, before, after)
	}
	// Old rollups go by their own age.
	clk.Advance(40 * 24 * time.Hour)
	res, err = s.Retain(ctx)
	if err != nil || res.Rollups == 0 {
		t.Fatalf("rollup retention: %+v %v", res, err)
	}
	if mr, _ := s.Rollups(ctx, RollupQuery{Resolution: time.Minute}); len(mr) != 0 {
		t.Fatalf("minute rollups left after 40 days: %d", len(mr))
	}
	if hr, _ := s.Rollups(ctx, RollupQuery{Resolution: time.Hour}); len(hr) == 0 {
		t.Fatal("hour rollups deleted after 40 days")
	}
}

func TestOutboxClaimAckLease(t *testing.T) {
	clk := newFakeClock()
	// Groups of one row each (see TestOutboxGroups for grouping).
	s := openTestStore(t, StoreConfig{Clock: clk, Outbox: OutboxConfig{GroupReadings: 1}})
	ctx := context.Background()
	fill(t, s, clk, "a", 3, testNow.Add(-time.Minute), time.Second)
	fill(t, s, clk, "a", 2, testNow.Add(-30*time.Second), time.Second)
	bs, err := s.ClaimOutbox(ctx, 10, time.Minute)
	if err != nil || len(bs) != 2 || bs[0].Seq >= bs[1].Seq || len(bs[0].Readings) != 3 || bs[1].Count != 2 || bs[0].Kind != BatchReadings {
		t.Fatalf("claim: %+v %v", bs, err)
	}
	if again, _ := s.ClaimOutbox(ctx, 10, time.Minute); len(again) != 0 {
		t.Fatalf("claimed batches offered again within the lease: %d", len(again))
	}
	if err := s.ReleaseOutbox(ctx, bs[1].Seq); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.ClaimOutbox(ctx, 10, time.Minute); len(again) != 1 || again[0].Seq != bs[1].Seq {
		t.Fatalf("released batch not offered: %+v", again)
	}
	clk.Advance(2 * time.Minute)
	if again, _ := s.ClaimOutbox(ctx, 10, time.Minute); len(again) != 2 {
		t.Fatalf("expired leases: %d batches", len(again))
	}
	if n, err := s.AckOutbox(ctx, bs[0].Seq, bs[1].Seq, 999); err != nil || n != 2 {
		t.Fatalf("ack: %d %v", n, err)
	}
	if n, _ := s.AckOutbox(ctx, bs[0].Seq); n != 0 {
		t.Fatal("second ack deleted something")
	}
	st := stats(t, s)
	if st.OutboxPending != 0 || st.OutboxAckedBatches != 2 || st.OutboxAckedReadings != 5 {
		t.Fatalf("stats %+v", st)
	}
	// Sequence numbers are never reused.
	fill(t, s, clk, "a", 1, testNow, time.Second)
	if nb, _ := s.ClaimOutbox(ctx, 10, time.Minute); len(nb) != 1 || nb[0].Seq <= bs[1].Seq {
		t.Fatalf("new batch %+v after %d", nb, bs[1].Seq)
	}
	if _, err := s.ClaimOutbox(ctx, 0, time.Minute); !errors.Is(err, ErrInvalidConfig) {
		t.Fatal("claim of 0 batches accepted")
	}
}

// TestOutboxGroups: ClaimOutbox gathers consecutive rows of one kind
// into batches of up to GroupReadings readings, and a batch keeps its
// rows and Seq when it is offered again, whatever was written since.
func TestOutboxGroups(t *testing.T) {
	clk := newFakeClock()
	s := openTestStore(t, StoreConfig{Clock: clk, Outbox: OutboxConfig{GroupReadings: 10}})
	ctx := context.Background()
	for i := 0; i < 5; i++ { // 5 rows of 4 readings
		fill(t, s, clk, "a", 4, testNow.Add(time.Duration(i-10)*time.Minute), time.Second)
	}
	bs, err := s.ClaimOutbox(ctx, 2, time.Minute)
	if err != nil || len(bs) != 2 || bs[0].Rows != 2 || bs[0].Count != 8 || len(bs[0].Readings) != 8 || bs[1].Rows != 2 || bs[1].Seq <= bs[0].Seq {
		t.Fatalf("groups of 2 rows (8 of at most 10 readings) expected: %+v %v", bs, err)
	}
	// Released, the second batch comes back with the same rows, though
	// a new row could now join it.
	fill(t, s, clk, "a", 1, testNow.Add(-time.Minute), time.Second)
	if err := s.ReleaseOutbox(ctx, bs[1].Seq); err != nil {
		t.Fatal(err)
	}
	again, err := s.ClaimOutbox(ctx, 5, time.Minute)
	if err != nil || len(again) != 2 || again[0].Seq != bs[1].Seq || again[0].Rows != 2 || again[0].Count != 8 {
		t.Fatalf("released batch not offered first with its rows: %+v %v", again, err)
	}
	if again[1].Rows != 2 || again[1].Count != 5 {
		t.Fatalf("the last row of 4 and the new row of 1 should form a batch: %+v", again[1])
	}
	// After the lease, all three come back unchanged.
	clk.Advance(2 * time.Minute)
	all, err := s.ClaimOutbox(ctx, 10, time.Minute)
	if err != nil || len(all) != 3 || all[0].Seq != bs[0].Seq || all[1].Seq != bs[1].Seq || all[2].Seq != again[1].Seq {
		t.Fatalf("after the lease: %+v %v", all, err)
	}
	if n, err := s.AckOutbox(ctx, all[0].Seq, all[1].Seq, all[2].Seq); err != nil || n != 3 {
		t.Fatalf("ack: %d %v", n, err)
	}
	if st := stats(t, s); st.OutboxPending != 0 || st.OutboxPendingBatches != 0 || st.OutboxAckedReadings != 21 {
		t.Fatalf("stats after ack: %+v", st)
	}
}

// execSQL runs statements on the closed store at path (to make it look
// like one an older schema wrote).
func execSQL(t *testing.T, path string, stmts ...string) {
	t.Helper()
	db, err := sql.Open("sqlite", DSN(path))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range stmts {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// TestOutboxMigratesToGroups: rows written by schema 2 become batches
// of their own (they may have been sent alone, under their seq).
func TestOutboxMigratesToGroups(t *testing.T) {
	clk := newFakeClock()
	path := filepath.Join(t.TempDir(), StoreFile)
	s := openTestStore(t, StoreConfig{Path: path, Clock: clk})
	fill(t, s, clk, "a", 3, testNow.Add(-time.Minute), time.Second)
	fill(t, s, clk, "a", 2, testNow.Add(-30*time.Second), time.Second)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	execSQL(t, path,
		`DROP INDEX outbox_grp`,
		`ALTER TABLE outbox DROP COLUMN grp`,
		`ALTER TABLE outbox DROP COLUMN epoch`,
		`ALTER TABLE outbox DROP COLUMN eseq`,
		`DROP TABLE epochs`,
		`UPDATE meta SET value = 2 WHERE key = '`+metaSchema+`'`)
	s = openTestStore(t, StoreConfig{Path: path, Clock: clk})
	bs, err := s.ClaimOutbox(context.Background(), 10, time.Minute)
	if err != nil || len(bs) != 2 || bs[0].Count != 3 || bs[1].Count != 2 {
		t.Fatalf("migrated rows should stay batches of their own: %+v %v", bs, err)
	}
}

func TestOutboxEvictionAndPressure(t *testing.T) {
	clk := newFakeClock()
	reg := prometheus.NewRegistry()
	s := openTestStore(t, StoreConfig{Clock: clk, Registry: reg, Outbox: OutboxConfig{MaxBytes: 64 << 10}})
	ctx := context.Background()
	// 10 minutes of readings, 10 per second: about 150 KB of outbox.
	fill(t, s, clk, "a", 6000, testNow.Add(-10*time.Minute), 100*time.Millisecond)
	s.commitScr.reset()
	env1 := env(t, clk, "devices/a/telemetry", `{"state":1}`)
	mustCommit(t, s, env1)
	before := stats(t, s)
	if before.OutboxPendingBytes <= 64<<10 {
		t.Fatalf("outbox %d bytes: the test needs more", before.OutboxPendingBytes)
	}
	p, err := s.Pressure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	after := stats(t, s)
	if p != "" || after.OutboxPendingBytes > 64<<10 || after.OutboxEvicted == 0 || after.OutboxRollupBatches == 0 {
		t.Fatalf("eviction: pressure %q, before %+v, after %+v", p, before, after)
	}
	if after.OutboxPending != before.OutboxPending {
		t.Fatalf("pending readings changed from %d to %d: rollup batches stand for the readings they replace", before.OutboxPending, after.OutboxPending)
	}
	if v := metricValue(t, reg, "edgefleet_ingest_outbox_evicted_readings_total", nil); v != float64(after.OutboxEvicted) {
		t.Fatalf("evicted metric %v, stats %d", v, after.OutboxEvicted)
	}
	// Everything claimed: rollups plus the raw batches kept cover every reading once.
	bs, err := s.ClaimOutbox(ctx, 1000, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var raw, summarized int64
	for _, b := range bs {
		raw += int64(len(b.Readings))
		for _, u := range b.Rollups {
			summarized += u.Count
			if u.Resolution != time.Minute || u.Start.Second() != 0 {
				t.Fatalf("rollup %+v", u)
			}
		}
	}
	if raw+summarized != 6001 || summarized != after.OutboxEvicted {
		t.Fatalf("raw %d + summarized %d, evicted %d; want 6001 readings", raw, summarized, after.OutboxEvicted)
	}
	// Readings of the current minute cannot be evicted: pressure.
	s2 := openTestStore(t, StoreConfig{Clock: clk, Outbox: OutboxConfig{MaxBytes: 64 << 10}})
	fill(t, s2, clk, "a", 6000, testNow, time.Millisecond)
	if p, _ := s2.Pressure(ctx); p != pressureOutbox {
		t.Fatalf("pressure %q, want outbox", p)
	}
	bs, _ = s2.ClaimOutbox(ctx, 1000, time.Minute)
	var seqs []int64
	for _, b := range bs {
		seqs = append(seqs, b.Seq)
	}
	s2.AckOutbox(ctx, seqs...)
	if p, _ := s2.Pressure(ctx); p != "" {
		t.Fatalf("pressure %q after the uplink drained the outbox", p)
	}
}

func TestStorePressureHighWater(t *testing.T) {
	clk := newFakeClock()
	s := openTestStore(t, StoreConfig{Clock: clk, Retention: RetentionConfig{MaxBytes: 1 << 20}, HighWaterBytes: 1 << 20,
		Outbox: OutboxConfig{Disabled: true}})
	ctx := context.Background()
	fill(t, s, clk, "a", 80000, testNow.Add(-time.Hour), 40*time.Millisecond)
	if p, _ := s.Pressure(ctx); p != pressureStore {
		t.Fatalf("pressure %q over the high-water mark", p)
	}
	if _, err := s.Retain(ctx); err != nil {
		t.Fatal(err)
	}
	st := stats(t, s)
	p, _ := s.Pressure(ctx)
	if st.UsedBytes*10 < (1<<20)*9 {
		if p != "" {
			t.Fatalf("pressure %q at %d bytes", p, st.UsedBytes)
		}
	} else if p != pressureStore {
		t.Fatalf("pressure %q at %d bytes (hysteresis: held until below 90%%)", p, st.UsedBytes)
	}
}

func TestDeadLettersPagePurgeTrim(t *testing.T) {
	clk := newFakeClock()
	s := openTestStore(t, StoreConfig{Clock: clk, MaxDeadLetters: 20, MaxDeadLetterPayload: 64})
	ctx := context.Background()
	big := "{" + strings.Repeat(" ", 100) // syntax: unterminated
	var envs []*envelope
	for i := 0; i < 25; i++ {
		p := `{"a":"x"}`
		if i%5 == 0 {
			p = big
		}
		envs = append(envs, env(t, clk, "devices/a/telemetry", p))
		clk.Advance(time.Second)
	}
	mustCommit(t, s, envs...)
	st := stats(t, s)
	if st.DeadLetters != 20 || st.DeadLettersEvicted != 5 {
		t.Fatalf("stats %+v", st)
	}
	var all []DeadLetter
	q := DeadLetterQuery{Limit: 7}
	for {
		page, err := s.DeadLetters(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page.Items...)
		if page.Next == 0 {
			break
		}
		q.After = page.Next
	}
	if len(all) != 20 || all[0].ID != 6 {
		t.Fatalf("paged %d dead letters, first id %d", len(all), all[0].ID)
	}
	for _, d := range all {
		if d.Topic != "devices/a/telemetry" || d.Error == "" || len(d.Payload) > 64 || d.Truncated != (d.PayloadSize > 64) {
			t.Fatalf("dead letter %+v", d)
		}
	}
	if n, err := s.PurgeDeadLetters(ctx, DeadLetterPurge{IDs: []int64{6, 7, 999}}); err != nil || n != 2 {
		t.Fatalf("purge ids: %d %v", n, err)
	}
	if n, err := s.PurgeDeadLetters(ctx, DeadLetterPurge{Before: testNow.Add(10 * time.Second)}); err != nil || n != 3 {
		t.Fatalf("purge before: %d %v", n, err)
	}
	if n, err := s.PurgeDeadLetters(ctx, DeadLetterPurge{Reason: ReasonSchema}); err != nil || n != 12 {
		t.Fatalf("purge reason: %d %v", n, err)
	}
	if n, err := s.PurgeDeadLetters(ctx, DeadLetterPurge{All: true}); err != nil || n != 3 {
		t.Fatalf("purge all: %d %v", n, err)
	}
	if _, err := s.PurgeDeadLetters(ctx, DeadLetterPurge{}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatal("purge without criteria accepted")
	}
	if st := stats(t, s); st.DeadLetters != 0 {
		t.Fatalf("stats after purge %+v", st)
	}
}

func TestStoreReopenAndInspect(t *testing.T) {
	clk := newFakeClock()
	dir := t.TempDir()
	path := filepath.Join(dir, StoreFile)
	if _, err := Inspect(dir); !errors.Is(err, ErrNoData) {
		t.Fatalf("inspect of an empty dir: %v", err)
	}
	s, err := OpenStore(StoreConfig{Path: path, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	fill(t, s, clk, "a", 10, testNow.Add(-time.Minute), time.Second)
	mustCommit(t, s, env(t, clk, "devices/b/telemetry", `{"x":[]}`))
	want := stats(t, s)
	// Inspect while the store is open, then after it closed.
	rep, err := Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Readings != 10 || rep.DeadLetters != 1 || rep.OutboxPending != 10 || len(rep.Devices) != 1 ||
		rep.DeadLetterReasons[ReasonSchema] != 1 || rep.MinuteRollups == 0 {
		t.Fatalf("inspect %+v", rep)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rep2, err := Inspect(dir)
	if err != nil || rep2.Readings != 10 || rep2.Stats.Messages != want.Messages {
		t.Fatalf("inspect of a closed store: %+v %v", rep2, err)
	}
	s, err = OpenStore(StoreConfig{Path: path, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := stats(t, s); got != want {
		t.Fatalf("after reopen\n got %+v\nwant %+v", got, want)
	}
	// The same readings again are duplicates after reopening too.
	fill(t, s, clk, "a", 10, testNow.Add(-time.Minute), time.Second)
	if got := stats(t, s); got.Readings != 10 || got.DuplicateReadings != 10 {
		t.Fatalf("after re-ingesting: %+v", got)
	}
	if _, err := s.wconn.ExecContext(context.Background(), `UPDATE meta SET value = 99 WHERE key = ?`, metaSchema); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenStore(StoreConfig{Path: path}); !errors.Is(err, ErrSchema) {
		t.Fatalf("newer schema: %v", err)
	}
	if _, err := Inspect(dir); !errors.Is(err, ErrSchema) {
		t.Fatalf("inspect of a newer schema: %v", err)
	}
}

// TestStoreMigratesSchema1: a store written by schema 1 (with
// recent_messages.epoch) opens, is migrated, and still recognizes the
// redelivery of a message it remembered.
func TestStoreMigratesSchema1(t *testing.T) {
	clk := newFakeClock()
	path := filepath.Join(t.TempDir(), StoreFile)
	s := openTestStore(t, StoreConfig{Path: path, Clock: clk})
	first := env(t, clk, "devices/a/telemetry", `{"door":1}`)
	first.pid = 7
	mustCommit(t, s, first)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	execSQL(t, path,
		`ALTER TABLE recent_messages ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0`,
		`DROP INDEX outbox_grp`,
		`ALTER TABLE outbox DROP COLUMN grp`,
		`ALTER TABLE outbox DROP COLUMN epoch`,
		`ALTER TABLE outbox DROP COLUMN eseq`,
		`DROP TABLE epochs`,
		`UPDATE meta SET value = 1 WHERE key = '`+metaSchema+`'`)
	s = openTestStore(t, StoreConfig{Path: path, Clock: clk})
	clk.Advance(time.Second)
	again := env(t, clk, "devices/a/telemetry", `{"door":1}`)
	again.pid, again.dup = 7, true
	if res := mustCommit(t, s, again); res.stored != 0 || res.dupMessages != 1 {
		t.Fatalf("redelivery after the migration: %+v", res)
	}
	var ver int64
	if err := s.wconn.QueryRowContext(context.Background(), `SELECT value FROM meta WHERE key = ?`, metaSchema).Scan(&ver); err != nil || ver != schemaVersion {
		t.Fatalf("schema version %d %v", ver, err)
	}
}

func TestStoreConfigValidation(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []StoreConfig{
		{},
		{Path: dir + "/x?y"},
		{Path: dir + "/a", Retention: RetentionConfig{RawMaxAge: time.Second}},
		{Path: dir + "/a", Retention: RetentionConfig{RawMaxAge: 48 * time.Hour, MinuteMaxAge: time.Hour}},
		{Path: dir + "/a", HighWaterBytes: 1 << 20},
		{Path: dir + "/a", Outbox: OutboxConfig{MaxBytes: 10}},
		{Path: dir + "/a", DedupMessages: 70000},
		{Path: dir + "/a", WriteCacheKiB: 32},
		{Path: dir + "/a", MaxDeadLetterPayload: 1},
	} {
		if _, err := OpenStore(c); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: error %v, want ErrInvalidConfig", c, err)
		}
	}
}

// TestStoreDuplicateWithinBatch: the same timestamped reading twice in
// one commit (a device retrying a publish, a SenML pack repeating a
// record) is stored once and counted as a duplicate.
func TestStoreDuplicateWithinBatch(t *testing.T) {
	clk := newFakeClock()
	s := openTestStore(t, StoreConfig{Clock: clk})
	ts := testNow.Unix() - 10
	p := fmt.Sprintf(`{"a":1,"b":2,"ts":%d}`, ts)
	var envs []*envelope
	for i := 0; i < 300; i++ { // enough fresh rows for the multi-row statements
		envs = append(envs, env(t, clk, "devices/d/telemetry", fmt.Sprintf(`{"a":%d,"ts":%d.%06d}`, i, ts-100, i)))
	}
	envs = append(envs, env(t, clk, "devices/d/telemetry", p), env(t, clk, "devices/d/telemetry", p),
		env(t, clk, "devices/d/telemetry", fmt.Sprintf(`[{"bt":%d,"n":"c","v":1},{"n":"c","v":2}]`, ts)))
	res, err := s.commit(context.Background(), envs)
	if err != nil {
		t.Fatal(err)
	}
	if res.stored != 303 || res.duplicates != 3 {
		t.Fatalf("stored %d, duplicates %d; want 303, 3", res.stored, res.duplicates)
	}
}

// TestStoreCacheSizes: the write connection gets WriteCacheKiB, every
// other connection the small read cache.
func TestStoreCacheSizes(t *testing.T) {
	s := openTestStore(t, StoreConfig{WriteCacheKiB: 1000})
	ctx := context.Background()
	var w, r int64
	if err := s.wconn.QueryRowContext(ctx, `PRAGMA cache_size`).Scan(&w); err != nil {
		t.Fatal(err)
	}
	if err := s.db.QueryRowContext(ctx, `PRAGMA cache_size`).Scan(&r); err != nil {
		t.Fatal(err)
	}
	if w != -1000 || r != -readCacheKiB {
		t.Fatalf("cache_size: writer %d, others %d; want -1000, %d", w, r, -readCacheKiB)
	}
}
