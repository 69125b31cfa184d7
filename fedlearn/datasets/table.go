package datasets

import (
	"fmt"
	"maps"
	"math"
	"slices"

	"github.com/edgefleet/edgefleet/fedlearn"
)

// Table is labelled examples with raw feature values (NaN where missing).
type Table struct {
	// Features names the columns of X.
	Features []string
	// Classes names the labels: Y[i] indexes it.
	Classes []string
	X       [][]float64
	Y       []int
	// User is each example's user (WISDM); nil when the data set has none.
	User []int
}

// Len is the number of examples.
func (t Table) Len() int { return len(t.Y) }

// Subset returns the examples at idx, in that order. Rows are shared, not
// copied.
func (t Table) Subset(idx []int) Table {
	s := Table{Features: t.Features, Classes: t.Classes, X: make([][]float64, len(idx)), Y: make([]int, len(idx))}
	if t.User != nil {
		s.User = make([]int, len(idx))
	}
	for k, i := range idx {
		s.X[k], s.Y[k] = t.X[i], t.Y[i]
		if t.User != nil {
			s.User[k] = t.User[i]
		}
	}
	return s
}

// UserTable is one user's examples.
type UserTable struct {
	User int
	Table
}

// ByUser groups the examples by user, users in ascending order, each
// user's examples in table order. A table without users is one group of
// user 0.
func (t Table) ByUser() []UserTable {
	if t.User == nil {
		return []UserTable{{User: 0, Table: t}}
	}
	idx := usersIndex(t.User)
	out := make([]UserTable, len(idx))
	for k, u := range slices.Sorted(maps.Keys(idx)) {
		out[k] = UserTable{User: u, Table: t.Subset(idx[u])}
	}
	return out
}

// usersIndex maps each user to the indexes of its examples, in order.
func usersIndex(users []int) map[int][]int {
	idx := map[int][]int{}
	for i, u := range users {
		idx[u] = append(idx[u], i)
	}
	return idx
}

// Part is a table's examples as model inputs: normalised by a schema,
// row-major, ready for training or evaluation.
type Part struct {
	// Name says which part: "train", "test", or a test file's name.
	Name string
	// X holds Len() rows of Inputs values.
	X      []float64
	Y      []int
	Inputs int
	// User is each example's user, as in the table (nil when none).
	User []int
}

// Len is the number of examples.
func (p Part) Len() int { return len(p.Y) }

// Normalize turns the table into model inputs with the schema's imputation
// and standardisation.
func (t Table) Normalize(name string, s fedlearn.Schema) (Part, error) {
	n := len(s.Features)
	if n != len(t.Features) {
		return Part{}, fmt.Errorf("datasets: %s: schema has %d features, table %d", name, n, len(t.Features))
	}
	p := Part{Name: name, X: make([]float64, len(t.X)*n), Y: slices.Clone(t.Y), Inputs: n, User: slices.Clone(t.User)}
	for i, row := range t.X {
		if err := s.Normalize(p.X[i*n:(i+1)*n], row); err != nil {
			return Part{}, fmt.Errorf("datasets: %s example %d: %w", name, i, err)
		}
	}
	return p, nil
}

// FitSchema returns a schema whose features read the given metrics (with
// the latest value of each) under the table's feature names, its
// imputation and standardisation fitted on the table's examples: the
// training mean imputes a missing value, and (v-mean)/std standardises.
func (t Table) FitSchema(metrics []string, label fedlearn.Label) (fedlearn.Schema, error) {
	if len(metrics) != len(t.Features) {
		return fedlearn.Schema{}, fmt.Errorf("datasets: %d metrics for %d features", len(metrics), len(t.Features))
	}
	s := fedlearn.Schema{Label: label, Features: make([]fedlearn.Feature, len(t.Features))}
	for i, name := range t.Features {
		s.Features[i] = fedlearn.Feature{Name: name, Metric: metrics[i], Agg: fedlearn.AggLatest}
	}
	s.Standardize(t.X)
	if err := s.Validate(); err != nil {
		return fedlearn.Schema{}, fmt.Errorf("datasets: fitted schema: %w", err)
	}
	return s, nil
}

// finite reports whether v is a number other than NaN and ±Inf.
func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
