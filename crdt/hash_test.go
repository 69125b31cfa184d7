package crdt

import (
	"context"
	"testing"
)

func TestStateHashPrefix(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a := openTest(t, dir, "a", newFakeWall())
	b := openTest(t, dir, "b", newFakeWall())
	for _, s := range []*Store{a, b} {
		if _, err := s.Put(ctx, "sim.kv", "k", []byte("v")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SetAdd(ctx, "sim.é", "x"); err != nil {
			t.Fatal(err)
		}
	}
	// Only a writes outside the prefix.
	if _, err := a.Put(ctx, "devices", "d1", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	hash := func(s *Store, p string) string {
		h, err := s.StateHashPrefix(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	full, err := a.StateHash(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if full != hash(a, "") {
		t.Fatal("StateHash differs from StateHashPrefix with an empty prefix")
	}
	if hash(a, "") == hash(b, "") {
		t.Fatal("full hashes equal although a holds an extra collection")
	}
	// Origins differ (a vs b), so compare each store's prefix hash with
	// and without the unrelated collection instead.
	before := hash(b, "sim.")
	if _, err := b.Put(ctx, "devices", "d2", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if hash(b, "sim.") != before {
		t.Fatal("a write outside the prefix changed the prefix hash")
	}
	if _, err := b.SetAdd(ctx, "sim.é", "y"); err != nil {
		t.Fatal(err)
	}
	if hash(b, "sim.") == before {
		t.Fatal("a write inside the prefix (multi-byte name) left the prefix hash unchanged")
	}
	if hash(b, "sim.é") == hash(b, "sim.") || hash(b, "nothing") == hash(b, "sim.") {
		t.Fatal("different prefixes gave the same hash")
	}
}
