package secaggbench

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/bench"
	"github.com/edgefleet/edgefleet/fedlearn/secagg"
)

// SecAggSize is one workload of the secagg suite.
type SecAggSize struct {
	Clients, Params int
}

// SecAggOptions configure RunSecAgg. Zero values take the defaults.
type SecAggOptions struct {
	// Sizes to run; nil = 36 clients x 3,206 values (WISDM MLP(64)) and
	// 100 clients x 10,000.
	Sizes []SecAggSize
	// NumShares and Threshold as in secagg.Config; 0 = 0.5 and 0.5
	// (proportions: half the clients, and half of those; with 20 % random
	// dropouts, 11 and 6 at 100 clients leave some neighbourhood below the
	// threshold in 4 of 20 seeded rounds).
	NumShares, Threshold float64
	// Dropout is the fraction of clients that send their shares and then
	// drop before their masked vector arrives (their pairwise masks are
	// recovered); 0 = 0.2, negative = none.
	Dropout float64
	// Rounds of measurements; medians are reported. 0 = 3.
	Rounds int
	// Seed draws the deltas and the dropouts. Key material comes from
	// crypto/rand, as in production.
	Seed uint64
	// Now is the clock; nil = time.Now.
	Now func() time.Time
}

// RunSecAgg runs the secure-aggregation suite: whole SecAgg+ rounds
// (fedlearn/secagg, Flower's default ranges), every message encoded and
// decoded as on the wire, on one goroutine, beside the plain round it
// replaces in the same run: each client encodes its float32 delta, the
// server decodes and sums them. For each size it reports
//
//   - client_cpu: time per surviving client for its four stages, beside
//     encoding its plain float32 update;
//   - server_cpu: time of the server's side of the round, beside decoding
//     and summing the plain updates;
//   - update_bytes: bytes of one masked vector, beside the plain update
//     (4 bytes per value); Ratio is the size overhead of the update;
//   - key_share_bytes: the rest a surviving client sends (public keys,
//     sealed shares, revealed shares), beside the plain update;
//   - download_bytes: what the server sends one client (setup, keys,
//     forwarded shares, unmask request), no baseline;
//   - relative_error: ‖secure sum − plain sum‖ / ‖plain sum‖ (in ppm) of the
//     survivors' deltas (Gaussian, standard deviation 0.05).
//
// Times are microseconds (lower is better), so Ratio = Value / Baseline
// is the cost factor, not a speed-up.
func RunSecAgg(ctx context.Context, opt SecAggOptions) (bench.Report, error) {
	if opt.Rounds < 0 || opt.NumShares < 0 || opt.Threshold < 0 || opt.Dropout >= 1 {
		return bench.Report{}, fmt.Errorf("bench: secagg: invalid options %+v", opt)
	}
	if opt.Sizes == nil {
		opt.Sizes = []SecAggSize{{36, 3206}, {100, 10000}}
	}
	if opt.NumShares == 0 {
		opt.NumShares = 0.5
	}
	if opt.Threshold == 0 {
		opt.Threshold = 0.5
	}
	if opt.Dropout == 0 {
		opt.Dropout = 0.2
	}
	opt.Dropout = max(opt.Dropout, 0)
	if opt.Rounds == 0 {
		opt.Rounds = 3
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	cfg := secagg.Config{NumShares: opt.NumShares, ReconstructionThreshold: opt.Threshold}
	rep := bench.Report{Suite: "secagg", Machine: bench.Machine(fmt.Sprintf("num_shares=%v threshold=%v dropout=%v rounds=%d seed=%d clipping_range=8 quantization_range=2^22 modulus_range=2^32, one goroutine",
		opt.NumShares, opt.Threshold, opt.Dropout, opt.Rounds, opt.Seed))}
	for _, sz := range opt.Sizes {
		if sz.Clients < 2 || sz.Params < 1 {
			return bench.Report{}, fmt.Errorf("bench: secagg: size %dx%d: want at least 2 clients and 1 value", sz.Clients, sz.Params)
		}
		var m []secAggRound
		for r := 0; r < opt.Rounds; r++ {
			if err := ctx.Err(); err != nil {
				return bench.Report{}, err
			}
			res, err := runSecAggRound(cfg, sz, opt.Dropout, opt.Seed+uint64(r), opt.Now)
			if err != nil {
				return bench.Report{}, fmt.Errorf("bench: secagg: %dx%d round %d: %w", sz.Clients, sz.Params, r, err)
			}
			m = append(m, res)
		}
		med := func(f func(secAggRound) float64) float64 {
			xs := make([]float64, len(m))
			for i, r := range m {
				xs[i] = f(r)
			}
			return bench.Median(xs)
		}
		prefix := fmt.Sprintf("%dx%d/", sz.Clients, sz.Params)
		plainBytes := float64(4 * sz.Params)
		for _, r := range []bench.Result{
			withBaseline(prefix+"client_cpu", "us", med(func(r secAggRound) float64 { return r.clientUS }), "plain_float32_encode", med(func(r secAggRound) float64 { return r.plainClientUS })),
			withBaseline(prefix+"server_cpu", "us", med(func(r secAggRound) float64 { return r.serverUS }), "plain_float32_decode_sum", med(func(r secAggRound) float64 { return r.plainServerUS })),
			withBaseline(prefix+"update_bytes", "bytes", med(func(r secAggRound) float64 { return r.updateBytes }), "plain_float32_update", plainBytes),
			withBaseline(prefix+"key_share_bytes", "bytes", med(func(r secAggRound) float64 { return r.keyShareBytes }), "plain_float32_update", plainBytes),
			{Name: prefix + "download_bytes", Unit: "bytes", Value: med(func(r secAggRound) float64 { return r.downBytes })},
			{Name: prefix + "survivors", Unit: "count", Value: med(func(r secAggRound) float64 { return r.survivors })},
			{Name: prefix + "relative_error", Unit: "ppm", Value: 1e6 * med(func(r secAggRound) float64 { return r.relErr })},
		} {
			rep.Results = append(rep.Results, r)
		}
	}
	return rep, nil
}

func withBaseline(name, unit string, v float64, baseName string, base float64) bench.Result {
	r := bench.Result{Name: name, Unit: unit, Value: v, Baseline: &bench.Baseline{Name: baseName, Value: base}}
	if base > 0 {
		r.Ratio = v / base
	}
	return r
}

type secAggRound struct {
	clientUS, plainClientUS, serverUS, plainServerUS float64
	updateBytes, keyShareBytes, downBytes            float64
	survivors, relErr                                float64
}

// message is what every protocol message is.
type message interface {
	Marshal() []byte
	Unmarshal([]byte) error
}

// clocks accumulates the time of each side of a round.
type clocks struct {
	now                    func() time.Time
	server, client, unused time.Duration
}

func (k *clocks) time(acc *time.Duration, f func() error) error {
	start := k.now()
	err := f()
	*acc += k.now().Sub(start)
	return err
}

// exchange runs one stage for the clients who, timed in blocks: the server
// encodes its requests, the clients decode them, act and encode their
// answers (charged to clientTime), the server decodes and takes the
// answers. bytes[0] and bytes[1] count what goes down and up.
func exchange[Q, A any, PQ interface {
	*Q
	message
}, PA interface {
	*A
	message
}](k *clocks, clientTime *time.Duration, who []string, reqs map[string]Q, act func(string, Q) (A, error), take func(string, A) error, bytes *[2]float64) error {
	down := make([][]byte, len(who))
	_ = k.time(&k.server, func() error {
		for i, c := range who {
			q := reqs[c]
			down[i] = PQ(&q).Marshal()
		}
		return nil
	})
	up := make([][]byte, len(who))
	if err := k.time(clientTime, func() error {
		for i, c := range who {
			var q Q
			if err := PQ(&q).Unmarshal(down[i]); err != nil {
				return err
			}
			a, err := act(c, q)
			if err != nil {
				return err
			}
			up[i] = PA(&a).Marshal()
		}
		return nil
	}); err != nil {
		return err
	}
	for i := range who {
		bytes[0] += float64(len(down[i]))
		bytes[1] += float64(len(up[i]))
	}
	return k.time(&k.server, func() error {
		for i, c := range who {
			var a A
			if err := PA(&a).Unmarshal(up[i]); err != nil {
				return err
			}
			if err := take(c, a); err != nil {
				return err
			}
		}
		return nil
	})
}

// runSecAggRound runs one round and the plain round beside it.
func runSecAggRound(cfg secagg.Config, sz SecAggSize, dropout float64, seed uint64, now func() time.Time) (secAggRound, error) {
	n, d := sz.Clients, sz.Params
	rng := mrand.New(mrand.NewPCG(seed, 0x5ecA9))
	names := make([]string, n)
	deltas := make(map[string][]float32, n)
	for i := range names {
		names[i] = fmt.Sprintf("agent-%05d", i)
		v := make([]float32, d)
		for j := range v {
			v[j] = float32(0.05 * rng.NormFloat64())
		}
		deltas[names[i]] = v
	}
	isDropped := map[string]bool{}
	for _, i := range rng.Perm(n)[:int(math.Round(dropout*float64(n)))] {
		isDropped[names[i]] = true
	}
	var live, dropped []string
	for _, c := range names {
		if isDropped[c] {
			dropped = append(dropped, c)
		} else {
			live = append(live, c)
		}
	}

	var out secAggRound
	k := &clocks{now: now}
	var srv *secagg.Server
	if err := k.time(&k.server, func() (err error) { srv, err = secagg.NewServer(cfg, seed, names, d, rand.Reader); return err }); err != nil {
		return out, err
	}
	clients := make(map[string]*secagg.Client, n)
	for _, c := range names {
		clients[c] = secagg.NewClient(c, rand.Reader)
	}
	var liveBytes, droppedBytes [2]float64
	var keyShareBytes, updateBytes float64
	both := func(f func(who []string, acc *time.Duration, b *[2]float64) error) error {
		if err := f(live, &k.client, &liveBytes); err != nil {
			return err
		}
		return f(dropped, &k.unused, &droppedBytes)
	}

	var setup map[string]secagg.Setup
	_ = k.time(&k.server, func() error { setup = srv.Setup(); return nil })
	if err := both(func(who []string, acc *time.Duration, b *[2]float64) error {
		return exchange(k, acc, who, setup, func(c string, m secagg.Setup) (secagg.PublicKeys, error) { return clients[c].Setup(m) }, srv.AddPublicKeys, b)
	}); err != nil {
		return out, err
	}
	var kreq map[string]secagg.KeysRequest
	if err := k.time(&k.server, func() (err error) { kreq, err = srv.KeysRequests(); return err }); err != nil {
		return out, err
	}
	if err := both(func(who []string, acc *time.Duration, b *[2]float64) error {
		return exchange(k, acc, who, kreq, func(c string, m secagg.KeysRequest) (secagg.Shares, error) { return clients[c].ShareKeys(m) }, srv.AddShares, b)
	}); err != nil {
		return out, err
	}
	var creq map[string]secagg.CollectRequest
	if err := k.time(&k.server, func() (err error) { creq, err = srv.CollectRequests(); return err }); err != nil {
		return out, err
	}
	keyShareBytes = liveBytes[1]
	if err := exchange(k, &k.client, live, creq, func(c string, m secagg.CollectRequest) (secagg.MaskedVector, error) {
		return clients[c].MaskVector(m, deltas[c])
	}, srv.AddMaskedVector, &liveBytes); err != nil {
		return out, err
	}
	updateBytes = liveBytes[1] - keyShareBytes
	var ureq map[string]secagg.UnmaskRequest
	if err := k.time(&k.server, func() (err error) { ureq, err = srv.UnmaskRequests(); return err }); err != nil {
		return out, err
	}
	if err := exchange(k, &k.client, live, ureq, func(c string, m secagg.UnmaskRequest) (secagg.UnmaskResponse, error) { return clients[c].Unmask(m) }, srv.AddUnmask, &liveBytes); err != nil {
		return out, err
	}
	keyShareBytes += liveBytes[1] - keyShareBytes - updateBytes
	var res secagg.Result
	if err := k.time(&k.server, func() (err error) { res, err = srv.Result(); return err }); err != nil {
		return out, err
	}
	if len(res.Clients) != len(live) || len(res.Dropped) != len(dropped) {
		return out, fmt.Errorf("%d survivors and %d dropped, want %d and %d", len(res.Clients), len(res.Dropped), len(live), len(dropped))
	}

	// The plain round over the same survivors: encode, decode, sum.
	var plainClient, plainServer time.Duration
	plain := make([]float64, d)
	wire := make([][]byte, len(live))
	_ = k.time(&plainClient, func() error {
		for i, c := range live {
			wire[i] = encodeFloat32(deltas[c])
		}
		return nil
	})
	if err := k.time(&plainServer, func() error {
		for _, b := range wire {
			if err := decodeAddFloat32(plain, b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return out, err
	}

	s := float64(len(live))
	out.clientUS = us(k.client) / s
	out.plainClientUS = us(plainClient) / s
	out.serverUS = us(k.server)
	out.plainServerUS = us(plainServer)
	out.updateBytes = updateBytes / s
	out.keyShareBytes = keyShareBytes / s
	out.downBytes = (liveBytes[0] + droppedBytes[0]) / float64(n)
	out.survivors = s
	var num, den float64
	for j := range plain {
		num += (res.Sum[j] - plain[j]) * (res.Sum[j] - plain[j])
		den += plain[j] * plain[j]
	}
	out.relErr = math.Sqrt(num / den)
	return out, nil
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// encodeFloat32 is the plain update on the wire: little-endian float32.
func encodeFloat32(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func decodeAddFloat32(sum []float64, b []byte) error {
	if len(b) != 4*len(sum) {
		return fmt.Errorf("plain update of %d bytes, want %d", len(b), 4*len(sum))
	}
	for i := range sum {
		sum[i] += float64(math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])))
	}
	return nil
}

// ParseSecAggSizes parses "CLIENTSxPARAMS[,CLIENTSxPARAMS...]".
func ParseSecAggSizes(s string) ([]SecAggSize, error) {
	var out []SecAggSize
	for part := range strings.SplitSeq(s, ",") {
		c, p, ok := strings.Cut(strings.TrimSpace(part), "x")
		n, err1 := strconv.Atoi(c)
		d, err2 := strconv.Atoi(p)
		if !ok || err1 != nil || err2 != nil || n < 2 || d < 1 {
			return nil, fmt.Errorf("bench: secagg size %q: want CLIENTSxPARAMS with at least 2 clients and 1 value, e.g. 36x3206", part)
		}
		out = append(out, SecAggSize{Clients: n, Params: d})
	}
	return out, nil
}
