package crdt

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestConcurrentUseAndMetrics(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	dir := t.TempDir()
	s, err := Open(filepath.Join(dir, "a.db"), Options{ReplicaID: "a", Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// A second store on the same registry is refused (duplicate metrics).
	if _, err := Open(filepath.Join(dir, "b.db"), Options{ReplicaID: "b", Registerer: reg}); err == nil {
		t.Fatal("duplicate registration accepted")
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				var err error
				switch g {
				case 0:
					_, err = s.Put(ctx, "m", fmt.Sprint(i), []byte("v"))
				case 1:
					_, err = s.CounterAdd(ctx, "c", "n", 1)
				case 2:
					_, err = s.DeltasSince(ctx, VersionVector{}, 2000)
				case 3:
					_, err = s.List(ctx, "m")
					if err == nil {
						_, err = s.StateHash(ctx)
					}
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	if v, _ := s.CounterValue(ctx, "c", "n"); v != 20 {
		t.Fatalf("counter %d", v)
	}
	vv, _ := s.VersionVector(ctx)
	if vv["a"] != 40 {
		t.Fatalf("vv %v", vv)
	}
	if got := gathered(t, reg, "edgefleet_crdt_local_ops_total", "lww"); got != 20 {
		t.Fatalf("lww local ops metric %v", got)
	}
	if got := gathered(t, reg, "edgefleet_crdt_local_ops_total", "counter"); got != 20 {
		t.Fatalf("counter local ops metric %v", got)
	}
	// A rejected merge is counted by reason.
	if _, err := s.Merge(ctx, []Delta{{Origin: "x", From: 2, To: 1}}); err == nil {
		t.Fatal("invalid delta accepted")
	}
	if got := gathered(t, reg, "edgefleet_crdt_merge_rejected_total", "invalid"); got != 1 {
		t.Fatalf("rejected metric %v", got)
	}
}

// gathered returns the value of the counter name whose single label has
// value label.
func gathered(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == label {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}
