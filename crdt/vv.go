package crdt

import "sort"

// Clone returns a copy of vv; the copy of a nil vector is an empty, non-nil
// vector.
func (vv VersionVector) Clone() VersionVector {
	out := make(VersionVector, len(vv))
	for o, s := range vv {
		out[o] = s
	}
	return out
}

// Covers reports whether the op identified by d is included in vv
// (vv[d.Origin] >= d.Seq).
func (vv VersionVector) Covers(d Dot) bool { return vv[d.Origin] >= d.Seq }

// Merge raises vv in place to the pointwise maximum of vv and other. vv must
// be non-nil when other has entries it lacks.
func (vv VersionVector) Merge(other VersionVector) {
	for o, s := range other {
		if s > vv[o] {
			vv[o] = s
		}
	}
}

// Advance raises vv in place to what a holder of vv has after applying ds:
// vv[o] becomes max(vv[o], d.To) for every delta whose range starts at or
// below vv[o] (contiguous with what is held). Deltas are taken in order of
// origin and From, so a chain of ranges in ds advances vv across all of them
// whatever their order in ds. vv must be non-nil.
func (vv VersionVector) Advance(ds []Delta) {
	for _, i := range deltaOrder(ds) {
		d := &ds[i]
		if vv[d.Origin] >= d.From && d.To > vv[d.Origin] {
			vv[d.Origin] = d.To
		}
	}
}

// deltaOrder returns the indexes of ds sorted by (Origin, From, To).
func deltaOrder(ds []Delta) []int {
	idx := make([]int, len(ds))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool {
		x, y := &ds[idx[a]], &ds[idx[b]]
		if x.Origin != y.Origin {
			return x.Origin < y.Origin
		}
		if x.From != y.From {
			return x.From < y.From
		}
		return x.To < y.To
	})
	return idx
}

// MinVersionVector returns the pointwise minimum of vvs over the origins
// present (with a non-zero sequence) in all of them: the ops every holder has
// applied. With the version vectors of all known members it is the stable
// vector Compact takes. With no argument it returns an empty vector.
func MinVersionVector(vvs ...VersionVector) VersionVector {
	out := VersionVector{}
	if len(vvs) == 0 {
		return out
	}
	for o, s := range vvs[0] {
		m := s
		for _, vv := range vvs[1:] {
			if v := vv[o]; v < m {
				m = v
			}
		}
		if m > 0 {
			out[o] = m
		}
	}
	return out
}
