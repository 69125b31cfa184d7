package secagg

import (
	"crypto/ecdh"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
)

// ErrTooFewSurvivors is returned, wrapped, when too few clients remain to
// go on safely or to remove the masks: the round has no output.
var ErrTooFewSurvivors = errors.New("secagg: too few surviving clients")

type serverStage int

const (
	serverKeys serverStage = iota
	serverShares
	serverMasked
	serverUnmask
	serverDone
	serverFailed
)

// Server is the coordinator's side of a round: a state machine driven by
// the caller. For each stage it hands out one message per client (Setup,
// KeysRequests, CollectRequests, UnmaskRequests), takes the answers that
// arrive (Add...), and the next hand-out closes the stage: a client that
// has not answered by then has dropped. The caller decides when (its
// timeout). Result ends the round. A Server is not safe for concurrent
// use.
//
// Client sets, as in Bonawitz et al.: U1 sent public keys, U2 sent shares,
// U3 sent masked vectors; the sum is over U3.
type Server struct {
	p     Params
	round uint64
	stage serverStage
	names []string          // by id-1
	ids   map[string]uint32 // name -> id
	nbrs  [][]uint32        // by id-1: the ring neighbourhood, itself included, sorted

	keys    map[uint32]PeerKeys         // U1
	shares  map[uint32][]EncryptedShare // U2: by sender
	masked  map[uint32]bool             // U3
	sum     []uint32
	asked   map[uint32]UnmaskRequest
	answers map[uint32]bool
	bShares map[uint32][]holderShare // owner (active) -> shares of b
	kShares map[uint32][]holderShare // owner (dropped) -> shares of s^SK
}

type holderShare struct {
	x uint32
	y share
}

// NewServer starts round round for the named clients (unique, non-empty;
// ids are given in name order, 1..n) with updates of dim values. rnd
// shuffles the clients into the ring from which neighbourhoods are cut
// (Flower shuffles too), so a client cannot choose its neighbours.
func NewServer(cfg Config, round uint64, clients []string, dim int, rnd io.Reader) (*Server, error) {
	p, err := cfg.Resolve(len(clients), dim)
	if err != nil {
		return nil, err
	}
	names := slices.Clone(clients)
	sort.Strings(names)
	s := &Server{p: p, round: round, names: names, ids: make(map[string]uint32, len(names))}
	for i, n := range names {
		if n == "" {
			return nil, fmt.Errorf("%w: empty client name", ErrConfig)
		}
		if i > 0 && names[i-1] == n {
			return nil, fmt.Errorf("%w: client %q listed twice", ErrConfig, n)
		}
		s.ids[n] = uint32(i + 1)
	}
	var seed [16]byte
	if _, err := io.ReadFull(rnd, seed[:]); err != nil {
		return nil, fmt.Errorf("secagg: randomness: %w", err)
	}
	ring := make([]uint32, len(names))
	for i := range ring {
		ring[i] = uint32(i + 1)
	}
	rng := rand.New(rand.NewPCG(binary.LittleEndian.Uint64(seed[:8]), binary.LittleEndian.Uint64(seed[8:])))
	rng.Shuffle(len(ring), func(i, j int) { ring[i], ring[j] = ring[j], ring[i] })
	n, half := len(ring), p.NumShares/2
	s.nbrs = make([][]uint32, n)
	for pos, id := range ring {
		var nb []uint32
		if p.NumShares >= n {
			nb = slices.Clone(ring)
		} else {
			for off := -half; off <= half; off++ {
				nb = append(nb, ring[((pos+off)%n+n)%n])
			}
		}
		slices.Sort(nb)
		s.nbrs[id-1] = nb
	}
	s.keys = map[uint32]PeerKeys{}
	return s, nil
}

// Params are the round's resolved parameters.
func (s *Server) Params() Params { return s.p }

// Neighbours returns the neighbourhood of the named client (itself
// included), by name.
func (s *Server) Neighbours(client string) []string {
	id, ok := s.ids[client]
	if !ok {
		return nil
	}
	out := make([]string, 0, len(s.nbrs[id-1]))
	for _, v := range s.nbrs[id-1] {
		out = append(out, s.names[v-1])
	}
	return out
}

func (s *Server) fail(err error) error {
	s.stage = serverFailed
	return err
}

func (s *Server) expect(st serverStage, step string) error {
	if s.stage != st {
		return fmt.Errorf("%w: server: %s out of order", ErrProtocol, step)
	}
	return nil
}

// sender checks that from is a client of the round whose message claims
// id claimed in round round.
func (s *Server) sender(from string, claimed uint32, round uint64, what string) (uint32, error) {
	id, ok := s.ids[from]
	switch {
	case !ok:
		return 0, fmt.Errorf("%w: %s from %q, not a client of this round", ErrProtocol, what, from)
	case round != s.round:
		return 0, fmt.Errorf("%w: %s from %q for round %d, this is round %d", ErrProtocol, what, from, round, s.round)
	case claimed != id:
		return 0, fmt.Errorf("%w: %s from %q claims client id %d, its id is %d", ErrProtocol, what, from, claimed, id)
	}
	return id, nil
}

// Setup returns the setup message for each client, by name.
func (s *Server) Setup() map[string]Setup {
	out := make(map[string]Setup, len(s.names))
	for i, n := range s.names {
		out[n] = Setup{Round: s.round, ClientID: uint32(i + 1), Params: s.p}
	}
	return out
}

// AddPublicKeys takes a client's public keys.
func (s *Server) AddPublicKeys(from string, m PublicKeys) error {
	if err := s.expect(serverKeys, "public keys"); err != nil {
		return err
	}
	id, err := s.sender(from, m.ClientID, m.Round, "public keys")
	if err != nil {
		return err
	}
	if _, dup := s.keys[id]; dup {
		return fmt.Errorf("%w: public keys from %q twice", ErrProtocol, from)
	}
	for _, k := range [][keySize]byte{m.MaskKey, m.EncKey} {
		// A low-order point fails every key agreement; refuse it now.
		if _, err := agree(probeKey, k); err != nil {
			return fmt.Errorf("%w: public keys from %q: %v", ErrProtocol, from, err)
		}
	}
	s.keys[id] = m.PeerKeys
	return nil
}

// probeKey checks public keys by agreement.
var probeKey = func() *ecdh.PrivateKey {
	k, err := ecdh.X25519().NewPrivateKey(make([]byte, keySize))
	if err != nil {
		panic(err)
	}
	return k
}()

// live returns the members of u's neighbourhood that are in set.
func live[V any](nbrs []uint32, set map[uint32]V) []uint32 {
	var out []uint32
	for _, v := range nbrs {
		if _, ok := set[v]; ok {
			out = append(out, v)
		}
	}
	return out
}

// checkNeighbourhoods fails unless every client in owners keeps at least
// t neighbours (itself included) in set: below that its secrets could not
// be reconstructed.
func checkNeighbourhoods[V, W any](s *Server, owners map[uint32]V, set map[uint32]W, stage string) error {
	if len(set) < s.p.Threshold {
		return s.fail(fmt.Errorf("%w: %s: %d clients left, fewer than the threshold %d; no output", ErrTooFewSurvivors, stage, len(set), s.p.Threshold))
	}
	for _, u := range slices.Sorted(maps.Keys(owners)) {
		if l := len(live(s.nbrs[u-1], set)); l < s.p.Threshold {
			return s.fail(fmt.Errorf("%w: %s: client %q has %d live neighbours (itself included), fewer than the threshold %d; no output", ErrTooFewSurvivors, stage, s.names[u-1], l, s.p.Threshold))
		}
	}
	return nil
}

// KeysRequests closes the key stage and returns, for each client that
// sent its keys, the keys of its neighbours that did.
func (s *Server) KeysRequests() (map[string]KeysRequest, error) {
	if err := s.expect(serverKeys, "keys requests"); err != nil {
		return nil, err
	}
	if err := checkNeighbourhoods(s, s.keys, s.keys, "share keys"); err != nil {
		return nil, err
	}
	out := make(map[string]KeysRequest, len(s.keys))
	for u := range s.keys {
		req := KeysRequest{Round: s.round}
		for _, v := range live(s.nbrs[u-1], s.keys) {
			req.Neighbours = append(req.Neighbours, s.keys[v])
		}
		out[s.names[u-1]] = req
	}
	s.shares = map[uint32][]EncryptedShare{}
	s.stage = serverShares
	return out, nil
}

// AddShares takes a client's encrypted shares: exactly one for each of its
// neighbours that sent keys, itself excepted.
func (s *Server) AddShares(from string, m Shares) error {
	if err := s.expect(serverShares, "shares"); err != nil {
		return err
	}
	u, err := s.sender(from, m.From, m.Round, "shares")
	if err != nil {
		return err
	}
	if _, ok := s.keys[u]; !ok {
		return fmt.Errorf("%w: shares from %q, which sent no keys", ErrProtocol, from)
	}
	if _, dup := s.shares[u]; dup {
		return fmt.Errorf("%w: shares from %q twice", ErrProtocol, from)
	}
	want := live(s.nbrs[u-1], s.keys)
	if len(m.Shares) != len(want)-1 {
		return fmt.Errorf("%w: %d shares from %q, want %d (one per neighbour)", ErrProtocol, len(m.Shares), from, len(want)-1)
	}
	seen := map[uint32]bool{}
	for _, e := range m.Shares {
		if e.From != u || e.Round != s.round || e.To == u || !slices.Contains(want, e.To) || seen[e.To] {
			return fmt.Errorf("%w: shares from %q: share from %d to %d in round %d is not one of its own to a distinct neighbour in this round", ErrProtocol, from, e.From, e.To, e.Round)
		}
		seen[e.To] = true
	}
	s.shares[u] = m.Shares
	return nil
}

// CollectRequests closes the share stage and returns, for each client that
// sent shares, the shares addressed to it.
func (s *Server) CollectRequests() (map[string]CollectRequest, error) {
	if err := s.expect(serverShares, "collect requests"); err != nil {
		return nil, err
	}
	if err := checkNeighbourhoods(s, s.shares, s.shares, "collect masked vectors"); err != nil {
		return nil, err
	}
	out := make(map[string]CollectRequest, len(s.shares))
	for u := range s.shares {
		out[s.names[u-1]] = CollectRequest{Round: s.round}
	}
	for _, u := range slices.Sorted(maps.Keys(s.shares)) {
		for _, e := range s.shares[u] {
			if _, ok := s.shares[e.To]; ok {
				n := s.names[e.To-1]
				r := out[n]
				r.Shares = append(r.Shares, e)
				out[n] = r
			}
		}
	}
	s.masked = map[uint32]bool{}
	s.sum = make([]uint32, s.p.Dim)
	s.stage = serverMasked
	return out, nil
}

// AddMaskedVector adds a client's masked vector to the running sum; the
// server keeps no individual vector.
func (s *Server) AddMaskedVector(from string, m MaskedVector) error {
	if err := s.expect(serverMasked, "masked vector"); err != nil {
		return err
	}
	u, err := s.sender(from, m.From, m.Round, "masked vector")
	if err != nil {
		return err
	}
	switch {
	case s.shares[u] == nil:
		return fmt.Errorf("%w: masked vector from %q, which sent no shares", ErrProtocol, from)
	case s.masked[u]:
		return fmt.Errorf("%w: masked vector from %q twice", ErrProtocol, from)
	case len(m.Values) != s.p.Dim:
		return fmt.Errorf("%w: masked vector from %q has %d values, want %d", ErrProtocol, from, len(m.Values), s.p.Dim)
	}
	for i, v := range m.Values {
		if uint64(v) >= s.p.ModulusRange {
			return fmt.Errorf("%w: masked vector from %q: value %d at %d is not below modulus_range %d", ErrProtocol, from, v, i, s.p.ModulusRange)
		}
	}
	for i, v := range m.Values {
		s.sum[i] += v
	}
	s.masked[u] = true
	return nil
}

// UnmaskRequests closes the masking stage and asks each client that sent
// a masked vector which of its neighbours are active (sent a vector) and
// which dropped after sending shares.
func (s *Server) UnmaskRequests() (map[string]UnmaskRequest, error) {
	if err := s.expect(serverMasked, "unmask requests"); err != nil {
		return nil, err
	}
	if err := checkNeighbourhoods(s, s.shares, s.masked, "unmask"); err != nil {
		return nil, err
	}
	s.asked = map[uint32]UnmaskRequest{}
	out := make(map[string]UnmaskRequest, len(s.masked))
	for u := range s.masked {
		req := UnmaskRequest{Round: s.round}
		for _, v := range live(s.nbrs[u-1], s.shares) {
			if s.masked[v] {
				req.Active = append(req.Active, v)
			} else {
				req.Dead = append(req.Dead, v)
			}
		}
		s.asked[u] = req
		out[s.names[u-1]] = req
	}
	s.answers = map[uint32]bool{}
	s.bShares = map[uint32][]holderShare{}
	s.kShares = map[uint32][]holderShare{}
	s.stage = serverUnmask
	return out, nil
}

// AddUnmask takes a client's revealed shares: exactly those asked of it.
func (s *Server) AddUnmask(from string, m UnmaskResponse) error {
	if err := s.expect(serverUnmask, "unmask response"); err != nil {
		return err
	}
	u, err := s.sender(from, m.From, m.Round, "unmask response")
	if err != nil {
		return err
	}
	req, ok := s.asked[u]
	switch {
	case !ok:
		return fmt.Errorf("%w: unmask response from %q, which was not asked", ErrProtocol, from)
	case s.answers[u]:
		return fmt.Errorf("%w: unmask response from %q twice", ErrProtocol, from)
	case len(m.Shares) != len(req.Active)+len(req.Dead):
		return fmt.Errorf("%w: unmask response from %q has %d shares, %d asked", ErrProtocol, from, len(m.Shares), len(req.Active)+len(req.Dead))
	}
	seen := map[uint32]bool{}
	for _, r := range m.Shares {
		want := uint8(0)
		if slices.Contains(req.Active, r.Owner) {
			want = KindMaskSeed
		} else if slices.Contains(req.Dead, r.Owner) {
			want = KindMaskKey
		}
		if want == 0 || r.Kind != want || seen[r.Owner] {
			return fmt.Errorf("%w: unmask response from %q: share of kind %d for client %d was not asked", ErrProtocol, from, r.Kind, r.Owner)
		}
		for _, v := range r.Value {
			if v >= fieldP {
				return fmt.Errorf("%w: unmask response from %q: share value for client %d out of the field", ErrProtocol, from, r.Owner)
			}
		}
		seen[r.Owner] = true
	}
	for _, r := range m.Shares {
		h := holderShare{x: u, y: r.Value}
		if r.Kind == KindMaskSeed {
			s.bShares[r.Owner] = append(s.bShares[r.Owner], h)
		} else {
			s.kShares[r.Owner] = append(s.kShares[r.Owner], h)
		}
	}
	s.answers[u] = true
	return nil
}

// Result is the output of a round.
type Result struct {
	// Sum is the sum of the clipped deltas of Clients, dequantised.
	Sum []float64
	// Clients sent masked vectors: their updates are in Sum.
	Clients []string
	// Dropped sent shares but no vector; their pairwise masks were
	// removed from the survivors' vectors.
	Dropped []string
}

// Result ends the round: it reconstructs each active client's mask seed
// and each dropped client's mask key from the revealed shares (at least
// the threshold of each), removes the masks and returns the dequantised
// sum. Too few shares for any client is ErrTooFewSurvivors, no output.
func (s *Server) Result() (Result, error) {
	if err := s.expect(serverUnmask, "result"); err != nil {
		return Result{}, err
	}
	t := s.p.Threshold
	secret := func(owner uint32, held []holderShare, what string) ([secretSize]byte, error) {
		if len(held) < t {
			return [secretSize]byte{}, s.fail(fmt.Errorf("%w: unmask: %d shares of the %s of client %q, fewer than the threshold %d; no output", ErrTooFewSurvivors, len(held), what, s.names[owner-1], t))
		}
		slices.SortFunc(held, func(a, b holderShare) int { return int(a.x) - int(b.x) })
		xs, ys := make([]uint32, len(held)), make([]share, len(held))
		for i, h := range held {
			xs[i], ys[i] = h.x, h.y
		}
		v, err := combine(xs, ys, t)
		if err != nil {
			return v, s.fail(fmt.Errorf("%w: unmask: %s of client %q: %v", ErrProtocol, what, s.names[owner-1], err))
		}
		return v, nil
	}
	sum := s.sum
	buf := make([]byte, 4*len(sum))
	var res Result
	for _, u := range slices.Sorted(maps.Keys(s.shares)) {
		if s.masked[u] {
			b, err := secret(u, s.bShares[u], "mask seed")
			if err != nil {
				return Result{}, err
			}
			applyMask(sum, b, -1, buf)
			res.Clients = append(res.Clients, s.names[u-1])
			continue
		}
		raw, err := secret(u, s.kShares[u], "mask key")
		if err != nil {
			return Result{}, err
		}
		sk, err := ecdh.X25519().NewPrivateKey(raw[:])
		if err != nil || [keySize]byte(sk.PublicKey().Bytes()) != s.keys[u].MaskKey {
			return Result{}, s.fail(fmt.Errorf("%w: unmask: the mask key of dropped client %q reconstructed from shares does not match its public key", ErrProtocol, s.names[u-1]))
		}
		for _, v := range live(s.nbrs[u-1], s.masked) {
			seed, err := pairwiseSeed(sk, s.keys[v].MaskKey, s.round)
			if err != nil {
				return Result{}, s.fail(fmt.Errorf("%w: unmask: pairwise mask of %q and %q: %v", ErrProtocol, s.names[u-1], s.names[v-1], err))
			}
			applyMask(sum, seed, -pairSign(v, u), buf) // v added pairSign(v, u)·mask
		}
		res.Dropped = append(res.Dropped, s.names[u-1])
	}
	mod := uint32(s.p.ModulusRange - 1)
	for i := range sum {
		sum[i] &= mod
	}
	out, err := dequantize(sum, len(res.Clients), s.p)
	if err != nil {
		return Result{}, s.fail(err)
	}
	res.Sum = out
	s.stage = serverDone
	return res, nil
}
