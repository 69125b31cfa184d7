package dkms

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/pqcrypto"
)

// Key messages carry one key version from the control plane to one agent.
//
// Binary layout (integers big-endian, times in Unix milliseconds, 0 for the
// zero time):
//
//	size  field
//	4     magic "EFKM"
//	1     format version (1)
//	16    message id (random)
//	8     issued at
//	8     expires at
//	1+a   agent id (length, bytes; 1..255)
//	1+k   key name (length, bytes; 1..128)
//	1+p   purpose (length, bytes: "data" or "gossip")
//	4     key version (>= 1)
//	1     state (1 primary, 2 decrypt-only, 3 retired, 4 destroyed)
//	4     minimum decryption version of the key
//	8     version created at
//	8     activate at (gossip keys)
//	8     previous versions removed at (gossip keys)
//	4+e   envelope (length, bytes; 0..8192)
//	3309  ML-DSA-65 signature
//
// Everything up to (not including) the envelope length is the message
// header. The envelope is a pqcrypto recipient envelope with the version's
// 32-byte material, sealed with HPKE/X-Wing to the agent's public key with
// the agent id as recipient id and the header as associated data; it is
// present exactly for primary and decrypt-only versions (retired and
// destroyed versions travel as state only). The signature, under the
// context KeyMessageContext by the control plane's ML-DSA-65 key, covers
// every byte before it. A peer can relay a message, and check its
// signature, but only the addressed agent can open the envelope.
const (
	// KeyMessageContext is the ML-DSA context string of key messages.
	KeyMessageContext = "edgefleet/dkms/key-message/v1"
	// MaxKeyMessageSize bounds an encoded key message.
	MaxKeyMessageSize = 16 << 10
	// MessageIDSize is the length of a key message id.
	MessageIDSize = 16

	keyMessageMagic   = "EFKM"
	keyMessageVersion = 1
	maxEnvelopeSize   = 8 << 10
)

// KeyMessage is one key version addressed to one agent. ParseKeyMessage
// checks structure only; agents accept messages through AgentKeys.Accept,
// relays can check the signature with Verify.
type KeyMessage struct {
	ID           [MessageIDSize]byte
	IssuedAt     time.Time
	ExpiresAt    time.Time
	AgentID      string
	Key          string
	Purpose      Purpose
	Version      uint32
	State        State
	MinVersion   uint32
	CreatedAt    time.Time
	ActivateAt   time.Time
	PrevRemoveAt time.Time
	Envelope     []byte
	Signature    []byte
}

// IDString is the message id in hex.
func (m *KeyMessage) IDString() string { return hex.EncodeToString(m.ID[:]) }

func msOf(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	return uint64(t.UnixMilli())
}

func timeOfMS(ms uint64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(int64(ms)).UTC()
}

// check validates the fields that the encoding does not constrain.
func (m *KeyMessage) check() error {
	if err := checkAgentID(m.AgentID); err != nil {
		return fmt.Errorf("dkms: key message: %w: %w", err, ErrMalformed)
	}
	if err := checkKeyName(m.Key); err != nil {
		return fmt.Errorf("dkms: key message: %w: %w", err, ErrMalformed)
	}
	if !m.Purpose.valid() {
		return fmt.Errorf("dkms: key message: purpose %q: %w", m.Purpose, ErrMalformed)
	}
	if m.Version == 0 {
		return fmt.Errorf("dkms: key message: version 0: %w", ErrMalformed)
	}
	if !m.State.valid() {
		return fmt.Errorf("dkms: key message: state %d: %w", m.State, ErrMalformed)
	}
	if m.IssuedAt.IsZero() || !m.ExpiresAt.After(m.IssuedAt) {
		return fmt.Errorf("dkms: key message: validity %v..%v is empty: %w", m.IssuedAt, m.ExpiresAt, ErrMalformed)
	}
	for _, t := range []time.Time{m.IssuedAt, m.ExpiresAt, m.CreatedAt, m.ActivateAt, m.PrevRemoveAt} {
		if !t.IsZero() && t.UnixMilli() <= 0 {
			return fmt.Errorf("dkms: key message: time %v before 1970: %w", t, ErrMalformed)
		}
	}
	if len(m.Envelope) > maxEnvelopeSize {
		return fmt.Errorf("dkms: key message: envelope of %d bytes, at most %d: %w", len(m.Envelope), maxEnvelopeSize, ErrMalformed)
	}
	if m.State.usable() && len(m.Envelope) == 0 {
		return fmt.Errorf("dkms: key message: a %s version must carry its key material: %w", m.State, ErrMalformed)
	}
	if !m.State.usable() && len(m.Envelope) > 0 {
		return fmt.Errorf("dkms: key message: a %s version must not carry key material: %w", m.State, ErrMalformed)
	}
	return nil
}

// appendHeader appends the header: every field before the envelope length.
func (m *KeyMessage) appendHeader(b []byte) []byte {
	b = append(b, keyMessageMagic...)
	b = append(b, keyMessageVersion)
	b = append(b, m.ID[:]...)
	b = binary.BigEndian.AppendUint64(b, msOf(m.IssuedAt))
	b = binary.BigEndian.AppendUint64(b, msOf(m.ExpiresAt))
	for _, s := range []string{m.AgentID, m.Key, string(m.Purpose)} {
		b = append(b, byte(len(s)))
		b = append(b, s...)
	}
	b = binary.BigEndian.AppendUint32(b, m.Version)
	b = append(b, byte(m.State))
	b = binary.BigEndian.AppendUint32(b, m.MinVersion)
	b = binary.BigEndian.AppendUint64(b, msOf(m.CreatedAt))
	b = binary.BigEndian.AppendUint64(b, msOf(m.ActivateAt))
	return binary.BigEndian.AppendUint64(b, msOf(m.PrevRemoveAt))
}

// header returns the bytes bound to the envelope as associated data.
func (m *KeyMessage) header() []byte { return m.appendHeader(nil) }

// signedBytes returns the bytes the signature covers.
func (m *KeyMessage) signedBytes() []byte {
	b := m.appendHeader(make([]byte, 0, 128+len(m.Envelope)))
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Envelope)))
	return append(b, m.Envelope...)
}

// MarshalBinary encodes a signed message.
func (m *KeyMessage) MarshalBinary() ([]byte, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	if len(m.Signature) != pqcrypto.SignatureSize {
		return nil, fmt.Errorf("dkms: key message is not signed: %w", ErrMalformed)
	}
	return append(m.signedBytes(), m.Signature...), nil
}

// Verify checks the control plane's signature on the message.
func (m *KeyMessage) Verify(controlPlane *pqcrypto.VerifyingKey) error {
	if controlPlane == nil {
		return fmt.Errorf("dkms: no control-plane key to verify key message %s: %w", m.IDString(), ErrBadSignature)
	}
	if err := controlPlane.Verify(KeyMessageContext, m.signedBytes(), m.Signature); err != nil {
		return fmt.Errorf("dkms: key message %s for %q: %w", m.IDString(), m.AgentID, err)
	}
	return nil
}

// ParseKeyMessage decodes a key message. It checks structure only; nothing
// in it is trusted until its signature verifies.
func ParseKeyMessage(b []byte) (*KeyMessage, error) {
	if len(b) > MaxKeyMessageSize {
		return nil, fmt.Errorf("dkms: key message of %d bytes, at most %d: %w", len(b), MaxKeyMessageSize, ErrMalformed)
	}
	r := reader{b: b}
	if string(r.next(4)) != keyMessageMagic {
		return nil, fmt.Errorf("dkms: key message: bad magic: %w", ErrMalformed)
	}
	if v := r.byte(); v != keyMessageVersion {
		if r.err != nil {
			return nil, r.fail("format version")
		}
		return nil, fmt.Errorf("dkms: key message format version %d, want %d: %w", v, keyMessageVersion, ErrMalformed)
	}
	m := &KeyMessage{}
	copy(m.ID[:], r.next(MessageIDSize))
	m.IssuedAt = timeOfMS(r.uint64())
	m.ExpiresAt = timeOfMS(r.uint64())
	m.AgentID = string(r.next(int(r.byte())))
	m.Key = string(r.next(int(r.byte())))
	m.Purpose = Purpose(r.next(int(r.byte())))
	m.Version = r.uint32()
	m.State = State(r.byte())
	m.MinVersion = r.uint32()
	m.CreatedAt = timeOfMS(r.uint64())
	m.ActivateAt = timeOfMS(r.uint64())
	m.PrevRemoveAt = timeOfMS(r.uint64())
	envLen := r.uint32()
	if r.err == nil && envLen > maxEnvelopeSize {
		return nil, fmt.Errorf("dkms: key message: envelope of %d bytes, at most %d: %w", envLen, maxEnvelopeSize, ErrMalformed)
	}
	m.Envelope = append([]byte(nil), r.next(int(envLen))...)
	m.Signature = append([]byte(nil), r.next(pqcrypto.SignatureSize)...)
	if r.err != nil {
		return nil, r.fail("fields")
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("dkms: key message: %d bytes after the signature: %w", len(r.b), ErrMalformed)
	}
	if len(m.Envelope) == 0 {
		m.Envelope = nil
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	return m, nil
}

// reader consumes a byte slice, remembering the first short read.
type reader struct {
	b   []byte
	err error
}

func (r *reader) next(n int) []byte {
	if r.err != nil || n > len(r.b) {
		if r.err == nil {
			r.err = fmt.Errorf("need %d bytes, have %d", n, len(r.b))
		}
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) byte() byte {
	if b := r.next(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) uint32() uint32 {
	if b := r.next(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *reader) uint64() uint64 {
	if b := r.next(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (r *reader) fail(what string) error {
	return fmt.Errorf("dkms: key message truncated in %s: %v: %w", what, r.err, ErrMalformed)
}
