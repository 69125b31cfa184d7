package cpbench

import (
	"cmp"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// BenchmarkIngest compares telemetry ingest (batches of 1,000 readings)
// through the store and through the whole HTTPS API with the baseline of
// plain SQLite inserts of the same rows. Each iteration is one batch; the
// readings/s metric is the figure to compare.
func BenchmarkIngest(b *testing.B) {
	const size = 1000
	start := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	report := func(b *testing.B) {
		b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "readings/s")
	}
	b.Run("plain-sqlite", func(b *testing.B) {
		p, err := openPlainSQLite(filepath.Join(b.TempDir(), "plain.db"), benchSync)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		batches := benchBatches(b.N, size, 20, start)
		ctx := context.Background()
		b.ResetTimer()
		for i := range b.N {
			if err := p.insert(ctx, "ag_bench", batches[i]); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
	b.Run("store", func(b *testing.B) {
		st, err := controlplane.OpenSQLite(filepath.Join(b.TempDir(), "store.db"), controlplane.SQLiteOptions{Synchronous: benchSync})
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		batches := benchBatches(b.N, size, 20, start)
		ctx := context.Background()
		b.ResetTimer()
		for i := range b.N {
			if _, err := st.IngestTelemetry(ctx, "ag_bench", batches[i], start); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
	b.Run("https", func(b *testing.B) {
		dir := b.TempDir()
		srv, err := controlplane.New(controlplane.Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler), SQLite: controlplane.SQLiteOptions{Synchronous: benchSync}})
		if err != nil {
			b.Fatal(err)
		}
		defer srv.Close()
		if err := srv.Start(); err != nil {
			b.Fatal(err)
		}
		admin, err := srv.AdminClient(0)
		if err != nil {
			b.Fatal(err)
		}
		cert := enrollAgent(b, admin, "bench")
		agent, err := cpapi.NewClient(cpapi.ClientConfig{URL: srv.URL(), CAPEM: srv.CAPEM(), Certificate: &cert})
		if err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		batches := benchBatches(b.N, size, 20, now.Add(-time.Duration(b.N*size/20+1)*time.Second))
		encoded := make([][]byte, b.N)
		for i := range batches {
			if encoded[i], err = cpapi.EncodeTelemetryBatch(batches[i]); err != nil {
				b.Fatal(err)
			}
		}
		ctx := context.Background()
		b.ResetTimer()
		for i := range b.N {
			res, err := agent.UploadTelemetryEncoded(ctx, encoded[i])
			if err != nil || res.Accepted != size {
				b.Fatalf("upload: %+v %v", res, err)
			}
		}
		report(b)
	})
}

// benchSync is the SQLite synchronous setting of the ingest benchmarks;
// set EDGEFLEET_BENCH_SYNC=NORMAL to measure without an fsync per commit.
var benchSync = cmp.Or(os.Getenv("EDGEFLEET_BENCH_SYNC"), "FULL")
