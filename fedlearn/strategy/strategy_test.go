package strategy

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func up(client string, examples int, delta ...float32) Update {
	return Update{Client: client, Delta: delta, Examples: examples}
}

func near(t *testing.T, what string, got, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d values %v, want %d %v", what, len(got), got, len(want), want)
	}
	for j := range want {
		if math.Abs(got[j]-want[j]) > tol {
			t.Fatalf("%s: value %d = %.17g, want %.17g (±%g); got %v", what, j, got[j], want[j], tol, got)
		}
	}
}

func mustAggregate(t *testing.T, s Strategy, global []float64, updates []Update) []float64 {
	t.Helper()
	out, err := s.Aggregate(global, updates)
	if err != nil {
		t.Fatalf("%s: %v", s.Name(), err)
	}
	return out
}

func TestFedAvgHandComputed(t *testing.T) {
	// (1·[1, 0] + 3·[0, 2]) / 4 = [0.25, 1.5]; global [1, 2] → [1.25, 3.5].
	g := []float64{1, 2}
	us := []Update{up("a", 1, 1, 0), up("b", 3, 0, 2)}
	near(t, "FedAvg", mustAggregate(t, FedAvg{}, g, us), []float64{1.25, 3.5}, 0)
	p, err := NewFedProx(0.01)
	if err != nil {
		t.Fatal(err)
	}
	near(t, "FedProx", mustAggregate(t, p, g, us), []float64{1.25, 3.5}, 0)
	if c := p.ClientConfig(); c["proximal_mu"] != 0.01 {
		t.Fatalf("FedProx client config %v, want proximal_mu 0.01", c)
	}
	if _, err := NewFedProx(-1); !errors.Is(err, ErrConfig) {
		t.Fatalf("NewFedProx(-1) = %v, want ErrConfig", err)
	}
	if slices.Compare(g, []float64{1, 2}) != 0 {
		t.Fatalf("Aggregate modified the global model: %v", g)
	}
}

// Two rounds of each FedOpt optimiser at Flower's defaults, global [1, 2],
// one client with Δ = [0.5, −1] in both rounds.
func TestFedOptHandComputed(t *testing.T) {
	cases := []struct {
		opt            Optimizer
		round1, round2 []float64
	}{
		// Adam (η 0.1, β1 0.9, β2 0.99, τ 1e-9):
		// t=1: m = 0.1·Δ = [0.05, −0.1], v = 0.01·Δ² = [0.0025, 0.01], √v = |m|,
		//      η' = 0.1·√(1−0.99²)/(1−0.9²) = 0.1·√0.0199/0.19 = 0.07424598,
		//      w = [1 + η'·0.05/(0.05+τ), 2 − η'·0.1/(0.1+τ)] = [1.07424598, 1.92575402].
		// t=2: m = [0.095, −0.19], v = [0.004975, 0.0199],
		//      η' = 0.1·√(1−0.99³)/(1−0.9³) = 0.06359402,
		//      w += η'·0.095/√0.004975 = 0.08565314 → [1.15989912, 1.84010088].
		{Adam, []float64{1.0742459773554272, 1.925754021902113}, []float64{1.1598991199195985, 1.8401008787307627}},
		// Yogi (η 0.01, β1 0.9, β2 0.99, τ 1e-3):
		// t=1: m = [0.05, −0.1]; v = 0 − 0.01·Δ²·sign(0 − Δ²) = [0.0025, 0.01];
		//      w = [1 + 0.01·0.05/0.051, 2 − 0.01·0.1/0.101] = [1.00980392, 1.99009901].
		// t=2: m = [0.095, −0.19], v = [0.005, 0.02] (v < Δ², so v grows by 0.01·Δ²);
		//      w += [0.01·0.095/(√0.005+0.001), −0.01·0.19/(√0.02+0.001)] → [1.02305160, 1.97675831].
		{Yogi, []float64{1.0098039215686274, 1.99009900990099}, []float64{1.0230515999468475, 1.9767583140236518}},
		// Adagrad (η 0.1, τ 1e-9, m = Δ):
		// t=1: v = Δ² = [0.25, 1]; w = [1 + 0.1·0.5/(0.5+τ), 2 − 0.1·1/(1+τ)] = [1.0999999998, 1.9000000001].
		// t=2: v = [0.5, 2]; w += [0.05/√0.5, −0.1/√2] = ±0.07071068 → [1.17071068, 1.82928932].
		{Adagrad, []float64{1.0999999998, 1.9000000001}, []float64{1.170710677818655, 1.829289322031345}},
	}
	for _, c := range cases {
		f, err := NewFedOpt(c.opt, DefaultFedOptConfig(c.opt))
		if err != nil {
			t.Fatal(err)
		}
		us := []Update{up("a", 7, 0.5, -1)}
		w1 := mustAggregate(t, f, []float64{1, 2}, us)
		near(t, f.Name()+" round 1", w1, c.round1, 1e-12)
		// A restart: the state survives a save and a restore.
		g, _ := NewFedOpt(c.opt, DefaultFedOptConfig(c.opt))
		if err := g.SetState(f.State()); err != nil {
			t.Fatal(err)
		}
		w2 := mustAggregate(t, g, w1, us)
		near(t, f.Name()+" round 2", w2, c.round2, 1e-12)
	}
}

func TestFedOptConfig(t *testing.T) {
	if c := DefaultFedOptConfig(Yogi); c != (FedOptConfig{Eta: 0.01, EtaL: 0.0316, Beta1: 0.9, Beta2: 0.99, Tau: 1e-3}) {
		t.Fatalf("Yogi defaults %+v", c)
	}
	for _, c := range []FedOptConfig{
		{Eta: 0, Tau: 1e-9}, {Eta: 0.1, Tau: -1}, {Eta: 0.1, Beta1: 1}, {Eta: 0.1, Beta2: -0.1}, {Eta: math.NaN()},
	} {
		if _, err := NewFedOpt(Adam, c); !errors.Is(err, ErrConfig) {
			t.Errorf("NewFedOpt(adam, %+v) = %v, want ErrConfig", c, err)
		}
	}
	if _, err := NewFedOpt("sgd", FedOptConfig{Eta: 1}); !errors.Is(err, ErrConfig) {
		t.Errorf("unknown optimiser: %v", err)
	}
	f, _ := NewFedOpt(Adam, DefaultFedOptConfig(Adam))
	mustAggregate(t, f, []float64{0, 0}, []Update{up("a", 1, 1, 1)})
	if _, err := f.Aggregate([]float64{0, 0, 0}, []Update{up("a", 1, 1, 1, 1)}); !errors.Is(err, ErrConfig) {
		t.Errorf("state of 2 parameters applied to 3: %v", err)
	}
	if err := f.SetState(FedOptState{Round: 1, M: []float64{1}, V: []float64{-1}}); !errors.Is(err, ErrConfig) {
		t.Errorf("negative second moment accepted: %v", err)
	}
}

func TestRobustHandComputed(t *testing.T) {
	g := []float64{10, 20}
	// Coordinate 0: [1, 5, 3] → median 3; coordinate 1: [−1, −3, 2] → −1.
	near(t, "FedMedian odd", mustAggregate(t, FedMedian{}, g,
		[]Update{up("a", 1, 1, -1), up("b", 9, 5, -3), up("c", 1, 3, 2)}), []float64{13, 19}, 0)
	// [1, 2, 10, 4] → (2 + 4)/2 = 3; [0, 0, 0, 8] → 0.
	near(t, "FedMedian even", mustAggregate(t, FedMedian{}, g,
		[]Update{up("a", 1, 1, 0), up("b", 1, 2, 0), up("c", 1, 10, 0), up("d", 1, 4, 8)}), []float64{13, 20}, 0)

	// β 0.2, n 5: cut ⌊1⌋ at each end. [1, 2, 3, 4, 100] → (2+3+4)/3 = 3;
	// [−50, 1, 1, 2, 7] → (1+1+2)/3 = 4/3.
	tr, err := NewFedTrimmedAvg(DefaultTrimBeta)
	if err != nil {
		t.Fatal(err)
	}
	near(t, "FedTrimmedAvg", mustAggregate(t, tr, g, []Update{
		up("a", 1, 100, 1), up("b", 1, 2, -50), up("c", 5, 3, 7), up("d", 1, 1, 1), up("e", 1, 4, 2),
	}), []float64{13, 20 + 4.0/3}, 1e-15)
	// β 0.1, n 5: ⌊0.5⌋ = 0 cut, the plain (unweighted) mean.
	near(t, "FedTrimmedAvg cuts nothing", mustAggregate(t, FedTrimmedAvg{Beta: 0.1}, g, []Update{
		up("a", 1, 100, 1), up("b", 1, 2, -50), up("c", 5, 3, 7), up("d", 1, 1, 1), up("e", 1, 4, 2),
	}), []float64{10 + 110.0/5, 20 - 39.0/5}, 1e-14)
	for _, b := range []float64{-0.1, 0.5, math.NaN()} {
		if _, err := NewFedTrimmedAvg(b); !errors.Is(err, ErrConfig) {
			t.Errorf("NewFedTrimmedAvg(%v) = %v, want ErrConfig", b, err)
		}
	}

	// Krum, one coordinate: a 0, b 1, c 3, d 10; squared distances
	//   a: b 1, c 9, d 100; b: a 1, c 4, d 81; c: b 4, a 9, d 49; d: c 49, b 81, a 100.
	// f = 0 keeps n−f−2 = 2 nearest: scores a 10, b 5, c 13, d 130 → Krum picks b.
	us := []Update{up("a", 1, 0), up("b", 3, 1), up("c", 1, 3), up("d", 1, 10)}
	k, _ := NewKrum(0, 0)
	near(t, "Krum", mustAggregate(t, k, []float64{0.5}, us), []float64{1.5}, 0)
	// Multi-Krum m = 2: b (5) and a (10), weighted (3·1 + 1·0)/4 = 0.75.
	mk, _ := NewKrum(0, 2)
	near(t, "MultiKrum", mustAggregate(t, mk, []float64{0.5}, us), []float64{1.25}, 0)
	if names, _ := mk.Select([]float64{0.5}, us); slices.Compare(names, []string{"b", "a"}) != 0 {
		t.Fatalf("Multi-Krum selected %v, want [b a]", names)
	}
	// f = 1 keeps max(1, 4−1−2) = 1 nearest: a 1, b 1, c 4, d 49: a and b
	// tie, broken by name.
	k1, _ := NewKrum(1, 0)
	if names, _ := k1.Select([]float64{0.5}, us); slices.Compare(names, []string{"a"}) != 0 {
		t.Fatalf("Krum f=1 selected %v, want [a]", names)
	}
	if _, err := NewKrum(-1, 0); !errors.Is(err, ErrConfig) {
		t.Errorf("negative f: %v", err)
	}
	if _, err := mk.Aggregate([]float64{0}, us[:1]); !errors.Is(err, ErrConfig) {
		t.Errorf("Multi-Krum keeping 2 of 1: %v", err)
	}
	// One update: Krum returns it.
	near(t, "Krum n=1", mustAggregate(t, k, []float64{0.5}, us[3:]), []float64{10.5}, 0)
}

// randomRound returns n updates of dimension d with example counts 1..50.
func randomRound(rng *rand.Rand, n, d int) []Update {
	us := make([]Update, n)
	for i := range us {
		delta := make([]float32, d)
		for j := range delta {
			delta[j] = float32(rng.NormFloat64()*0.1 + 0.01*float64(j%7))
		}
		if i%5 == 0 {
			delta[0] = 0 // some ties
		}
		us[i] = Update{Client: fmt.Sprintf("agent-%03d", rng.IntN(1000)*100+i), Delta: delta, Examples: 1 + rng.IntN(50)}
	}
	return us
}

func allStrategies(t *testing.T) []func() Strategy {
	t.Helper()
	mk := func(o Optimizer) func() Strategy {
		return func() Strategy {
			f, err := NewFedOpt(o, DefaultFedOptConfig(o))
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return []func() Strategy{
		func() Strategy { return FedAvg{} },
		func() Strategy { return FedProx{ProximalMu: 0.1} },
		mk(Adam), mk(Yogi), mk(Adagrad),
		func() Strategy { return FedMedian{} },
		func() Strategy { return FedTrimmedAvg{Beta: 0.2} },
		func() Strategy { return Krum{Malicious: 2} },
		func() Strategy { return Krum{Malicious: 2, ToKeep: 5} },
	}
}

// Every strategy gives the same model, bit for bit, whatever the order of
// the updates.
func TestOrderInvariance(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 2, 13, 64} {
		us := randomRound(rng, n, 203) // 203: not a multiple of the column block
		global := make([]float64, 203)
		for j := range global {
			global[j] = rng.NormFloat64()
		}
		for _, newS := range allStrategies(t) {
			if s := newS(); s.Name() == "MultiKrum" && n < 5 {
				continue
			}
			want := mustAggregate(t, newS(), global, us)
			for p := 0; p < 10; p++ {
				perm := slices.Clone(us)
				rng.Shuffle(len(perm), func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
				got := mustAggregate(t, newS(), global, perm)
				for j := range want {
					if math.Float64bits(got[j]) != math.Float64bits(want[j]) {
						t.Fatalf("%s n=%d permutation %d: value %d = %v, in input order %v", newS().Name(), n, p, j, got[j], want[j])
					}
				}
			}
		}
	}
}

// One outlier scaled by 1e6 moves FedAvg by about 1e6/n times an honest
// delta but cannot move the robust strategies outside the honest clients'
// range, coordinate by coordinate.
func TestOutlierRobustness(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const n, d = 10, 50
	honest := make([]Update, n)
	lo, hi := make([]float64, d), make([]float64, d)
	for j := range lo {
		lo[j], hi[j] = math.Inf(1), math.Inf(-1)
	}
	for i := range honest {
		delta := make([]float32, d)
		for j := range delta {
			delta[j] = float32(0.5 + 0.1*rng.NormFloat64())
			lo[j], hi[j] = math.Min(lo[j], float64(delta[j])), math.Max(hi[j], float64(delta[j]))
		}
		honest[i] = Update{Client: fmt.Sprintf("h%02d", i), Delta: delta, Examples: 10 + i}
	}
	bad := make([]float32, d)
	for j := range bad {
		bad[j] = honest[0].Delta[j] * 1e6
	}
	all := append(slices.Clone(honest), Update{Client: "byzantine", Delta: bad, Examples: 10})
	global := make([]float64, d)

	avg := mustAggregate(t, FedAvg{}, global, all)
	if avg[0] < 1e4 {
		t.Fatalf("FedAvg moved only to %v by the outlier; the test's outlier is too weak", avg[0])
	}
	for _, s := range []Strategy{FedMedian{}, FedTrimmedAvg{Beta: 0.2}, Krum{Malicious: 1}, Krum{Malicious: 1, ToKeep: 5}} {
		out := mustAggregate(t, s, global, all)
		for j := range out {
			if out[j] < lo[j] || out[j] > hi[j] {
				t.Fatalf("%s: coordinate %d = %v, outside the honest range [%v, %v]", s.Name(), j, out[j], lo[j], hi[j])
			}
		}
	}
	names, err := Krum{Malicious: 1, ToKeep: 5}.Select(global, all)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(names, "byzantine") {
		t.Fatalf("Multi-Krum kept the outlier: %v", names)
	}
}

func TestBadInput(t *testing.T) {
	g := []float64{0, 0}
	good := up("ok", 1, 1, 1)
	cases := []struct {
		name   string
		global []float64
		us     []Update
		client string // "" when no client is to blame
		want   string
	}{
		{"wrong length", g, []Update{good, up("short", 1, 1)}, "short", "1 values, the model has 2"},
		{"NaN", g, []Update{good, up("nan", 1, 1, float32(math.NaN()))}, "nan", "value 1 is NaN"},
		{"Inf", g, []Update{up("inf", 1, float32(math.Inf(-1)), 0), good}, "inf", "value 0 is -Inf"},
		{"zero examples", g, []Update{good, up("zero", 0, 1, 1)}, "zero", "example count 0"},
		{"negative examples", g, []Update{good, up("neg", -3, 1, 1)}, "neg", "example count -3"},
		{"no name", g, []Update{good, up("", 1, 1, 1)}, "", "no client name"},
		{"duplicate", g, []Update{good, up("ok", 2, 2, 2)}, "ok", "more than one update"},
		{"no updates", g, nil, "", "no updates"},
		{"empty model", nil, []Update{good}, "", "empty global model"},
		{"NaN model", []float64{0, math.NaN()}, []Update{good}, "", "global model value 1 is NaN"},
	}
	for _, c := range cases {
		for _, newS := range allStrategies(t) {
			s := newS()
			_, err := s.Aggregate(c.global, c.us)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%s, %s: err %v, want one containing %q", s.Name(), c.name, err, c.want)
			}
			var ue *UpdateError
			if errors.As(err, &ue) {
				if !errors.Is(err, ErrInvalidUpdate) || ue.Client != c.client || c.name == "no name" && ue.Client != "" {
					t.Fatalf("%s, %s: %v names client %q, want %q", s.Name(), c.name, err, ue.Client, c.client)
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("client %q", c.client)) {
					t.Fatalf("%s, %s: message %q does not name the client", s.Name(), c.name, err)
				}
			} else if c.client != "" || c.name == "no name" {
				t.Fatalf("%s, %s: %v is not an UpdateError", s.Name(), c.name, err)
			} else if !errors.Is(err, ErrConfig) {
				t.Fatalf("%s, %s: %v is not ErrConfig", s.Name(), c.name, err)
			}
		}
	}
}

func TestSelectK(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	inputs := [][]float64{{1}, {2, 1}, make([]float64, 100)}
	for i := 0; i < 200; i++ {
		a := make([]float64, 1+rng.IntN(300))
		for j := range a {
			a[j] = float64(rng.IntN(1 + i%20)) // many ties
		}
		inputs = append(inputs, a)
	}
	asc := make([]float64, 1000)
	for j := range asc {
		asc[j] = float64(j)
	}
	desc := slices.Clone(asc)
	slices.Reverse(desc)
	inputs = append(inputs, asc, desc)
	for _, in := range inputs {
		want := slices.Clone(in)
		slices.Sort(want)
		for _, k := range []int{0, len(in) / 2, len(in) - 1, rng.IntN(len(in))} {
			a := slices.Clone(in)
			selectK(a, k)
			if a[k] != want[k] || slices.Max(a[:k+1]) != a[k] || slices.Min(a[k:]) != a[k] {
				t.Fatalf("selectK(%v, %d) = %v, want rank value %v", in, k, a, want[k])
			}
		}
	}
}

// The robust strategies agree with plain sort-based implementations of
// numpy's median and scipy's trim_mean on random rounds.
func TestRobustMatchesSortReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, n := range []int{1, 2, 3, 4, 5, 10, 11, 33} {
		us := randomRound(rng, n, 131)
		global := make([]float64, 131)
		col := make([]float64, n)
		for _, beta := range []float64{0, 0.1, 0.2, 0.3, 0.45} {
			got := mustAggregate(t, FedTrimmedAvg{Beta: beta}, global, us)
			lower := int(beta * float64(n))
			for j := range global {
				for i, u := range us {
					col[i] = float64(u.Delta[j])
				}
				slices.Sort(col)
				s := 0.0
				for _, v := range col[lower : n-lower] {
					s += v
				}
				if want := s / float64(n-2*lower); math.Abs(got[j]-want) > 1e-12 {
					t.Fatalf("FedTrimmedAvg(%v) n=%d coordinate %d = %v, sorted reference %v", beta, n, j, got[j], want)
				}
			}
		}
		got := mustAggregate(t, FedMedian{}, global, us)
		for j := range global {
			for i, u := range us {
				col[i] = float64(u.Delta[j])
			}
			slices.Sort(col)
			want := col[n/2]
			if n%2 == 0 {
				want = (col[n/2-1] + col[n/2]) / 2
			}
			if got[j] != want {
				t.Fatalf("FedMedian n=%d coordinate %d = %v, sorted reference %v", n, j, got[j], want)
			}
		}
	}
}

// A NaN deep in a long delta (past the first chunk FedAvg checks while
// summing) is found and named.
func TestBadValueFarIn(t *testing.T) {
	g := make([]float64, 10000)
	ok, bad := make([]float32, 10000), make([]float32, 10000)
	bad[5000] = float32(math.Inf(1))
	for _, newS := range allStrategies(t) {
		s := newS()
		_, err := s.Aggregate(g, []Update{{Client: "ok", Delta: ok, Examples: 1}, {Client: "bad", Delta: bad, Examples: 1}, {Client: "ok2", Delta: ok, Examples: 1}})
		var ue *UpdateError
		if !errors.As(err, &ue) || ue.Client != "bad" || !strings.Contains(err.Error(), "value 5000 is +Inf") {
			t.Fatalf("%s: %v", s.Name(), err)
		}
	}
}
