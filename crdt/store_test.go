package crdt

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"
)

// fakeWall is an injectable wall clock.
type fakeWall struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeWall() *fakeWall {
	return &fakeWall{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (f *fakeWall) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeWall) Add(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = f.t.Add(d)
}

func (f *fakeWall) Set(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = t
}

func openTest(t testing.TB, dir, id string, wall *fakeWall) *Store {
	t.Helper()
	opts := Options{ReplicaID: id}
	if wall != nil {
		opts.Wall = wall.Now
	}
	s, err := Open(filepath.Join(dir, id+".db"), opts)
	if err != nil {
		t.Fatalf("open %s: %v", id, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func must[T any](t testing.TB) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func TestBasicTypes(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir(), "a", newFakeWall())
	md := must[Delta](t)

	d := md(s.Put(ctx, "devices", "d1", []byte("v1")))
	if d.Origin != "a" || d.From != 0 || d.To != 1 || len(d.Ops) != 1 || d.Ops[0].Kind != KindPut {
		t.Fatalf("put delta = %+v", d)
	}
	md(s.Put(ctx, "devices", "d2", []byte("v2")))
	md(s.Put(ctx, "devices", "d1", []byte("v1b")))
	e, ok, err := s.Get(ctx, "devices", "d1")
	if err != nil || !ok || string(e.Value) != "v1b" || e.Origin != "a" {
		t.Fatalf("get = %+v %v %v", e, ok, err)
	}
	md(s.Delete(ctx, "devices", "d2"))
	if _, ok, _ := s.Get(ctx, "devices", "d2"); ok {
		t.Fatal("deleted key still present")
	}
	list := must[[]Entry](t)(s.List(ctx, "devices"))
	if len(list) != 1 || list[0].Key != "d1" {
		t.Fatalf("list = %+v", list)
	}

	md(s.SetAdd(ctx, "tags", "x"))
	md(s.SetAdd(ctx, "tags", "y"))
	md(s.SetRemove(ctx, "tags", "x"))
	if m := must[[]string](t)(s.SetMembers(ctx, "tags")); !reflect.DeepEqual(m, []string{"y"}) {
		t.Fatalf("members = %v", m)
	}
	if ok := must[bool](t)(s.SetContains(ctx, "tags", "x")); ok {
		t.Fatal("removed element present")
	}

	md(s.CounterAdd(ctx, "counts", "c", 5))
	md(s.CounterAdd(ctx, "counts", "c", -7))
	if v := must[int64](t)(s.CounterValue(ctx, "counts", "c")); v != -2 {
		t.Fatalf("counter = %d", v)
	}

	md(s.MVPut(ctx, "keys", "k", []byte("one")))
	md(s.MVPut(ctx, "keys", "k", []byte("two")))
	if vs := must[[][]byte](t)(s.MVGet(ctx, "keys", "k")); len(vs) != 1 || string(vs[0]) != "two" {
		t.Fatalf("mv = %q", vs)
	}
	md(s.MVDelete(ctx, "keys", "k"))
	if vs := must[[][]byte](t)(s.MVGet(ctx, "keys", "k")); len(vs) != 0 {
		t.Fatalf("mv after delete = %q", vs)
	}

	if _, err := s.SetAdd(ctx, "devices", "z"); !errors.Is(err, ErrTypeMismatch) {
		t.Fatalf("type mismatch err = %v", err)
	}
	cols := must[[]CollectionInfo](t)(s.Collections(ctx))
	want := []CollectionInfo{{"counts", TypeCounter, 1}, {"devices", TypeLWW, 1}, {"keys", TypeMVReg, 0}, {"tags", TypeORSet, 1}}
	if !reflect.DeepEqual(cols, want) {
		t.Fatalf("collections = %+v", cols)
	}
	vv := must[VersionVector](t)(s.VersionVector(ctx))
	if !reflect.DeepEqual(vv, VersionVector{"a": 12}) {
		t.Fatalf("vv = %v", vv)
	}
}

func TestReplicateTwoStores(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	wall := newFakeWall()
	a := openTest(t, dir, "a", wall)
	b := openTest(t, dir, "b", wall)
	md := must[Delta](t)
	md(a.Put(ctx, "m", "k", []byte("from a")))
	md(a.SetAdd(ctx, "s", "e"))
	md(b.CounterAdd(ctx, "c", "n", 3))
	wall.Add(time.Millisecond)
	md(b.Put(ctx, "m", "k", []byte("from b")))

	sync2 := func(from, to *Store) {
		t.Helper()
		for {
			vv := must[VersionVector](t)(to.VersionVector(ctx))
			ds := must[[]Delta](t)(from.DeltasSince(ctx, vv, 100))
			if len(ds) == 0 {
				return
			}
			enc, err := EncodeDeltas(ds)
			if err != nil {
				t.Fatal(err)
			}
			dec, err := DecodeDeltas(enc)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := to.Merge(ctx, dec); err != nil {
				t.Fatal(err)
			}
		}
	}
	sync2(a, b)
	sync2(b, a)
	ha := must[string](t)(a.StateHash(ctx))
	hb := must[string](t)(b.StateHash(ctx))
	if ha != hb {
		t.Fatalf("hashes differ: %s %s", ha, hb)
	}
	e, ok, _ := a.Get(ctx, "m", "k")
	if !ok || !bytes.Equal(e.Value, []byte("from b")) {
		t.Fatalf("a sees %+v", e)
	}
	if v := must[int64](t)(a.CounterValue(ctx, "c", "n")); v != 3 {
		t.Fatalf("counter = %d", v)
	}
	if !reflect.DeepEqual(must[VersionVector](t)(a.VersionVector(ctx)), must[VersionVector](t)(b.VersionVector(ctx))) {
		t.Fatal("version vectors differ")
	}
}
