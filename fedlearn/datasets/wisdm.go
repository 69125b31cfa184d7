package datasets

import (
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// WISDMFile is the WISDM v1.1 transformed data set, relative to the shared
// data directory.
var WISDMFile = filepath.Join("wisdm", "WISDM_ar_v1.1_transformed.arff")

// WISDMFeatures is the number of features of WISDM v1.1.
const WISDMFeatures = 43

// ReadWISDM reads WISDM's transformed ARFF file: an example id, then a
// "user" attribute (an integer), then the features (every attribute
// between the user and the class, numeric, '?' where missing), then the
// "class" attribute last. The example id and the user are not features.
// Classes are the class attribute's nominal values in declared order when
// it declares them, else the values seen, sorted. file names the input in
// errors.
func ReadWISDM(r io.Reader, file string) (Table, error) {
	var (
		t        Table
		userCol  = -1
		classCol int
		nominal  bool
		classes  = map[string]int{}
		names    []string // class of each example, before indexing
	)
	header := func(attrs []arffAttr) error {
		for i, a := range attrs {
			if strings.EqualFold(a.Name, "user") {
				userCol = i
				break
			}
		}
		classCol = len(attrs) - 1
		if userCol < 0 {
			return formatErr(file, 0, "no \"user\" attribute")
		}
		if !strings.EqualFold(attrs[classCol].Name, "class") {
			return formatErr(file, 0, "the last attribute is %q, want \"class\"", attrs[classCol].Name)
		}
		if classCol-userCol < 2 {
			return formatErr(file, 0, "no feature attributes between \"user\" and \"class\"")
		}
		for _, a := range attrs[userCol+1 : classCol] {
			switch a.Type {
			case "numeric", "real", "integer", "":
			default:
				return formatErr(file, 0, "feature attribute %q has type %s, want numeric", a.Name, a.Type)
			}
			t.Features = append(t.Features, a.Name)
		}
		if c := attrs[classCol]; c.Type == "nominal" {
			nominal = true
			for i, v := range c.Nominal {
				if _, dup := classes[v]; dup {
					return formatErr(file, 0, "class value %q declared twice", v)
				}
				classes[v] = i
			}
			t.Classes = slices.Clone(c.Nominal)
		}
		return nil
	}
	row := func(line int, f []string) error {
		u, err := strconv.Atoi(f[userCol])
		if err != nil {
			return formatErr(file, line, "user %q is not an integer", clip(f[userCol]))
		}
		x := make([]float64, len(t.Features))
		for i := range x {
			v := f[userCol+1+i]
			if v == "?" {
				x[i] = math.NaN()
				continue
			}
			x[i], err = strconv.ParseFloat(v, 64)
			if err != nil || !finite(x[i]) {
				return formatErr(file, line, "feature %s: %q is not a finite number", t.Features[i], clip(v))
			}
		}
		c := f[classCol]
		if c == "" || c == "?" {
			return formatErr(file, line, "missing class")
		}
		if nominal {
			k, ok := classes[c]
			if !ok {
				return formatErr(file, line, "class %q is not among the declared values", clip(c))
			}
			t.Y = append(t.Y, k)
		} else {
			if _, ok := classes[c]; !ok {
				classes[c] = 0
			}
			names = append(names, c)
		}
		t.X = append(t.X, x)
		t.User = append(t.User, u)
		return nil
	}
	if err := readARFF(r, file, header, row); err != nil {
		return Table{}, err
	}
	if len(t.X) == 0 {
		return Table{}, formatErr(file, 0, "no examples")
	}
	if !nominal {
		for c := range classes {
			t.Classes = append(t.Classes, c)
		}
		slices.Sort(t.Classes)
		for i, c := range t.Classes {
			classes[c] = i
		}
		t.Y = make([]int, len(names))
		for i, c := range names {
			t.Y[i] = classes[c]
		}
	}
	if len(t.Classes) < 2 {
		return Table{}, formatErr(file, 0, "%d classes, want at least 2", len(t.Classes))
	}
	return t, nil
}

// LoadWISDM reads WISDMFile under the shared data directory dir and checks
// that it has WISDMFeatures features.
func LoadWISDM(dir string) (Table, error) {
	path := filepath.Join(dir, WISDMFile)
	f, err := os.Open(path)
	if err != nil {
		return Table{}, fmt.Errorf("datasets: wisdm: %w", err)
	}
	defer f.Close()
	t, err := ReadWISDM(f, path)
	if err != nil {
		return Table{}, err
	}
	if len(t.Features) != WISDMFeatures {
		return Table{}, formatErr(path, 0, "%d features, WISDM v1.1 has %d", len(t.Features), WISDMFeatures)
	}
	return t, nil
}

// SplitByUser splits a table with users into training and test examples:
// each user's examples (in table order) are shuffled with a generator
// seeded by seed and the user, the first max(1, ⌊n/5⌋) of the user's n go
// to test and the rest to train. Both parts list users in ascending order,
// each user's examples in shuffled order. A user's split depends only on
// the seed and that user's examples.
func SplitByUser(t Table, seed uint64) (train, test Table, err error) {
	if t.User == nil {
		return Table{}, Table{}, fmt.Errorf("datasets: split by user: the table has no users")
	}
	idx := usersIndex(t.User)
	var trainIdx, testIdx []int
	for _, u := range slices.Sorted(maps.Keys(idx)) {
		ex := idx[u]
		rng := rand.New(rand.NewPCG(seed, uint64(int64(u))))
		rng.Shuffle(len(ex), func(i, j int) { ex[i], ex[j] = ex[j], ex[i] })
		k := max(1, len(ex)/5)
		testIdx = append(testIdx, ex[:k]...)
		trainIdx = append(trainIdx, ex[k:]...)
	}
	return t.Subset(trainIdx), t.Subset(testIdx), nil
}
