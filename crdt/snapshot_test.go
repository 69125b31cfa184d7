package crdt

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func hashOf(t *testing.T, s *Store) string {
	t.Helper()
	h, err := s.StateHash(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// absentFleet builds a fleet a, b and an absent replica r: all three hold
// keys k1, k2 (k2 written by r), set element e and a counter; r then stops
// while a deletes k1 and removes e, and a and b compact past the TTL
// without r (it was forgotten). It returns the three stores.
func absentFleet(t *testing.T, dir string, w *fakeWall) (a, b, r *Store) {
	t.Helper()
	ctx := context.Background()
	a, b, r = openTest(t, dir, "a", w), openTest(t, dir, "b", w), openTest(t, dir, "r", w)
	must[Delta](t)(a.Put(ctx, "kv", "k1", []byte("v1")))
	must[Delta](t)(r.Put(ctx, "kv", "k2", []byte("v2")))
	must[Delta](t)(b.SetAdd(ctx, "tags", "e"))
	must[Delta](t)(b.CounterAdd(ctx, "n", "c", 3))
	for _, p := range [][2]*Store{{a, b}, {a, r}, {b, a}, {b, r}, {r, a}, {r, b}} {
		syncAll(t, p[0], p[1])
	}
	// r is away: a deletes and removes, b learns it, both compact past
	// the tombstone TTL with the stable vector of the members they know.
	w.Add(time.Hour)
	must[Delta](t)(a.Delete(ctx, "kv", "k1"))
	must[Delta](t)(a.SetRemove(ctx, "tags", "e"))
	must[Delta](t)(a.Put(ctx, "kv", "k3", []byte("v3")))
	syncAll(t, a, b)
	w.Add(DefaultTombstoneTTL + time.Hour)
	stable := MinVersionVector(vvOf(t, a), vvOf(t, b))
	for _, s := range []*Store{a, b} {
		st := must[CompactStats](t)(s.Compact(ctx, stable, w.Now()))
		if st.TombstonesRemoved == 0 {
			t.Fatalf("%s: compaction removed no tombstone: %+v", s.ReplicaID(), st)
		}
	}
	return a, b, r
}

// TestDeltasCannotRepairReplicaBehindHorizon shows why the horizon exists:
// a replica that missed removals compacted away stays diverged (deleted
// key kept) after catching up by deltas, and the horizon tells.
func TestDeltasCannotRepairReplicaBehindHorizon(t *testing.T) {
	ctx := context.Background()
	w := newFakeWall()
	a, _, r := absentFleet(t, t.TempDir(), w)
	if o, behind := Behind(vvOf(t, r), a.Horizon()); !behind || o != "a" {
		t.Fatalf("r (vv %v) not behind a's horizon %v", vvOf(t, r), a.Horizon())
	}
	syncAll(t, a, r)
	if _, ok, _ := r.Get(ctx, "kv", "k1"); !ok {
		t.Fatal("deltas carried the compacted delete: the horizon is not needed")
	}
	if hashOf(t, a) == hashOf(t, r) {
		t.Fatal("replica behind the horizon converged by deltas")
	}
	if _, behind := Behind(vvOf(t, r), a.Horizon()); behind {
		t.Fatal("after the deltas r's vector still behind: the divergence would be detectable later")
	}
}

// TestSnapshotRecoversReplicaBehindHorizon: installing a peer's snapshot
// converges the absent replica without resurrecting anything, keeps its own
// unshipped ops, and survives a reopen.
func TestSnapshotRecoversReplicaBehindHorizon(t *testing.T) {
	ctx := context.Background()
	w := newFakeWall()
	dir := t.TempDir()
	a, b, r := absentFleet(t, dir, w)
	// A write r makes before it learns it is behind: kept.
	fresh := must[Delta](t)(r.Put(ctx, "kv", "mine", []byte("x")))
	snap, info := must2(t)(a.ExportSnapshot(ctx))
	if info.Hash != hashOf(t, a) {
		t.Fatalf("snapshot hash %s, store hash %s", info.Hash, hashOf(t, a))
	}
	got := must[SnapshotInfo](t)(r.InstallSnapshot(ctx, snap))
	if got.OwnKept != 1 || got.OwnLost != 0 {
		t.Fatalf("install: %+v, want one own op kept", got)
	}
	if _, behind := Behind(vvOf(t, r), a.Horizon()); behind {
		t.Fatalf("r still behind after install: vv %v, horizon %v", vvOf(t, r), a.Horizon())
	}
	if !reflect.DeepEqual(r.Horizon(), a.Horizon()) {
		t.Fatalf("r's horizon %v, a's %v", r.Horizon(), a.Horizon())
	}
	for _, p := range [][2]*Store{{r, a}, {r, b}, {a, b}, {b, r}} {
		syncAll(t, p[0], p[1])
	}
	for _, s := range []*Store{a, b, r} {
		if _, ok, _ := s.Get(ctx, "kv", "k1"); ok {
			t.Fatalf("%s: deleted k1 is back", s.ReplicaID())
		}
		if ok, _ := s.SetContains(ctx, "tags", "e"); ok {
			t.Fatalf("%s: removed element e is back", s.ReplicaID())
		}
		if e, ok, _ := s.Get(ctx, "kv", "mine"); !ok || string(e.Value) != "x" {
			t.Fatalf("%s: r's own unshipped write %v lost", s.ReplicaID(), fresh)
		}
	}
	if ha, hb, hr := hashOf(t, a), hashOf(t, b), hashOf(t, r); ha != hb || hb != hr {
		t.Fatalf("hashes a %s, b %s, r %s", ha, hb, hr)
	}
	// Durable: the installed state, vector and horizon survive a reopen.
	want, wantVV, wantH := hashOf(t, r), vvOf(t, r), r.Horizon()
	r.Close()
	r2 := openTest(t, dir, "r", w)
	if hashOf(t, r2) != want || !reflect.DeepEqual(vvOf(t, r2), wantVV) || !reflect.DeepEqual(r2.Horizon(), wantH) {
		t.Fatalf("after reopen: vv %v horizon %v, want %v %v", vvOf(t, r2), r2.Horizon(), wantVV, wantH)
	}
}

func must2(t *testing.T) func([]byte, SnapshotInfo, error) ([]byte, SnapshotInfo) {
	return func(b []byte, i SnapshotInfo, err error) ([]byte, SnapshotInfo) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return b, i
	}
}

// TestSnapshotHashMismatchRefused: a snapshot whose rows do not hash to the
// hash it claims is refused and nothing stored changes.
func TestSnapshotHashMismatchRefused(t *testing.T) {
	ctx := context.Background()
	w := newFakeWall()
	a, _, r := absentFleet(t, t.TempDir(), w)
	mine := must[Delta](t)(r.Put(ctx, "kv", "mine", []byte("x")))
	snap, _ := must2(t)(a.ExportSnapshot(ctx))
	bad := bytes.Replace(snap, []byte(`"key":"k3"`), []byte(`"key":"k9"`), 1)
	if bytes.Equal(bad, snap) {
		t.Fatal("tampering found nothing to change")
	}
	beforeHash, beforeVV, beforeSeq := hashOf(t, r), vvOf(t, r), r.Seq()
	_, err := r.InstallSnapshot(ctx, bad)
	if !errors.Is(err, ErrSnapshotHash) {
		t.Fatalf("tampered snapshot: %v, want ErrSnapshotHash", err)
	}
	if _, err := r.InstallSnapshot(ctx, snap[:len(snap)/2]); !errors.Is(err, ErrInvalidSnapshot) {
		t.Fatalf("truncated snapshot: %v, want ErrInvalidSnapshot", err)
	}
	if hashOf(t, r) != beforeHash || !reflect.DeepEqual(vvOf(t, r), beforeVV) || r.Seq() != beforeSeq {
		t.Fatal("a refused snapshot changed the store")
	}
	if e, ok, _ := r.Get(ctx, "kv", "mine"); !ok || string(e.Value) != "x" {
		t.Fatalf("own write %v lost by a refused snapshot", mine)
	}
	must[SnapshotInfo](t)(r.InstallSnapshot(ctx, snap))
}

// TestFreshStoreKnownIDRecoversOwnSeq: a replica whose database is lost
// comes back empty under its old id; held, it issues nothing until a
// snapshot gives it back its history, and then continues after the
// sequence numbers the fleet already has for it.
func TestFreshStoreKnownIDRecoversOwnSeq(t *testing.T) {
	ctx := context.Background()
	w := newFakeWall()
	dir := t.TempDir()
	a, r := openTest(t, dir, "a", w), openTest(t, dir, "r", w)
	for _, k := range []string{"x", "y", "z"} {
		must[Delta](t)(r.Put(ctx, "kv", k, []byte("old")))
	}
	syncAll(t, r, a)
	lastHLC := r.Clock().Last()
	r.Close()
	for _, suffix := range []string{"", "-wal", "-shm"} {
		os.Remove(filepath.Join(dir, "r.db"+suffix))
	}
	w.Set(w.Now().Add(-time.Minute)) // the board's clock is behind now
	r = openTest(t, dir, "r", w)
	if r.Seq() != 0 {
		t.Fatalf("fresh store seq %d", r.Seq())
	}
	r.HoldLocalOps("own origin unknown")
	if _, err := r.Put(ctx, "kv", "new", []byte("v")); !errors.Is(err, ErrAwaitingState) {
		t.Fatalf("held put: %v, want ErrAwaitingState", err)
	}
	snap, _ := must2(t)(a.ExportSnapshot(ctx))
	must[SnapshotInfo](t)(r.InstallSnapshot(ctx, snap))
	if r.Seq() != 3 || r.LocalOpsHeld() != "" {
		t.Fatalf("after install: seq %d, held %q", r.Seq(), r.LocalOpsHeld())
	}
	d := must[Delta](t)(r.Put(ctx, "kv", "new", []byte("v")))
	if d.Ops[0].Dot.Seq != 4 || d.Ops[0].HLC <= lastHLC {
		t.Fatalf("first op after recovery %v at %s, want seq 4 after %s", d.Ops[0].Dot, d.Ops[0].HLC, lastHLC)
	}
	ms := must[MergeStats](t)(a.Merge(ctx, []Delta{d}))
	if ms.Applied != 1 {
		t.Fatalf("peer merged the recovered replica's new op as %+v", ms)
	}
	if hashOf(t, a) != hashOf(t, r) {
		t.Fatal("diverged after recovery")
	}
}

// TestStaleOwnWriteNotResurrected: an own write older than a delete the
// peer compacted away is dropped on install, not re-applied over a state
// that no longer remembers the delete.
func TestStaleOwnWriteNotResurrected(t *testing.T) {
	ctx := context.Background()
	w := newFakeWall()
	dir := t.TempDir()
	a, r := openTest(t, dir, "a", w), openTest(t, dir, "r", w)
	must[Delta](t)(a.Put(ctx, "kv", "k", []byte("v")))
	syncAll(t, a, r)
	w.Add(time.Second)
	must[Delta](t)(r.Put(ctx, "kv", "k", []byte("stale"))) // never shipped
	w.Add(time.Second)
	must[Delta](t)(a.Delete(ctx, "kv", "k"))
	w.Add(DefaultTombstoneTTL + time.Hour)
	must[CompactStats](t)(a.Compact(ctx, vvOf(t, a), w.Now()))
	snap, _ := must2(t)(a.ExportSnapshot(ctx))
	info := must[SnapshotInfo](t)(r.InstallSnapshot(ctx, snap))
	if info.OwnLost != 1 || info.OwnKept != 0 {
		t.Fatalf("install: %+v, want the stale own write dropped", info)
	}
	if _, ok, _ := r.Get(ctx, "kv", "k"); ok {
		t.Fatal("stale own write resurrected the deleted key")
	}
	if r.Seq() != 1 {
		t.Fatalf("seq %d: the dropped write's sequence number must stay used", r.Seq())
	}
	syncAll(t, r, a)
	if hashOf(t, a) != hashOf(t, r) {
		t.Fatal("diverged")
	}
}
