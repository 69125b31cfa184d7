package datasets

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/fedlearn"
)

const smallARFF = `% a comment
@relation test

@attribute "UNIQUE_ID" numeric
@attribute 'user'
@attribute "a b" numeric
@attribute c REAL
@attribute class {Walk,'Sit down',Run}

@data
1,7,0.5,1,Walk
2, 7 ,?,2,'Sit down'
% comment between rows
3,2,1.5,-3e2,"Run"
`

func TestReadWISDMSmall(t *testing.T) {
	tab, err := ReadWISDM(strings.NewReader(smallARFF), "small.arff")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tab.Features, []string{"a b", "c"}) || !slices.Equal(tab.Classes, []string{"Walk", "Sit down", "Run"}) {
		t.Fatalf("features %q classes %q", tab.Features, tab.Classes)
	}
	if !slices.Equal(tab.Y, []int{0, 1, 2}) || !slices.Equal(tab.User, []int{7, 7, 2}) {
		t.Fatalf("y %v users %v", tab.Y, tab.User)
	}
	if !math.IsNaN(tab.X[1][0]) || tab.X[1][1] != 2 || tab.X[2][1] != -300 {
		t.Fatalf("x %v", tab.X)
	}
	// Without a declared class list, classes are the values seen, sorted.
	plain := strings.Replace(smallARFF, "{Walk,'Sit down',Run}", "", 1)
	tab, err = ReadWISDM(strings.NewReader(plain), "plain.arff")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tab.Classes, []string{"Run", "Sit down", "Walk"}) || !slices.Equal(tab.Y, []int{2, 1, 0}) {
		t.Fatalf("classes %q y %v", tab.Classes, tab.Y)
	}
}

func TestReadWISDMErrors(t *testing.T) {
	head := "@relation r\n@attribute id numeric\n@attribute user\n@attribute x numeric\n@attribute class\n@data\n"
	for _, c := range []struct {
		name, in string
		line     int
		msg      string
	}{
		{"no data section", "@relation r\n@attribute user\n", 2, "no @data"},
		{"no user", "@attribute id numeric\n@attribute x numeric\n@attribute class\n@data\n", 0, `no "user"`},
		{"class not last", "@attribute user\n@attribute x numeric\n@attribute class\n@attribute y numeric\n@data\n", 0, `want "class"`},
		{"no features", "@attribute user\n@attribute class\n@data\n", 0, "no feature"},
		{"string feature", "@attribute user\n@attribute x string\n@attribute class\n@data\n", 0, "want numeric"},
		{"bad keyword", "@relation r\n@atribute x\n", 2, "unknown header keyword"},
		{"text before data", "hello\n", 1, "expected an @relation"},
		{"duplicate attribute", "@attribute user\n@attribute USER\n", 2, "declared twice"},
		{"too few values", head + "1,2,3,A\n1,2,B\n", 8, "3 values, the header declares 4"},
		{"bad user", head + "1,u2,3,A\n", 7, `user "u2"`},
		{"bad number", head + "1,2,3x,A\n", 7, `feature x: "3x"`},
		{"infinite number", head + "1,2,Inf,A\n", 7, "not a finite number"},
		{"NaN text", head + "1,2,NaN,A\n", 7, "not a finite number"},
		{"missing class", head + "1,2,3,?\n", 7, "missing class"},
		{"one class", head + "1,2,3,A\n", 0, "1 classes"},
		{"no examples", head, 0, "no examples"},
		{"unterminated quote", head + "1,2,3,'A\n", 7, "unterminated"},
		{"text after quote", head + "1,2,3,'A'B\n", 7, "text after a quoted value"},
		{"sparse", head + "{0 1}\n", 7, "sparse"},
		{"undeclared class", "@attribute user\n@attribute x numeric\n@attribute class {A,B}\n@data\n1,2,C\n", 5, "not among the declared"},
		{"duplicate nominal", "@attribute user\n@attribute x numeric\n@attribute class {A,A}\n@data\n", 0, "declared twice"},
		{"open nominal", "@attribute user\n@attribute x numeric\n@attribute class {A,B\n", 3, "closing }"},
		{"long line", head + strings.Repeat("1", maxLine+1) + "\n", 7, "longer than"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ReadWISDM(strings.NewReader(c.in), "w.arff")
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v, want a FormatError", err)
			}
			if fe.File != "w.arff" || fe.Line != c.line || !strings.Contains(fe.Msg, c.msg) || !strings.HasPrefix(err.Error(), "datasets: w.arff") {
				t.Fatalf("error %q (line %d), want line %d and %q", err, fe.Line, c.line, c.msg)
			}
		})
	}
}

const smallOccupancy = `"Date","Temperature","Humidity","Light","CO2","HumidityRatio","Occupancy"
"2015-02-02 14:19:00",23.7,26.272,585.2,749.2,0.0047641,1
"2015-02-02 14:19:59",23.718,26.29,578.4,760.4,0.0047726,0
`

func TestReadOccupancySmall(t *testing.T) {
	tab, err := ReadOccupancy(strings.NewReader(smallOccupancy), "o.txt")
	if err != nil {
		t.Fatal(err)
	}
	if tab.Len() != 2 || !slices.Equal(tab.Y, []int{1, 0}) || tab.X[1][2] != 578.4 || tab.X[0][4] != 0.0047641 || tab.User != nil {
		t.Fatalf("%+v", tab)
	}
	// The original distribution: a leading quoted row number, other column
	// order and case.
	orig := "\"date\",\"occupancy\",\"Temperature\",\"Humidity\",\"Light\",\"CO2\",\"HumidityRatio\"\n" +
		"\"1\",\"2015-02-04 17:51:00\",1,23.18,27.272,426,721.25,0.0047929\n"
	tab, err = ReadOccupancy(strings.NewReader(orig), "orig.txt")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tab.X[0], []float64{23.18, 27.272, 426, 721.25, 0.0047929}) || tab.Y[0] != 1 {
		t.Fatalf("%+v", tab)
	}
}

func TestReadOccupancyErrors(t *testing.T) {
	head := strings.SplitAfterN(smallOccupancy, "\n", 2)[0]
	row := `"2015-02-02 14:19:00",23.7,26.272,585.2,749.2,0.0047641,1` + "\n"
	for _, c := range []struct {
		name, in string
		line     int
		msg      string
	}{
		{"empty", "", 1, "empty file"},
		{"missing column", `"Date","Temperature","Humidity","Light","HumidityRatio","Occupancy"` + "\n", 1, `no column "CO2"`},
		{"no rows", head, 0, "no rows"},
		{"short row", head + row + `"2015-02-02 14:19:00",23.7,1` + "\n", 3, "3 fields"},
		{"bad date", head + strings.Replace(row, "14:19:00", "14h19", 1), 2, "date"},
		{"bad number", head + strings.Replace(row, "585.2", "lots", 1), 2, `Light "lots"`},
		{"infinite", head + strings.Replace(row, "585.2", "+Inf", 1), 2, "finite"},
		{"bad label", head + strings.Replace(row, ",1\n", ",2\n", 1), 2, `Occupancy "2"`},
		{"bad quoting", head + row + `"2015-02-02 14:19:00"x,1,2,3,4,5,1` + "\n", 3, "quote"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ReadOccupancy(strings.NewReader(c.in), "o.txt")
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v, want a FormatError", err)
			}
			if fe.File != "o.txt" || fe.Line != c.line || !strings.Contains(fe.Msg, c.msg) {
				t.Fatalf("error %q (line %d), want line %d and %q", err, fe.Line, c.line, c.msg)
			}
		})
	}
}

// synthetic returns a table of users with the given example counts; each
// example's single feature is its index.
func synthetic(counts map[int]int) Table {
	tab := Table{Features: []string{"i"}, Classes: []string{"a", "b"}}
	for u := 1; u <= len(counts)*2; u++ {
		for k := 0; k < counts[u]; k++ {
			tab.X = append(tab.X, []float64{float64(len(tab.X))})
			tab.Y = append(tab.Y, k%2)
			tab.User = append(tab.User, u)
		}
	}
	return tab
}

func TestSplitByUser(t *testing.T) {
	counts := map[int]int{1: 1, 2: 4, 3: 5, 4: 9, 5: 10, 6: 23}
	tab := synthetic(counts)
	train, test, err := SplitByUser(tab, 42)
	if err != nil {
		t.Fatal(err)
	}
	perUser := func(p Table) map[int]int {
		m := map[int]int{}
		for _, u := range p.User {
			m[u]++
		}
		return m
	}
	trainN, testN := perUser(train), perUser(test)
	for u, n := range counts {
		if want := max(1, n/5); testN[u] != want || trainN[u] != n-want {
			t.Errorf("user %d of %d: %d test, %d train; want %d test", u, n, testN[u], trainN[u], want)
		}
	}
	seen := map[float64]bool{}
	for _, p := range []Table{train, test} {
		for i, x := range p.X {
			if seen[x[0]] {
				t.Fatalf("example %v in both parts", x[0])
			}
			seen[x[0]] = true
			if tab.User[int(x[0])] != p.User[i] || tab.Y[int(x[0])] != p.Y[i] {
				t.Fatalf("example %v lost its user or label", x[0])
			}
		}
	}
	if len(seen) != tab.Len() {
		t.Fatalf("%d of %d examples kept", len(seen), tab.Len())
	}
	// Same seed, same split; another seed shuffles otherwise; a user's
	// split does not depend on other users.
	train2, test2, _ := SplitByUser(tab, 42)
	if !slices.EqualFunc(test.X, test2.X, slices.Equal) || !slices.EqualFunc(train.X, train2.X, slices.Equal) {
		t.Fatal("same seed, different split")
	}
	_, test3, _ := SplitByUser(tab, 43)
	if slices.EqualFunc(test.X, test3.X, slices.Equal) {
		t.Fatal("seeds 42 and 43 give the same test part")
	}
	delete(counts, 3)
	without3 := synthetic(counts)
	_, test4, _ := SplitByUser(without3, 42)
	// u6 lists user 6's test examples by their position among the user's.
	u6 := func(all, p Table) (out []float64) {
		first := float64(slices.Index(all.User, 6))
		for i, x := range p.X {
			if p.User[i] == 6 {
				out = append(out, x[0]-first)
			}
		}
		return out
	}
	if !slices.Equal(u6(tab, test), u6(without3, test4)) {
		t.Fatalf("user 6's test part changed when user 3 left: %v then %v", u6(tab, test), u6(without3, test4))
	}
	if _, _, err := SplitByUser(Table{X: [][]float64{{1}}, Y: []int{0}}, 1); err == nil {
		t.Fatal("split of a table without users succeeded")
	}
}

func TestPrepareNormalisesWithTrainingStatistics(t *testing.T) {
	nan := math.NaN()
	train := Table{Features: []string{"a", "b"}, Classes: []string{"x", "y"},
		X: [][]float64{{1, 10}, {3, nan}, {5, 30}}, Y: []int{0, 1, 0}, User: []int{1, 1, 2}}
	test := Table{Features: train.Features, Classes: train.Classes, X: [][]float64{{3, nan}, {7, 20}}, Y: []int{1, 1}, User: []int{2, 3}}
	p, err := Prepare("t", train, []Table{test}, []string{"test"}, []string{"m_a", "m_b"}, fedlearn.Label{Metric: "y"})
	if err != nil {
		t.Fatal(err)
	}
	fa, fb := p.Schema.Features[0], p.Schema.Features[1]
	stdA := math.Sqrt(8.0 / 3)
	if fa.Mean != 3 || fa.Impute != 3 || math.Abs(fa.Std-stdA) > 1e-12 || fb.Mean != 20 || fb.Impute != 20 || fb.Std != 10 || fa.Metric != "m_a" {
		t.Fatalf("schema %+v", p.Schema.Features)
	}
	// Test values use training statistics: the missing b is imputed with
	// the training mean 20, standardised to 0.
	wantTest := []float64{0, 0, 4 / stdA, 0}
	for i, v := range p.Tests[0].X {
		if math.Abs(v-wantTest[i]) > 1e-12 {
			t.Fatalf("test inputs %v, want %v", p.Tests[0].X, wantTest)
		}
	}
	if p.Train.X[3] != 0 || p.Train.Inputs != 2 {
		t.Fatalf("train inputs %v", p.Train.X)
	}
	clients, err := p.Clients()
	if err != nil {
		t.Fatal(err)
	}
	if len(clients) != 3 || clients[0].Train.Len() != 2 || clients[0].Test.Len() != 0 ||
		clients[1].Train.Len() != 1 || clients[1].Test.Len() != 1 || clients[2].Train.Len() != 0 || clients[2].Test.Len() != 1 {
		t.Fatalf("clients %+v", clients)
	}
	if clients[2].Test.X[0] != p.Tests[0].X[2] {
		t.Fatal("client normalised otherwise than the data set")
	}
}
