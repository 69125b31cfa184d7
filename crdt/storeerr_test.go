package crdt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
)

// TestWriteToFullDatabase: a local op or a merge the database cannot
// take (SQLITE_FULL, as on a full disk; here max_page_count caps it)
// fails with ErrUnavailable, keeping SQLite's reason, and changes
// nothing: no key, no sequence number used, no version vector advanced.
// Once there is room, the same writes succeed.
func TestWriteToFullDatabase(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openTest(t, dir, "full", nil)
	peer := openTest(t, dir, "peer", nil)
	var pages int64
	if err := s.wc.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if _, err := s.wc.ExecContext(ctx, fmt.Sprintf(`PRAGMA max_page_count = %d`, pages)); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), 64<<10)
	_, err := s.Put(ctx, "c", "k", big)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Put on a full database: %v, want ErrUnavailable", err)
	}
	t.Logf("Put: %v", err)
	d, err := peer.Put(ctx, "c", "p", big)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Merge(ctx, []Delta{d}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Merge into a full database: %v, want ErrUnavailable", err)
	}
	if _, ok, err := s.Get(ctx, "c", "k"); err != nil || ok {
		t.Fatalf("after the failed Put: found %v, %v", ok, err)
	}
	if vv, _ := s.VersionVector(ctx); len(vv) != 0 {
		t.Fatalf("version vector %v after failed writes", vv)
	}
	if _, err := s.wc.ExecContext(ctx, `PRAGMA max_page_count = 1073741823`); err != nil {
		t.Fatal(err)
	}
	if d, err := s.Put(ctx, "c", "k", big); err != nil || d.To != 1 {
		t.Fatalf("Put once there is room: %+v, %v", d, err)
	}
	if _, err := s.Merge(ctx, []Delta{d}); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := s.Get(ctx, "c", "p"); err != nil || !ok {
		t.Fatalf("merged key: %v, %v", ok, err)
	}
	// A refused op is not a storage failure.
	if _, err := s.Put(ctx, "", "k", nil); err == nil || errors.Is(err, ErrUnavailable) {
		t.Fatalf("invalid op: %v", err)
	}
}
