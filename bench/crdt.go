package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/edgefleet/edgefleet/crdt"
	_ "modernc.org/sqlite" // the "sqlite" driver for the baselines
)

// CRDTOptions configure RunCRDT. Zero values take the defaults.
type CRDTOptions struct {
	Dir       string // scratch directory for the databases; "" = a new temporary directory, removed afterwards
	Ops       int    // writes per measurement; 0 = 2000
	BatchSize int    // ops per Merge call and rows per baseline batch transaction; 0 = 100
	Rounds    int    // measurement rounds, ours and baseline interleaved; medians are reported; 0 = 5
}

// Row shape shared by the CRDT workload and its baselines.
const (
	benchColl     = "bench"
	benchKeyLen   = 24
	benchValueLen = 128
)

func benchKey(i int) string { return fmt.Sprintf("key-%020d", i) }

// RunCRDT runs the crdt suite:
//
//   - local_write: crdt Store.Put, one durable transaction each, beside
//     sqlite_insert: a plain INSERT of a row with the same key and value
//     sizes, one durable transaction each, same DSN (WAL, synchronous=FULL),
//     in a separate database file.
//   - merge: Store.Merge of remote deltas, BatchSize ops per call, beside
//     sqlite_insert_batch: plain INSERTs of as many rows, BatchSize rows per
//     transaction.
//
// Every measurement uses fresh database files. Each round measures ours and
// the baseline back to back, alternating which goes first; the report
// gives the median over rounds of each, and ratio = ours / baseline.
func RunCRDT(ctx context.Context, opt CRDTOptions) (Report, error) {
	if opt.Ops < 0 || opt.BatchSize < 0 || opt.Rounds < 0 {
		return Report{}, fmt.Errorf("bench: crdt: negative option in %+v", opt)
	}
	if opt.Ops == 0 {
		opt.Ops = 2000
	}
	if opt.BatchSize == 0 {
		opt.BatchSize = 100
	}
	if opt.Rounds == 0 {
		opt.Rounds = 5
	}
	dir := opt.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "edgefleet-bench-crdt-")
		if err != nil {
			return Report{}, fmt.Errorf("bench: crdt: %w", err)
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return Report{}, fmt.Errorf("bench: crdt: %w", err)
	}

	deltas, err := remoteDeltas(ctx, dir, opt.Ops, opt.BatchSize)
	if err != nil {
		return Report{}, err
	}
	value := make([]byte, benchValueLen)
	for i := range value {
		value[i] = byte(i)
	}

	type measure func(ctx context.Context, path string) (float64, error)
	pairs := []struct {
		ours, base         string
		runOurs, runBase   measure
		oursVals, baseVals []float64
	}{
		{ours: "local_write", base: "sqlite_insert",
			runOurs: func(ctx context.Context, path string) (float64, error) { return localWrites(ctx, path, opt.Ops, value) },
			runBase: func(ctx context.Context, path string) (float64, error) {
				return plainInserts(ctx, path, opt.Ops, 1, value)
			}},
		{ours: "merge", base: "sqlite_insert_batch",
			runOurs: func(ctx context.Context, path string) (float64, error) { return merges(ctx, path, deltas) },
			runBase: func(ctx context.Context, path string) (float64, error) {
				return plainInserts(ctx, path, opt.Ops, opt.BatchSize, value)
			}},
	}
	for round := 0; round < opt.Rounds; round++ {
		for pi := range pairs {
			p := &pairs[pi]
			steps := []struct {
				name string
				run  measure
				out  *[]float64
			}{{p.ours, p.runOurs, &p.oursVals}, {p.base, p.runBase, &p.baseVals}}
			if round%2 == 1 {
				steps[0], steps[1] = steps[1], steps[0]
			}
			for _, st := range steps {
				path := filepath.Join(dir, fmt.Sprintf("%s-%d.db", st.name, round))
				v, err := st.run(ctx, path)
				removeDB(path)
				if err != nil {
					return Report{}, fmt.Errorf("bench: crdt: %s round %d: %w", st.name, round, err)
				}
				*st.out = append(*st.out, v)
			}
		}
	}
	rep := Report{
		Suite: "crdt",
		Machine: Machine(fmt.Sprintf("ops=%d batch=%d rounds=%d key_bytes=%d value_bytes=%d",
			opt.Ops, opt.BatchSize, opt.Rounds, benchKeyLen, benchValueLen)),
	}
	for _, p := range pairs {
		ours, base := Median(p.oursVals), Median(p.baseVals)
		r := Result{Name: p.ours, Unit: "ops/s", Value: ours, Baseline: &Baseline{Name: p.base, Value: base}}
		if base > 0 {
			r.Ratio = ours / base
		}
		rep.Results = append(rep.Results, r)
	}
	return rep, nil
}

func removeDB(path string) {
	for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
		os.Remove(path + suffix)
	}
}

func rate(n int, d time.Duration) float64 {
	if d <= 0 {
		d = time.Nanosecond
	}
	return float64(n) / d.Seconds()
}

// localWrites times n Store.Put calls on a fresh store.
func localWrites(ctx context.Context, path string, n int, value []byte) (float64, error) {
	s, err := crdt.Open(path, crdt.Options{ReplicaID: "bench-local"})
	if err != nil {
		return 0, err
	}
	defer s.Close()
	start := time.Now()
	for i := 0; i < n; i++ {
		if _, err := s.Put(ctx, benchColl, benchKey(i), value); err != nil {
			return 0, err
		}
	}
	return rate(n, time.Since(start)), nil
}

// plainInserts times n INSERTs of equivalent rows, batch rows per
// transaction, on a fresh database opened with the store's DSN.
func plainInserts(ctx context.Context, path string, n, batch int, value []byte) (float64, error) {
	db, err := sql.Open("sqlite", crdt.DSN(path))
	if err != nil {
		return 0, err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE kv (id INTEGER PRIMARY KEY, coll TEXT NOT NULL, key TEXT NOT NULL, value BLOB)`); err != nil {
		return 0, err
	}
	ins, err := db.PrepareContext(ctx, `INSERT INTO kv (coll, key, value) VALUES (?, ?, ?)`)
	if err != nil {
		return 0, err
	}
	defer ins.Close()
	start := time.Now()
	for i := 0; i < n; {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return 0, err
		}
		st := tx.StmtContext(ctx, ins)
		for j := 0; j < batch && i < n; j, i = j+1, i+1 {
			if _, err := st.ExecContext(ctx, benchColl, benchKey(i), value); err != nil {
				tx.Rollback()
				return 0, err
			}
		}
		if err := tx.Commit(); err != nil {
			return 0, err
		}
	}
	return rate(n, time.Since(start)), nil
}

// remoteDeltas makes n puts on a source replica (untimed) and returns them
// as deltas of batch ops each, as a peer would ship them.
func remoteDeltas(ctx context.Context, dir string, n, batch int) ([]crdt.Delta, error) {
	path := filepath.Join(dir, "source.db")
	removeDB(path)
	defer removeDB(path)
	s, err := crdt.Open(path, crdt.Options{ReplicaID: "bench-remote"})
	if err != nil {
		return nil, fmt.Errorf("bench: crdt: source: %w", err)
	}
	defer s.Close()
	value := make([]byte, benchValueLen)
	for i := 0; i < n; i++ {
		if _, err := s.Put(ctx, benchColl, benchKey(i), value); err != nil {
			return nil, fmt.Errorf("bench: crdt: source: %w", err)
		}
	}
	var ops []crdt.Op
	vv := crdt.VersionVector{}
	for {
		ds, err := s.DeltasSince(ctx, vv, 0)
		if err != nil {
			return nil, fmt.Errorf("bench: crdt: source: %w", err)
		}
		if len(ds) == 0 {
			break
		}
		for _, d := range ds {
			ops = append(ops, d.Ops...)
		}
		vv.Advance(ds)
	}
	if len(ops) != n {
		return nil, errors.New("bench: crdt: source did not return every op")
	}
	var out []crdt.Delta
	for i := 0; i < n; i += batch {
		j := min(i+batch, n)
		out = append(out, crdt.Delta{Origin: "bench-remote", From: ops[i].Dot.Seq - 1, To: ops[j-1].Dot.Seq, Ops: ops[i:j]})
	}
	return out, nil
}

// merges times merging ds, one Merge call per delta, into a fresh store.
func merges(ctx context.Context, path string, ds []crdt.Delta) (float64, error) {
	s, err := crdt.Open(path, crdt.Options{ReplicaID: "bench-target"})
	if err != nil {
		return 0, err
	}
	defer s.Close()
	n := 0
	start := time.Now()
	for _, d := range ds {
		st, err := s.Merge(ctx, []crdt.Delta{d})
		if err != nil {
			return 0, err
		}
		n += st.Applied
	}
	el := time.Since(start)
	want := 0
	for _, d := range ds {
		want += len(d.Ops)
	}
	if n != want {
		return 0, fmt.Errorf("merged %d of %d ops", n, want)
	}
	return rate(n, el), nil
}
