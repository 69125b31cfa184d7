package ingest

import (
	"context"
	"fmt"
	"slices"
	"testing"
)

// TestSeriesPage walks a series in pages: every numeric reading of the
// device's metric in the range, once, in time order; text readings,
// other metrics and other devices are not part of it.
func TestSeriesPage(t *testing.T) {
	clk := newFakeClock()
	s := openTestStore(t, StoreConfig{Clock: clk})
	base := testNow.Unix() - 1000
	var envs []*envelope
	for i := 0; i < 25; i++ {
		envs = append(envs, env(t, clk, "devices/d1/telemetry", fmt.Sprintf(`{"ts":%d,"temp":%d,"on":true}`, base+int64(i), i)))
	}
	envs = append(envs, env(t, clk, "devices/d2/telemetry", fmt.Sprintf(`{"ts":%d,"temp":99}`, base+3)),
		env(t, clk, "devices/d1/telemetry", fmt.Sprintf(`[{"n":"temp","vs":"text","t":%d}]`, base+100)))
	mustCommit(t, s, envs...)
	ctx := context.Background()
	from, to := (base+5)*1e6-1, (base+20)*1e6 // (base+5 included, base+20 excluded)
	var got []float64
	after := from
	for {
		page, err := s.SeriesPage(ctx, "d1", "temp", after, to, 4)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		if len(page) > 4 {
			t.Fatalf("page of %d", len(page))
		}
		for _, p := range page {
			got = append(got, p.Value)
		}
		after = page[len(page)-1].TS
	}
	var want []float64
	for i := 5; i < 20; i++ {
		want = append(want, float64(i))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("walked %v, want %v", got, want)
	}
	if page, err := s.SeriesPage(ctx, "nobody", "temp", 0, 1<<62, 0); err != nil || len(page) != 0 {
		t.Fatalf("unknown device: %v %v", page, err)
	}
	names, err := s.DeviceNames(ctx)
	if err != nil || !slices.Equal(names, []string{"d1", "d2"}) {
		t.Fatalf("devices %v %v", names, err)
	}
}
