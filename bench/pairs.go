package bench

import (
	"context"
	"fmt"
	"time"
)

// pair is one measured figure and its baseline. Measurements are in op/s;
// scale turns them into the reported unit.
type pair struct {
	name, baseName, unit string
	scale                float64
	ours, base           func() error
	oursVals, baseVals   []float64
}

// runPairs measures every pair for the given rounds, ours and the baseline
// back to back, alternating which goes first, so both sides of a pair see
// the same background load.
func runPairs(ctx context.Context, suite string, now func() time.Time, minTime time.Duration, rounds int, pairs []pair) error {
	for round := 0; round < rounds; round++ {
		for i := range pairs {
			p := &pairs[i]
			first, second := p.ours, p.base
			firstOut, secondOut := &p.oursVals, &p.baseVals
			if round%2 == 1 {
				first, second = second, first
				firstOut, secondOut = secondOut, firstOut
			}
			v, err := measureOps(ctx, now, minTime, first)
			if err != nil {
				return fmt.Errorf("bench: %s: %s round %d: %w", suite, p.name, round, err)
			}
			*firstOut = append(*firstOut, v)
			if v, err = measureOps(ctx, now, minTime, second); err != nil {
				return fmt.Errorf("bench: %s: %s round %d: %w", suite, p.name, round, err)
			}
			*secondOut = append(*secondOut, v)
		}
	}
	return nil
}

// pairResults reports each pair's medians, scaled, with ratio = ours /
// baseline.
func pairResults(pairs []pair) []Result {
	var out []Result
	for _, p := range pairs {
		ours, base := Median(p.oursVals)*p.scale, Median(p.baseVals)*p.scale
		r := Result{Name: p.name, Unit: p.unit, Value: ours, Baseline: &Baseline{Name: p.baseName, Value: base}}
		if base > 0 {
			r.Ratio = ours / base
		}
		out = append(out, r)
	}
	return out
}
