package crdt

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
)

// Benchmark values: 24-byte keys, 128-byte values, one durable transaction
// per write in both benchmarks, same DSN (WAL, synchronous=FULL).
const (
	benchValueLen = 128
	benchColl     = "bench"
)

func benchKey(i int) string { return fmt.Sprintf("key-%020d", i) }

func BenchmarkLocalPut(b *testing.B) {
	ctx := context.Background()
	s, err := Open(filepath.Join(b.TempDir(), "crdt.db"), Options{ReplicaID: "bench-replica"})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	value := make([]byte, benchValueLen)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := s.Put(ctx, benchColl, benchKey(i), value); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBaselineInsert(b *testing.B) {
	ctx := context.Background()
	db, err := sql.Open("sqlite", DSN(filepath.Join(b.TempDir(), "plain.db")))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE kv (id INTEGER PRIMARY KEY, coll TEXT NOT NULL, key TEXT NOT NULL, value BLOB)`); err != nil {
		b.Fatal(err)
	}
	ins, err := db.Prepare(`INSERT INTO kv (coll, key, value) VALUES (?, ?, ?)`)
	if err != nil {
		b.Fatal(err)
	}
	value := make([]byte, benchValueLen)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := tx.StmtContext(ctx, ins).ExecContext(ctx, benchColl, benchKey(i), value); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
}
