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
)

// ErrShareRefused is returned, wrapped in a *ShareError, when a client
// refuses an encrypted share.
var ErrShareRefused = errors.New("secagg: share refused")

// ShareError says which share a client refused and why.
type ShareError struct {
	Client   string // the refusing client
	From, To uint32
	Reason   string
}

func (e *ShareError) Error() string {
	return fmt.Sprintf("secagg: client %q: share from %d to %d refused: %s", e.Client, e.From, e.To, e.Reason)
}

// Unwrap makes errors.Is(err, ErrShareRefused) true.
func (e *ShareError) Unwrap() error { return ErrShareRefused }

// ErrProtocol is returned, wrapped, for a message out of order or
// inconsistent with the round (a step the state machine refuses).
var ErrProtocol = errors.New("secagg: protocol violation")

type clientStage int

const (
	clientNew clientStage = iota
	clientKeyed
	clientShared
	clientMasked
	clientDone
	clientFailed
)

// Client is one client's side of a round: a state machine driven by the
// caller, one method per stage, in order. Any error ends the round for
// this client (later calls fail). A Client is not safe for concurrent use.
type Client struct {
	name  string
	rnd   io.Reader
	stage clientStage

	round   uint64
	p       Params
	id      uint32
	maskKey *ecdh.PrivateKey // s_u
	encKey  *ecdh.PrivateKey // c_u
	peers   map[uint32]PeerKeys
	seed    [keySize]byte // b_u

	// Shares this client holds, by owner: of the owner's mask seed and of
	// its mask secret key. sources lists the owners (itself included).
	bShares, skShares map[uint32]share
	sources           []uint32
}

// NewClient returns a client named name (for errors) drawing its keys,
// mask seed, share polynomials and rounding from rnd (crypto/rand.Reader
// in production; a seeded stream in tests).
func NewClient(name string, rnd io.Reader) *Client {
	return &Client{name: name, rnd: rnd}
}

func (c *Client) errorf(wrap error, format string, args ...any) error {
	c.stage = clientFailed
	return fmt.Errorf("%w: client %q: %s", wrap, c.name, fmt.Sprintf(format, args...))
}

func (c *Client) expect(s clientStage, step string) error {
	if c.stage != s {
		return c.errorf(ErrProtocol, "%s out of order", step)
	}
	return nil
}

// Setup takes the round's parameters and makes the client's two key pairs;
// it answers with their public keys.
func (c *Client) Setup(m Setup) (PublicKeys, error) {
	if err := c.expect(clientNew, "setup"); err != nil {
		return PublicKeys{}, err
	}
	if err := m.Params.Validate(); err != nil {
		return PublicKeys{}, c.errorf(ErrProtocol, "setup: %v", err)
	}
	if m.ClientID < 1 || int(m.ClientID) > m.Params.NumClients {
		return PublicKeys{}, c.errorf(ErrProtocol, "setup: client id %d, want 1..%d", m.ClientID, m.Params.NumClients)
	}
	var err error
	if c.maskKey, err = newKey(c.rnd); err == nil {
		c.encKey, err = newKey(c.rnd)
	}
	if err != nil {
		c.stage = clientFailed
		return PublicKeys{}, err
	}
	c.round, c.p, c.id, c.stage = m.Round, m.Params, m.ClientID, clientKeyed
	return PublicKeys{Round: c.round, PeerKeys: c.publicKeys()}, nil
}

func (c *Client) publicKeys() PeerKeys {
	p := PeerKeys{ClientID: c.id}
	copy(p.MaskKey[:], c.maskKey.PublicKey().Bytes())
	copy(p.EncKey[:], c.encKey.PublicKey().Bytes())
	return p
}

// ShareKeys takes its neighbours' public keys, draws the mask seed b_u,
// splits b_u and the mask secret key into one share per neighbour (itself
// included, its own share kept) with the round's threshold, and answers
// with the others' shares sealed to each.
func (c *Client) ShareKeys(m KeysRequest) (Shares, error) {
	if err := c.expect(clientKeyed, "share keys"); err != nil {
		return Shares{}, err
	}
	if m.Round != c.round {
		return Shares{}, c.errorf(ErrProtocol, "keys request for round %d in round %d", m.Round, c.round)
	}
	if len(m.Neighbours) > c.p.NumShares {
		return Shares{}, c.errorf(ErrProtocol, "keys request lists %d neighbours, num_shares is %d", len(m.Neighbours), c.p.NumShares)
	}
	if len(m.Neighbours) < c.p.Threshold {
		return Shares{}, c.errorf(ErrProtocol, "keys request lists %d neighbours, fewer than the threshold %d", len(m.Neighbours), c.p.Threshold)
	}
	c.peers = make(map[uint32]PeerKeys, len(m.Neighbours))
	for _, p := range m.Neighbours {
		if p.ClientID < 1 || int(p.ClientID) > c.p.NumClients {
			return Shares{}, c.errorf(ErrProtocol, "keys request: client id %d, want 1..%d", p.ClientID, c.p.NumClients)
		}
		if _, dup := c.peers[p.ClientID]; dup {
			return Shares{}, c.errorf(ErrProtocol, "keys request lists client %d twice", p.ClientID)
		}
		c.peers[p.ClientID] = p
	}
	if self, ok := c.peers[c.id]; !ok || self != c.publicKeys() {
		return Shares{}, c.errorf(ErrProtocol, "keys request does not carry this client's own keys")
	}
	if _, err := io.ReadFull(c.rnd, c.seed[:]); err != nil {
		c.stage = clientFailed
		return Shares{}, fmt.Errorf("secagg: client %q: randomness: %w", c.name, err)
	}
	ids := slices.Sorted(maps.Keys(c.peers))
	var sk [secretSize]byte
	copy(sk[:], c.maskKey.Bytes())
	bs, err := split(&c.seed, ids, c.p.Threshold, c.rnd)
	if err != nil {
		c.stage = clientFailed
		return Shares{}, err
	}
	sks, err := split(&sk, ids, c.p.Threshold, c.rnd)
	if err != nil {
		c.stage = clientFailed
		return Shares{}, err
	}
	c.bShares = map[uint32]share{}
	c.skShares = map[uint32]share{}
	out := Shares{Round: c.round, From: c.id, Shares: make([]EncryptedShare, 0, len(ids)-1)}
	for i, to := range ids {
		if to == c.id {
			c.bShares[c.id], c.skShares[c.id] = bs[i], sks[i]
			continue
		}
		ct, err := sealShares(c.encKey, c.peers[to].EncKey, c.round, c.id, to, bs[i], sks[i])
		if err != nil {
			return Shares{}, c.errorf(ErrProtocol, "sealing the share for client %d: %v", to, err)
		}
		out.Shares = append(out.Shares, EncryptedShare{Round: c.round, From: c.id, To: to, Ciphertext: ct})
	}
	c.stage = clientShared
	return out, nil
}

// MaskVector opens the shares addressed to this client, then clips and
// quantises delta and masks it: plus the private mask PRG(b_u), plus or
// minus the pairwise mask with every neighbour whose share arrived (plus
// when this client's id is the smaller), mod M. A share that is tampered
// with, replayed (from another round, or twice) or misaddressed is
// refused with a *ShareError and ends the round for this client.
func (c *Client) MaskVector(m CollectRequest, delta []float32) (MaskedVector, error) {
	if err := c.expect(clientShared, "collect masked vector"); err != nil {
		return MaskedVector{}, err
	}
	if m.Round != c.round {
		return MaskedVector{}, c.errorf(ErrProtocol, "collect request for round %d in round %d", m.Round, c.round)
	}
	if len(delta) != c.p.Dim {
		return MaskedVector{}, c.errorf(ErrProtocol, "update has %d values, the round has %d", len(delta), c.p.Dim)
	}
	c.sources = []uint32{c.id}
	for _, s := range m.Shares {
		refuse := func(reason string, args ...any) error {
			c.stage = clientFailed
			return &ShareError{Client: c.name, From: s.From, To: s.To, Reason: fmt.Sprintf(reason, args...)}
		}
		switch peer, known := c.peers[s.From]; {
		case s.Round != c.round:
			return MaskedVector{}, refuse("sealed in round %d, this is round %d (replayed)", s.Round, c.round)
		case s.To != c.id:
			return MaskedVector{}, refuse("addressed to client %d, this is client %d", s.To, c.id)
		case !known || s.From == c.id:
			return MaskedVector{}, refuse("sender %d is not a neighbour", s.From)
		case slices.Contains(c.sources, s.From):
			return MaskedVector{}, refuse("a second share from client %d (replayed)", s.From)
		default:
			b, sk, err := openShares(c.encKey, peer.EncKey, c.round, s.From, s.To, s.Ciphertext)
			if err != nil {
				return MaskedVector{}, refuse("%v", err)
			}
			c.bShares[s.From], c.skShares[s.From] = b, sk
			c.sources = append(c.sources, s.From)
		}
	}
	if len(c.sources) < c.p.Threshold {
		return MaskedVector{}, c.errorf(ErrTooFewSurvivors, "shares from %d neighbours (itself included), fewer than the threshold %d", len(c.sources), c.p.Threshold)
	}
	var seed [8]byte
	if _, err := io.ReadFull(c.rnd, seed[:]); err != nil {
		c.stage = clientFailed
		return MaskedVector{}, fmt.Errorf("secagg: client %q: randomness: %w", c.name, err)
	}
	rng := rand.New(rand.NewPCG(binary.LittleEndian.Uint64(seed[:]), uint64(c.id)))
	v := make([]uint32, len(delta))
	if err := quantize(v, delta, c.p, rng); err != nil {
		c.stage = clientFailed
		return MaskedVector{}, fmt.Errorf("secagg: client %q: %w", c.name, err)
	}
	buf := make([]byte, 4*len(v))
	applyMask(v, c.seed, +1, buf)
	for _, other := range c.sources {
		if other == c.id {
			continue
		}
		ps, err := pairwiseSeed(c.maskKey, c.peers[other].MaskKey, c.round)
		if err != nil {
			return MaskedVector{}, c.errorf(ErrProtocol, "pairwise mask with client %d: %v", other, err)
		}
		applyMask(v, ps, pairSign(c.id, other), buf)
	}
	mod := uint32(c.p.ModulusRange - 1) // M = 2^32 wraps by itself
	for i := range v {
		v[i] &= mod
	}
	c.stage = clientMasked
	return MaskedVector{Round: c.round, From: c.id, Width: uint8(c.p.width()), Values: v}, nil
}

// pairSign is the sign with which u adds the mask it shares with v.
func pairSign(u, v uint32) int {
	if u < v {
		return +1
	}
	return -1
}

// Unmask reveals, for each active neighbour, its share of that neighbour's
// mask seed, and for each dropped one its share of the mask secret key;
// never both for one client. It refuses a request that lists a client as
// both, lists clients it holds no share of, leaves out itself from the
// active, or names fewer active clients than the threshold. The round is
// over for the client afterwards.
func (c *Client) Unmask(m UnmaskRequest) (UnmaskResponse, error) {
	if err := c.expect(clientMasked, "unmask"); err != nil {
		return UnmaskResponse{}, err
	}
	if m.Round != c.round {
		return UnmaskResponse{}, c.errorf(ErrProtocol, "unmask request for round %d in round %d", m.Round, c.round)
	}
	if len(m.Active) < c.p.Threshold {
		return UnmaskResponse{}, c.errorf(ErrTooFewSurvivors, "unmask request names %d active neighbours, fewer than the threshold %d", len(m.Active), c.p.Threshold)
	}
	if !slices.Contains(m.Active, c.id) {
		return UnmaskResponse{}, c.errorf(ErrProtocol, "unmask request does not list this client as active")
	}
	out := UnmaskResponse{Round: c.round, From: c.id, Shares: make([]RevealedShare, 0, len(m.Active)+len(m.Dead))}
	seen := map[uint32]bool{}
	for i, list := range [][]uint32{m.Active, m.Dead} {
		kind, held := uint8(KindMaskSeed), c.bShares
		if i == 1 {
			kind, held = KindMaskKey, c.skShares
		}
		for _, id := range list {
			if seen[id] {
				return UnmaskResponse{}, c.errorf(ErrProtocol, "unmask request lists client %d twice (as active and dropped, or repeated)", id)
			}
			seen[id] = true
			if !slices.Contains(c.sources, id) {
				return UnmaskResponse{}, c.errorf(ErrProtocol, "unmask request names client %d, of which this client holds no share", id)
			}
			out.Shares = append(out.Shares, RevealedShare{Owner: id, Kind: kind, Value: held[id]})
		}
	}
	c.stage = clientDone
	return out, nil
}

// Respond answers a message of the server's, whatever its stage: it
// decodes msg by its type, takes the step that answers it and encodes
// the answer. The collect stage's vector comes from vector, called only
// then (a client trains there); its error is returned as is.
func (c *Client) Respond(msg []byte, vector func() ([]float32, error)) ([]byte, error) {
	if len(msg) < headerSize {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrDecode, len(msg), headerSize)
	}
	switch msg[5] {
	case typeSetup:
		var m Setup
		if err := m.Unmarshal(msg); err != nil {
			return nil, err
		}
		a, err := c.Setup(m)
		return marshalOK(&a, err)
	case typeKeysRequest:
		var m KeysRequest
		if err := m.Unmarshal(msg); err != nil {
			return nil, err
		}
		a, err := c.ShareKeys(m)
		return marshalOK(&a, err)
	case typeCollectRequest:
		var m CollectRequest
		if err := m.Unmarshal(msg); err != nil {
			return nil, err
		}
		v, err := vector()
		if err != nil {
			return nil, err
		}
		a, err := c.MaskVector(m, v)
		return marshalOK(&a, err)
	case typeUnmaskRequest:
		var m UnmaskRequest
		if err := m.Unmarshal(msg); err != nil {
			return nil, err
		}
		a, err := c.Unmask(m)
		return marshalOK(&a, err)
	}
	return nil, fmt.Errorf("%w: message type %d is not one a client answers", ErrDecode, msg[5])
}

func marshalOK(m interface{ Marshal() []byte }, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	return m.Marshal(), nil
}
