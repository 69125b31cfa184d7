package strategy

import (
	"fmt"
	"slices"
)

// Krum (Blanchard et al. 2017) and Multi-Krum, as Flower's aggregate_krum:
// each update is scored by the sum of its squared Euclidean distances to
// its max(1, n − f − 2) nearest other updates. Krum (ToKeep = 0) moves the
// model by the delta with the lowest score; Multi-Krum (ToKeep = m > 0)
// by the example-weighted mean of the m deltas with the lowest scores.
// Equal scores are broken by client name. Flower's defaults are f = 0 and
// m = 0.
//
// Cost: n·(n−1)/2 distances of d values each, O(n²·d) time, and an n×n
// float64 matrix of memory (8 MB for 1,000 clients).
type Krum struct {
	// Malicious is f, the number of Byzantine clients to tolerate.
	Malicious int
	// ToKeep is m: 0 for Krum, otherwise the number of updates Multi-Krum
	// averages.
	ToKeep int
}

// NewKrum returns Krum (toKeep = 0) or Multi-Krum (toKeep > 0) tolerating
// f malicious clients.
func NewKrum(f, toKeep int) (Krum, error) {
	k := Krum{Malicious: f, ToKeep: toKeep}
	return k, k.validate()
}

func (k Krum) validate() error {
	if k.Malicious < 0 || k.ToKeep < 0 {
		return fmt.Errorf("%w: Krum num_malicious_clients %d and num_clients_to_keep %d must not be negative", ErrConfig, k.Malicious, k.ToKeep)
	}
	return nil
}

// Name implements Strategy.
func (k Krum) Name() string {
	if k.ToKeep > 0 {
		return "MultiKrum"
	}
	return "Krum"
}

// Aggregate implements Strategy.
func (k Krum) Aggregate(global []float64, updates []Update) ([]float64, error) {
	kept, sorted, err := k.selectUpdates(global, updates)
	if err != nil {
		return nil, err
	}
	chosen := make([]Update, len(kept))
	for i, idx := range kept {
		chosen[i] = sorted[idx]
	}
	if k.ToKeep == 0 {
		out := slices.Clone(global)
		axpy32(out, 1, chosen[0].Delta)
		return out, nil
	}
	mean, err := weightedMean(chosen, len(global))
	if err != nil {
		return nil, err
	}
	return add(global, mean), nil
}

// Select returns the names of the clients whose updates Aggregate would
// use, best score first.
func (k Krum) Select(global []float64, updates []Update) ([]string, error) {
	kept, sorted, err := k.selectUpdates(global, updates)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(kept))
	for i, idx := range kept {
		names[i] = sorted[idx].Client
	}
	return names, nil
}

// selectUpdates validates and returns the indices (into the returned
// sorted updates) of the kept updates, best first.
func (k Krum) selectUpdates(global []float64, updates []Update) ([]int, []Update, error) {
	if err := k.validate(); err != nil {
		return nil, nil, err
	}
	sorted, err := Check(global, updates)
	if err != nil {
		return nil, nil, err
	}
	n := len(sorted)
	if k.ToKeep > n {
		return nil, nil, fmt.Errorf("%w: Multi-Krum keeps %d updates, the round has %d", ErrConfig, k.ToKeep, n)
	}
	scores := krumScores(sorted, k.Malicious)
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch {
		case scores[a] < scores[b]:
			return -1
		case scores[a] > scores[b]:
			return 1
		}
		return 0
	})
	return order[:max(k.ToKeep, 1)], sorted, nil
}

// krumTile is how many updates' rows krumScores keeps hot while streaming
// the others past them (16 rows of 10,000 float32 are 640 KB).
const krumTile = 16

// krumScores returns each update's Krum score: the sum of its smallest
// max(1, n−f−2) squared distances to the other updates (capped at n−1).
func krumScores(sorted []Update, f int) []float64 {
	n := len(sorted)
	dist := make([]float64, n*n)
	for i0 := 0; i0 < n; i0 += krumTile {
		i1 := min(i0+krumTile, n)
		for j := i0 + 1; j < n; j++ {
			b := sorted[j].Delta
			for i := i0; i < min(i1, j); i++ {
				d := sqDist(sorted[i].Delta, b)
				dist[i*n+j], dist[j*n+i] = d, d
			}
		}
	}
	closest := min(max(1, n-f-2), n-1)
	scores := make([]float64, n)
	others := make([]float64, 0, n)
	for i := 0; i < n; i++ {
		others = append(others[:0], dist[i*n:i*n+i]...)
		others = append(others, dist[i*n+i+1:(i+1)*n]...)
		if closest < len(others) {
			selectK(others, closest)
		}
		s := 0.0
		for _, d := range others[:closest] {
			s += d
		}
		scores[i] = s
	}
	return scores
}

// sqDist is the squared Euclidean distance, in float64, of two vectors of
// the same length.
func sqDist(a, b []float32) float64 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float64
	j := 0
	for ; j+4 <= len(a); j += 4 {
		d0 := float64(a[j]) - float64(b[j])
		d1 := float64(a[j+1]) - float64(b[j+1])
		d2 := float64(a[j+2]) - float64(b[j+2])
		d3 := float64(a[j+3]) - float64(b[j+3])
		s0 += d0 * d0
		s1 += d1 * d1
		s2 += d2 * d2
		s3 += d3 * d3
	}
	for ; j < len(a); j++ {
		d := float64(a[j]) - float64(b[j])
		s0 += d * d
	}
	return (s0 + s1) + (s2 + s3)
}
