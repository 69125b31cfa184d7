package crdt

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestInspect(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openTest(t, dir, "a", newFakeWall())
	if _, err := s.Put(ctx, "devices", "d1", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "devices", "d2", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx, "devices", "d2"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetAdd(ctx, "tags", "x"); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "a.db")
	// While the store is open (as with a running agent).
	rep, err := Inspect(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Replica != "a" || rep.Seq != 4 || rep.Ops != 4 || rep.Tombstones != 1 || rep.Origins["a"] != 4 {
		t.Fatalf("report %+v", rep)
	}
	want := []CollectionJSON{{"devices", TypeLWW, 1}, {"tags", TypeORSet, 1}}
	if len(rep.Collections) != 2 || rep.Collections[0] != want[0] || rep.Collections[1] != want[1] {
		t.Fatalf("collections %+v, want %+v", rep.Collections, want)
	}
	s.Close()
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Inspect(ctx, path); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) {
		t.Fatal("Inspect changed the database file")
	}
	if _, err := Inspect(ctx, filepath.Join(dir, "missing.db")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	bad := filepath.Join(dir, "bad.db")
	os.WriteFile(bad, []byte("not a database"), 0o600)
	if _, err := Inspect(ctx, bad); err == nil {
		t.Fatal("garbage file inspected without error")
	}
}
