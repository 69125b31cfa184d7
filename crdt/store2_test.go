package crdt

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestMergeInvalidWritesNothing(t *testing.T) {
	ctx := context.Background()
	w := newFakeWall()
	s := openTest(t, t.TempDir(), "a", w)
	if _, err := s.Put(ctx, "m", "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	h0, _ := s.StateHash(ctx)
	st0, _ := s.Stats(ctx)
	hlc := timestampFromMillis(w.Now().UnixMilli())
	good := Delta{Origin: "b", From: 0, To: 1, Ops: []Op{{Dot: Dot{"b", 1}, HLC: hlc, Type: TypeLWW, Collection: "m", Key: "x", Kind: KindPut, Value: []byte("1")}}}
	bads := []Delta{
		{Origin: "c", From: 0, To: 1, Ops: []Op{{Dot: Dot{"c", 1}, HLC: hlc, Type: TypeLWW, Collection: "m", Key: "x", Kind: KindAdd}}},
		{Origin: "c", From: 3, To: 2},
		{Origin: "c", From: 0, To: 2, Ops: []Op{{Dot: Dot{"c", 3}, HLC: hlc, Type: TypeLWW, Collection: "m", Key: "x", Kind: KindPut}}},
		{Origin: "c", From: 0, To: 1, Ops: []Op{{Dot: Dot{"c", 1}, HLC: hlc, Type: "bogus", Collection: "m", Key: "x", Kind: KindPut}}},
	}
	for i, bad := range bads {
		_, err := s.Merge(ctx, []Delta{good, bad})
		if !errors.Is(err, ErrInvalidDelta) {
			t.Fatalf("case %d: err = %v", i, err)
		}
	}
	// Deltas claiming this replica's own ops it never made, or differing
	// from its log, are rejected too.
	own := Delta{Origin: "a", From: 1, To: 2, Ops: []Op{{Dot: Dot{"a", 2}, HLC: hlc, Type: TypeLWW, Collection: "m", Key: "x", Kind: KindPut}}}
	if _, err := s.Merge(ctx, []Delta{good, own}); !errors.Is(err, ErrInvalidDelta) {
		t.Fatalf("own future ops: err = %v", err)
	}
	forged := Delta{Origin: "a", From: 0, To: 1, Ops: []Op{{Dot: Dot{"a", 1}, HLC: hlc, Type: TypeLWW, Collection: "m", Key: "other", Kind: KindPut}}}
	if _, err := s.Merge(ctx, []Delta{good, forged}); !errors.Is(err, ErrInvalidDelta) {
		t.Fatalf("forged own op: err = %v", err)
	}
	h1, _ := s.StateHash(ctx)
	st1, _ := s.Stats(ctx)
	vv, _ := s.VersionVector(ctx)
	if h0 != h1 || st0.Ops != st1.Ops || !reflect.DeepEqual(vv, VersionVector{"a": 1}) {
		t.Fatalf("rejected merges wrote: vv %v, ops %d -> %d", vv, st0.Ops, st1.Ops)
	}
	// The own op echoed back unchanged is a harmless duplicate.
	d, err := s.DeltasSince(ctx, VersionVector{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := s.Merge(ctx, append(d, good))
	if err != nil {
		t.Fatal(err)
	}
	if ms.Applied != 1 || ms.Duplicates != 1 || !ms.Advanced {
		t.Fatalf("stats %+v", ms)
	}
}

func TestMergeGapAndStats(t *testing.T) {
	ctx := context.Background()
	w := newFakeWall()
	dir := t.TempDir()
	a := openTest(t, dir, "a", w)
	b := openTest(t, dir, "b", w)
	var ds []Delta
	for i := 0; i < 4; i++ {
		w.Add(time.Millisecond)
		d, err := a.Put(ctx, "m", fmt.Sprint(i), []byte("v"))
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	// Ops beyond a gap are applied but do not advance the vector.
	ms, err := b.Merge(ctx, ds[2:])
	if err != nil {
		t.Fatal(err)
	}
	vv, _ := b.VersionVector(ctx)
	if ms.Applied != 2 || ms.Stale != 2 || ms.Advanced || vv["a"] != 0 {
		t.Fatalf("gap: %+v vv %v", ms, vv)
	}
	if _, ok, _ := b.Get(ctx, "m", "3"); !ok {
		t.Fatal("op beyond gap not applied")
	}
	// Filling the gap and retransmitting advances it.
	ms, err = b.Merge(ctx, ds)
	if err != nil {
		t.Fatal(err)
	}
	vv, _ = b.VersionVector(ctx)
	if ms.Applied != 2 || ms.Duplicates != 2 || !ms.Advanced || vv["a"] != 4 {
		t.Fatalf("fill: %+v vv %v", ms, vv)
	}
	// Everything again: all duplicates.
	ms, err = b.Merge(ctx, ds)
	if err != nil || ms.Applied != 0 || ms.Duplicates != 4 || ms.Advanced {
		t.Fatalf("again: %+v %v", ms, err)
	}
}

func TestTypeDisagreementConverges(t *testing.T) {
	ctx := context.Background()
	w := newFakeWall()
	dir := t.TempDir()
	a := openTest(t, dir, "a", w)
	b := openTest(t, dir, "b", w)
	da, err := a.Put(ctx, "x", "k", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	db, err := b.SetAdd(ctx, "x", "k")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Merge(ctx, []Delta{db}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Merge(ctx, []Delta{da}); err != nil {
		t.Fatal(err)
	}
	ha, _ := a.StateHash(ctx)
	hb, _ := b.StateHash(ctx)
	if ha != hb {
		t.Fatal("replicas disagreeing on a type diverged")
	}
	if _, err := a.CounterAdd(ctx, "x", "k", 1); !errors.Is(err, ErrTypeMismatch) {
		t.Fatalf("err = %v", err)
	}
	// Both types are listed; local ops of either type still work.
	cols, _ := a.Collections(ctx)
	if len(cols) != 2 {
		t.Fatalf("collections %+v", cols)
	}
	if _, err := a.SetRemove(ctx, "x", "k"); err != nil {
		t.Fatal(err)
	}
}

func TestCompactionKeepsConvergence(t *testing.T) {
	ctx := context.Background()
	w := newFakeWall()
	dir := t.TempDir()
	a := openTest(t, dir, "a", w)
	b := openTest(t, dir, "b", w)
	step := func(d Delta, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		w.Add(time.Millisecond)
	}
	for i := 0; i < 10; i++ {
		step(a.Put(ctx, "m", "k", []byte(fmt.Sprint(i))))
		step(a.CounterAdd(ctx, "c", "n", int64(i)))
		step(a.SetAdd(ctx, "s", "e"))
		step(a.MVPut(ctx, "r", "k", []byte(fmt.Sprint(i))))
	}
	step(a.Put(ctx, "m", "gone", []byte("x")))
	step(a.Delete(ctx, "m", "gone"))
	step(a.SetRemove(ctx, "s", "e"))
	step(a.SetAdd(ctx, "s", "f"))
	step(a.MVPut(ctx, "r", "del", []byte("x")))
	step(a.MVDelete(ctx, "r", "del"))
	before, _ := a.Stats(ctx)

	// Superseded history only (nothing stable yet).
	cs, err := a.Compact(ctx, VersionVector{}, w.Now())
	if err != nil {
		t.Fatal(err)
	}
	after, _ := a.Stats(ctx)
	if cs.OpsRemoved == 0 || after.Ops != before.Ops-cs.OpsRemoved {
		t.Fatalf("compact %+v: ops %d -> %d", cs, before.Ops, after.Ops)
	}
	// b has nothing yet: it catches up from the compacted log.
	syncAll(t, a, b)
	ha, _ := a.StateHash(ctx)
	hb, _ := b.StateHash(ctx)
	if ha != hb {
		t.Fatal("replica catching up after compaction diverged")
	}
	if v, _ := b.CounterValue(ctx, "c", "n"); v != 45 {
		t.Fatalf("counter %d", v)
	}

	// Tombstones: not removed while young or not stable ...
	stable := MinVersionVector(vvOf(t, a), vvOf(t, b))
	cs, _ = a.Compact(ctx, stable, w.Now())
	if cs.TombstonesRemoved != 0 {
		t.Fatalf("young tombstones removed: %+v", cs)
	}
	cs, _ = a.Compact(ctx, VersionVector{}, w.Now().Add(DefaultTombstoneTTL+time.Hour))
	if cs.TombstonesRemoved != 0 || cs.OpsRemoved != 0 {
		t.Fatalf("unstable tombstones removed: %+v", cs)
	}
	// ... removed once stable and older than the TTL.
	late := w.Now().Add(DefaultTombstoneTTL + time.Hour)
	cs, err = a.Compact(ctx, stable, late)
	if err != nil {
		t.Fatal(err)
	}
	if cs.TombstonesRemoved != 1 || cs.OpsRemoved < 3 {
		t.Fatalf("stable compaction %+v", cs)
	}
	if _, err := b.Compact(ctx, stable, late); err != nil {
		t.Fatal(err)
	}
	ha2, _ := a.StateHash(ctx)
	if ha2 != ha {
		t.Fatal("tombstone compaction changed the state")
	}
	// A new replica converges from the fully compacted log.
	c := openTest(t, dir, "c", w)
	syncAll(t, a, c)
	if hc, _ := c.StateHash(ctx); hc != ha {
		t.Fatal("new replica diverged after tombstone compaction")
	}
	st, _ := c.Stats(ctx)
	sa, _ := a.Stats(ctx)
	if st.Ops != sa.Ops {
		t.Fatalf("c holds %d ops, a %d", st.Ops, sa.Ops)
	}
	if !reflect.DeepEqual(vvOf(t, c), vvOf(t, a)) {
		t.Fatal("version vectors differ")
	}
}

func vvOf(t *testing.T, s *Store) VersionVector {
	t.Helper()
	vv, err := s.VersionVector(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return vv
}

// syncAll pulls from -> to until nothing is missing, in small chunks.
func syncAll(t *testing.T, from, to *Store) {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < 10000; i++ {
		ds, err := from.DeltasSince(ctx, vvOf(t, to), 300)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			return
		}
		if _, err := to.Merge(ctx, ds); err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("sync did not finish")
}

func TestDeltasSinceChunks(t *testing.T) {
	ctx := context.Background()
	w := newFakeWall()
	s := openTest(t, t.TempDir(), "a", w)
	for i := 0; i < 50; i++ {
		if _, err := s.Put(ctx, "m", fmt.Sprint(i), make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
	}
	peer := VersionVector{}
	total := 0
	for {
		ds, err := s.DeltasSince(ctx, peer, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			break
		}
		b, err := EncodeDeltas(ds)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 1000 {
			t.Fatalf("chunk of %d bytes exceeds 1000", len(b))
		}
		for _, d := range ds {
			total += len(d.Ops)
		}
		peer.Advance(ds)
	}
	if total != 50 || peer["a"] != 50 {
		t.Fatalf("shipped %d ops, peer at %v", total, peer)
	}
	// A tiny budget still ships one op.
	ds, _ := s.DeltasSince(ctx, VersionVector{}, 1)
	if len(ds) != 1 || len(ds[0].Ops) != 1 || ds[0].To != 1 {
		t.Fatalf("tiny budget: %+v", ds)
	}
}

func TestCorruptRows(t *testing.T) {
	ctx := context.Background()
	w := newFakeWall()
	dir := t.TempDir()
	s := openTest(t, dir, "a", w)
	for _, f := range []func() (Delta, error){
		func() (Delta, error) { return s.Put(ctx, "m", "k", []byte("v")) },
		func() (Delta, error) { return s.SetAdd(ctx, "s", "e") },
		func() (Delta, error) { return s.CounterAdd(ctx, "c", "n", 2) },
		func() (Delta, error) { return s.MVPut(ctx, "r", "k", []byte("v")) },
	} {
		if _, err := f(); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := sql.Open("sqlite", DSN(filepath.Join(dir, "a.db")))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	exec := func(q string) {
		t.Helper()
		if _, err := raw.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	check := func(name string, err error) {
		t.Helper()
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: err = %v, want ErrCorrupt", name, err)
		}
	}
	exec(`UPDATE ops SET kind = 99 WHERE seq = 1`)
	_, err = s.DeltasSince(ctx, VersionVector{}, 0)
	check("bad kind", err)
	exec(`UPDATE ops SET kind = 1, type = 'bogus' WHERE seq = 1`)
	_, err = s.DeltasSince(ctx, VersionVector{}, 0)
	check("bad type", err)
	exec(`UPDATE ops SET type = 'lww', observed = x'ff' WHERE seq = 1`)
	_, err = s.DeltasSince(ctx, VersionVector{}, 0)
	check("bad observed", err)
	exec(`UPDATE ops SET observed = NULL, hlc = 'soon' WHERE seq = 1`)
	_, err = s.DeltasSince(ctx, VersionVector{}, 0)
	check("text hlc", err)
	exec(`UPDATE lww SET deleted = 7`)
	_, _, err = s.Get(ctx, "m", "k")
	check("get", err)
	_, err = s.List(ctx, "m")
	check("list", err)
	exec(`UPDATE lww SET deleted = 0, hlc = 'x'`)
	_, _, err = s.Get(ctx, "m", "k")
	check("get text hlc", err)
	exec(`UPDATE counter SET p = -5`)
	_, err = s.CounterValue(ctx, "c", "n")
	check("counter", err)
	exec(`UPDATE mvreg SET seq = -1`)
	_, err = s.MVGet(ctx, "r", "k")
	check("mv", err)
	exec(`UPDATE colls SET type = 'bogus' WHERE name = 's'`)
	_, err = s.Collections(ctx)
	check("collections", err)
	_, err = s.StateHash(ctx)
	check("state hash", err)
	exec(`UPDATE vv SET seq = 0`) // harmless
	exec(`INSERT INTO vv (origin, seq) VALUES ('', 3)`)
	_, err = s.DeltasSince(ctx, VersionVector{}, 0)
	check("vv", err)
	// Reopening reports the damaged version vector instead of guessing.
	s.Close()
	_, err = Open(filepath.Join(dir, "a.db"), Options{ReplicaID: "a"})
	check("reopen", err)
}

func TestOpenValidation(t *testing.T) {
	dir := t.TempDir()
	for _, o := range []Options{{}, {ReplicaID: strings.Repeat("x", 65)}, {ReplicaID: "a", MaxDrift: -1}, {ReplicaID: "a", TombstoneTTL: -1}} {
		if _, err := Open(filepath.Join(dir, "x.db"), o); err == nil {
			t.Fatalf("options %+v accepted", o)
		}
	}
	s, err := Open(filepath.Join(dir, "a.db"), Options{ReplicaID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(filepath.Join(dir, "a.db"), Options{ReplicaID: "b"}); !errors.Is(err, ErrReplicaMismatch) {
		t.Fatalf("err = %v", err)
	}
	if _, err := s.Put(context.Background(), "m", "k", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
}

// TestCrashKeepsAcknowledgedOps kills a writer process with SIGKILL during
// a write burst and checks every acknowledged write survived.
func TestCrashKeepsAcknowledgedOps(t *testing.T) {
	if os.Getenv("CRDT_CRASH_CHILD") != "" {
		crashChild()
		return
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "crash.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashKeepsAcknowledgedOps$")
	cmd.Env = append(os.Environ(), "CRDT_CRASH_CHILD="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[string]uint64{}
	var lastHLC uint64
	sc := bufio.NewScanner(out)
	for sc.Scan() && len(acked) < 150 {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[0] != "ack" {
			continue
		}
		seq, _ := strconv.ParseUint(f[1], 10, 64)
		lastHLC, _ = strconv.ParseUint(f[2], 10, 64)
		acked[f[1]] = seq
	}
	cmd.Process.Kill()
	cmd.Wait()
	if len(acked) < 150 {
		t.Fatalf("child acknowledged only %d writes", len(acked))
	}
	s, err := Open(path, Options{ReplicaID: "crash"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for key := range acked {
		if _, ok, err := s.Get(ctx, "burst", key); err != nil || !ok {
			t.Fatalf("acknowledged write %s lost (err %v)", key, err)
		}
	}
	d, err := s.Put(ctx, "burst", "after", nil)
	if err != nil {
		t.Fatal(err)
	}
	if uint64(d.Ops[0].HLC) <= lastHLC || d.To <= uint64(len(acked)) {
		t.Fatalf("after restart: seq %d hlc %d, acked %d up to hlc %d", d.To, d.Ops[0].HLC, len(acked), lastHLC)
	}
}

func crashChild() {
	s, err := Open(os.Getenv("CRDT_CRASH_CHILD"), Options{ReplicaID: "crash"})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	rng := rand.New(rand.NewSource(1))
	for i := 1; ; i++ {
		d, err := s.Put(context.Background(), "burst", strconv.Itoa(i), make([]byte, rng.Intn(200)))
		if err != nil {
			fmt.Println("put:", err)
			os.Exit(1)
		}
		fmt.Printf("ack %d %d\n", d.To, uint64(d.Ops[0].HLC))
	}
}
