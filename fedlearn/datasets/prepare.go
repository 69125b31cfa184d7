package datasets

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/edgefleet/edgefleet/fedlearn"
)

// Names of the data sets Load knows.
const (
	WISDM     = "wisdm"
	Occupancy = "occupancy"
)

// Names lists the data sets Load knows.
var Names = []string{WISDM, Occupancy}

// Prepared is a data set split into training and test parts, with the
// feature schema fitted on the training part (its imputation values, means
// and standard deviations go into the model, so that the model carries its
// normalisation) and every part normalised by it.
type Prepared struct {
	Name    string
	Schema  fedlearn.Schema
	Classes []string
	// RawTrain and RawTests are the parts before normalisation.
	RawTrain Table
	RawTests []Table
	// Train and Tests are the parts normalised by Schema. Test parts are
	// named after the test set ("test" for WISDM, the file name without
	// extension for occupancy).
	Train Part
	Tests []Part
}

// Load reads a data set from the shared data directory dir and prepares
// it:
//
//   - wisdm: each user's examples shuffled with seed, the first
//     max(1, ⌊n/5⌋) to test and the rest to train (SplitByUser);
//   - occupancy: train on datatraining.txt, test on datatest.txt and
//     datatest2.txt (seed is not used).
//
// Missing values are imputed with the training means, and every feature is
// standardised with the training mean and standard deviation.
func Load(dir, name string, seed uint64) (*Prepared, error) {
	var (
		train     Table
		tests     []Table
		testNames []string
		metrics   []string
		label     fedlearn.Label
	)
	switch name {
	case WISDM:
		all, err := LoadWISDM(dir)
		if err != nil {
			return nil, err
		}
		var test Table
		if train, test, err = SplitByUser(all, seed); err != nil {
			return nil, err
		}
		tests, testNames = []Table{test}, []string{"test"}
		metrics, label = train.Features, fedlearn.Label{Metric: "class"}
	case Occupancy:
		var err error
		if train, err = LoadOccupancyFile(dir, OccupancyTrainFile); err != nil {
			return nil, err
		}
		for _, f := range OccupancyTestFiles {
			t, err := LoadOccupancyFile(dir, f)
			if err != nil {
				return nil, err
			}
			tests = append(tests, t)
			testNames = append(testNames, strings.TrimSuffix(filepath.Base(f), filepath.Ext(f)))
		}
		metrics, label = OccupancyMetrics, fedlearn.Label{Metric: "occupancy"}
	default:
		return nil, fmt.Errorf("datasets: unknown data set %q (want %s)", name, strings.Join(Names, " or "))
	}
	return Prepare(name, train, tests, testNames, metrics, label)
}

// Prepare fits the schema on train and normalises train and every test
// table with it. metrics are the metrics the features read, in feature
// order.
func Prepare(name string, train Table, tests []Table, testNames []string, metrics []string, label fedlearn.Label) (*Prepared, error) {
	if len(tests) != len(testNames) {
		return nil, fmt.Errorf("datasets: %d test tables, %d names", len(tests), len(testNames))
	}
	if train.Len() == 0 {
		return nil, fmt.Errorf("datasets: %s: no training examples", name)
	}
	s, err := train.FitSchema(metrics, label)
	if err != nil {
		return nil, fmt.Errorf("datasets: %s: %w", name, err)
	}
	p := &Prepared{Name: name, Schema: s, Classes: train.Classes, RawTrain: train, RawTests: tests}
	if p.Train, err = train.Normalize("train", s); err != nil {
		return nil, err
	}
	for i, t := range tests {
		if len(t.Classes) != len(train.Classes) {
			return nil, fmt.Errorf("datasets: %s: test set %s has %d classes, training set %d", name, testNames[i], len(t.Classes), len(train.Classes))
		}
		part, err := t.Normalize(testNames[i], s)
		if err != nil {
			return nil, err
		}
		p.Tests = append(p.Tests, part)
	}
	return p, nil
}

// Client is one user's share of a prepared data set: the natural non-IID
// clients of federated learning. Its parts are normalised by the data
// set's schema (fitted on every user's training examples).
type Client struct {
	User  int
	Train Part
	Test  Part
}

// Clients groups the prepared data set by user (ascending), each with its
// training examples and its examples of the first test part. A data set
// without users is one client, user 0.
func (p *Prepared) Clients() ([]Client, error) {
	var groups []UserTable
	if len(p.RawTests) > 0 {
		groups = p.RawTests[0].ByUser()
	}
	test := make(map[int]Table, len(groups))
	for _, u := range groups {
		test[u.User] = u.Table
	}
	train := map[int]Table{}
	users := map[int]bool{}
	for _, u := range p.RawTrain.ByUser() {
		train[u.User] = u.Table
		users[u.User] = true
	}
	for u := range test {
		users[u] = true
	}
	out := make([]Client, 0, len(users))
	for _, u := range slices.Sorted(maps.Keys(users)) {
		c := Client{User: u}
		var err error
		if c.Train, err = normalizeOrEmpty(train[u], fmt.Sprintf("user %d train", u), p.Schema); err != nil {
			return nil, err
		}
		if c.Test, err = normalizeOrEmpty(test[u], fmt.Sprintf("user %d test", u), p.Schema); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// normalizeOrEmpty normalises t, or returns an empty part when t is the
// zero Table (a user without examples in that part).
func normalizeOrEmpty(t Table, name string, s fedlearn.Schema) (Part, error) {
	if t.Features == nil {
		return Part{Name: name, Inputs: len(s.Features)}, nil
	}
	return t.Normalize(name, s)
}
