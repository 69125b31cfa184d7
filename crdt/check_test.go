package crdt

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/internal/sqlitecheck"
)

// TestDamagedFileNoted: a page of an open store's file overwritten; the
// read that meets it fails and the store reports itself damaged.
func TestDamagedFileNoted(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := openTest(t, dir, "r1", nil)
	value := []byte(strings.Repeat("v", 300))
	for i := 0; i < 400; i++ {
		must[Delta](t)(s.Put(ctx, "kv", fmt.Sprintf("k%03d", i), value))
	}
	s.Close()
	s = openTest(t, dir, "r1", nil)
	if s.Damaged() != nil {
		t.Fatalf("healthy store damaged: %v", s.Damaged())
	}
	path := filepath.Join(dir, "r1.db")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	junk := []byte(strings.Repeat("\xa5\x17", 2048))
	if _, err := f.WriteAt(junk, fi.Size()/2&^4095); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, err1 := s.List(ctx, "kv")
	_, err2 := s.StateHash(ctx)
	if err1 == nil && err2 == nil {
		t.Fatal("reads over a damaged page succeeded")
	}
	if err := s.Damaged(); err == nil || !sqlitecheck.IsCorrupt(err) {
		t.Fatalf("Damaged() = %v after %v / %v", err, err1, err2)
	}
}
