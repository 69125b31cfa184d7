package bench

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"
)

func TestRunCryptoTiny(t *testing.T) {
	var seed [32]byte
	rep, err := RunCrypto(context.Background(), CryptoOptions{
		Sizes:       []int{100, 2 << 10},
		Rounds:      2,
		MinTime:     time.Millisecond,
		HPKEPayload: 32,
		Rand:        rand.NewChaCha8(seed),
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Suite != "crypto" || rep.Machine["goarch"] == "" {
		t.Fatalf("report header %+v", rep)
	}
	want := []struct{ name, unit string }{
		{"envelope_seal_100B", "MB/s"}, {"envelope_open_100B", "MB/s"},
		{"envelope_seal_2KiB", "MB/s"}, {"envelope_open_2KiB", "MB/s"},
		{"hpke_seal", "ops/s"}, {"hpke_open", "ops/s"},
		{"xwing_keygen", "ops/s"}, {"xwing_encap", "ops/s"}, {"xwing_decap", "ops/s"},
		{"mldsa65_sign", "ops/s"}, {"mldsa65_verify", "ops/s"},
	}
	if len(rep.Results) != len(want) {
		t.Fatalf("got %d results, want %d: %+v", len(rep.Results), len(want), rep.Results)
	}
	for i, w := range want {
		r := rep.Results[i]
		if r.Name != w.name || r.Unit != w.unit {
			t.Errorf("result %d = %s (%s), want %s (%s)", i, r.Name, r.Unit, w.name, w.unit)
		}
		if r.Value <= 0 || r.Baseline == nil || r.Baseline.Value <= 0 || r.Baseline.Name == "" {
			t.Errorf("%s: missing figures: %+v", r.Name, r)
			continue
		}
		if got := r.Value / r.Baseline.Value; got != r.Ratio {
			t.Errorf("%s: ratio %v, want %v", r.Name, r.Ratio, got)
		}
	}
}

func TestRunCryptoOptions(t *testing.T) {
	if _, err := RunCrypto(context.Background(), CryptoOptions{Rounds: -1}); err == nil {
		t.Fatal("negative rounds accepted")
	}
	if _, err := RunCrypto(context.Background(), CryptoOptions{Sizes: []int{0}}); err == nil {
		t.Fatal("zero size accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := RunCrypto(ctx, CryptoOptions{Sizes: []int{64}, Rounds: 1, MinTime: time.Hour}); err == nil {
		t.Fatal("cancelled context ignored")
	}
}

func TestSizeLabel(t *testing.T) {
	for n, want := range map[int]string{1 << 10: "1KiB", 64 << 10: "64KiB", 1 << 20: "1MiB", 100: "100B", 1500: "1500B", 3 << 20: "3MiB"} {
		if got := sizeLabel(n); got != want {
			t.Errorf("sizeLabel(%d) = %s, want %s", n, got, want)
		}
	}
}

// BenchmarkRunCrypto runs the full crypto suite once with default options
// and reports each ratio (ours / baseline) as a metric:
//
//	go test -run='^$' -bench=RunCrypto -benchtime=1x ./bench/
func BenchmarkRunCrypto(b *testing.B) {
	for b.Loop() {
		rep, err := RunCrypto(context.Background(), CryptoOptions{})
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range rep.Results {
			b.ReportMetric(r.Ratio, r.Name+"_ratio")
			b.Logf("%-20s %12.1f %-5s  baseline %-24s %12.1f  ratio %.3f", r.Name, r.Value, r.Unit, r.Baseline.Name, r.Baseline.Value, r.Ratio)
		}
	}
}
