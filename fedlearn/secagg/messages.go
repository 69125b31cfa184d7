package secagg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// The messages of one round, in stage order. Every message starts with the
// same header (integers big-endian, except masked vector values):
//
//	offset size  field
//	0      4     magic "EFSA"
//	4      1     format version (1)
//	5      1     message type (1..8, in the order below)
//	6      8     round id
//
// The transport (the control plane's authenticated channel) tells who sent
// a message; the sender ids inside are checked against it.

const (
	magic      = "EFSA"
	version    = 1
	headerSize = 14
	peerSize   = 4 + 2*keySize
	encSize    = 8 + 4 + 4 + CiphertextSize
	revealSize = 4 + 1 + chunks*8
)

const (
	typeSetup = 1 + iota
	typePublicKeys
	typeKeysRequest
	typeShares
	typeCollectRequest
	typeMaskedVector
	typeUnmaskRequest
	typeUnmaskResponse
)

var typeNames = [...]string{"", "setup", "public keys", "keys request", "shares", "collect request", "masked vector", "unmask request", "unmask response"}

// ErrDecode is returned, wrapped, for a message that cannot be decoded.
var ErrDecode = errors.New("secagg: malformed message")

// Setup (server → client): the round's parameters and the client's id.
type Setup struct {
	Round    uint64
	ClientID uint32
	Params   Params
}

// PeerKeys are one client's public keys.
type PeerKeys struct {
	ClientID uint32
	MaskKey  [keySize]byte // s_u^PK: pairwise masks
	EncKey   [keySize]byte // c_u^PK: encryption of shares
}

// PublicKeys (client → server): the answer to Setup.
type PublicKeys struct {
	Round uint64
	PeerKeys
}

// KeysRequest (server → client): the public keys of the client's
// neighbours that answered Setup, its own included.
type KeysRequest struct {
	Round      uint64
	Neighbours []PeerKeys
}

// EncryptedShare is a share of the sender's mask seed and of its mask
// secret key, sealed to the recipient.
type EncryptedShare struct {
	Round      uint64
	From, To   uint32
	Ciphertext [CiphertextSize]byte
}

// Shares (client → server): one encrypted share per neighbour.
type Shares struct {
	Round  uint64
	From   uint32
	Shares []EncryptedShare
}

// CollectRequest (server → client): the shares addressed to the client.
type CollectRequest struct {
	Round  uint64
	Shares []EncryptedShare
}

// MaskedVector (client → server): the quantised, masked update. Values
// travel as little-endian integers of Width bytes (4 for M = 2^32).
type MaskedVector struct {
	Round  uint64
	From   uint32
	Width  uint8
	Values []uint32
}

// UnmaskRequest (server → client): which of the client's neighbours sent
// a masked vector (Active) and which sent shares but no vector (Dead).
type UnmaskRequest struct {
	Round  uint64
	Active []uint32
	Dead   []uint32
}

// Share kinds revealed in the unmask stage.
const (
	KindMaskSeed = 1 // a share of b_u (u active)
	KindMaskKey  = 2 // a share of s_u^SK (u dropped)
)

// RevealedShare is a share the holder reveals for Owner.
type RevealedShare struct {
	Owner uint32
	Kind  uint8
	Value [chunks]uint64
}

// UnmaskResponse (client → server).
type UnmaskResponse struct {
	Round  uint64
	From   uint32
	Shares []RevealedShare
}

func header(typ byte, round uint64, size int) []byte {
	b := make([]byte, 0, headerSize+size)
	b = append(b, magic...)
	b = append(b, version, typ)
	return binary.BigEndian.AppendUint64(b, round)
}

// decoder reads a message; the first error sticks.
type decoder struct {
	b    []byte
	name string
	err  error
}

func newDecoder(b []byte, typ byte) (*decoder, uint64) {
	d := &decoder{b: b, name: typeNames[typ]}
	switch {
	case len(b) < headerSize:
		d.fail("%d bytes, shorter than the %d-byte header", len(b), headerSize)
	case string(b[:4]) != magic:
		d.fail("bad magic %q", b[:4])
	case b[4] != version:
		d.fail("format version %d, want %d", b[4], version)
	case b[5] != typ:
		t := "unknown"
		if int(b[5]) < len(typeNames) && b[5] != 0 {
			t = typeNames[b[5]]
		}
		d.fail("message type %d (%s), want %d", b[5], t, typ)
	}
	if d.err != nil {
		return d, 0
	}
	round := binary.BigEndian.Uint64(b[6:])
	d.b = b[headerSize:]
	return d, round
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s: %s", ErrDecode, d.name, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) take(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.fail("truncated in %s", what)
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8(what string) uint8 {
	if v := d.take(1, what); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) u32(what string) uint32 {
	if v := d.take(4, what); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) u64(what string) uint64 {
	if v := d.take(8, what); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// count reads an element count and checks it against the bytes left.
func (d *decoder) count(what string, size, limit int) int {
	n := d.u32(what + " count")
	if d.err != nil {
		return 0
	}
	if int64(n) > int64(limit) {
		d.fail("%d %s, at most %d", n, what, limit)
		return 0
	}
	if int64(n)*int64(size) > int64(len(d.b)) {
		d.fail("%d %s do not fit in the %d bytes left", n, what, len(d.b))
		return 0
	}
	return int(n)
}

func (d *decoder) finish() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	return d.err
}

func (d *decoder) peer(what string) PeerKeys {
	var p PeerKeys
	p.ClientID = d.u32(what + " client id")
	copy(p.MaskKey[:], d.take(keySize, what+" mask key"))
	copy(p.EncKey[:], d.take(keySize, what+" encryption key"))
	return p
}

func appendPeer(b []byte, p PeerKeys) []byte {
	b = binary.BigEndian.AppendUint32(b, p.ClientID)
	b = append(b, p.MaskKey[:]...)
	return append(b, p.EncKey[:]...)
}

func (d *decoder) encShare() EncryptedShare {
	var s EncryptedShare
	s.Round = d.u64("share round")
	s.From = d.u32("share sender")
	s.To = d.u32("share recipient")
	copy(s.Ciphertext[:], d.take(CiphertextSize, "share ciphertext"))
	return s
}

func (d *decoder) encShares() []EncryptedShare {
	ss := make([]EncryptedShare, d.count("shares", encSize, MaxClients))
	for i := range ss {
		ss[i] = d.encShare()
	}
	return ss
}

func appendEncShares(b []byte, ss []EncryptedShare) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(ss)))
	for _, s := range ss {
		b = binary.BigEndian.AppendUint64(b, s.Round)
		b = binary.BigEndian.AppendUint32(b, s.From)
		b = binary.BigEndian.AppendUint32(b, s.To)
		b = append(b, s.Ciphertext[:]...)
	}
	return b
}

func (d *decoder) ids(what string) []uint32 {
	n := d.count(what, 4, MaxClients)
	out := make([]uint32, n)
	for i := range out {
		out[i] = d.u32(what)
	}
	return out
}

func appendIDs(b []byte, ids []uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(ids)))
	for _, id := range ids {
		b = binary.BigEndian.AppendUint32(b, id)
	}
	return b
}

// Marshal encodes m.
func (m *Setup) Marshal() []byte {
	b := header(typeSetup, m.Round, 44)
	p := m.Params
	for _, v := range []int{p.NumClients, p.NumShares, p.Threshold} {
		b = binary.BigEndian.AppendUint32(b, uint32(v))
	}
	b = binary.BigEndian.AppendUint64(b, math.Float64bits(p.ClippingRange))
	b = binary.BigEndian.AppendUint64(b, p.QuantizationRange)
	b = binary.BigEndian.AppendUint64(b, p.ModulusRange)
	b = binary.BigEndian.AppendUint32(b, uint32(p.Dim))
	return binary.BigEndian.AppendUint32(b, m.ClientID)
}

// Unmarshal decodes b into m. Parameters are checked by the client.
func (m *Setup) Unmarshal(b []byte) error {
	d, round := newDecoder(b, typeSetup)
	var p Params
	p.NumClients = int(d.u32("num clients"))
	p.NumShares = int(d.u32("num shares"))
	p.Threshold = int(d.u32("threshold"))
	p.ClippingRange = math.Float64frombits(d.u64("clipping range"))
	p.QuantizationRange = d.u64("quantization range")
	p.ModulusRange = d.u64("modulus range")
	p.Dim = int(d.u32("dim"))
	id := d.u32("client id")
	if err := d.finish(); err != nil {
		return err
	}
	*m = Setup{Round: round, ClientID: id, Params: p}
	return nil
}

// Marshal encodes m.
func (m *PublicKeys) Marshal() []byte {
	return appendPeer(header(typePublicKeys, m.Round, peerSize), m.PeerKeys)
}

// Unmarshal decodes b into m.
func (m *PublicKeys) Unmarshal(b []byte) error {
	d, round := newDecoder(b, typePublicKeys)
	p := d.peer("")
	if err := d.finish(); err != nil {
		return err
	}
	*m = PublicKeys{Round: round, PeerKeys: p}
	return nil
}

// Marshal encodes m.
func (m *KeysRequest) Marshal() []byte {
	b := header(typeKeysRequest, m.Round, 4+peerSize*len(m.Neighbours))
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Neighbours)))
	for _, p := range m.Neighbours {
		b = appendPeer(b, p)
	}
	return b
}

// Unmarshal decodes b into m.
func (m *KeysRequest) Unmarshal(b []byte) error {
	d, round := newDecoder(b, typeKeysRequest)
	n := d.count("neighbours", peerSize, MaxClients)
	ps := make([]PeerKeys, n)
	for i := range ps {
		ps[i] = d.peer("neighbour")
	}
	if err := d.finish(); err != nil {
		return err
	}
	*m = KeysRequest{Round: round, Neighbours: ps}
	return nil
}

// Marshal encodes m.
func (m *Shares) Marshal() []byte {
	b := header(typeShares, m.Round, 8+encSize*len(m.Shares))
	b = binary.BigEndian.AppendUint32(b, m.From)
	return appendEncShares(b, m.Shares)
}

// Unmarshal decodes b into m.
func (m *Shares) Unmarshal(b []byte) error {
	d, round := newDecoder(b, typeShares)
	from := d.u32("sender")
	ss := d.encShares()
	if err := d.finish(); err != nil {
		return err
	}
	*m = Shares{Round: round, From: from, Shares: ss}
	return nil
}

// Marshal encodes m.
func (m *CollectRequest) Marshal() []byte {
	return appendEncShares(header(typeCollectRequest, m.Round, 4+encSize*len(m.Shares)), m.Shares)
}

// Unmarshal decodes b into m.
func (m *CollectRequest) Unmarshal(b []byte) error {
	d, round := newDecoder(b, typeCollectRequest)
	ss := d.encShares()
	if err := d.finish(); err != nil {
		return err
	}
	*m = CollectRequest{Round: round, Shares: ss}
	return nil
}

// Marshal encodes m. Values are truncated to Width bytes.
func (m *MaskedVector) Marshal() []byte {
	w := int(m.Width)
	b := header(typeMaskedVector, m.Round, 9+w*len(m.Values))
	b = binary.BigEndian.AppendUint32(b, m.From)
	b = append(b, m.Width)
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Values)))
	for _, v := range m.Values {
		for k := range w {
			b = append(b, byte(v>>(8*k)))
		}
	}
	return b
}

// Unmarshal decodes b into m.
func (m *MaskedVector) Unmarshal(b []byte) error {
	d, round := newDecoder(b, typeMaskedVector)
	from := d.u32("sender")
	w := d.u8("width")
	if d.err == nil && (w < 1 || w > 4) {
		d.fail("value width %d, want 1..4 bytes", w)
	}
	n := d.count("values", max(int(w), 1), MaxDim)
	vs := make([]uint32, n)
	if raw := d.take(n*int(w), "values"); raw != nil {
		for i := range vs {
			var v uint32
			for k := range int(w) {
				v |= uint32(raw[i*int(w)+k]) << (8 * k)
			}
			vs[i] = v
		}
	}
	if err := d.finish(); err != nil {
		return err
	}
	*m = MaskedVector{Round: round, From: from, Width: w, Values: vs}
	return nil
}

// Marshal encodes m.
func (m *UnmaskRequest) Marshal() []byte {
	b := header(typeUnmaskRequest, m.Round, 8+4*(len(m.Active)+len(m.Dead)))
	return appendIDs(appendIDs(b, m.Active), m.Dead)
}

// Unmarshal decodes b into m.
func (m *UnmaskRequest) Unmarshal(b []byte) error {
	d, round := newDecoder(b, typeUnmaskRequest)
	active := d.ids("active clients")
	dead := d.ids("dropped clients")
	if err := d.finish(); err != nil {
		return err
	}
	*m = UnmaskRequest{Round: round, Active: active, Dead: dead}
	return nil
}

// Marshal encodes m.
func (m *UnmaskResponse) Marshal() []byte {
	b := header(typeUnmaskResponse, m.Round, 8+revealSize*len(m.Shares))
	b = binary.BigEndian.AppendUint32(b, m.From)
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Shares)))
	for _, s := range m.Shares {
		b = binary.BigEndian.AppendUint32(b, s.Owner)
		b = append(b, s.Kind)
		for _, v := range s.Value {
			b = binary.BigEndian.AppendUint64(b, v)
		}
	}
	return b
}

// Unmarshal decodes b into m.
func (m *UnmaskResponse) Unmarshal(b []byte) error {
	d, round := newDecoder(b, typeUnmaskResponse)
	from := d.u32("sender")
	n := d.count("shares", revealSize, MaxClients)
	ss := make([]RevealedShare, n)
	for i := range ss {
		ss[i].Owner = d.u32("share owner")
		ss[i].Kind = d.u8("share kind")
		for c := range ss[i].Value {
			ss[i].Value[c] = d.u64("share value")
		}
	}
	if err := d.finish(); err != nil {
		return err
	}
	*m = UnmaskResponse{Round: round, From: from, Shares: ss}
	return nil
}

// IsMaskedVector reports whether b is framed as a masked vector (the
// client's update; the other messages are the protocol's). It checks the
// header only.
func IsMaskedVector(b []byte) bool { return Answer(b) == AnswerMaskedVector }

// A client's answers, in stage order (Answer).
const (
	AnswerPublicKeys = 1 + iota
	AnswerShares
	AnswerMaskedVector
	AnswerUnmask
)

// Answer tells which of a client's four answers b is framed as, 1 to 4 in
// stage order, from its header alone; 0 for anything else.
func Answer(b []byte) int {
	if len(b) < headerSize || string(b[:4]) != magic || b[4] != version {
		return 0
	}
	switch b[5] {
	case typePublicKeys:
		return AnswerPublicKeys
	case typeShares:
		return AnswerShares
	case typeMaskedVector:
		return AnswerMaskedVector
	case typeUnmaskResponse:
		return AnswerUnmask
	}
	return 0
}
