package testutil

import (
	"database/sql"
	"math/rand/v2"
	"os"
	"testing"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// CorruptMiddle overwrites the 4 KiB page-aligned block in the middle of
// the file at path with pseudo-random bytes (the file must be closed and
// at least 16 KiB, so the block is a data page, not the header). It
// returns the block's offset.
func CorruptMiddle(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() < 16<<10 {
		t.Fatalf("%s holds %d bytes: too small to corrupt its middle", path, fi.Size())
	}
	off := fi.Size() / 2 &^ 4095
	overwrite(t, path, off, 4096, uint64(fi.Size()))
	return off
}

// overwrite writes n pseudo-random bytes (from seed) at off in the file
// at path.
func overwrite(t testing.TB, path string, off, n int64, seed uint64) {
	t.Helper()
	junk := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 11))
	for i := range junk {
		junk[i] = byte(r.UintN(256))
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(junk, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// CorruptTablePage overwrites, with pseudo-random bytes, the middle leaf
// page of table (or index) name in the closed SQLite database at path,
// found with the dbstat virtual table, so the damage lands in that
// table whatever the file's layout. It returns the page's offset.
func CorruptTablePage(t testing.TB, path, name string) int64 {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	var pageSize int64
	var pages []int64
	err = db.QueryRow(`PRAGMA page_size`).Scan(&pageSize)
	if err == nil {
		var rows *sql.Rows
		rows, err = db.Query(`SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno`, name)
		if err == nil {
			for rows.Next() {
				var p int64
				if err = rows.Scan(&p); err != nil {
					break
				}
				pages = append(pages, p)
			}
			rows.Close()
		}
	}
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(pages) < 3 {
		t.Fatalf("%s of %s has %d leaf pages: too few to damage one in the middle", name, path, len(pages))
	}
	off := (pages[len(pages)/2] - 1) * pageSize
	overwrite(t, path, off, pageSize, uint64(off))
	return off
}
