package crdt

import (
	"context"
	"fmt"
	"reflect"
	"testing"
)

// TestCounterAndMVList checks the listings against the per-key reads:
// counters from two replicas sum per key, registers written concurrently
// list every sibling in MVGet's order, and cleared registers are absent.
func TestCounterAndMVList(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	wall := newFakeWall()
	a := openTest(t, dir, "a", wall)
	b := openTest(t, dir, "b", wall)
	md := must[Delta](t)

	md(a.CounterAdd(ctx, "hits", "x", 5))
	md(a.CounterAdd(ctx, "hits", "y", 2))
	md(a.CounterAdd(ctx, "hits", "y", -2))
	md(b.CounterAdd(ctx, "hits", "x", -1))
	md(b.CounterAdd(ctx, "hits", "z", 7))
	md(b.CounterAdd(ctx, "other", "x", 100))

	md(a.MVPut(ctx, "conf", "mode", []byte(`"eco"`)))
	md(b.MVPut(ctx, "conf", "mode", []byte(`"fast"`)))
	md(a.MVPut(ctx, "conf", "gone", []byte("1")))
	md(a.MVDelete(ctx, "conf", "gone"))
	md(b.MVPut(ctx, "conf", "a-first", nil))

	ds, err := b.DeltasSince(ctx, nil, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Merge(ctx, ds); err != nil {
		t.Fatal(err)
	}

	counters, err := a.CounterList(ctx, "hits")
	if err != nil {
		t.Fatal(err)
	}
	want := []CounterEntry{{"x", 4}, {"y", 0}, {"z", 7}}
	if !reflect.DeepEqual(counters, want) {
		t.Fatalf("counters = %+v, want %+v", counters, want)
	}
	for _, c := range counters {
		if v, err := a.CounterValue(ctx, "hits", c.Key); err != nil || v != c.Value {
			t.Fatalf("CounterValue(%s) = %d, %v; listed %d", c.Key, v, err, c.Value)
		}
	}

	regs, err := a.MVList(ctx, "conf")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, r := range regs {
		keys = append(keys, r.Key)
		got, err := a.MVGet(ctx, "conf", r.Key)
		if err != nil || !reflect.DeepEqual(got, r.Values) {
			t.Fatalf("MVGet(%s) = %q, %v; listed %q", r.Key, got, err, r.Values)
		}
	}
	if fmt.Sprint(keys) != "[a-first mode]" {
		t.Fatalf("registers = %v", keys)
	}
	if len(regs[1].Values) != 2 || len(regs[0].Values) != 1 || len(regs[0].Values[0]) != 0 || regs[0].Values[0] == nil {
		t.Fatalf("values: %q", regs)
	}

	if l, err := a.CounterList(ctx, "none"); err != nil || l != nil {
		t.Fatalf("empty counter list = %v, %v", l, err)
	}
	if l, err := a.MVList(ctx, "none"); err != nil || l != nil {
		t.Fatalf("empty mv list = %v, %v", l, err)
	}
}
