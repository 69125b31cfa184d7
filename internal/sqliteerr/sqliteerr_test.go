package sqliteerr

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"

	_ "modernc.org/sqlite"
)

// TestClassify: real SQLite errors: a full database (max_page_count)
// is Unavailable and Full; a constraint violation or a syntax error,
// which concern what was written, are neither.
func TestClassify(t *testing.T) {
	ctx := context.Background()
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	for _, q := range []string{`CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)`, `INSERT INTO t VALUES (1, x'00')`} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	_, constraint := db.ExecContext(ctx, `INSERT INTO t VALUES (1, x'00')`)
	_, syntax := db.ExecContext(ctx, `INSERT INTO nowhere VALUES (1)`)
	var pages int64
	if err := db.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, fmt.Sprintf(`PRAGMA max_page_count = %d`, pages)); err != nil {
		t.Fatal(err)
	}
	_, full := db.ExecContext(ctx, `INSERT INTO t VALUES (2, zeroblob(100000))`)
	for _, c := range []struct {
		name                string
		err                 error
		unavailable, isFull bool
	}{
		{"full", fmt.Errorf("wrapped: %w", full), true, true},
		{"constraint", constraint, false, false},
		{"syntax", syntax, false, false},
		{"ENOSPC", fmt.Errorf("write: %w", syscall.ENOSPC), true, true},
		{"EIO", fmt.Errorf("write: %w", syscall.EIO), true, false},
		{"other", errors.New("something else"), false, false},
		{"nil", nil, false, false},
	} {
		if got := Unavailable(c.err); got != c.unavailable {
			t.Errorf("%s (%v): Unavailable %v, want %v", c.name, c.err, got, c.unavailable)
		}
		if got := Full(c.err); got != c.isFull {
			t.Errorf("%s (%v): Full %v, want %v", c.name, c.err, got, c.isFull)
		}
	}
}
