package strategy

import (
	"fmt"
	"math"
	"math/bits"
	"slices"
)

// FedMedian (Yin et al. 2018) takes the coordinate-wise median of the
// deltas, ignoring example counts (Flower's aggregate_median; for an even
// number of updates the mean of the two middle values, as numpy's median).
type FedMedian struct{}

// Name implements Strategy.
func (FedMedian) Name() string { return "FedMedian" }

// Aggregate implements Strategy.
func (FedMedian) Aggregate(global []float64, updates []Update) ([]float64, error) {
	sorted, err := Check(global, updates)
	if err != nil {
		return nil, err
	}
	n := len(sorted)
	out := make([]float64, len(global))
	forColumns(sorted, len(global), func(j int, col []float64) {
		selectK(col, n/2)
		med := col[n/2]
		if n%2 == 0 {
			med = (slices.Max(col[:n/2]) + med) / 2
		}
		out[j] = global[j] + med
	})
	return out, nil
}

// FedTrimmedAvg (Yin et al. 2018) takes the coordinate-wise mean after
// dropping the ⌊β·n⌋ smallest and the ⌊β·n⌋ largest values, ignoring
// example counts (Flower's aggregate_trimmed_avg, after scipy's trim_mean).
type FedTrimmedAvg struct {
	// Beta is the fraction cut at each end, in [0, 0.5). Flower's default
	// is 0.2.
	Beta float64
}

// DefaultTrimBeta is Flower's default β for FedTrimmedAvg.
const DefaultTrimBeta = 0.2

// NewFedTrimmedAvg returns FedTrimmedAvg cutting β at each end.
func NewFedTrimmedAvg(beta float64) (FedTrimmedAvg, error) {
	if !(beta >= 0 && beta < 0.5) {
		return FedTrimmedAvg{}, fmt.Errorf("%w: FedTrimmedAvg beta %v, want in [0, 0.5)", ErrConfig, beta)
	}
	return FedTrimmedAvg{Beta: beta}, nil
}

// Name implements Strategy.
func (FedTrimmedAvg) Name() string { return "FedTrimmedAvg" }

// Aggregate implements Strategy.
func (t FedTrimmedAvg) Aggregate(global []float64, updates []Update) ([]float64, error) {
	if !(t.Beta >= 0 && t.Beta < 0.5) {
		return nil, fmt.Errorf("%w: FedTrimmedAvg beta %v, want in [0, 0.5)", ErrConfig, t.Beta)
	}
	sorted, err := Check(global, updates)
	if err != nil {
		return nil, err
	}
	n := len(sorted)
	lower := int(t.Beta * float64(n))
	upper := n - lower // lower < upper as β < 0.5
	inv := 1 / float64(upper-lower)
	out := make([]float64, len(global))
	forColumns(sorted, len(global), func(j int, col []float64) {
		if lower > 0 {
			selectK(col, lower)
			selectK(col[lower:], upper-1-lower)
		}
		s := 0.0
		for _, v := range col[lower:upper] {
			s += v
		}
		out[j] = global[j] + s*inv
	})
	return out, nil
}

// colBlock is how many coordinates forColumns gathers per pass over the
// updates: each pass reads colBlock contiguous values of every delta.
const colBlock = 64

// forColumns calls fn for every coordinate j with col holding the updates'
// values at j in the order of sorted. fn may reorder col. Columns are
// gathered colBlock at a time so that every delta is read sequentially;
// memory is colBlock·len(sorted) float64s.
func forColumns(sorted []Update, dim int, fn func(j int, col []float64)) {
	n := len(sorted)
	buf := make([]float64, colBlock*n)
	for j0 := 0; j0 < dim; j0 += colBlock {
		b := min(colBlock, dim-j0)
		for i, u := range sorted {
			for k, v := range u.Delta[j0 : j0+b] {
				buf[k*n+i] = float64(v)
			}
		}
		for k := 0; k < b; k++ {
			fn(j0+k, buf[k*n:(k+1)*n])
		}
	}
}

// selectK reorders a so that a[k] holds the value of rank k (0-based) and
// a[:k] ≤ a[k] ≤ a[k+1:]. It is a quickselect with median-of-three pivots
// and three-way partitions (so runs of equal values, common in deltas, cost
// nothing); after 2·log₂(n)+8 partitions it sorts what is left, so that
// input crafted against the pivot rule costs O(n log n), not O(n²).
// a holds no NaN.
func selectK(a []float64, k int) {
	lo, hi := 0, len(a)-1
	budget := 2*bits.Len(uint(len(a))) + 8
	for lo < hi {
		if budget == 0 {
			slices.Sort(a[lo : hi+1])
			return
		}
		budget--
		p := median3(a[lo], a[lo+(hi-lo)/2], a[hi])
		lt, i, gt := lo, lo, hi
		for i <= gt {
			switch v := a[i]; {
			case v < p:
				a[lt], a[i] = v, a[lt]
				lt++
				i++
			case v > p:
				a[i], a[gt] = a[gt], v
				gt--
			default:
				i++
			}
		}
		// a[lo:lt] < p, a[lt:gt+1] == p, a[gt+1:hi+1] > p.
		switch {
		case k < lt:
			hi = lt - 1
		case k > gt:
			lo = gt + 1
		default:
			return
		}
	}
}

func median3(a, b, c float64) float64 {
	if a > b {
		a, b = b, a
	}
	if b > c {
		b = c
	}
	return math.Max(a, b)
}
