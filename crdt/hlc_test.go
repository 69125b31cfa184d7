package crdt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTimestampParts(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)
	ts := timestampFromMillis(at.UnixMilli()) | 7
	if !ts.Time().Equal(at) || ts.Logical() != 7 {
		t.Fatalf("time %v logical %d", ts.Time(), ts.Logical())
	}
	if got, want := ts.String(), "2026-01-02T03:04:05.006Z+7"; got != want {
		t.Fatalf("String = %q, want %q", got, want)
	}
}

func TestClockMonotonicUnderBackwardsWall(t *testing.T) {
	w := newFakeWall()
	c := NewClock(w.Now, time.Minute, 0)
	prev := c.Now()
	for i := 0; i < 50; i++ {
		switch i % 5 {
		case 0:
			w.Add(-10 * time.Second) // wall clock jumps backwards
		case 1:
			w.Add(time.Millisecond)
		}
		ts := c.Now()
		if ts <= prev {
			t.Fatalf("step %d: %s not after %s", i, ts, prev)
		}
		prev = ts
	}
	// The logical counter carries into the millisecond part.
	c = NewClock(w.Now, time.Minute, timestampFromMillis(w.Now().UnixMilli())|logicalMask)
	ts := c.Now()
	if ts.Millis() != w.Now().UnixMilli()+1 || ts.Logical() != 0 {
		t.Fatalf("overflow: %s", ts)
	}
}

func TestClockNeverBelowLast(t *testing.T) {
	w := newFakeWall()
	last := timestampFromMillis(w.Now().Add(time.Hour).UnixMilli()) | 3
	c := NewClock(w.Now, time.Minute, last)
	if ts := c.Now(); ts <= last {
		t.Fatalf("%s not after persisted %s", ts, last)
	}
}

func TestClockObserveAndDrift(t *testing.T) {
	w := newFakeWall()
	c := NewClock(w.Now, time.Minute, 0)
	remote := timestampFromMillis(w.Now().Add(30*time.Second).UnixMilli()) | 9
	ts, err := c.Observe(remote)
	if err != nil {
		t.Fatal(err)
	}
	if ts <= remote || c.Now() <= ts {
		t.Fatalf("observe returned %s for remote %s", ts, remote)
	}
	before := c.Last()
	far := timestampFromMillis(w.Now().Add(2 * time.Minute).UnixMilli())
	if _, err := c.Observe(far); !errors.Is(err, ErrClockDrift) {
		t.Fatalf("far future: err = %v", err)
	}
	if c.Last() != before {
		t.Fatal("rejected observation moved the clock")
	}
	if err := c.CheckDrift(far); !errors.Is(err, ErrClockDrift) {
		t.Fatalf("CheckDrift: %v", err)
	}
	// Old remote timestamps are fine.
	if _, err := c.Observe(timestampFromMillis(w.Now().Add(-time.Hour).UnixMilli())); err != nil {
		t.Fatal(err)
	}
}

func TestStoreHLCPersistsAcrossReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	w := newFakeWall()
	path := filepath.Join(dir, "a.db")
	s, err := Open(path, Options{ReplicaID: "a", Wall: w.Now})
	if err != nil {
		t.Fatal(err)
	}
	d1, err := s.Put(ctx, "m", "k", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	// Observe a remote op 30 s ahead: the clock moves past it.
	remote := Op{Dot: Dot{"b", 1}, HLC: timestampFromMillis(w.Now().Add(30 * time.Second).UnixMilli()), Type: TypeLWW, Collection: "m", Key: "x", Kind: KindPut, Value: []byte("r")}
	if _, err := s.Merge(ctx, []Delta{{Origin: "b", From: 0, To: 1, Ops: []Op{remote}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Restart with the wall clock an hour behind.
	w.Add(-time.Hour)
	s, err = Open(path, Options{ReplicaID: "a", Wall: w.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d2, err := s.Put(ctx, "m", "k", []byte("2"))
	if err != nil {
		t.Fatal(err)
	}
	if d2.Ops[0].HLC <= remote.HLC || d2.Ops[0].HLC <= d1.Ops[0].HLC {
		t.Fatalf("HLC went backwards across restart: %s after %s / %s", d2.Ops[0].HLC, d1.Ops[0].HLC, remote.HLC)
	}
	if d2.To != 2 {
		t.Fatalf("sequence after restart = %d, want 2", d2.To)
	}
	e, ok, err := s.Get(ctx, "m", "k")
	if err != nil || !ok || string(e.Value) != "2" {
		t.Fatalf("get = %+v %v %v", e, ok, err)
	}
}

// TestStoreRefusesDriftByOrigin: an origin whose clock is too far ahead
// is refused alone; the other origins of the same call apply, and the
// version vector does not advance over the refused ops.
func TestStoreRefusesDriftByOrigin(t *testing.T) {
	ctx := context.Background()
	w := newFakeWall()
	s := openTest(t, t.TempDir(), "a", w)
	if _, err := s.Put(ctx, "m", "k", []byte("1")); err != nil {
		t.Fatal(err)
	}
	at := func(d time.Duration) Timestamp { return timestampFromMillis(w.Now().Add(d).UnixMilli()) }
	put := func(o string, seq uint64, hlc Timestamp) Op {
		return Op{Dot: Dot{o, seq}, HLC: hlc, Type: TypeLWW, Collection: "m", Key: fmt.Sprintf("%s%d", o, seq), Kind: KindPut}
	}
	ok := put("b", 1, at(0))
	// c's clock jumps an hour ahead at its second op: its first op applies,
	// the rest of c is refused, in both deltas that carry it.
	c1, c2, c3 := put("c", 1, at(-time.Second)), put("c", 2, at(time.Hour)), put("c", 3, at(time.Hour+time.Second))
	st, err := s.Merge(ctx, []Delta{
		{Origin: "c", From: 0, To: 3, Ops: []Op{c1, c2, c3}},
		{Origin: "b", From: 0, To: 1, Ops: []Op{ok}},
		{Origin: "c", From: 2, To: 3, Ops: []Op{c3}},
	})
	if err != nil {
		t.Fatalf("merge refused the whole call: %v", err)
	}
	if st.Applied != 2 || len(st.Refused) != 1 {
		t.Fatalf("stats %+v", st)
	}
	if r := st.Refused[0]; r.Origin != "c" || r.Ops != 3 || r.HLC != c2.HLC || r.Ahead != time.Hour || r.Source != SourceWall {
		t.Fatalf("refusal %+v", r)
	}
	vv, _ := s.VersionVector(ctx)
	if vv["b"] != 1 || vv["c"] != 1 {
		t.Fatalf("version vector %v, want b:1 c:1", vv)
	}
	for _, k := range []string{"b1", "c1"} {
		if _, found, _ := s.Get(ctx, "m", k); !found {
			t.Errorf("%s not applied", k)
		}
	}
	if _, found, _ := s.Get(ctx, "m", "c2"); found {
		t.Error("op from an hour ahead applied")
	}
	if s.Clock().Last() >= c2.HLC {
		t.Error("refused timestamp moved the clock")
	}
	// Once the wall clock catches up the same deltas are accepted.
	w.Add(time.Hour)
	st, err = s.Merge(ctx, []Delta{{Origin: "c", From: 1, To: 3, Ops: []Op{c2, c3}}})
	if err != nil || st.Applied != 2 || len(st.Refused) != 0 {
		t.Fatalf("after catching up: %+v %v", st, err)
	}
}

// TestClockReferenceWhenWallIsWrong: a board that boots with its wall clock
// in 1970 and its last timestamp three weeks old judges drift against the
// median of its peers' clocks, and against its wall clock again once that
// is sane.
func TestClockReferenceWhenWallIsWrong(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	w := &fakeWall{t: time.Unix(0, 0)}
	var peers []time.Time
	last := timestampFromMillis(now.Add(-21 * 24 * time.Hour).UnixMilli())
	var logs strings.Builder
	c := NewClockConfig(ClockConfig{Wall: w.Now, Last: last, Fleet: func() []time.Time { return peers },
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	peerOp := timestampFromMillis(now.Add(-time.Second).UnixMilli())
	// No peer clock known: the last timestamp is all there is.
	if r := c.Reference(); r.Source != SourceLast || !r.Time.Equal(last.Time()) {
		t.Fatalf("reference %+v", r)
	}
	if err := c.CheckDrift(peerOp); !errors.Is(err, ErrClockDrift) {
		t.Fatalf("three weeks ahead of the last timestamp accepted: %v", err)
	}
	if !strings.Contains(logs.String(), "local wall clock is wrong") {
		t.Fatalf("no warning: %s", logs.String())
	}
	// Two peers (even count: the lower middle one).
	peers = []time.Time{now.Add(2 * time.Second), now}
	if r := c.Reference(); r.Source != SourceFleet || !r.Time.Equal(now) || r.Sane() {
		t.Fatalf("reference %+v", r)
	}
	if err := c.CheckDrift(peerOp); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckDrift(timestampFromMillis(now.Add(time.Hour).UnixMilli())); !errors.Is(err, ErrClockDrift) {
		t.Fatalf("an hour ahead of the fleet accepted: %v", err)
	}
	// Local readings follow the fleet, not 1970.
	if ts := c.Now(); ts.Millis() != now.UnixMilli() {
		t.Fatalf("local reading %s", ts)
	}
	// NTP sets the wall clock: it is the reference again.
	w.Set(now.Add(time.Second))
	if r := c.Reference(); r.Source != SourceWall || !r.Time.Equal(w.Now()) {
		t.Fatalf("reference %+v", r)
	}
	if !strings.Contains(logs.String(), "sane again") {
		t.Fatalf("no notice of the sane clock: %s", logs.String())
	}
	// A wall clock an hour ahead of two peers out of three is wrong; one
	// peer against it is a tie, which the wall clock keeps.
	w.Set(now.Add(time.Hour))
	if r := c.Reference(); r.Source != SourceFleet || !r.Time.Equal(now) {
		t.Fatalf("reference %+v", r)
	}
	peers = peers[:1]
	if r := c.Reference(); r.Source != SourceWall {
		t.Fatalf("reference %+v", r)
	}
	behind := NewClockConfig(ClockConfig{Wall: (&fakeWall{t: now.Add(-time.Hour)}).Now, Fleet: func() []time.Time { return peers }})
	if r := behind.Reference(); r.Source != SourceWall {
		t.Fatalf("tie with a peer ahead: reference %+v", r)
	}
	// Before MinWall the wall clock is wrong even without a last timestamp.
	c = NewClockConfig(ClockConfig{Wall: (&fakeWall{t: time.Unix(0, 0)}).Now, MinWall: now.Add(-365 * 24 * time.Hour)})
	if r := c.Reference(); r.Source != SourceLast {
		t.Fatalf("reference %+v", r)
	}
}
