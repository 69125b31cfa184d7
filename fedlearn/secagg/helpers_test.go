package secagg

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// seeded returns a deterministic randomness stream.
func seeded(seed uint64, stream uint64) *rand.ChaCha8 {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
		s[8+i] = byte(stream >> (8 * i))
	}
	return rand.NewChaCha8(s)
}

// round describes one simulated round. Drop lists name clients (by index)
// that vanish before answering the given stage.
type round struct {
	cfg        Config
	n, dim     int
	seed       uint64
	sigma      float64 // spread of the deltas
	dropSetup  []int   // never answer setup
	dropShares []int   // answer setup, never send shares
	dropMasked []int   // send shares, never send a masked vector
	dropUnmask []int   // send a masked vector, never answer unmask
	// tamper may change a server-to-client message (encoded) before the
	// client decodes it.
	tamper func(stage, client string, b []byte) []byte
	// onMasked sees every masked vector the server receives.
	onMasked func(client string, m MaskedVector)
	// stopBefore ("keys", "collect" or "unmask") ends the run once the
	// server has handed out that stage's requests, before any client
	// takes them.
	stopBefore string
	// wire sees every encoded message, both ways.
	wire func(b []byte)
	// deltas replaces the Gaussian deltas.
	deltas map[string][]float32
}

type roundOutcome struct {
	res       Result
	err       error
	deltas    map[string][]float32
	clients   map[string]*Client
	server    *Server
	bytesUp   map[string]map[string]int // client -> stage -> bytes sent
	bytesDown map[string]map[string]int
}

func name(i int) string { return fmt.Sprintf("client-%03d", i) }

func (r round) names(idx []int) map[string]bool {
	out := map[string]bool{}
	for _, i := range idx {
		out[name(i)] = true
	}
	return out
}

func makeDeltas(n, dim int, sigma float64, seed uint64) map[string][]float32 {
	rng := rand.New(rand.NewPCG(seed, 0xde17a))
	out := map[string][]float32{}
	for i := range n {
		d := make([]float32, dim)
		for j := range d {
			d[j] = float32(sigma * rng.NormFloat64())
		}
		out[name(i)] = d
	}
	return out
}

// run drives the round through the wire encodings. It returns the first
// error of the server or of a client that did not drop.
func (r round) run() roundOutcome { return r.withRound(7) }

func (r round) withRound(id uint64) roundOutcome {
	if r.sigma == 0 {
		r.sigma = 0.05
	}
	if r.deltas == nil {
		r.deltas = makeDeltas(r.n, r.dim, r.sigma, r.seed)
	}
	o := roundOutcome{deltas: r.deltas, clients: map[string]*Client{},
		bytesUp: map[string]map[string]int{}, bytesDown: map[string]map[string]int{}}
	names := make([]string, r.n)
	for i := range names {
		names[i] = name(i)
		o.clients[names[i]] = NewClient(names[i], seeded(r.seed, uint64(i+1)))
		o.bytesUp[names[i]] = map[string]int{}
		o.bytesDown[names[i]] = map[string]int{}
	}
	srv, err := NewServer(r.cfg, id, names, r.dim, seeded(r.seed, 0))
	if err != nil {
		o.err = err
		return o
	}
	o.server = srv
	down := func(stage, c string, b []byte) []byte {
		if r.tamper != nil {
			b = r.tamper(stage, c, b)
		}
		o.bytesDown[c][stage] += len(b)
		if r.wire != nil {
			r.wire(b)
		}
		return b
	}
	fail := func(err error) roundOutcome { o.err = err; return o }

	drop := r.names(r.dropSetup)
	for _, c := range names {
		if drop[c] {
			continue
		}
		m := srv.Setup()[c]
		var in Setup
		if err := in.Unmarshal(down("setup", c, m.Marshal())); err != nil {
			return fail(err)
		}
		pk, err := o.clients[c].Setup(in)
		if err != nil {
			return fail(err)
		}
		b := pk.Marshal()
		o.bytesUp[c]["keys"] += len(b)
		if r.wire != nil {
			r.wire(b)
		}
		var got PublicKeys
		if err := got.Unmarshal(b); err != nil {
			return fail(err)
		}
		if err := srv.AddPublicKeys(c, got); err != nil {
			return fail(err)
		}
	}
	kreq, err := srv.KeysRequests()
	if err != nil {
		return fail(err)
	}
	if r.stopBefore == "keys" {
		return o
	}
	drop = r.names(r.dropShares)
	for _, c := range sortedKeys(kreq) {
		if drop[c] {
			continue
		}
		var in KeysRequest
		m := kreq[c]
		if err := in.Unmarshal(down("keys", c, m.Marshal())); err != nil {
			return fail(err)
		}
		sh, err := o.clients[c].ShareKeys(in)
		if err != nil {
			return fail(err)
		}
		b := sh.Marshal()
		o.bytesUp[c]["shares"] += len(b)
		if r.wire != nil {
			r.wire(b)
		}
		var got Shares
		if err := got.Unmarshal(b); err != nil {
			return fail(err)
		}
		if err := srv.AddShares(c, got); err != nil {
			return fail(err)
		}
	}
	creq, err := srv.CollectRequests()
	if err != nil {
		return fail(err)
	}
	if r.stopBefore == "collect" {
		return o
	}
	drop = r.names(r.dropMasked)
	for _, c := range sortedKeys(creq) {
		if drop[c] {
			continue
		}
		var in CollectRequest
		m := creq[c]
		if err := in.Unmarshal(down("collect", c, m.Marshal())); err != nil {
			return fail(err)
		}
		mv, err := o.clients[c].MaskVector(in, o.deltas[c])
		if err != nil {
			return fail(err)
		}
		b := mv.Marshal()
		o.bytesUp[c]["masked"] += len(b)
		if r.wire != nil {
			r.wire(b)
		}
		var got MaskedVector
		if err := got.Unmarshal(b); err != nil {
			return fail(err)
		}
		if r.onMasked != nil {
			r.onMasked(c, got)
		}
		if err := srv.AddMaskedVector(c, got); err != nil {
			return fail(err)
		}
	}
	ureq, err := srv.UnmaskRequests()
	if err != nil {
		return fail(err)
	}
	if r.stopBefore == "unmask" {
		return o
	}
	drop = r.names(r.dropUnmask)
	for _, c := range sortedKeys(ureq) {
		if drop[c] {
			continue
		}
		var in UnmaskRequest
		m := ureq[c]
		if err := in.Unmarshal(down("unmask", c, m.Marshal())); err != nil {
			return fail(err)
		}
		resp, err := o.clients[c].Unmask(in)
		if err != nil {
			return fail(err)
		}
		b := resp.Marshal()
		o.bytesUp[c]["unmask"] += len(b)
		if r.wire != nil {
			r.wire(b)
		}
		var got UnmaskResponse
		if err := got.Unmarshal(b); err != nil {
			return fail(err)
		}
		if err := srv.AddUnmask(c, got); err != nil {
			return fail(err)
		}
	}
	o.res, o.err = srv.Result()
	return o
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// plainSum is the float64 sum of the named clients' deltas.
func plainSum(deltas map[string][]float32, clients []string, dim int) []float64 {
	out := make([]float64, dim)
	for _, c := range clients {
		for j, v := range deltas[c] {
			out[j] += float64(v)
		}
	}
	return out
}

// relErr is ‖a − b‖ / ‖b‖ and the largest absolute difference.
func relErr(a, b []float64) (rel, maxAbs float64) {
	var num, den float64
	for i := range a {
		d := a[i] - b[i]
		num += d * d
		den += b[i] * b[i]
		maxAbs = max(maxAbs, math.Abs(d))
	}
	return math.Sqrt(num / den), maxAbs
}

func must(t testing.TB, o roundOutcome) roundOutcome {
	t.Helper()
	if o.err != nil {
		t.Fatal(o.err)
	}
	return o
}
