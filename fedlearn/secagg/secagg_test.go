package secagg

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func TestShamir(t *testing.T) {
	r := seeded(1, 1)
	var secret [secretSize]byte
	r.Read(secret[:])
	xs := []uint32{3, 9, 4, 12, 1, 7}
	ys, err := split(&secret, xs, 4, r)
	if err != nil {
		t.Fatal(err)
	}
	for _, pick := range [][]int{{0, 1, 2, 3}, {5, 4, 3, 2}, {1, 3, 5, 0, 2}} {
		var px []uint32
		var py []share
		for _, i := range pick {
			px, py = append(px, xs[i]), append(py, ys[i])
		}
		got, err := combine(px, py, 4)
		if err != nil || got != secret {
			t.Fatalf("shares %v: %x, %v; want %x", pick, got, err, secret)
		}
	}
	// Three shares (below the threshold) interpolate another polynomial:
	// the result is not the secret, and almost surely not even a valid
	// encoding.
	// (each chunk then lands anywhere in the field, above its 2^56 bound
	// with probability 31/32: combine says so).
	if got, err := combine(xs[:3], ys[:3], 3); !errors.Is(err, errShares) || got == secret {
		t.Fatalf("3 of 4 shares: %v", err)
	}
	ys[1][2] ^= 1
	if got, err := combine(xs[:4], ys[:4], 4); !errors.Is(err, errShares) || got == secret {
		t.Fatalf("an altered share: %v", err)
	}
	if _, err := combine(xs[:3], ys[:3], 4); err == nil {
		t.Fatal("too few shares accepted")
	}
	if _, err := combine([]uint32{2, 2}, ys[:2], 2); err == nil {
		t.Fatal("repeated holder accepted")
	}
}

// Stochastic rounding is unbiased: a value 0.3 steps above a grid point
// averages back to it (rounding to nearest would be off by 0.3 steps).
func TestQuantizeUnbiased(t *testing.T) {
	p, err := Config{NumShares: 3, ReconstructionThreshold: 2}.Resolve(4, 100000)
	if err != nil {
		t.Fatal(err)
	}
	x := float32(-8 + 1000.3*step)
	d := make([]float32, p.Dim)
	for i := range d {
		d[i] = x
	}
	q := make([]uint32, p.Dim)
	if err := quantize(q, d, p, rand.New(rand.NewPCG(1, 2))); err != nil {
		t.Fatal(err)
	}
	back, err := dequantize(q, 1, p)
	if err != nil {
		t.Fatal(err)
	}
	var mean float64
	for _, v := range back {
		mean += v / float64(len(back))
	}
	if bias := (mean - float64(x)) / step; math.Abs(bias) > 0.01 {
		t.Fatalf("mean off by %.3f steps", bias)
	}
	d[0] = float32(math.NaN())
	if err := quantize(q, d, p, rand.New(rand.NewPCG(1, 2))); err == nil || !strings.Contains(err.Error(), "value 0 is NaN") {
		t.Fatalf("NaN: %v", err)
	}
}

func TestFieldArithmetic(t *testing.T) {
	for _, a := range []uint64{1, 2, 12345, fieldP - 1, fieldP - 2, 1 << 60} {
		if got := fmul(a, finv(a)); got != 1 {
			t.Fatalf("%d · %d⁻¹ = %d", a, a, got)
		}
	}
	if got := fmul(fieldP-1, fieldP-1); got != 1 { // (−1)² = 1
		t.Fatalf("(p−1)² = %d", got)
	}
}

func TestResolve(t *testing.T) {
	for _, c := range []struct {
		cfg      Config
		n        int
		k, t     int
		errMatch string
	}{
		{Config{NumShares: 5, ReconstructionThreshold: 3}, 10, 5, 3, ""},
		{Config{NumShares: 4, ReconstructionThreshold: 3}, 10, 5, 3, ""},     // even count made odd
		{Config{NumShares: 0.5, ReconstructionThreshold: 0.5}, 10, 5, 2, ""}, // Python's round(2.5) = 2
		{Config{NumShares: 0.4, ReconstructionThreshold: 0.6}, 36, 15, 9, ""},
		{Config{NumShares: 1, ReconstructionThreshold: 0.5}, 6, 6, 3, ""},
		{Config{NumShares: 0.1, ReconstructionThreshold: 0.5}, 10, 10, 5, ""}, // 1 share: too small, all clients
		{Config{NumShares: 50, ReconstructionThreshold: 3}, 10, 10, 3, ""},    // more than n: all
		{Config{NumShares: 2, ReconstructionThreshold: 2}, 10, 0, 0, "greater than 2"},
		{Config{NumShares: 5, ReconstructionThreshold: 5}, 10, 0, 0, "less than num_shares"},
		{Config{NumShares: 5.5, ReconstructionThreshold: 3}, 10, 0, 0, "integer"},
		{Config{ReconstructionThreshold: 3}, 10, 0, 0, "no default"},
		{Config{NumShares: 5, ReconstructionThreshold: 3}, 1, 0, 0, "clients"},
		{Config{NumShares: 5, ReconstructionThreshold: 3, ModulusRange: 3000}, 10, 0, 0, "power of two"},
		{Config{NumShares: 5, ReconstructionThreshold: 3, QuantizationRange: 1 << 32}, 10, 0, 0, "quantization_range"},
		{Config{NumShares: 5, ReconstructionThreshold: 3, ClippingRange: math.Inf(1)}, 10, 0, 0, "clipping_range"},
		{Config{NumShares: 5, ReconstructionThreshold: 3}, 1025, 0, 0, "wrap around"},
	} {
		p, err := c.cfg.Resolve(c.n, 100)
		if c.errMatch != "" {
			if err == nil || !strings.Contains(err.Error(), c.errMatch) || !errors.Is(err, ErrConfig) {
				t.Errorf("%+v n=%d: error %v, want one naming %q", c.cfg, c.n, err, c.errMatch)
			}
			continue
		}
		if err != nil {
			t.Errorf("%+v n=%d: %v", c.cfg, c.n, err)
			continue
		}
		if p.NumShares != c.k || p.Threshold != c.t || p.ClippingRange != 8 || p.QuantizationRange != 1<<22 || p.ModulusRange != 1<<32 {
			t.Errorf("%+v n=%d: %+v, want k=%d t=%d and Flower's defaults", c.cfg, c.n, p, c.k, c.t)
		}
	}
}

const step = 16.0 / (1<<22 - 1) // one quantisation step at the defaults

func checkSum(t *testing.T, o roundOutcome, wantClients int) {
	t.Helper()
	if len(o.res.Clients) != wantClients {
		t.Fatalf("%d clients in the sum, want %d (dropped %v)", len(o.res.Clients), wantClients, o.res.Dropped)
	}
	dim := len(o.res.Sum)
	want := plainSum(o.deltas, o.res.Clients, dim)
	rel, maxAbs := relErr(o.res.Sum, want)
	n := float64(len(o.res.Clients))
	t.Logf("%d clients x %d: relative error %.3g, max abs error %.3g (step %.3g)", len(o.res.Clients), dim, rel, maxAbs, step)
	if rel > 1e-4 || maxAbs > n*step {
		t.Fatalf("relative error %.3g (want <= 1e-4), max abs error %.3g (bound %.3g)", rel, maxAbs, n*step)
	}
}

func TestSumNoDropout(t *testing.T) {
	o := must(t, round{cfg: Config{NumShares: 3, ReconstructionThreshold: 2}, n: 5, dim: 300, seed: 1}.run())
	checkSum(t, o, 5)
	if len(o.res.Dropped) != 0 {
		t.Fatalf("dropped %v", o.res.Dropped)
	}
}

// 20 % of the clients drop after sharing their keys, before their masked
// vectors arrive: their pairwise masks are rebuilt from the shares of
// their mask keys.
func TestSumWithDropoutsAfterMasking(t *testing.T) {
	for _, c := range []struct {
		n, dim int
		cfg    Config
		drop   []int
	}{
		{10, 10000, Config{NumShares: 5, ReconstructionThreshold: 3}, []int{2, 7}},
		{36, 3206, Config{NumShares: 11, ReconstructionThreshold: 6}, []int{0, 5, 9, 14, 22, 30, 35}},
	} {
		o := must(t, round{cfg: c.cfg, n: c.n, dim: c.dim, seed: 2, dropMasked: c.drop}.run())
		checkSum(t, o, c.n-len(c.drop))
		if len(o.res.Dropped) != len(c.drop) {
			t.Fatalf("dropped %v, want %d", o.res.Dropped, len(c.drop))
		}
		// The same clients sending their vectors and then vanishing in the
		// unmask stage: their seeds come from their neighbours' shares.
		o = must(t, round{cfg: c.cfg, n: c.n, dim: c.dim, seed: 3, dropUnmask: c.drop}.run())
		checkSum(t, o, c.n)
	}
}

// A client that drops before sending its shares is in nobody's masks and is
// left out of the sum.
func TestDropBeforeShares(t *testing.T) {
	o := must(t, round{cfg: Config{NumShares: 5, ReconstructionThreshold: 3}, n: 10, dim: 500, seed: 4, dropSetup: []int{1}, dropShares: []int{4, 8}}.run())
	checkSum(t, o, 7)
	if len(o.res.Dropped) != 0 || slices.Contains(o.res.Clients, name(4)) {
		t.Fatalf("clients %v dropped %v", o.res.Clients, o.res.Dropped)
	}
}

func TestTooFewSurvivors(t *testing.T) {
	cfg := Config{NumShares: 5, ReconstructionThreshold: 3}
	for _, r := range []round{
		{dropMasked: []int{0, 1, 2, 3, 4, 5, 6, 7}},      // 2 vectors left
		{dropShares: []int{0, 1, 2, 3, 4, 5, 6, 7, 8}},   // 1 client left
		{dropUnmask: []int{0, 1, 2, 3, 4, 5, 6, 7, 9}},   // 1 client reveals shares
		{dropSetup: []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}}, // nobody
	} {
		r.cfg, r.n, r.dim, r.seed = cfg, 10, 50, 5
		o := r.run()
		if !errors.Is(o.err, ErrTooFewSurvivors) || o.res.Sum != nil {
			t.Fatalf("%+v: error %v, sum %v; want ErrTooFewSurvivors and no output", r, o.err, o.res.Sum != nil)
		}
		t.Log(o.err)
		if o.server != nil {
			if _, err := o.server.Result(); err == nil {
				t.Fatal("a failed server gave a result")
			}
		}
	}
}

func TestDeterministic(t *testing.T) {
	r := round{cfg: Config{NumShares: 5, ReconstructionThreshold: 3}, n: 8, dim: 200, seed: 6, dropMasked: []int{3}}
	a, b := must(t, r.run()), must(t, r.run())
	if !slices.Equal(a.res.Sum, b.res.Sum) {
		t.Fatal("same seeds, different sums")
	}
}

// uniformity measures a vector of values mod M: its mean over M (1/2 for
// uniform), a chi-square statistic over 64 equal buckets (63 degrees of
// freedom: mean 63, sd 11.2) and the fraction of values below Q (Q/M for
// uniform; 1 for a vector that is only quantised).
func uniformity(v []uint32, p Params) (mean, chi2, belowQ float64) {
	var buckets [64]float64
	for _, x := range v {
		mean += float64(x)
		buckets[uint64(x)*64/p.ModulusRange]++
		if uint64(x) < p.QuantizationRange {
			belowQ++
		}
	}
	n := float64(len(v))
	e := n / 64
	for _, b := range buckets {
		chi2 += (b - e) * (b - e) / e
	}
	return mean / n / float64(p.ModulusRange), chi2, belowQ / n
}

func assertUniform(t *testing.T, what string, v []uint32, p Params) {
	t.Helper()
	mean, chi2, below := uniformity(v, p)
	sd := 1 / math.Sqrt(12*float64(len(v)))
	t.Logf("%s: mean/M %.4f, chi2(63) %.1f, below Q %.5f", what, mean, chi2, below)
	if math.Abs(mean-0.5) > 5*sd || chi2 > 63+5*11.2 || below > 3*float64(p.QuantizationRange)/float64(p.ModulusRange) {
		t.Fatalf("%s does not look uniform mod M", what)
	}
}

// The server never sees an individual unmasked vector: a masked vector is
// uniform mod M, and so is what remains after removing only the private
// mask (which the server does learn for survivors). Removing the pairwise
// masks as well, which needs the client's mask key that the server never
// gets for a survivor, gives back the quantised delta: the statistics do
// tell masked from unmasked.
func TestMaskedVectorLooksUniform(t *testing.T) {
	seen := map[string]MaskedVector{}
	r := round{cfg: Config{NumShares: 5, ReconstructionThreshold: 3}, n: 10, dim: 20000, seed: 8,
		onMasked: func(c string, m MaskedVector) { seen[c] = m }}
	o := must(t, r.run())
	p := o.server.Params()
	c := o.clients[name(3)]
	v := slices.Clone(seen[name(3)].Values)
	assertUniform(t, "masked vector", v, p)

	buf := make([]byte, 4*len(v))
	applyMask(v, c.seed, -1, buf)
	assertUniform(t, "masked vector less its private mask", v, p)

	for _, other := range c.sources {
		if other != c.id {
			seed, err := pairwiseSeed(c.maskKey, c.peers[other].MaskKey, c.round)
			if err != nil {
				t.Fatal(err)
			}
			applyMask(v, seed, -pairSign(c.id, other), buf)
		}
	}
	if _, _, below := uniformity(v, p); below != 1 {
		t.Fatalf("without all its masks, %.4f of the vector is below Q, want all", below)
	}
	back, err := dequantize(v, 1, p)
	if err != nil {
		t.Fatal(err)
	}
	if rel, _ := relErr(back, plainSum(o.deltas, []string{name(3)}, len(v))); rel > 1e-3 {
		t.Fatalf("unmasked vector is not the client's delta: relative error %.3g", rel)
	}
	// The server's view: every unmask response reveals one kind of share per
	// owner, and only seeds (not mask keys) of clients that sent vectors.
	// Result checks this; here the client refuses to reveal both.
}

// tamperCollect rewrites the collect request for one client.
func tamperCollect(target string, f func(m *CollectRequest)) func(stage, c string, b []byte) []byte {
	return func(stage, c string, b []byte) []byte {
		if stage != "collect" || c != target {
			return b
		}
		var m CollectRequest
		if err := m.Unmarshal(b); err != nil {
			panic(err)
		}
		f(&m)
		return m.Marshal()
	}
}

func TestSharesTamperedOrReplayedRefused(t *testing.T) {
	cfg := Config{NumShares: 5, ReconstructionThreshold: 3}
	target := name(2)
	// Capture a share sealed in round 7.
	var old []EncryptedShare
	must(t, round{cfg: cfg, n: 6, dim: 10, seed: 9, tamper: tamperCollect(target, func(m *CollectRequest) { old = slices.Clone(m.Shares) })}.run())

	for _, c := range []struct {
		name   string
		f      func(m *CollectRequest)
		reason string
	}{
		{"flipped ciphertext bit", func(m *CollectRequest) { m.Shares[0].Ciphertext[5] ^= 1 }, "authentication failed"},
		{"flipped tag bit", func(m *CollectRequest) { m.Shares[1].Ciphertext[CiphertextSize-1] ^= 0x80 }, "authentication failed"},
		{"replayed from round 7", func(m *CollectRequest) { m.Shares[0] = old[0] }, "sealed in round 7, this is round 8 (replayed)"},
		{"replayed, round relabelled", func(m *CollectRequest) { m.Shares[0] = old[0]; m.Shares[0].Round = 8 }, "authentication failed"},
		{"replayed twice in the round", func(m *CollectRequest) { m.Shares = append(m.Shares, m.Shares[0]) }, "a second share from client"},
		{"sender relabelled", func(m *CollectRequest) { m.Shares[0].From, m.Shares[1].From = m.Shares[1].From, m.Shares[0].From }, "authentication failed"},
		{"misaddressed", func(m *CollectRequest) { m.Shares[0].To++ }, "addressed to client"},
		{"from a stranger", func(m *CollectRequest) { m.Shares[0].From = 6 + 1000 }, "not a neighbour"},
	} {
		r := round{cfg: cfg, n: 6, dim: 10, seed: 9, tamper: tamperCollect(target, c.f)}
		o := r.run8()
		var se *ShareError
		if !errors.As(o.err, &se) || !errors.Is(o.err, ErrShareRefused) || !strings.Contains(se.Reason, c.reason) || se.Client != target {
			t.Errorf("%s: error %v, want a share refused by %s because %q", c.name, o.err, target, c.reason)
			continue
		}
		t.Logf("%s: %v", c.name, o.err)
		if _, err := o.clients[target].Unmask(UnmaskRequest{Round: 8}); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: client went on after refusing a share: %v", c.name, err)
		}
	}
}

// run8 is run with round id 8 instead of 7.
func (r round) run8() roundOutcome {
	return r.withRound(8)
}

// The client reveals one kind of share per owner and only for clients it
// holds shares of.
func TestClientUnmaskRefusals(t *testing.T) {
	cfg := Config{NumShares: 5, ReconstructionThreshold: 3}
	fresh := func() (*Client, uint32, []uint32) {
		o := round{cfg: cfg, n: 6, dim: 10, seed: 10, dropUnmask: []int{0, 1, 2, 3, 4, 5}}.run()
		if !errors.Is(o.err, ErrTooFewSurvivors) {
			t.Fatal(o.err)
		}
		c := o.clients[name(0)]
		var others []uint32
		for _, s := range c.sources {
			if s != c.id {
				others = append(others, s)
			}
		}
		return c, c.id, others
	}
	for _, tc := range []struct {
		name string
		req  func(self uint32, o []uint32) UnmaskRequest
		want string
	}{
		{"both kinds for one client", func(self uint32, o []uint32) UnmaskRequest {
			return UnmaskRequest{Round: 7, Active: []uint32{self, o[0], o[1]}, Dead: []uint32{o[1]}}
		}, "twice"},
		{"fewer active than the threshold", func(self uint32, o []uint32) UnmaskRequest {
			return UnmaskRequest{Round: 7, Active: []uint32{self, o[0]}, Dead: o[1:]}
		}, "fewer than the threshold"},
		{"unknown client", func(self uint32, o []uint32) UnmaskRequest {
			return UnmaskRequest{Round: 7, Active: []uint32{self, o[0], o[1]}, Dead: []uint32{999}}
		}, "holds no share"},
		{"itself not active", func(self uint32, o []uint32) UnmaskRequest {
			return UnmaskRequest{Round: 7, Active: o, Dead: []uint32{self}}
		}, "not list this client as active"},
		{"another round", func(self uint32, o []uint32) UnmaskRequest {
			return UnmaskRequest{Round: 6, Active: append([]uint32{self}, o...)}
		}, "round 6 in round 7"},
	} {
		c, self, others := fresh()
		_, err := c.Unmask(tc.req(self, others))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %q", tc.name, err, tc.want)
		}
	}
	c, self, others := fresh()
	resp, err := c.Unmask(UnmaskRequest{Round: 7, Active: []uint32{self, others[0], others[1]}, Dead: others[2:]})
	if err != nil || len(resp.Shares) != 1+len(others) {
		t.Fatalf("valid request: %v, %d shares", err, len(resp.Shares))
	}
	if _, err := c.Unmask(UnmaskRequest{Round: 7, Active: []uint32{self, others[0], others[1]}}); !errors.Is(err, ErrProtocol) {
		t.Fatalf("second unmask request answered: %v", err)
	}
}

func TestServerRefusals(t *testing.T) {
	names := []string{"a", "b", "c", "d"}
	cfg := Config{NumShares: 3, ReconstructionThreshold: 2}
	if _, err := NewServer(cfg, 1, []string{"a", "a", "b"}, 5, seeded(1, 0)); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("duplicate names: %v", err)
	}
	if _, err := NewServer(cfg, 1, []string{"a", "", "b"}, 5, seeded(1, 0)); err == nil {
		t.Fatal("empty name accepted")
	}
	s, err := NewServer(cfg, 1, names, 5, seeded(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	c := NewClient("a", seeded(1, 1))
	pk, err := c.Setup(s.Setup()["a"])
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		from string
		m    PublicKeys
		want string
	}{
		{"z", pk, "not a client"},
		{"b", pk, "claims client id 1"},
		{"a", PublicKeys{Round: 2, PeerKeys: pk.PeerKeys}, "round 2"},
		{"a", PublicKeys{Round: 1, PeerKeys: PeerKeys{ClientID: 1}}, "public keys from \"a\""}, // all-zero key: low order
	} {
		if err := s.AddPublicKeys(tc.from, tc.m); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("keys from %s: %v, want %q", tc.from, err, tc.want)
		}
	}
	if err := s.AddPublicKeys("a", pk); err != nil {
		t.Fatal(err)
	}
	if err := s.AddPublicKeys("a", pk); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("duplicate keys: %v", err)
	}
	if err := s.AddMaskedVector("a", MaskedVector{Round: 1, From: 1}); !errors.Is(err, ErrProtocol) {
		t.Fatalf("masked vector in the key stage: %v", err)
	}
	if _, err := s.Result(); !errors.Is(err, ErrProtocol) {
		t.Fatalf("result in the key stage: %v", err)
	}
	if _, err := c.Setup(s.Setup()["a"]); !errors.Is(err, ErrProtocol) {
		t.Fatalf("second setup: %v", err)
	}
}

func TestClientRefusesBadSetup(t *testing.T) {
	p, err := Config{NumShares: 3, ReconstructionThreshold: 2}.Resolve(4, 10)
	if err != nil {
		t.Fatal(err)
	}
	bad := p
	bad.Threshold = 9
	if _, err := NewClient("x", seeded(1, 1)).Setup(Setup{Round: 1, ClientID: 1, Params: bad}); err == nil || !strings.Contains(err.Error(), "reconstruction_threshold") {
		t.Fatalf("bad threshold: %v", err)
	}
	if _, err := NewClient("x", seeded(1, 1)).Setup(Setup{Round: 1, ClientID: 5, Params: p}); err == nil || !strings.Contains(err.Error(), "client id 5") {
		t.Fatalf("bad id: %v", err)
	}
	c := NewClient("x", seeded(1, 1))
	if _, err := c.Setup(Setup{Round: 1, ClientID: 1, Params: p}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ShareKeys(KeysRequest{Round: 1, Neighbours: []PeerKeys{{ClientID: 1}, {ClientID: 2}}}); err == nil || !strings.Contains(err.Error(), "own keys") {
		t.Fatalf("substituted own keys: %v", err)
	}
}

func TestMessagesRoundTrip(t *testing.T) {
	var ct [CiphertextSize]byte
	ct[3] = 9
	msgs := []interface {
		Marshal() []byte
	}{
		&Setup{Round: 3, ClientID: 2, Params: Params{NumClients: 4, NumShares: 3, Threshold: 2, ClippingRange: 8, QuantizationRange: 1 << 22, ModulusRange: 1 << 32, Dim: 10}},
		&PublicKeys{Round: 3, PeerKeys: PeerKeys{ClientID: 2, MaskKey: [32]byte{1}, EncKey: [32]byte{2}}},
		&KeysRequest{Round: 3, Neighbours: []PeerKeys{{ClientID: 1}, {ClientID: 4, EncKey: [32]byte{7}}}},
		&Shares{Round: 3, From: 2, Shares: []EncryptedShare{{Round: 3, From: 2, To: 1, Ciphertext: ct}}},
		&CollectRequest{Round: 3, Shares: []EncryptedShare{{Round: 3, From: 1, To: 2, Ciphertext: ct}}},
		&MaskedVector{Round: 3, From: 2, Width: 3, Values: []uint32{0, 1, 1<<24 - 1}},
		&UnmaskRequest{Round: 3, Active: []uint32{1, 2}, Dead: []uint32{4}},
		&UnmaskResponse{Round: 3, From: 2, Shares: []RevealedShare{{Owner: 1, Kind: KindMaskSeed, Value: [5]uint64{1, 2, 3, 4, 5}}}},
	}
	for i, m := range msgs {
		b := m.Marshal()
		b2, err := decodeAny(byte(i+1), b)
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("%T: %v", m, err)
		}
		for _, cut := range []int{0, 5, headerSize, len(b) - 1} {
			if _, err := decodeAny(byte(i+1), b[:cut]); !errors.Is(err, ErrDecode) {
				t.Fatalf("%T cut at %d: %v", m, cut, err)
			}
		}
		if _, err := decodeAny(byte(i+1), append(b, 0)); err == nil || !strings.Contains(err.Error(), "trailing") {
			t.Fatalf("%T with a trailing byte: %v", m, err)
		}
		if _, err := decodeAny(byte((i+1)%8+1), b); !errors.Is(err, ErrDecode) {
			t.Fatalf("%T decoded as another type: %v", m, err)
		}
	}
}

// decodeAny decodes b as message type typ and encodes it again.
func decodeAny(typ byte, b []byte) ([]byte, error) {
	var m interface {
		Marshal() []byte
		Unmarshal([]byte) error
	}
	switch typ {
	case typeSetup:
		m = &Setup{}
	case typePublicKeys:
		m = &PublicKeys{}
	case typeKeysRequest:
		m = &KeysRequest{}
	case typeShares:
		m = &Shares{}
	case typeCollectRequest:
		m = &CollectRequest{}
	case typeMaskedVector:
		m = &MaskedVector{}
	case typeUnmaskRequest:
		m = &UnmaskRequest{}
	default:
		m = &UnmaskResponse{}
	}
	if err := m.Unmarshal(b); err != nil {
		return nil, err
	}
	return m.Marshal(), nil
}

// TestRespondDispatchesByMessage: Respond takes each stage's step from the
// message's type, calls vector only in the collect stage, and refuses
// what a client does not answer.
func TestRespondDispatchesByMessage(t *testing.T) {
	srv, err := NewServer(Config{NumShares: 3, ReconstructionThreshold: 2}, 9, []string{"a", "b", "c"}, 2, seeded(2, 3))
	if err != nil {
		t.Fatal(err)
	}
	clients := map[string]*Client{}
	calls := 0
	vec := func() ([]float32, error) { calls++; return []float32{0.5, -0.25}, nil }
	for n, m := range srv.Setup() {
		clients[n] = NewClient(n, seeded(4, uint64(len(clients))))
		b, err := clients[n].Respond(m.Marshal(), vec)
		if err != nil {
			t.Fatal(err)
		}
		var pk PublicKeys
		if err := pk.Unmarshal(b); err != nil {
			t.Fatalf("setup answered with %v", err)
		}
		if err := srv.AddPublicKeys(n, pk); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 0 {
		t.Fatalf("vector asked %d times before the collect stage", calls)
	}
	if _, err := clients["a"].Respond((&PublicKeys{Round: 9}).Marshal(), vec); !errors.Is(err, ErrDecode) {
		t.Fatalf("a client's own kind of message: %v", err)
	}
	if _, err := clients["a"].Respond([]byte("EFSA"), vec); !errors.Is(err, ErrDecode) {
		t.Fatalf("a short message: %v", err)
	}
	boom := errors.New("training failed")
	reqs, err := srv.KeysRequests()
	if err != nil {
		t.Fatal(err)
	}
	for n, m := range reqs {
		b, err := clients[n].Respond(m.Marshal(), vec)
		if err != nil {
			t.Fatal(err)
		}
		var sh Shares
		if err := sh.Unmarshal(b); err != nil || srv.AddShares(n, sh) != nil {
			t.Fatalf("shares: %v", err)
		}
	}
	creqs, err := srv.CollectRequests()
	if err != nil {
		t.Fatal(err)
	}
	ca, cb := creqs["a"], creqs["b"]
	if _, err := clients["a"].Respond(ca.Marshal(), func() ([]float32, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("the vector's error: %v", err)
	}
	if _, err := clients["b"].Respond(cb.Marshal(), vec); err != nil || calls != 1 {
		t.Fatalf("collect: %v, vector asked %d times", err, calls)
	}
}
