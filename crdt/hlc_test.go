package crdt

import (
	"context"
	"errors"
	"path/filepath"
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

func TestStoreRejectsDrift(t *testing.T) {
	ctx := context.Background()
	w := newFakeWall()
	s := openTest(t, t.TempDir(), "a", w)
	if _, err := s.Put(ctx, "m", "k", []byte("1")); err != nil {
		t.Fatal(err)
	}
	h0, _ := s.StateHash(ctx)
	ok := Op{Dot: Dot{"b", 1}, HLC: timestampFromMillis(w.Now().UnixMilli()), Type: TypeLWW, Collection: "m", Key: "x", Kind: KindPut}
	bad := Op{Dot: Dot{"c", 1}, HLC: timestampFromMillis(w.Now().Add(5 * time.Minute).UnixMilli()), Type: TypeLWW, Collection: "m", Key: "y", Kind: KindPut}
	_, err := s.Merge(ctx, []Delta{{Origin: "b", From: 0, To: 1, Ops: []Op{ok}}, {Origin: "c", From: 0, To: 1, Ops: []Op{bad}}})
	if !errors.Is(err, ErrClockDrift) {
		t.Fatalf("err = %v", err)
	}
	h1, _ := s.StateHash(ctx)
	vv, _ := s.VersionVector(ctx)
	if h0 != h1 || len(vv) != 1 {
		t.Fatalf("rejected merge wrote something: vv %v", vv)
	}
	// Once the wall clock catches up the same delta is accepted.
	w.Add(5 * time.Minute)
	if _, err := s.Merge(ctx, []Delta{{Origin: "c", From: 0, To: 1, Ops: []Op{bad}}}); err != nil {
		t.Fatal(err)
	}
}
