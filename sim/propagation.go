package sim

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// The propagation phase measures how fast one fresh write spreads: single
// writes, one at a time, each on the next agent in turn; for each, the
// seconds from the write until every agent holds it. It runs on the healed
// fleet with nothing else being written but the devices' registry records.

// collPropagation holds the propagation phase's writes (lww, as every
// collection not configured otherwise). It shares simPrefix, so the state
// hashes and the oracle include it.
const collPropagation = "sim.propagation"

// propagationPoll is how often every agent is asked whether it holds the
// write yet: the resolution of the figure.
const propagationPoll = 10 * time.Millisecond

// Quantiles summarises a set of durations in seconds.
type Quantiles struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// propagation makes count single writes on rotating agents and returns,
// per write, the seconds until every agent held it.
func (f *Fleet) propagation(ctx context.Context, count int) ([]float64, error) {
	out := make([]float64, 0, count)
	for i := 0; i < count; i++ {
		origin := f.nodes[i%len(f.nodes)]
		key := fmt.Sprintf("w-%04d", i)
		start := time.Now()
		if err := origin.ag.Put(ctx, collPropagation, key, []byte(fmt.Sprintf(`{"by":%q}`, origin.name))); err != nil {
			return out, fmt.Errorf("sim: propagation write on %s: %w", origin.name, err)
		}
		took, err := f.waitEveryoneHolds(ctx, key, start)
		if err != nil {
			return out, err
		}
		out = append(out, took)
	}
	return out, nil
}

// waitEveryoneHolds polls every agent until each holds key in
// collPropagation and returns the seconds from since until the last did.
func (f *Fleet) waitEveryoneHolds(ctx context.Context, key string, since time.Time) (float64, error) {
	held := make([]bool, len(f.nodes))
	missing := len(f.nodes)
	deadline := since.Add(f.opts.Timeout)
	for {
		for i, n := range f.nodes {
			if held[i] {
				continue
			}
			_, ok, err := n.ag.Store().Get(ctx, collPropagation, key)
			if err != nil {
				return 0, fmt.Errorf("sim: propagation read on %s: %w", n.name, err)
			}
			if ok {
				held[i] = true
				missing--
			}
		}
		if missing == 0 {
			return time.Since(since).Seconds(), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("sim: write %s reached %d of %d agents within %s", key, len(f.nodes)-missing, len(f.nodes), f.opts.Timeout)
		}
		if err := sleep(ctx, propagationPoll); err != nil {
			return 0, err
		}
	}
}

// quantiles summarises xs with its 95th percentile beside percentiles'.
func quantiles(xs []float64) Quantiles {
	p := percentiles(xs)
	q := Quantiles{P50: p.P50, P99: p.P99, Max: p.Max}
	if len(xs) > 0 {
		s := append([]float64(nil), xs...)
		sort.Float64s(s)
		i := int(0.95*float64(len(s))+0.999999) - 1
		q.P95 = round(s[max(0, min(i, len(s)-1))])
	}
	return q
}
