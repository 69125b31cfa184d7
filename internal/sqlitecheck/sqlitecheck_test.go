package sqlitecheck

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/testutil"
)

// makeDB writes a database of about mb MiB of rows (WAL mode, closed).
func makeDB(t testing.TB, path string, mb int) {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_pragma=journal_mode(WAL)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE r (series INTEGER, ts INTEGER, value REAL, PRIMARY KEY (series, ts)) WITHOUT ROWID`); err != nil {
		t.Fatal(err)
	}
	rows := mb << 20 / 24
	for done := 0; done < rows; {
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		st, err := tx.Prepare(`INSERT INTO r VALUES (?, ?, ?)`)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 50000 && done < rows; i, done = i+1, done+1 {
			if _, err := st.Exec(done%30, done, float64(done)*0.5); err != nil {
				t.Fatal(err)
			}
		}
		st.Close()
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCheckFindsOverwrittenPage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	makeDB(t, path, 2)
	if err := Check(context.Background(), path); err != nil {
		t.Fatalf("healthy database: %v", err)
	}
	testutil.CorruptMiddle(t, path)
	err := Check(context.Background(), path)
	var ce *CorruptError
	if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) || !IsCorrupt(err) || ce.Path != path {
		t.Fatalf("corrupt database: %v", err)
	}
	t.Logf("found: %v", err)
}

func TestCheckNotADatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	junk := make([]byte, 64<<10)
	for i := range junk {
		junk[i] = 'x'
	}
	if err := os.WriteFile(path, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Check(context.Background(), path); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("not a database: %v", err)
	}
	if err := Check(context.Background(), filepath.Join(t.TempDir(), "missing.db")); err != nil {
		t.Fatalf("missing file: %v", err)
	}
}

func TestCheckTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	makeDB(t, path, 8)
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	time.Sleep(2 * time.Millisecond)
	if err := Check(ctx, path); !errors.Is(err, ErrTimeout) {
		t.Fatalf("expired context: %v", err)
	}
}

func TestQuarantineRenamesWithWAL(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.db")
	for _, s := range []string{"", "-wal", "-shm"} {
		if err := os.WriteFile(path+s, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Date(2026, 12, 7, 3, 4, 5, 0, time.FixedZone("x", 3600))
	q, err := Quarantine(path, now)
	if err != nil {
		t.Fatal(err)
	}
	want := path + ".corrupt-20261207T020405Z"
	if q.Path != want || len(q.Files) != 3 {
		t.Fatalf("quarantined %+v, want %s and 3 files", q, want)
	}
	for _, s := range []string{"", "-wal", "-shm"} {
		if b, err := os.ReadFile(want + s); err != nil || string(b) != s {
			t.Fatalf("%s: %q %v", want+s, b, err)
		}
		if _, err := os.Stat(path + s); !os.IsNotExist(err) {
			t.Fatalf("%s still there: %v", path+s, err)
		}
	}
	// A second quarantine in the same second takes a new name.
	if err := os.WriteFile(path, []byte("again"), 0o600); err != nil {
		t.Fatal(err)
	}
	q2, err := Quarantine(path, now)
	if err != nil || q2.Path != want+".2" || len(q2.Files) != 1 {
		t.Fatalf("second quarantine: %+v %v", q2, err)
	}
}

// TestQuickCheckDuration measures quick_check on a database of
// EDGEFLEET_QUICKCHECK_MB MiB (skipped unless set).
func TestQuickCheckDuration(t *testing.T) {
	mb, _ := strconv.Atoi(os.Getenv("EDGEFLEET_QUICKCHECK_MB"))
	if mb == 0 {
		t.Skip("set EDGEFLEET_QUICKCHECK_MB to measure")
	}
	path := filepath.Join(t.TempDir(), "big.db")
	makeDB(t, path, mb)
	fi, _ := os.Stat(path)
	start := time.Now()
	err := Check(context.Background(), path)
	fmt.Printf("quick_check of %d MiB: %v (%v)\n", fi.Size()>>20, time.Since(start), err)
}

// TestCheckKeepsLittleMemory runs Check on an 8 MiB database in a fresh
// process (this test binary, re-executed) and measures the anonymous
// memory the process still holds after the check's connection closed:
// SQLite's page cache comes from modernc's allocator, which keeps what
// it got, so a check with SQLite's default 2 MB cache left 3.8 MB more
// (3.9 MB on a 26 MiB database), one with CacheKiB 0.36 MB.
func TestCheckKeepsLittleMemory(t *testing.T) {
	if path := os.Getenv("SQLITECHECK_MEM_DB"); path != "" {
		runtime.GC()
		debug.FreeOSMemory()
		before := rssAnonKiB(t)
		if err := Check(context.Background(), path); err != nil {
			t.Fatal(err)
		}
		runtime.GC()
		debug.FreeOSMemory()
		fmt.Printf("anon-growth-kib=%d\n", rssAnonKiB(t)-before)
		return
	}
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("needs /proc")
	}
	path := filepath.Join(t.TempDir(), "check.db")
	makeDB(t, path, 8)
	cmd := exec.Command(os.Args[0], "-test.run=^TestCheckKeepsLittleMemory$", "-test.count=1")
	cmd.Env = append(os.Environ(), "SQLITECHECK_MEM_DB="+path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var grew int64 = -1
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "anon-growth-kib="); ok {
			grew, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if grew < 0 {
		t.Fatalf("no measurement in: %s", out)
	}
	t.Logf("anonymous memory kept after checking an 8 MiB database: %d KiB", grew)
	if limit := int64(1024); grew > limit {
		t.Errorf("checking an 8 MiB database left %d KiB more anonymous memory, want at most %d (page cache %d KiB)", grew, limit, CacheKiB)
	}
}

// rssAnonKiB is this process's resident anonymous memory, KiB.
func rssAnonKiB(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no RssAnon in /proc/self/status")
	return 0
}
