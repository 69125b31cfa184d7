package flbench

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"time"

	"github.com/edgefleet/edgefleet/bench"
	"github.com/edgefleet/edgefleet/fedlearn/strategy"
)

// FLOptions configure RunFL. Zero values take the defaults.
type FLOptions struct {
	// Clients is the number of updates per aggregation; 0 = 1,000.
	Clients int
	// Params is the model size; 0 = 10,000.
	Params int
	// Rounds of measurements, ours and baseline interleaved; medians are
	// reported. 0 = 3.
	Rounds int
	// MinTime is the least time one measurement runs (at least one
	// aggregation); 0 = 200ms.
	MinTime time.Duration
	// KrumMalicious is Krum's f; 0 = Clients/10.
	KrumMalicious int
	// Seed draws the updates.
	Seed uint64
	// Now is the clock; nil = time.Now.
	Now func() time.Time
}

// RunFL runs the federated-learning aggregation suite: one aggregation of
// Clients float32 deltas of Params values each, per strategy, beside a
// plain loop computing the same model in the same run:
//
//   - fedavg: strategy.FedAvg (validation, name order, float64 sums) beside
//     one weighted-sum loop over the rows without checks.
//   - fedmedian, fedtrimmedavg (β 0.2): column blocks and quickselect
//     beside gathering each column with a stride and sorting it
//     (sort.Float64s), as numpy's median and scipy's trim_mean do.
//   - krum (f = KrumMalicious): the upper triangle of the distance matrix
//     in row tiles with four accumulators, quickselect of the nearest,
//     beside Flower's loop: every ordered pair's distance with one
//     accumulator, each row sorted.
//
// Figures are updates aggregated per second (Clients / seconds per
// aggregation); Ratio is ours / baseline (higher is better). Before timing,
// each pair's outputs are compared: a baseline that computes another model
// is an error, not a result. All runs are on one goroutine.
func RunFL(ctx context.Context, opt FLOptions) (bench.Report, error) {
	if opt.Clients < 0 || opt.Params < 0 || opt.Rounds < 0 || opt.MinTime < 0 || opt.KrumMalicious < 0 {
		return bench.Report{}, fmt.Errorf("bench: fl: negative option in %+v", opt)
	}
	if opt.Clients == 0 {
		opt.Clients = 1000
	}
	if opt.Params == 0 {
		opt.Params = 10000
	}
	if opt.Rounds == 0 {
		opt.Rounds = 3
	}
	if opt.MinTime == 0 {
		opt.MinTime = 200 * time.Millisecond
	}
	if opt.KrumMalicious == 0 {
		opt.KrumMalicious = opt.Clients / 10
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	n, d := opt.Clients, opt.Params
	global, updates := flRound(n, d, opt.Seed)

	krum := strategy.Krum{Malicious: opt.KrumMalicious}
	pairs := []struct {
		name, baseName string
		ours, base     func() []float64
		tol            float64
	}{
		{"fedavg", "plain_weighted_sum", agg(strategy.FedAvg{}, global, updates), func() []float64 { return plainFedAvg(global, updates) }, 1e-12},
		{"fedmedian", "sort_columns_median", agg(strategy.FedMedian{}, global, updates), func() []float64 { return plainTrimmed(global, updates, -1) }, 0},
		{"fedtrimmedavg", "sort_columns_trim_mean", agg(strategy.FedTrimmedAvg{Beta: 0.2}, global, updates), func() []float64 { return plainTrimmed(global, updates, 0.2) }, 1e-12},
		{"krum", "all_pairs_krum", agg(krum, global, updates), func() []float64 { return plainKrum(global, updates, opt.KrumMalicious) }, 0},
	}
	rep := bench.Report{
		Suite: "fl",
		Machine: bench.Machine(fmt.Sprintf("clients=%d params=%d rounds=%d min_time=%s krum_f=%d seed=%d float32 deltas, float64 sums, one goroutine",
			n, d, opt.Rounds, opt.MinTime, opt.KrumMalicious, opt.Seed)),
	}
	for _, p := range pairs {
		if err := ctx.Err(); err != nil {
			return bench.Report{}, err
		}
		a, b := p.ours(), p.base()
		if a == nil {
			return bench.Report{}, fmt.Errorf("bench: fl: %s failed on valid updates", p.name)
		}
		for j := range a {
			if math.Abs(a[j]-b[j]) > p.tol*math.Max(1, math.Abs(b[j])) {
				return bench.Report{}, fmt.Errorf("bench: fl: %s and %s disagree at %d: %v vs %v", p.name, p.baseName, j, a[j], b[j])
			}
		}
		var ours, base []float64
		for round := 0; round < opt.Rounds; round++ {
			first, second := p.ours, p.base
			fo, so := &ours, &base
			if round%2 == 1 {
				first, second, fo, so = second, first, so, fo
			}
			for _, m := range []struct {
				op  func() []float64
				out *[]float64
			}{{first, fo}, {second, so}} {
				v, err := timeAggregations(ctx, opt.Now, opt.MinTime, m.op)
				if err != nil {
					return bench.Report{}, fmt.Errorf("bench: fl: %s round %d: %w", p.name, round, err)
				}
				*m.out = append(*m.out, v*float64(n))
			}
		}
		r := bench.Result{Name: p.name, Unit: "updates/s", Value: bench.Median(ours), Baseline: &bench.Baseline{Name: p.baseName, Value: bench.Median(base)}}
		if r.Baseline.Value > 0 {
			r.Ratio = r.Value / r.Baseline.Value
		}
		rep.Results = append(rep.Results, r)
	}
	return rep, nil
}

// flRound draws a global model and n updates of d values: Gaussian deltas
// of standard deviation 0.01, 1..500 examples each.
func flRound(n, d int, seed uint64) ([]float64, []strategy.Update) {
	rng := rand.New(rand.NewPCG(seed, 0x666c))
	updates := make([]strategy.Update, n)
	for i := range updates {
		delta := make([]float32, d)
		for j := range delta {
			delta[j] = float32(0.01 * rng.NormFloat64())
		}
		updates[i] = strategy.Update{Client: fmt.Sprintf("agent-%05d", i), Delta: delta, Examples: 1 + rng.IntN(500)}
	}
	global := make([]float64, d)
	for j := range global {
		global[j] = rng.NormFloat64()
	}
	return global, updates
}

// agg returns a function running s (nil on error).
func agg(s strategy.Strategy, global []float64, updates []strategy.Update) func() []float64 {
	return func() []float64 {
		out, err := s.Aggregate(global, updates)
		if err != nil {
			return nil
		}
		return out
	}
}

// timeAggregations runs op until minTime has passed (at least once) and
// returns aggregations per second.
func timeAggregations(ctx context.Context, now func() time.Time, minTime time.Duration, op func() []float64) (float64, error) {
	start := now()
	for k := 1; ; k++ {
		if op() == nil {
			return 0, fmt.Errorf("aggregation failed")
		}
		if el := now().Sub(start); el >= minTime {
			return float64(k) / el.Seconds(), nil
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
	}
}

// plainFedAvg is the baseline FedAvg: Σ n_i·Δ_i / Σ n_i in input order.
func plainFedAvg(global []float64, updates []strategy.Update) []float64 {
	sum := make([]float64, len(global))
	total := 0.0
	for _, u := range updates {
		w := float64(u.Examples)
		total += w
		for j, v := range u.Delta {
			sum[j] += w * float64(v)
		}
	}
	for j := range sum {
		sum[j] = global[j] + sum[j]/total
	}
	return sum
}

// plainTrimmed is the baseline median (beta < 0) or trimmed mean: each
// column gathered with a stride and sorted.
func plainTrimmed(global []float64, updates []strategy.Update, beta float64) []float64 {
	n := len(updates)
	out := make([]float64, len(global))
	col := make([]float64, n)
	for j := range global {
		for i, u := range updates {
			col[i] = float64(u.Delta[j])
		}
		sort.Float64s(col)
		var v float64
		if beta < 0 {
			v = col[n/2]
			if n%2 == 0 {
				v = (col[n/2-1] + col[n/2]) / 2
			}
		} else {
			lo := int(beta * float64(n))
			for _, x := range col[lo : n-lo] {
				v += x
			}
			v /= float64(n - 2*lo)
		}
		out[j] = global[j] + v
	}
	return out
}

// plainKrum is the baseline Krum as Flower computes it: all n² squared
// distances, each row sorted, the n−f−2 nearest others summed.
func plainKrum(global []float64, updates []strategy.Update, f int) []float64 {
	n := len(updates)
	dist := make([][]float64, n)
	for i := range dist {
		dist[i] = make([]float64, n)
		for j := range dist[i] {
			s := 0.0
			a, b := updates[i].Delta, updates[j].Delta
			for k := range a {
				d := float64(a[k]) - float64(b[k])
				s += d * d
			}
			dist[i][j] = s
		}
	}
	closest := min(max(1, n-f-2), n-1)
	best, bestScore := 0, math.Inf(1)
	row := make([]float64, n)
	for i := range dist {
		copy(row, dist[i])
		sort.Float64s(row) // row[0] is the distance to itself, 0
		s := 0.0
		for _, d := range row[1 : closest+1] {
			s += d
		}
		if s < bestScore {
			best, bestScore = i, s
		}
	}
	out := make([]float64, len(global))
	for j := range out {
		out[j] = global[j] + float64(updates[best].Delta[j])
	}
	return out
}
