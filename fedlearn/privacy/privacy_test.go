package privacy

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/fedlearn/strategy"
)

func TestClip(t *testing.T) {
	if n := L2Norm([]float32{3, 4}); n != 5 {
		t.Fatalf("‖[3 4]‖ = %v", n)
	}
	if n := L2Norm([]float64{3e200, 4e200}); math.Abs(n-5e200) > 1e186 {
		t.Fatalf("‖[3e200 4e200]‖ = %v, want 5e200", n)
	}
	for _, c := range []struct{ norm, c, want float64 }{{5, 1, 0.2}, {5, 10, 1}, {0, 1, 1}, {5, 5, 1}} {
		if f := ClipFactor(c.norm, c.c); f != c.want {
			t.Errorf("ClipFactor(%v, %v) = %v, want %v", c.norm, c.c, f, c.want)
		}
	}
}

// seed returns a 32-byte seed from a number.
func seed(n byte) [32]byte { return [32]byte{n} }

func TestCentralNoiselessHandComputed(t *testing.T) {
	// C = 1: a = [3, 4] (norm 5) is clipped to [0.6, 0.8]; b = [0, 1] is
	// not. Equal weights despite the example counts: mean [0.3, 0.9].
	d := &Central{Clip: 1, NoiseMultiplier: 0, Next: strategy.FedAvg{}, Source: NewSource(seed(1))}
	out, err := d.Aggregate([]float64{1, 1}, []strategy.Update{
		{Client: "a", Delta: []float32{3, 4}, Examples: 1},
		{Client: "b", Delta: []float32{0, 1}, Examples: 100},
	})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(out[0]-1.3) > 1e-7 || math.Abs(out[1]-1.9) > 1e-7 {
		t.Fatalf("DP(FedAvg) without noise = %v, want [1.3 1.9]", out)
	}
	if l := d.Last(); l != (Round{Clients: 2, Clipped: 1, Sigma: 0}) {
		t.Fatalf("last round %+v", l)
	}
	if d.Name() != "DP(FedAvg)" {
		t.Fatalf("name %q", d.Name())
	}
}

// The noise on the mean has standard deviation z·C/m, mean 0, and the same
// seed gives the same model.
func TestCentralNoise(t *testing.T) {
	const dim, m = 200000, 4
	us := make([]strategy.Update, m)
	for i := range us {
		us[i] = strategy.Update{Client: string(rune('a' + i)), Delta: make([]float32, dim), Examples: 1}
	}
	global := make([]float64, dim)
	run := func(s byte) []float64 {
		d := &Central{Clip: 2, NoiseMultiplier: 1.5, Next: strategy.FedAvg{}, Source: NewSource(seed(s))}
		out, err := d.Aggregate(global, us)
		if err != nil {
			t.Fatal(err)
		}
		if want := 1.5 * 2 / m; d.Last().Sigma != want {
			t.Fatalf("sigma %v, want %v", d.Last().Sigma, want)
		}
		return out
	}
	out := run(7)
	mean, sq := 0.0, 0.0
	for _, v := range out {
		mean += v
		sq += v * v
	}
	mean /= dim
	std := math.Sqrt(sq/dim - mean*mean)
	// σ = 1.5·2/4 = 0.75; the standard error of the sample std over 2e5
	// draws is σ/√(2n) ≈ 0.0012, of the mean σ/√n ≈ 0.0017.
	if math.Abs(std-0.75) > 0.01 || math.Abs(mean) > 0.01 {
		t.Fatalf("noise mean %v std %v, want 0 and 0.75", mean, std)
	}
	again, other := run(7), run(8)
	same := 0
	for j := range out {
		if out[j] != again[j] {
			t.Fatalf("same seed, value %d differs: %v vs %v", j, out[j], again[j])
		}
		if out[j] == other[j] {
			same++
		}
	}
	if same > 10 {
		t.Fatalf("another seed gave %d equal values", same)
	}
}

// With a FedOpt behind it, central DP hands the clipped uniform mean to the
// optimiser: without noise, the same as FedAdam on equal-weight updates.
func TestCentralFedOpt(t *testing.T) {
	us := []strategy.Update{
		{Client: "a", Delta: []float32{0.3, -0.1}, Examples: 5},
		{Client: "b", Delta: []float32{0.1, 0.1}, Examples: 1},
	}
	adam, _ := strategy.NewFedOpt(strategy.Adam, strategy.DefaultFedOptConfig(strategy.Adam))
	d := &Central{Clip: 10, Next: adam, Source: NewSource(seed(1))}
	got, err := d.Aggregate([]float64{0, 0}, us)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := strategy.NewFedOpt(strategy.Adam, strategy.DefaultFedOptConfig(strategy.Adam))
	want, _ := ref.ApplyMean([]float64{0, 0}, []float64{float64(float32(0.3)+float32(0.1)) / 2, 0})
	for j := range want {
		if math.Abs(got[j]-want[j]) > 1e-9 {
			t.Fatalf("DP(FedAdam) = %v, FedAdam on the uniform mean = %v", got, want)
		}
	}
}

func TestCentralBadInput(t *testing.T) {
	good := []strategy.Update{{Client: "a", Delta: []float32{1}, Examples: 1}}
	for _, c := range []struct {
		d    *Central
		us   []strategy.Update
		want string
	}{
		{&Central{Clip: 0, Next: strategy.FedAvg{}}, good, "clipping norm 0"},
		{&Central{Clip: 1, NoiseMultiplier: -1, Next: strategy.FedAvg{}}, good, "noise multiplier -1"},
		{&Central{Clip: 1}, good, "no strategy"},
		{&Central{Clip: 1, Next: strategy.FedAvg{}}, []strategy.Update{{Client: "x", Delta: []float32{float32(math.NaN())}, Examples: 1}}, `client "x"`},
	} {
		if _, err := c.d.Aggregate([]float64{0}, c.us); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("err %v, want %q", err, c.want)
		}
	}
}

func TestLocal(t *testing.T) {
	const dim = 200000
	delta := make([]float64, dim)
	for j := range delta {
		delta[j] = 0.01 // norm 0.01·√200000 ≈ 4.47
	}
	l := &Local{Clip: 2, NoiseMultiplier: 0.25, Source: NewSource(seed(3))}
	out, clipped, err := l.Privatize(delta)
	if err != nil {
		t.Fatal(err)
	}
	if !clipped || delta[0] != 0.01 {
		t.Fatalf("clipped %v, input changed to %v", clipped, delta[0])
	}
	// Each value: 0.01·(2/4.4721) = 0.004472 plus noise of σ = 0.25·2 = 0.5.
	want := 0.01 * 2 / L2Norm(delta)
	mean, sq := 0.0, 0.0
	for _, v := range out {
		mean += float64(v)
		sq += float64(v) * float64(v)
	}
	mean /= dim
	std := math.Sqrt(sq/dim - mean*mean)
	if math.Abs(std-0.5) > 0.005 || math.Abs(mean-want) > 0.003 {
		t.Fatalf("mean %v std %v, want %v and 0.5", mean, std, want)
	}
	// Without noise the result is the clipped delta, norm C.
	l0 := &Local{Clip: 1, Source: NewSource(seed(3))}
	out0, _, _ := l0.Privatize(delta)
	if n := L2Norm(out0); math.Abs(n-1) > 1e-6 {
		t.Fatalf("clipped norm %v, want 1", n)
	}
	if _, _, err := l.Privatize([]float64{1, math.Inf(1)}); err == nil || !strings.Contains(err.Error(), "value 1 is +Inf") {
		t.Fatalf("Inf accepted: %v", err)
	}
	if _, _, err := (&Local{Clip: -1}).Privatize(delta); err == nil {
		t.Fatal("negative clipping norm accepted")
	}
}

func TestRDPHandDerived(t *testing.T) {
	// q = 1: RDP(α) = α/(2z²). z = 5: α/50.
	for _, a := range []int{2, 4, 100, 512} {
		r, err := RDP(1, 5, a)
		if err != nil || math.Abs(r-float64(a)/50) > 1e-15 {
			t.Fatalf("RDP(1, 5, %d) = %v, %v; want %v", a, r, err, float64(a)/50)
		}
	}
	// α = 2 by hand: A = (1−q)² + 2q(1−q) + q²·e^{1/z²} = 1 + q²(e^{1/z²} − 1).
	q, z := 0.1, 1.0
	want := math.Log1p(q*q*(math.Exp(1/(z*z))-1)) / 1
	if r, _ := RDP(q, z, 2); math.Abs(r-want) > 1e-15 {
		t.Fatalf("RDP(0.1, 1, 2) = %v, want %v", r, want)
	}
	if r, _ := RDP(0, 1, 8); r != 0 {
		t.Fatalf("q=0: %v", r)
	}
	if r, _ := RDP(0.5, 0, 8); !math.IsInf(r, 1) {
		t.Fatalf("z=0: %v", r)
	}
	for _, c := range []struct {
		q, z float64
		a    int
	}{{-0.1, 1, 2}, {1.1, 1, 2}, {math.NaN(), 1, 2}, {0.5, -1, 2}, {0.5, math.Inf(1), 2}, {0.5, 1, 1}, {0.5, 1, 513}} {
		if _, err := RDP(c.q, c.z, c.a); err == nil {
			t.Errorf("RDP(%v, %v, %d) accepted", c.q, c.z, c.a)
		}
	}
}

// Reference values from testdata/rdp_reference.py (Python mpmath at 80
// digits, not in log space: the binomial expansion with exact integer
// binomials, itself checked there against numerical integration of the
// Rényi divergence; run once, output recorded here).
func TestRDPReference(t *testing.T) {
	for _, c := range []struct {
		q, z float64
		a    int
		want float64
	}{
		{0.01, 1.1, 2, 0.00012851008160516180291},
		{0.3, 0.8, 5, 2.4071214963609135715},
		{0.5, 2.0, 16, 1.2867733394609892981},
		{0.01, 1.1, 32, 8.4694164336759256321},
		{0.1, 1.0, 8, 1.3783614113481265741},
		{0.5, 2.0, 256, 31.304134595202564709},
		{0.02, 0.7, 512, 518.5293009640888347},
	} {
		r, err := RDP(c.q, c.z, c.a)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(r-c.want) > 1e-9*c.want {
			t.Errorf("RDP(%v, %v, %d) = %.17g, reference %.17g (rel %.2g)", c.q, c.z, c.a, r, c.want, math.Abs(r-c.want)/c.want)
		}
	}
}

func TestEpsilonReference(t *testing.T) {
	for _, c := range []struct {
		q, z   float64
		rounds int
		delta  float64
		want   float64
		order  int
	}{
		// The reference, by hand: T·RDP(α) = 50·α/50 = α, so
		// ε = min_α α + ln(1e5)/(α−1); α = 4 gives 4 + 11.5129255/3 = 7.8376418.
		{1, 5, 50, 1e-5, 7.8376418216567427794, 4},
		// testdata/rdp_reference.py:
		{0.01, 1.1, 10000, 1e-5, 6.2798110295722238092, 5},
		{0.1, 1.0, 100, 1e-5, 8.9276927628227570516, 3},
		{10.0 / 36, 1.0, 50, 1e-5, 17.737989652681646231, 2},
		{0.5, 2.0, 200, 1e-6, 27.535255434295955433, 2},
	} {
		s, err := Epsilon(c.q, c.z, c.rounds, c.delta)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(s.Epsilon-c.want) > 1e-9*c.want || s.Order != c.order || s.Rounds != c.rounds || s.Delta != c.delta {
			t.Errorf("Epsilon(q=%v z=%v T=%d δ=%v) = %+v, reference ε %.17g at order %d", c.q, c.z, c.rounds, c.delta, s, c.want, c.order)
		}
	}
}

func TestAccountant(t *testing.T) {
	a, err := NewAccountant(1e-5, 8)
	if err != nil {
		t.Fatal(err)
	}
	if s := a.Spent(); s.Epsilon != 0 || s.Rounds != 0 {
		t.Fatalf("fresh accountant spent %+v", s)
	}
	// Round by round equals all at once.
	for i := 0; i < 50; i++ {
		if _, err := a.Check(1, 5, 1); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if err := a.Add(1, 5, 1); err != nil {
			t.Fatal(err)
		}
	}
	if s := a.Spent(); math.Abs(s.Epsilon-7.8376418216567427794) > 1e-9 || s.Rounds != 50 {
		t.Fatalf("after 50 rounds %+v, want ε 7.8376", s)
	}
	// With q = 1, z = 5: 51 rounds give min_α 51α/50 + 11.5129/(α−1) = 7.92
	// (α = 4), 52 give 8.00 (α = 4: 4.16 + 3.8376 = 7.9976), 53 give 8.08.
	n, err := a.Remaining(1, 5, 1000)
	if err != nil || n != 2 {
		t.Fatalf("remaining %d, %v; want 2", n, err)
	}
	if s, err := a.Check(1, 5, 3); !errors.Is(err, ErrBudgetExceeded) || s.Epsilon <= 8 {
		t.Fatalf("3 more rounds: %+v, %v; want ErrBudgetExceeded", s, err)
	}
	if a.Spent().Rounds != 50 {
		t.Fatal("Check changed the accountant")
	}
	// Rounds of different q compose by adding RDP.
	b, _ := NewAccountant(1e-5, 0)
	b.Add(0.1, 1, 60)
	b.Add(0.1, 1, 40)
	if s, _ := Epsilon(0.1, 1, 100, 1e-5); math.Abs(b.Spent().Epsilon-s.Epsilon) > 1e-12 {
		t.Fatalf("60+40 rounds ε %v, 100 rounds %v", b.Spent().Epsilon, s.Epsilon)
	}
	if n, _ := b.Remaining(0.1, 1, 77); n != 77 {
		t.Fatalf("no budget: remaining %d, want the limit 77", n)
	}
	// No noise: no privacy.
	c, _ := NewAccountant(1e-5, 1)
	c.Add(0.5, 0, 1)
	if s := c.Spent(); !math.IsInf(s.Epsilon, 1) {
		t.Fatalf("z=0: %+v", s)
	}
	for _, bad := range [][2]float64{{0, 1}, {1, 1}, {1e-5, -1}, {1e-5, math.Inf(1)}} {
		if _, err := NewAccountant(bad[0], bad[1]); err == nil {
			t.Errorf("NewAccountant(%v, %v) accepted", bad[0], bad[1])
		}
	}
	if err := a.Add(1, 5, -1); err == nil {
		t.Error("negative rounds accepted")
	}
}

// With the same seed, central DP gives the same model whatever the order
// of the updates.
func TestCentralOrderInvariance(t *testing.T) {
	us := []strategy.Update{
		{Client: "c", Delta: []float32{0.3, -2, 0.1}, Examples: 5},
		{Client: "a", Delta: []float32{0.1, 0.1, 9}, Examples: 1},
		{Client: "b", Delta: []float32{-0.7, 0.2, 0.3}, Examples: 2},
	}
	run := func(us []strategy.Update) []float64 {
		d := &Central{Clip: 1, NoiseMultiplier: 1, Next: strategy.FedAvg{}, Source: NewSource(seed(9))}
		out, err := d.Aggregate([]float64{0, 0, 0}, us)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	want := run(us)
	got := run([]strategy.Update{us[1], us[2], us[0]})
	for j := range want {
		if math.Float64bits(got[j]) != math.Float64bits(want[j]) {
			t.Fatalf("value %d: %v in one order, %v in another", j, got[j], want[j])
		}
	}
}
