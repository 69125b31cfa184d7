package crdt

import (
	"context"
	"fmt"
	"math/rand"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// TestMergeLaws checks idempotence, commutativity and associativity of
// Merge directly on random sets of deltas (single-op broadcasts and
// DeltasSince chunks against random version vectors), and that the state
// reached equals the model computed from the ops merged.
//
// The deltas come from uncompacted replicas. A delta from a compacted
// replica also covers the superseded ops it leaves out; a replica holding
// it skips those ops if they arrive later on their own, so until the ops
// that superseded them arrive too its state may differ from one that got
// them in the other order. Convergence once everything is delivered is
// what TestPropertyConvergence checks with compaction on.
func TestMergeLaws(t *testing.T) {
	rng := rand.New(rand.NewSource(42))
	c := newCluster(t, rng, 3)
	c.noCompact = true
	c.run(250)

	var pool [][]Delta
	for _, op := range c.ops {
		pool = append(pool, []Delta{{Origin: op.Dot.Origin, From: op.Dot.Seq - 1, To: op.Dot.Seq, Ops: []Op{op}}})
	}
	ctx := context.Background()
	for i := 0; i < 40; i++ {
		from := c.st[rng.Intn(len(c.st))]
		vv, _ := from.VersionVector(ctx)
		for o, s := range vv {
			vv[o] = uint64(rng.Int63n(int64(s) + 1))
		}
		ds, err := from.DeltasSince(ctx, vv, 100+rng.Intn(1500))
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) > 0 {
			pool = append(pool, ds)
		}
	}
	pick := func() []Delta {
		var out []Delta
		for n := 1 + rng.Intn(12); n > 0; n-- {
			out = append(out, pool[rng.Intn(len(pool))]...)
		}
		return out
	}
	dir := t.TempDir()
	fresh := 0
	wall := c.walls[0]
	newStore := func() *Store {
		fresh++
		id := fmt.Sprintf("law%d", fresh)
		s, err := Open(filepath.Join(dir, id+".db"), Options{ReplicaID: id, Wall: wall.Now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	merge := func(s *Store, ds ...[]Delta) {
		t.Helper()
		for _, d := range ds {
			if _, err := s.Merge(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
	}
	hash := func(s *Store) string {
		h, err := s.StateHash(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	opsOf := func(dss ...[]Delta) []Op {
		var out []Op
		for _, ds := range dss {
			for _, d := range ds {
				out = append(out, d.Ops...)
			}
		}
		return out
	}
	cat := func(a, b []Delta) []Delta { return append(append([]Delta{}, a...), b...) }

	for trial := 0; trial < 6; trial++ {
		a, b, cc := pick(), pick(), pick()

		// Idempotence: merging again changes nothing and applies nothing.
		s := newStore()
		merge(s, a)
		h1 := hash(s)
		st, err := s.Merge(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		if st.Applied != 0 || hash(s) != h1 {
			t.Fatalf("trial %d: merging twice changed the state (%+v)", trial, st)
		}
		checkModel(t, s, opsOf(a))

		// Commutativity.
		s1, s2 := newStore(), newStore()
		merge(s1, a, b)
		merge(s2, b, a)
		if hash(s1) != hash(s2) {
			t.Fatalf("trial %d: merge not commutative", trial)
		}
		checkModel(t, s1, opsOf(a, b))

		// Associativity: (a ∪ b) ∪ c = a ∪ (b ∪ c), with the unions made
		// inside one Merge call.
		s3, s4 := newStore(), newStore()
		merge(s3, cat(a, b), cc)
		merge(s4, a, cat(b, cc))
		if hash(s3) != hash(s4) {
			t.Fatalf("trial %d: merge not associative", trial)
		}
		checkModel(t, s3, opsOf(a, b, cc))
	}
}

// TestCompactedRangeMergeOrder pins down what commutativity means once
// compaction is in play. A compacted store ships the range of an op it
// dropped as superseded without the op; a replica that merges that range
// first skips the op when it arrives later, one that got the op first keeps
// it. Until the superseding op arrives the two hold different states with
// the same version vector; once it has arrived they agree. The state is
// always the model of the ops a replica applied (TestModel checks that),
// not of the ranges it covers.
func TestCompactedRangeMergeOrder(t *testing.T) {
	ctx := context.Background()
	w := newFakeWall()
	dir := t.TempDir()
	x, y, s := openTest(t, dir, "x", w), openTest(t, dir, "y", w), openTest(t, dir, "s", w)
	r1, r2 := openTest(t, dir, "r1", w), openTest(t, dir, "r2", w)
	old := must[Delta](t)(x.Put(ctx, "m", "k", []byte("old")))
	w.Add(time.Millisecond)
	winner := must[Delta](t)(y.Put(ctx, "m", "k", []byte("new")))
	must[MergeStats](t)(s.Merge(ctx, []Delta{old, winner}))
	must[CompactStats](t)(s.Compact(ctx, VersionVector{}, w.Now()))
	rng := must[[]Delta](t)(s.DeltasSince(ctx, VersionVector{"y": 1}, 0))
	if len(rng) != 1 || rng[0].Origin != "x" || rng[0].To != 1 || len(rng[0].Ops) != 0 {
		t.Fatalf("compacted range: %+v", rng)
	}

	must[MergeStats](t)(r1.Merge(ctx, []Delta{old}))
	must[MergeStats](t)(r1.Merge(ctx, rng))
	must[MergeStats](t)(r2.Merge(ctx, rng))
	if ms := must[MergeStats](t)(r2.Merge(ctx, []Delta{old})); ms.Duplicates != 1 {
		t.Fatalf("op merged after its compacted range: %+v, want a duplicate", ms)
	}
	if !reflect.DeepEqual(vvOf(t, r1), vvOf(t, r2)) {
		t.Fatalf("version vectors %v, %v", vvOf(t, r1), vvOf(t, r2))
	}
	if _, ok, _ := r1.Get(ctx, "m", "k"); !ok {
		t.Fatal("r1 lost the op it merged before the compacted range")
	}
	if _, ok, _ := r2.Get(ctx, "m", "k"); ok {
		t.Fatal("r2 applied an op its version vector covers")
	}

	for _, r := range []*Store{r1, r2} {
		must[MergeStats](t)(r.Merge(ctx, []Delta{winner}))
		if e, ok, _ := r.Get(ctx, "m", "k"); !ok || string(e.Value) != "new" {
			t.Fatalf("%s: k = %q %v after the winner arrived", r.ReplicaID(), e.Value, ok)
		}
	}
	h1, _ := r1.StateHash(ctx)
	h2, _ := r2.StateHash(ctx)
	if h1 != h2 {
		t.Fatal("replicas still differ after the superseding op arrived")
	}
}
