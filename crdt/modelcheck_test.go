package crdt

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/testutil"
)

var (
	modelSeqs = flag.Int("crdt.model.seqs", 0, "random sequences TestModel runs (0: 10,000, or one batch of about 200 under -race)")
	modelSeed = flag.Int64("crdt.model.seed", 0, "run only the TestModel batch with this seed (replays a failure)")
)

// TestModel is the model-based test of the store: replicas (real stores on
// SQLite files) run random op sequences with random deliveries between them
// (DeltasSince chunks against current or stale version vectors, broadcasts
// to random subsets, merged in random groups and orders, duplicated, lost),
// compactions, restarts and jumps past the tombstone TTL, and every store is
// compared with the reference model (refState) of the ops it applied:
//
//   - every local op is the op the model predicts (sequence number, observed
//     tags and values, counter totals, type mismatch refusals) with a
//     timestamp above everything its replica's clock has seen;
//   - every DeltasSince result ships contiguous ranges starting at the
//     peer's vector, only ops the sender applied, unchanged, and every one of
//     them in the range that compaction may not have dropped;
//   - every Merge advances the version vector exactly as the delta protocol
//     says and reports consistent stats; the replica then holds
//     refState(ops it applied) (checked at random points, after compactions
//     and restarts);
//   - after full anti-entropy at the end of each round, every replica holds
//     refState(every op made), checked by state hash, by the read API and by
//     Collections, and all version vectors are equal.
//
// A sequence is the history of one group of collections (one type, or a
// collection shared by several types): 1-4 local ops at random replicas
// and everything delivered. A round runs 16-48 sequences interleaved over
// the same 2-4 replicas (so one Merge transaction carries ops of several,
// which keeps 10,000 sequences within seconds), a batch runs 6 rounds over
// the same stores. A failure names the batch seed; rerun with
// -crdt.model.seed=N to replay it, or run more with -crdt.model.seqs=N.
func TestModel(t *testing.T) {
	want := *modelSeqs
	if want <= 0 {
		want = 10000
		if testutil.RaceEnabled {
			// SQLite under the race detector is about ten times
			// slower, and the test runs on one goroutine: one batch
			// shows the detector the same code paths.
			want = 1
		}
	}
	dir := modelDir(t)
	stats := map[string]int{}
	start := time.Now()
	seqs, batches := 0, 0
	for seed := int64(1); seqs < want; seed++ {
		if *modelSeed != 0 {
			seed, want = *modelSeed, 0 // this batch only
		}
		seqs += runModelBatch(t, filepath.Join(dir, fmt.Sprint(seed)), seed, stats)
		batches++
		if t.Failed() {
			return
		}
	}
	t.Logf("%d sequences, %d batch(es), %v; actions and situations %v", seqs, batches, time.Since(start).Round(time.Millisecond), stats)
}

// modelDir returns a directory for the test's databases, on tmpfs when the
// machine has one: the stores commit with synchronous=FULL, and fsync on a
// disk would make thousands of sequences take minutes.
func modelDir(t *testing.T) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if d, err := os.MkdirTemp("/dev/shm", "crdtmodel"); err == nil {
			t.Cleanup(func() { os.RemoveAll(d) })
			return d
		}
	}
	return t.TempDir()
}

const modelRounds = 6 // rounds per batch

type modelWorld struct {
	t      *testing.T
	rng    *rand.Rand
	seed   int64
	dir    string
	base   time.Time
	ttl    time.Duration
	ids    []string
	skew   []time.Duration
	skewed bool
	walls  []*fakeWall
	st     []*Store

	ops     map[Dot]*Op     // every op made in the batch
	applied []map[Dot]bool  // per replica: the ops it applied
	states  []*refState     // per replica: state(i), nil when applied[i] changed
	vv      []VersionVector // per replica: its version vector
	floor   []Timestamp     // per replica: the latest timestamp its clock has seen
	gone    []map[Dot]bool  // per replica: ops its compactions may have dropped
	queue   []modelMsg      // messages underway
	history []string        // recent actions, for failure messages
	round   int             // current round
	prefix  string          // collection prefix of the current round
	rops    []*Op           // ops made in the current round
	jumped  bool            // the current round jumped past the TTL
	ctx     context.Context //
	stats   map[string]int  // actions and situations seen, for the log
	seqs    []modelSeq      // sequences of the current round
}

type modelMsg struct {
	to  int
	enc []byte
}

// modelSeq is one random sequence of a round: its collection, type (""
// for a collection several types write to), keys and remaining local ops.
type modelSeq struct {
	coll string
	typ  Type
	keys []string
	left int
}

// runModelBatch runs one batch and returns how many sequences it ran.
func runModelBatch(t *testing.T, dir string, seed int64, stats map[string]int) int {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(seed))
	w := &modelWorld{
		t: t, rng: rng, seed: seed, dir: dir, ctx: context.Background(), ttl: time.Hour,
		base: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(seed) * time.Hour),
		ops:  map[Dot]*Op{}, stats: stats,
	}
	n := []int{2, 3, 3, 4}[rng.Intn(4)]
	// Skewed wall clocks in half the batches; in the others all replicas
	// read the same wall clock, so concurrent ops often carry equal
	// timestamps and LWW ties are decided by origin.
	w.skewed = rng.Intn(2) == 0
	for i := 0; i < n; i++ {
		w.ids = append(w.ids, fmt.Sprintf("r%d", i))
		var skew time.Duration
		if w.skewed {
			skew = time.Duration(rng.Intn(4000)-2000) * time.Millisecond
		}
		w.skew = append(w.skew, skew)
		w.walls = append(w.walls, &fakeWall{})
		w.st = append(w.st, nil)
		w.applied = append(w.applied, map[Dot]bool{})
		w.states = append(w.states, nil)
		w.vv = append(w.vv, VersionVector{})
		w.floor = append(w.floor, 0)
		w.gone = append(w.gone, map[Dot]bool{})
		w.open(i)
	}
	defer func() {
		for _, s := range w.st {
			s.Close()
		}
	}()
	w.tick()
	seqs := 0
	for r := 0; r < modelRounds && !t.Failed(); r++ {
		seqs += w.runRound()
	}
	return seqs
}

func (w *modelWorld) fail(format string, args ...any) {
	w.t.Helper()
	h := w.history
	if len(h) > 40 {
		h = h[len(h)-40:]
	}
	w.t.Fatalf("seed %d (replay: go test ./crdt/ -run TestModel -crdt.model.seed=%d), round %d: %s\nlast actions:\n  %s",
		w.seed, w.seed, w.round, fmt.Sprintf(format, args...), strings.Join(h, "\n  "))
}

func (w *modelWorld) note(format string, args ...any) {
	w.history = append(w.history, fmt.Sprintf(format, args...))
	if len(w.history) > 200 {
		w.history = append(w.history[:0], w.history[100:]...)
	}
}

func (w *modelWorld) open(i int) {
	s, err := Open(filepath.Join(w.dir, w.ids[i]+".db"), Options{ReplicaID: w.ids[i], Wall: w.walls[i].Now, TombstoneTTL: w.ttl})
	if err != nil {
		w.fail("open %s: %v", w.ids[i], err)
	}
	// Off tmpfs, fsync would dominate; durability across crashes is
	// TestCrashKeepsAcknowledgedOps' business, not this test's.
	if _, err := s.wc.ExecContext(w.ctx, `PRAGMA synchronous = OFF`); err != nil {
		w.fail("open %s: %v", w.ids[i], err)
	}
	w.st[i] = s
}

// tick advances time by 0..3 ms (0 or 1 when the clocks are not skewed,
// to make equal timestamps likely); each replica sees it through its skew.
func (w *modelWorld) tick() {
	if w.skewed {
		w.base = w.base.Add(time.Duration(w.rng.Intn(4)) * time.Millisecond)
	} else if w.rng.Intn(4) == 0 {
		w.base = w.base.Add(time.Millisecond)
	}
	for i, wall := range w.walls {
		wall.Set(w.base.Add(w.skew[i]))
	}
}

// state is the model state of replica i's ops of the current round.
func (w *modelWorld) state(i int) *refState {
	if w.states[i] != nil {
		return w.states[i]
	}
	var ops []*Op
	for _, op := range w.rops {
		if w.applied[i][op.Dot] {
			ops = append(ops, op)
		}
	}
	w.states[i] = evalOps(ops)
	return w.states[i]
}

func (w *modelWorld) runRound() int {
	w.round++
	w.prefix = fmt.Sprintf("b%d.r%d/", w.seed, w.round)
	w.rops = nil
	clear(w.states)
	w.jumped = false
	w.seqs = w.seqs[:0]
	left := 0
	for k := 16 + w.rng.Intn(33); k > 0; k-- {
		q := modelSeq{coll: fmt.Sprintf("%s%d", w.prefix, k), left: 1 + w.rng.Intn(4)}
		if w.rng.Intn(8) > 0 {
			q.typ = []Type{TypeLWW, TypeORSet, TypeCounter, TypeMVReg}[w.rng.Intn(4)]
		}
		q.keys = [][]string{{"a"}, {"a"}, {"a", "b"}, {"", "a"}}[w.rng.Intn(4)]
		left += q.left
		w.seqs = append(w.seqs, q)
	}
	n := len(w.st)
	for left > 0 {
		w.tick()
		switch r := w.rng.Intn(357); {
		case r < 260:
			k := w.rng.Intn(len(w.seqs))
			for w.seqs[k].left == 0 {
				k = (k + 1) % len(w.seqs)
			}
			w.seqs[k].left--
			left--
			w.localOp(w.rng.Intn(n), &w.seqs[k])
		case r < 280:
			from, to := w.rng.Intn(n), w.rng.Intn(n)
			if from != to {
				w.pull(from, to)
			}
		case r < 330:
			w.deliver()
		case r < 345:
			if len(w.queue) > 0 {
				k := w.rng.Intn(len(w.queue))
				w.note("lose message to %s", w.ids[w.queue[k].to])
				w.queue = append(w.queue[:k], w.queue[k+1:]...)
			}
		case r < 350:
			w.compact(w.rng.Intn(n))
		case r < 351:
			w.restart(w.rng.Intn(n))
		case r < 354:
			if !w.jumped && w.rng.Intn(2) == 0 {
				w.jump()
			}
		case r < 357:
			w.checkReplica(w.rng.Intn(n), "at random")
		}
	}
	for k := w.rng.Intn(4); k > 0; k-- {
		w.deliver()
	}
	w.endRound()
	return len(w.seqs)
}

// localOp makes one op of sequence q at replica i and checks it against the
// model's prediction.
func (w *modelWorld) localOp(i int, q *modelSeq) {
	t := q.typ
	if t == "" {
		t = []Type{TypeLWW, TypeORSet, TypeCounter, TypeMVReg}[w.rng.Intn(4)]
	}
	// The writing kind, or 3 times in 10 the removing one.
	kinds := map[Type][2]Kind{
		TypeLWW: {KindPut, KindDelete}, TypeORSet: {KindAdd, KindRemove},
		TypeCounter: {KindCounter, KindCounter}, TypeMVReg: {KindMVPut, KindMVDelete},
	}[t]
	kind := kinds[0]
	if w.rng.Intn(10) < 3 {
		kind = kinds[1]
	}
	key := q.keys[w.rng.Intn(len(q.keys))]
	var value []byte
	if kind == KindPut || kind == KindMVPut {
		if w.rng.Intn(8) > 0 {
			value = []byte(fmt.Sprintf("%s.%d", w.ids[i], w.rng.Intn(100)))
		}
	}
	amount := int64(w.rng.Intn(11) - 5)

	id := w.ids[i]
	m := w.state(i)
	want := Op{Dot: Dot{id, w.vv[i][id] + 1}, Type: t, Collection: q.coll, Key: key, Kind: kind, Value: value}
	want.Observed = m.observedAt(kind, q.coll, key)
	if kind == KindCounter {
		want.P, want.N = m.counterTotals(q.coll, key, id)
		if amount >= 0 {
			want.P += uint64(amount)
		} else {
			want.N += uint64(-amount)
		}
	}
	mismatch := m.colls[q.coll] != 0 && m.colls[q.coll]&typeBit(t) == 0

	s := w.st[i]
	var (
		d   Delta
		err error
	)
	switch kind {
	case KindPut:
		d, err = s.Put(w.ctx, q.coll, key, value)
	case KindDelete:
		d, err = s.Delete(w.ctx, q.coll, key)
	case KindAdd:
		d, err = s.SetAdd(w.ctx, q.coll, key)
	case KindRemove:
		d, err = s.SetRemove(w.ctx, q.coll, key)
	case KindCounter:
		d, err = s.CounterAdd(w.ctx, q.coll, key, amount)
	case KindMVPut:
		d, err = s.MVPut(w.ctx, q.coll, key, value)
	case KindMVDelete:
		d, err = s.MVDelete(w.ctx, q.coll, key)
	}
	w.note("%s: %s %s/%q -> %v", id, kind, q.coll, key, err)
	if mismatch {
		if !errors.Is(err, ErrTypeMismatch) {
			w.fail("%s %s on %s collection %s: err %v, model expects a type mismatch", id, kind, typesOf(m.colls[q.coll]), q.coll, err)
		}
		w.stats["type mismatch"]++
		return
	}
	if err != nil {
		w.fail("%s %s %s/%q: %v", id, kind, q.coll, key, err)
	}
	if d.Origin != id || d.From != want.Dot.Seq-1 || d.To != want.Dot.Seq || len(d.Ops) != 1 {
		w.fail("%s %s: delta %+v, want the op %d alone", id, kind, d, want.Dot.Seq)
	}
	op := d.Ops[0]
	want.HLC = op.HLC
	if !sameOp(&op, &want) {
		w.fail("%s %s: op\n  %+v\nmodel predicts\n  %+v", id, kind, op, want)
	}
	if op.HLC <= w.floor[i] || op.HLC.Millis() < w.walls[i].Now().UnixMilli() {
		w.fail("%s %s: timestamp %s not above the clock's last %s and the wall clock %s", id, kind, op.HLC, w.floor[i], w.walls[i].Now())
	}
	w.floor[i] = op.HLC
	w.ops[op.Dot] = &op
	w.rops = append(w.rops, &op)
	w.applied[i][op.Dot] = true
	w.states[i] = nil
	w.vv[i][id] = op.Dot.Seq
	w.stats["local"]++

	// Gossip: the op alone, to a random subset of the others.
	enc := mustEncode(w.t, []Delta{d})
	for j := range w.st {
		if j != i && w.rng.Intn(2) == 0 {
			w.queue = append(w.queue, modelMsg{to: j, enc: enc})
		}
	}
}

func sortedOrigins(vv VersionVector) []string {
	out := make([]string, 0, len(vv))
	for o := range vv {
		out = append(out, o)
	}
	sort.Strings(out)
	return out
}

// pull queues what replica from ships to replica to, against to's version
// vector or a stale (lowered) copy of it, in a chunk of random size.
func (w *modelWorld) pull(from, to int) {
	vv := w.vv[to].Clone()
	if w.rng.Intn(4) == 0 {
		for _, o := range sortedOrigins(vv) {
			vv[o] -= min(vv[o], uint64(w.rng.Intn(4)))
		}
	}
	maxBytes := 0
	if w.rng.Intn(2) == 0 {
		maxBytes = 100 + w.rng.Intn(1500)
	}
	ds := w.deltasSince(from, vv, maxBytes)
	w.note("pull %s -> %s against %v: %s", w.ids[from], w.ids[to], vv, describe(ds))
	if len(ds) > 0 {
		w.queue = append(w.queue, modelMsg{to: to, enc: mustEncode(w.t, ds)})
	}
}

func describe(ds []Delta) string {
	var parts []string
	for _, d := range ds {
		seqs := make([]string, len(d.Ops))
		for i, op := range d.Ops {
			seqs[i] = fmt.Sprint(op.Dot.Seq)
		}
		parts = append(parts, fmt.Sprintf("%s(%d,%d]{%s}", d.Origin, d.From, d.To, strings.Join(seqs, " ")))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// deltasSince calls DeltasSince on replica from and checks the result
// against the model: one contiguous range per origin, sorted, starting at
// peer's entry and ending at most at from's; ops in sequence order, each
// applied by from and unchanged; every op of the current round from applied
// in the range present unless from's compactions may have dropped it; an
// empty result only when peer lacks nothing from has.
func (w *modelWorld) deltasSince(from int, peer VersionVector, maxBytes int) []Delta {
	ds, err := w.st[from].DeltasSince(w.ctx, peer, maxBytes)
	if err != nil {
		w.fail("deltas since on %s: %v", w.ids[from], err)
	}
	have := w.vv[from]
	if len(ds) == 0 {
		for o, s := range have {
			if s > peer[o] {
				w.fail("%s ships nothing to a peer at %v, has %v", w.ids[from], peer, have)
			}
		}
		return nil
	}
	prev := ""
	for _, d := range ds {
		if d.Origin <= prev || d.From != peer[d.Origin] || d.To <= d.From || d.To > have[d.Origin] {
			w.fail("%s ships %s to a peer at %v, has %v", w.ids[from], describe(ds), peer, have)
		}
		prev = d.Origin
		last := d.From
		shipped := map[uint64]bool{}
		for k := range d.Ops {
			op := &d.Ops[k]
			g := w.ops[op.Dot]
			if op.Dot.Origin != d.Origin || op.Dot.Seq <= last || op.Dot.Seq > d.To || g == nil || !w.applied[from][op.Dot] || !sameOp(op, g) {
				w.fail("%s ships %s: op %+v is out of range, not applied there or changed (made as %+v)", w.ids[from], describe(ds), op, g)
			}
			last = op.Dot.Seq
			shipped[op.Dot.Seq] = true
		}
		if uint64(len(d.Ops)) < d.To-d.From {
			w.stats["range with compacted ops"]++
		}
		for _, op := range w.rops {
			if op.Dot.Origin == d.Origin && op.Dot.Seq > d.From && op.Dot.Seq <= d.To &&
				w.applied[from][op.Dot] && !w.gone[from][op.Dot] && !shipped[op.Dot.Seq] {
				w.fail("%s ships %s without op %+v, which it applied and never had reason to compact", w.ids[from], describe(ds), op)
			}
		}
	}
	return ds
}

// deliver merges a random group of the messages underway to one replica,
// in random order, sometimes with a delta twice; each delivered message may
// stay queued to arrive again later.
func (w *modelWorld) deliver() {
	if len(w.queue) == 0 {
		return
	}
	to := w.queue[w.rng.Intn(len(w.queue))].to
	var (
		ds   []Delta
		keep []modelMsg
	)
	picked := false
	for _, m := range w.queue {
		if m.to != to || (picked && w.rng.Intn(4) == 0) {
			keep = append(keep, m)
			continue
		}
		picked = true
		got, err := DecodeDeltas(m.enc)
		if err != nil {
			w.fail("decode: %v", err)
		}
		ds = append(ds, got...)
		if w.rng.Intn(8) == 0 {
			keep = append(keep, m)
		}
	}
	w.queue = keep
	w.rng.Shuffle(len(ds), func(i, j int) { ds[i], ds[j] = ds[j], ds[i] })
	if w.rng.Intn(5) == 0 {
		ds = append(ds, ds[w.rng.Intn(len(ds))])
	}
	w.merge(to, ds)
	if w.rng.Intn(8) == 0 {
		w.checkReplica(to, "after merge")
	}
}

// merge merges ds into replica j and checks the outcome against the delta
// protocol: per delta in (origin, From) order, ops the vector covers are
// skipped, the others applied, and the vector advances over the range
// unless it starts beyond it.
func (w *modelWorld) merge(j int, ds []Delta) {
	vv := w.vv[j].Clone()
	var (
		total, fresh, stale int
		advanced            bool
		maxHLC              Timestamp
	)
	applied := map[Dot]bool{}
	for _, k := range deltaOrder(ds) {
		d := &ds[k]
		gap := d.From > vv[d.Origin]
		for x := range d.Ops {
			op := &d.Ops[x]
			total++
			maxHLC = max(maxHLC, op.HLC)
			if g := w.ops[op.Dot]; g == nil || !sameOp(op, g) {
				w.fail("merge into %s: op %+v was never made (made as %+v)", w.ids[j], op, g)
			}
			if vv.Covers(op.Dot) || w.applied[j][op.Dot] || applied[op.Dot] {
				continue
			}
			applied[op.Dot] = true
			fresh++
		}
		if gap {
			stale++
			w.stats["delta beyond a gap"]++
		} else if d.To > vv[d.Origin] {
			vv[d.Origin] = d.To
			advanced = true
		}
	}
	ms, err := w.st[j].Merge(w.ctx, ds)
	w.note("merge into %s: %s -> %+v %v", w.ids[j], describe(ds), ms, err)
	if err != nil {
		w.fail("merge into %s: %v", w.ids[j], err)
	}
	if ms.Applied < fresh || ms.Applied+ms.Duplicates != total || ms.Stale != stale || ms.Advanced != advanced {
		w.fail("merge into %s: stats %+v, model: %d ops, %d new, %d stale deltas, advanced %v", w.ids[j], ms, total, fresh, stale, advanced)
	}
	for d := range applied {
		w.applied[j][d] = true
	}
	w.states[j] = nil
	w.vv[j] = vv
	w.floor[j] = max(w.floor[j], maxHLC)
	w.checkVV(j, "after merge")
	w.stats["merge"]++
}

func (w *modelWorld) checkVV(i int, stage string) {
	got, err := w.st[i].VersionVector(w.ctx)
	if err != nil {
		w.fail("%s: %v", stage, err)
	}
	if !reflect.DeepEqual(got, w.vv[i]) && !(len(got) == 0 && len(w.vv[i]) == 0) {
		w.fail("%s: %s has version vector %v, model %v", stage, w.ids[i], got, w.vv[i])
	}
}

// stable is the vector every replica has reached.
func (w *modelWorld) stable() VersionVector { return MinVersionVector(w.vv...) }

// compact compacts replica i with the real stable vector at its wall clock
// and records what the compaction may have dropped; the state must not
// change.
func (w *modelWorld) compact(i int) {
	stable, now := w.stable(), w.walls[i].Now()
	cs, err := w.st[i].Compact(w.ctx, stable, now)
	w.note("compact %s stable %v: %+v %v", w.ids[i], stable, cs, err)
	if err != nil {
		w.fail("compact %s: %v", w.ids[i], err)
	}
	cutoff := timestampFromMillis(now.Add(-w.ttl).UnixMilli())
	m := w.state(i)
	for _, op := range w.rops {
		if w.applied[i][op.Dot] && (m.superseded(op) || (m.expirable(op) && op.HLC < cutoff && stable.Covers(op.Dot))) {
			w.gone[i][op.Dot] = true
		}
	}
	w.stats["compact"]++
	if w.rng.Intn(3) == 0 {
		w.checkReplica(i, "after compaction")
	}
}

// restart closes replica i and opens it again from its file.
func (w *modelWorld) restart(i int) {
	if err := w.st[i].Close(); err != nil {
		w.fail("close %s: %v", w.ids[i], err)
	}
	w.open(i)
	w.note("restart %s", w.ids[i])
	w.checkVV(i, "after restart")
	w.stats["restart"]++
	if w.rng.Intn(2) == 0 {
		w.checkReplica(i, "after restart")
	}
}

// jump brings every replica up to date, moves time past the tombstone TTL
// and compacts every replica, so removals of the round so far expire. The
// compaction rule's premise holds: every op older than the TTL has reached
// every replica. Messages still queued are all duplicates then.
func (w *modelWorld) jump() {
	w.antiEntropy()
	w.base = w.base.Add(w.ttl + 5*time.Second)
	w.tick()
	w.note("jump past the TTL to %s", w.base)
	w.jumped = true
	for i := range w.st {
		w.compact(i)
	}
	w.stats["jump"]++
}

// antiEntropy pulls everything into replica 0 and back out to the others,
// in chunks of random size, until every version vector is the same.
func (w *modelWorld) antiEntropy() {
	maxBytes := 0
	if w.rng.Intn(2) == 0 {
		maxBytes = 200 + w.rng.Intn(2000)
	}
	sync := func(from, to int) {
		for k := 0; ; k++ {
			missing := false
			for o, s := range w.vv[from] {
				missing = missing || s > w.vv[to][o]
			}
			if !missing {
				return
			}
			if k == 1000 {
				w.fail("anti-entropy %s -> %s does not finish", w.ids[from], w.ids[to])
			}
			ds := w.deltasSince(from, w.vv[to], maxBytes)
			w.note("sync %s -> %s: %s", w.ids[from], w.ids[to], describe(ds))
			w.merge(to, ds)
		}
	}
	for i := 1; i < len(w.st); i++ {
		sync(i, 0)
	}
	for i := 1; i < len(w.st); i++ {
		sync(0, i)
	}
	for i := range w.st {
		if !reflect.DeepEqual(w.vv[i], w.vv[0]) {
			w.fail("after anti-entropy %s is at %v, %s at %v", w.ids[i], w.vv[i], w.ids[0], w.vv[0])
		}
	}
}

// endRound brings everyone up to date and checks that every replica holds
// the model of every op of the round.
func (w *modelWorld) endRound() {
	w.antiEntropy()
	full := evalOps(w.rops)
	want := full.hash(w.prefix)
	for _, a := range w.rops {
		for _, b := range w.rops {
			if a.Type == TypeLWW && b.Type == TypeLWW && a.HLC == b.HLC && a.Dot.Origin < b.Dot.Origin && a.Collection == b.Collection && a.Key == b.Key {
				w.stats["lww tie"]++
			}
		}
	}
	for i := range w.st {
		if got := w.checkReplica(i, "after anti-entropy"); got != want {
			w.fail("after anti-entropy %s holds the model of the ops it applied but not of every op made:\n%s",
				w.ids[i], diffRows(w.state(i).rows(w.prefix), full.rows(w.prefix)))
		}
	}
	i := w.rng.Intn(len(w.st))
	w.checkReads(i, full)
	if w.rng.Intn(3) == 0 {
		got, err := w.st[i].Collections(w.ctx)
		if err != nil {
			w.fail("collections: %v", err)
		}
		var mine []CollectionInfo
		for _, c := range got {
			if strings.HasPrefix(c.Name, w.prefix) {
				mine = append(mine, c)
			}
		}
		if wantc := full.collections(w.prefix); !reflect.DeepEqual(mine, wantc) {
			w.fail("%s collections %+v, model %+v", w.ids[i], mine, wantc)
		}
	}
	// Old messages stay underway into the next round (all duplicates by
	// now), a few of them.
	if len(w.queue) > 8 {
		w.rng.Shuffle(len(w.queue), func(a, b int) { w.queue[a], w.queue[b] = w.queue[b], w.queue[a] })
		w.queue = w.queue[:8]
	}
}

func (w *modelWorld) hash(i int) string {
	h, err := w.st[i].StateHashPrefix(w.ctx, w.prefix)
	if err != nil {
		w.fail("state hash of %s: %v", w.ids[i], err)
	}
	return h
}

// checkReplica checks that replica i holds the model of the ops it applied
// and returns its state hash.
func (w *modelWorld) checkReplica(i int, stage string) string {
	m := w.state(i)
	got := w.hash(i)
	if got != m.hash(w.prefix) {
		w.fail("%s: %s differs from the model of the ops it applied (- store, + model):\n%s",
			stage, w.ids[i], diffStore(w.ctx, w.st[i], m, w.prefix))
	}
	w.stats["check"]++
	return got
}

// storeRows renders the state rows of s's collections starting with prefix
// like refState.rows, read straight from its tables.
func storeRows(ctx context.Context, s *Store, prefix string) ([]string, error) {
	var out []string
	q := func(query string, format func(scan func(...any) error) (coll, line string)) error {
		rows, err := s.db.QueryContext(ctx, query)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			if coll, line := format(rows.Scan); strings.HasPrefix(coll, prefix) {
				out = append(out, line)
			}
		}
		return rows.Err()
	}
	err := errors.Join(
		q(`SELECT coll, key, hlc, origin, value FROM lww WHERE deleted = 0 ORDER BY coll, key`, func(scan func(...any) error) (string, string) {
			var (
				coll, key, origin string
				hlc               int64
				value             []byte
			)
			scan(&coll, &key, &hlc, &origin, &value)
			return coll, fmt.Sprintf("lww %q %q hlc=%d origin=%s value=%q", coll, key, hlc, origin, value)
		}),
		q(`SELECT coll, elem, origin, seq FROM orset ORDER BY coll, elem, origin, seq`, func(scan func(...any) error) (string, string) {
			var (
				coll, elem, origin string
				seq                int64
			)
			scan(&coll, &elem, &origin, &seq)
			return coll, fmt.Sprintf("orset %q %q tag=%s:%d", coll, elem, origin, seq)
		}),
		q(`SELECT coll, key, origin, p, n FROM counter ORDER BY coll, key, origin`, func(scan func(...any) error) (string, string) {
			var (
				coll, key, origin string
				p, n              int64
			)
			scan(&coll, &key, &origin, &p, &n)
			return coll, fmt.Sprintf("counter %q %q origin=%s p=%d n=%d", coll, key, origin, p, n)
		}),
		q(`SELECT coll, key, origin, seq, hlc, value FROM mvreg ORDER BY coll, key, origin, seq`, func(scan func(...any) error) (string, string) {
			var (
				coll, key, origin string
				seq, hlc          int64
				value             []byte
			)
			scan(&coll, &key, &origin, &seq, &hlc, &value)
			return coll, fmt.Sprintf("mvreg %q %q dot=%s:%d hlc=%d value=%q", coll, key, origin, seq, hlc, value)
		}),
	)
	return out, err
}

// diffStore lists the rows of s's collections starting with prefix that
// only s holds (-) and those only m holds (+).
func diffStore(ctx context.Context, s *Store, m *refState, prefix string) string {
	rows, err := storeRows(ctx, s, prefix)
	if err != nil {
		return fmt.Sprintf("  (reading the store: %v)", err)
	}
	return diffRows(rows, m.rows(prefix))
}

// diffRows lists the rows only in a (-) and only in b (+).
func diffRows(a, b []string) string {
	in := func(xs []string) map[string]bool {
		m := map[string]bool{}
		for _, x := range xs {
			m[x] = true
		}
		return m
	}
	ia, ib := in(a), in(b)
	var out []string
	for _, x := range a {
		if !ib[x] {
			out = append(out, "- "+x)
		}
	}
	for _, x := range b {
		if !ia[x] {
			out = append(out, "+ "+x)
		}
	}
	if len(out) == 0 {
		return "  (same rows; the hashes differ in encoding)"
	}
	return "  " + strings.Join(out, "\n  ")
}

// checkReads compares replica i's read API with the model m for every key
// the round touched: Get and List, SetContains and SetMembers,
// CounterValue, MVGet (newest first, then by dot).
func (w *modelWorld) checkReads(i int, m *refState) {
	s := w.st[i]
	keys := map[refKey]typeSet{}
	colls := map[refKey]bool{} // (coll, type) as (coll, key)
	for _, op := range w.rops {
		keys[refKey{op.Collection, op.Key}] |= typeBit(op.Type)
		colls[refKey{op.Collection, string(op.Type)}] = true
	}
	for k, types := range keys {
		if types&typeBit(TypeLWW) != 0 {
			e, ok, err := s.Get(w.ctx, k.coll, k.key)
			win := m.lww[k]
			if err != nil || ok != (win != nil && win.Kind == KindPut) ||
				(ok && (e.Key != k.key || !bytes.Equal(e.Value, win.Value) || e.HLC != win.HLC || e.Origin != win.Dot.Origin)) {
				w.fail("%s: Get %v = %+v %v %v, model %+v", w.ids[i], k, e, ok, err, win)
			}
		}
		if types&typeBit(TypeORSet) != 0 {
			ok, err := s.SetContains(w.ctx, k.coll, k.key)
			if err != nil || ok != (len(m.tags[k]) > 0) {
				w.fail("%s: SetContains %v = %v %v, model tags %v", w.ids[i], k, ok, err, m.tags[k])
			}
		}
		if types&typeBit(TypeCounter) != 0 {
			var want int64
			for ok, op := range m.counters {
				if ok.coll == k.coll && ok.key == k.key {
					want += int64(op.P) - int64(op.N)
				}
			}
			got, err := s.CounterValue(w.ctx, k.coll, k.key)
			if err != nil || got != want {
				w.fail("%s: CounterValue %v = %d %v, model %d", w.ids[i], k, got, err, want)
			}
		}
		if types&typeBit(TypeMVReg) != 0 {
			live := append([]*Op(nil), m.mv[k]...)
			sort.Slice(live, func(a, b int) bool {
				if live[a].HLC != live[b].HLC {
					return live[a].HLC > live[b].HLC
				}
				return dotLess(live[a].Dot, live[b].Dot)
			})
			got, err := s.MVGet(w.ctx, k.coll, k.key)
			ok := err == nil && len(got) == len(live)
			for x := 0; ok && x < len(got); x++ {
				ok = got[x] != nil && bytes.Equal(got[x], live[x].Value)
			}
			if !ok {
				var want [][]byte
				for _, op := range live {
					want = append(want, op.Value)
				}
				w.fail("%s: MVGet %v = %q %v, model %q", w.ids[i], k, got, err, want)
			}
		}
	}
	for c := range colls {
		switch Type(c.key) {
		case TypeLWW:
			var want []string
			for _, k := range sortedKeys(m.lww, c.coll) {
				if k.coll == c.coll && m.lww[k].Kind == KindPut {
					want = append(want, k.key)
				}
			}
			es, err := s.List(w.ctx, c.coll)
			var got []string
			for _, e := range es {
				got = append(got, e.Key)
			}
			if err != nil || !reflect.DeepEqual(got, want) {
				w.fail("%s: List %s = %q %v, model %q", w.ids[i], c.coll, got, err, want)
			}
		case TypeORSet:
			var want []string
			for _, k := range sortedKeys(m.tags, c.coll) {
				if k.coll == c.coll && len(m.tags[k]) > 0 {
					want = append(want, k.key)
				}
			}
			got, err := s.SetMembers(w.ctx, c.coll)
			if err != nil || !reflect.DeepEqual(got, want) {
				w.fail("%s: SetMembers %s = %q %v, model %q", w.ids[i], c.coll, got, err, want)
			}
		}
	}
}
