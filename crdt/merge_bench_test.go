package crdt

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

// BenchmarkMerge measures Merge of remote LWW puts, 100 ops per call, into
// a store that lacks them.
func BenchmarkMerge(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	src, err := Open(filepath.Join(dir, "src.db"), Options{ReplicaID: "src"})
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	const batch = 100
	value := make([]byte, benchValueLen)
	var ops []Op
	for i := 0; i < 20*batch; i++ {
		d, err := src.Put(ctx, benchColl, benchKey(i), value)
		if err != nil {
			b.Fatal(err)
		}
		ops = append(ops, d.Ops...)
	}
	b.ResetTimer()
	n := 0
	for i := 0; b.Loop(); i++ {
		if i%20 == 0 {
			b.StopTimer()
			dst, err := Open(filepath.Join(dir, fmt.Sprintf("dst%d.db", i)), Options{ReplicaID: "dst"})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { dst.Close() })
			benchDst = dst
			b.StartTimer()
		}
		k := i % 20
		d := Delta{Origin: "src", From: uint64(k * batch), To: uint64((k + 1) * batch), Ops: ops[k*batch : (k+1)*batch]}
		st, err := benchDst.Merge(ctx, []Delta{d})
		if err != nil {
			b.Fatal(err)
		}
		n += st.Applied
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "ops/s")
}

var benchDst *Store
