package crdt

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
	"time"
)

// cluster is a set of replicas driven by a seeded random source, with an
// in-memory "network" of encoded messages that may be reordered,
// duplicated and lost.
type cluster struct {
	t     *testing.T
	rng   *rand.Rand
	dir   string
	base  time.Time
	skew  []time.Duration
	walls []*fakeWall
	ids   []string
	st    []*Store
	ops   []Op // every op made anywhere, for the model
	queue []message
	ttl   time.Duration
	// noCompact leaves compaction out of random runs: then the state after
	// any partial delivery is exactly the model of the ops delivered.
	noCompact bool
}

type message struct {
	to  int
	enc []byte
}

func newCluster(t *testing.T, rng *rand.Rand, n int) *cluster {
	c := &cluster{t: t, rng: rng, dir: t.TempDir(), base: time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC), ttl: time.Hour}
	for i := 0; i < n; i++ {
		c.ids = append(c.ids, fmt.Sprintf("r%d", i))
		c.skew = append(c.skew, time.Duration(rng.Intn(4000)-2000)*time.Millisecond)
		w := &fakeWall{}
		c.walls = append(c.walls, w)
		c.st = append(c.st, nil)
		c.open(i)
	}
	c.tick()
	t.Cleanup(func() {
		for _, s := range c.st {
			s.Close()
		}
	})
	return c
}

func (c *cluster) open(i int) {
	s, err := Open(filepath.Join(c.dir, c.ids[i]+".db"), Options{ReplicaID: c.ids[i], Wall: c.walls[i].Now, TombstoneTTL: c.ttl})
	if err != nil {
		c.t.Fatalf("open %s: %v", c.ids[i], err)
	}
	c.st[i] = s
}

// tick advances time by 0..3 ms; each replica sees it through its skew.
func (c *cluster) tick() {
	c.base = c.base.Add(time.Duration(c.rng.Intn(4)) * time.Millisecond)
	for i, w := range c.walls {
		w.Set(c.base.Add(c.skew[i]))
	}
}

var (
	propColls = map[Type][]string{
		TypeLWW:     {"lww0", "lww1", "shared"},
		TypeORSet:   {"set0", "shared"},
		TypeCounter: {"cnt0", "shared"},
		TypeMVReg:   {"mv0", "shared"},
	}
	propKeys = []string{"a", "b", "c", ""}
)

// localOp makes one random local op on replica i.
func (c *cluster) localOp(i int) {
	ctx := context.Background()
	s := c.st[i]
	kinds := []Kind{KindPut, KindPut, KindDelete, KindAdd, KindAdd, KindRemove, KindCounter, KindMVPut, KindMVPut, KindMVDelete}
	kind := kinds[c.rng.Intn(len(kinds))]
	colls := propColls[kind.Type()]
	coll := colls[c.rng.Intn(len(colls))]
	key := propKeys[c.rng.Intn(len(propKeys))]
	value := []byte(fmt.Sprintf("%s-%d", c.ids[i], c.rng.Intn(1000)))
	var (
		d   Delta
		err error
	)
	switch kind {
	case KindPut:
		d, err = s.Put(ctx, coll, key, value)
	case KindDelete:
		d, err = s.Delete(ctx, coll, key)
	case KindAdd:
		d, err = s.SetAdd(ctx, coll, key)
	case KindRemove:
		d, err = s.SetRemove(ctx, coll, key)
	case KindCounter:
		d, err = s.CounterAdd(ctx, coll, key, int64(c.rng.Intn(21)-10))
	case KindMVPut:
		d, err = s.MVPut(ctx, coll, key, value)
	case KindMVDelete:
		d, err = s.MVDelete(ctx, coll, key)
	}
	if errors.Is(err, ErrTypeMismatch) {
		return
	}
	if err != nil {
		c.t.Fatalf("%s %s %s/%q: %v", c.ids[i], kind, coll, key, err)
	}
	c.ops = append(c.ops, d.Ops...)
	// Broadcast the op to a random subset, like gossip does.
	enc := mustEncode(c.t, []Delta{d})
	for j := range c.st {
		if j != i && c.rng.Intn(3) == 0 {
			c.queue = append(c.queue, message{to: j, enc: enc})
		}
	}
}

func mustEncode(t testing.TB, ds []Delta) []byte {
	t.Helper()
	b, err := EncodeDeltas(ds)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	return b
}

// pull queues the deltas replica `from` has and `to` lacks, computed
// against to's current (or an older, perturbed) version vector.
func (c *cluster) pull(from, to int) {
	ctx := context.Background()
	vv, err := c.st[to].VersionVector(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	if c.rng.Intn(4) == 0 { // a stale view of the receiver: lower some entries
		for o, s := range vv {
			vv[o] = s / uint64(1+c.rng.Intn(3))
		}
	}
	ds, err := c.st[from].DeltasSince(ctx, vv, 200+c.rng.Intn(2000))
	if err != nil {
		c.t.Fatalf("deltas since %s -> %s: %v", c.ids[from], c.ids[to], err)
	}
	if len(ds) > 0 {
		c.queue = append(c.queue, message{to: to, enc: mustEncode(c.t, ds)})
	}
}

// deliver takes a random message off the queue: merges it, merges and keeps
// it (duplication), or drops it (loss).
func (c *cluster) deliver() {
	if len(c.queue) == 0 {
		return
	}
	k := c.rng.Intn(len(c.queue))
	m := c.queue[k]
	switch r := c.rng.Intn(10); {
	case r == 0: // lost
	case r == 1: // duplicated: delivered now and left queued
		c.merge(m)
		return
	default:
		c.merge(m)
	}
	c.queue[k] = c.queue[len(c.queue)-1]
	c.queue = c.queue[:len(c.queue)-1]
}

func (c *cluster) merge(m message) {
	ds, err := DecodeDeltas(m.enc)
	if err != nil {
		c.t.Fatalf("decode: %v", err)
	}
	if _, err := c.st[m.to].Merge(context.Background(), ds); err != nil {
		c.t.Fatalf("merge into %s: %v", c.ids[m.to], err)
	}
}

// antiEntropy pulls between every ordered pair until nothing is missing.
func (c *cluster) antiEntropy() {
	ctx := context.Background()
	for round := 0; round < 1000; round++ {
		moved := false
		for to := range c.st {
			for from := range c.st {
				if from == to {
					continue
				}
				vv, err := c.st[to].VersionVector(ctx)
				if err != nil {
					c.t.Fatal(err)
				}
				ds, err := c.st[from].DeltasSince(ctx, vv, 4096)
				if err != nil {
					c.t.Fatal(err)
				}
				if len(ds) == 0 {
					continue
				}
				moved = true
				c.merge(message{to: to, enc: mustEncode(c.t, ds)})
			}
		}
		if !moved {
			return
		}
	}
	c.t.Fatal("anti-entropy did not quiesce")
}

func (c *cluster) hashes() []string {
	var out []string
	for _, s := range c.st {
		h, err := s.StateHash(context.Background())
		if err != nil {
			c.t.Fatal(err)
		}
		out = append(out, h)
	}
	return out
}

func (c *cluster) assertConverged(stage string) {
	c.t.Helper()
	ctx := context.Background()
	hs := c.hashes()
	vv0, _ := c.st[0].VersionVector(ctx)
	for i := range hs {
		if hs[i] != hs[0] {
			c.t.Fatalf("%s: %s hash %s != %s hash %s", stage, c.ids[i], hs[i], c.ids[0], hs[0])
		}
		vv, _ := c.st[i].VersionVector(ctx)
		if !reflect.DeepEqual(vv, vv0) {
			c.t.Fatalf("%s: %s vv %v != %s vv %v", stage, c.ids[i], vv, c.ids[0], vv0)
		}
	}
	for i := range c.st {
		checkModel(c.t, c.st[i], c.ops)
	}
}

func (c *cluster) stableVV() VersionVector {
	var vvs []VersionVector
	for _, s := range c.st {
		vv, err := s.VersionVector(context.Background())
		if err != nil {
			c.t.Fatal(err)
		}
		vvs = append(vvs, vv)
	}
	return MinVersionVector(vvs...)
}

// run drives steps random actions.
func (c *cluster) run(steps int) {
	for step := 0; step < steps; step++ {
		c.tick()
		switch r := c.rng.Intn(100); {
		case r < 40:
			c.localOp(c.rng.Intn(len(c.st)))
		case r < 55:
			from, to := c.rng.Intn(len(c.st)), c.rng.Intn(len(c.st))
			if from != to {
				c.pull(from, to)
			}
		case r < 95:
			c.deliver()
		case r < 98 && c.noCompact:
		case r < 98:
			// Compaction of superseded history only (nothing is stable).
			i := c.rng.Intn(len(c.st))
			if _, err := c.st[i].Compact(context.Background(), VersionVector{}, c.walls[i].Now()); err != nil {
				c.t.Fatalf("compact: %v", err)
			}
		default:
			i := c.rng.Intn(len(c.st))
			if err := c.st[i].Close(); err != nil {
				c.t.Fatal(err)
			}
			c.open(i)
		}
	}
}

func TestPropertyConvergence(t *testing.T) {
	cases := []struct {
		seed     int64
		replicas int
	}{{1, 3}, {2, 5}, {3, 7}, {4, 4}}
	if testing.Short() {
		cases = cases[:2]
	}
	// CRDT_PROPERTY_SEEDS=N adds N more seeds (for soak runs).
	if n, err := strconv.Atoi(os.Getenv("CRDT_PROPERTY_SEEDS")); err == nil {
		for i := 0; i < n; i++ {
			cases = append(cases, struct {
				seed     int64
				replicas int
			}{int64(100 + i), 3 + i%5})
		}
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("seed%d_replicas%d", tc.seed, tc.replicas), func(t *testing.T) {
			rng := rand.New(rand.NewSource(tc.seed))
			c := newCluster(t, rng, tc.replicas)
			c.run(500)
			c.antiEntropy()
			c.assertConverged("after random history")

			// Full compaction with a real stable vector, long after the
			// history: state must not change and stay convergent.
			before := c.hashes()
			late := c.base.Add(2 * c.ttl)
			stable := c.stableVV()
			for i, s := range c.st {
				c.walls[i].Set(late.Add(c.skew[i]))
				if _, err := s.Compact(context.Background(), stable, late); err != nil {
					t.Fatal(err)
				}
			}
			if after := c.hashes(); !reflect.DeepEqual(before, after) {
				t.Fatalf("compaction changed state: %v -> %v", before, after)
			}
			c.base = late
			c.run(150)
			c.antiEntropy()
			c.assertConverged("after compaction and more history")
		})
	}
}

// checkModel compares s's state with the reference model of ops (each dot
// counted once), by state hash.
func checkModel(t *testing.T, s *Store, ops []Op) {
	t.Helper()
	ctx := context.Background()
	seen := map[Dot]bool{}
	var set []*Op
	for i := range ops {
		if !seen[ops[i].Dot] {
			seen[ops[i].Dot] = true
			set = append(set, &ops[i])
		}
	}
	m := evalOps(set)
	got, err := s.StateHash(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got != m.hash("") {
		t.Fatalf("%s differs from the model of %d ops (- store, + model):\n%s", s.ReplicaID(), len(set), diffStore(ctx, s, m, ""))
	}
}
