package pqcrypto

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
)

// ML-DSA-65 (FIPS 204) sizes.
const (
	// SigningSeedSize is the length of an ML-DSA-65 key seed, the encoded
	// form of a SigningKey.
	SigningSeedSize = mldsa65.SeedSize
	// VerifyingKeySize is the length of an encoded ML-DSA-65 public key.
	VerifyingKeySize = mldsa65.PublicKeySize
	// SignatureSize is the length of an ML-DSA-65 signature.
	SignatureSize = mldsa65.SignatureSize
	// MaxContextSize is the longest ML-DSA context string.
	MaxContextSize = 255
)

// SigningKey is an ML-DSA-65 private key, kept as its 32-byte seed plus the
// expanded key. Safe for concurrent use.
type SigningKey struct {
	seed [SigningSeedSize]byte
	sk   *mldsa65.PrivateKey
	pub  *VerifyingKey
}

// VerifyingKey is an ML-DSA-65 public key. Safe for concurrent use.
type VerifyingKey struct {
	pk  *mldsa65.PublicKey
	raw []byte
}

// GenerateSigningKey creates an ML-DSA-65 key from a 32-byte seed read from
// rand (nil means crypto/rand).
func GenerateSigningKey(rnd io.Reader) (*SigningKey, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	var seed [SigningSeedSize]byte
	if _, err := io.ReadFull(rnd, seed[:]); err != nil {
		return nil, fmt.Errorf("pqcrypto: ml-dsa key generation: reading randomness: %w", err)
	}
	return NewSigningKey(seed[:])
}

// NewSigningKey derives the ML-DSA-65 key pair of a 32-byte seed (FIPS 204
// ML-DSA.KeyGen_internal).
func NewSigningKey(seed []byte) (*SigningKey, error) {
	if len(seed) != SigningSeedSize {
		return nil, fmt.Errorf("pqcrypto: ml-dsa seed is %d bytes, want %d: %w", len(seed), SigningSeedSize, ErrInvalidKey)
	}
	k := &SigningKey{}
	copy(k.seed[:], seed)
	pk, sk := mldsa65.NewKeyFromSeed(&k.seed)
	k.sk = sk
	k.pub = &VerifyingKey{pk: pk, raw: pk.Bytes()}
	return k, nil
}

// Public returns the verifying key.
func (k *SigningKey) Public() *VerifyingKey { return k.pub }

// Bytes returns a copy of the 32-byte seed. Keep it secret.
func (k *SigningKey) Bytes() []byte { return append([]byte(nil), k.seed[:]...) }

// MarshalBinary returns the 32-byte seed.
func (k *SigningKey) MarshalBinary() ([]byte, error) { return k.Bytes(), nil }

// Sign signs msg under the context string (FIPS 204 ML-DSA.Sign with ctx,
// pure mode). Signing is hedged: circl mixes 32 fresh bytes from crypto/rand
// into each signature (FIPS 204's default, protecting devices against fault
// and side-channel attacks), so signatures differ between calls while every
// one verifies. That randomness cannot be injected.
func (k *SigningKey) Sign(context string, msg []byte) ([]byte, error) {
	if len(context) > MaxContextSize {
		return nil, fmt.Errorf("pqcrypto: ml-dsa context is %d bytes, at most %d: %w", len(context), MaxContextSize, ErrMalformed)
	}
	sig := make([]byte, SignatureSize)
	if err := mldsa65.SignTo(k.sk, msg, []byte(context), true, sig); err != nil {
		return nil, fmt.Errorf("pqcrypto: ml-dsa sign: %w", err)
	}
	return sig, nil
}

// ParseVerifyingKey decodes a 1952-byte ML-DSA-65 public key.
func ParseVerifyingKey(b []byte) (*VerifyingKey, error) {
	if len(b) != VerifyingKeySize {
		return nil, fmt.Errorf("pqcrypto: ml-dsa public key is %d bytes, want %d: %w", len(b), VerifyingKeySize, ErrInvalidKey)
	}
	pk := new(mldsa65.PublicKey)
	if err := pk.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("pqcrypto: ml-dsa public key: %w: %v", ErrInvalidKey, err)
	}
	return &VerifyingKey{pk: pk, raw: append([]byte(nil), b...)}, nil
}

// Bytes returns a copy of the encoded key.
func (k *VerifyingKey) Bytes() []byte { return append([]byte(nil), k.raw...) }

// MarshalBinary returns the encoded key.
func (k *VerifyingKey) MarshalBinary() ([]byte, error) { return k.Bytes(), nil }

// Equal reports whether both keys are the same.
func (k *VerifyingKey) Equal(o *VerifyingKey) bool { return o != nil && k.pk.Equal(o.pk) }

// Fingerprint is the first 16 bytes of SHA-256("ML-DSA-65" || key), hex
// encoded: a stable short key id.
func (k *VerifyingKey) Fingerprint() string {
	h := sha256.New()
	h.Write([]byte("ML-DSA-65"))
	h.Write(k.raw)
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// Verify checks sig over msg under the context string. A mismatch is
// ErrBadSignature.
func (k *VerifyingKey) Verify(context string, msg, sig []byte) error {
	if len(context) > MaxContextSize {
		return fmt.Errorf("pqcrypto: ml-dsa context is %d bytes, at most %d: %w", len(context), MaxContextSize, ErrMalformed)
	}
	if len(sig) != SignatureSize {
		return fmt.Errorf("pqcrypto: ml-dsa signature is %d bytes, want %d: %w", len(sig), SignatureSize, ErrBadSignature)
	}
	if !mldsa65.Verify(k.pk, msg, []byte(context), sig) {
		return fmt.Errorf("pqcrypto: ml-dsa signature (context %q): %w", context, ErrBadSignature)
	}
	return nil
}

// SignedMessage is a payload signed with ML-DSA-65 under a context string
// that says what the payload is ("edgefleet/identity/v1",
// "edgefleet/rollout-manifest/v1", ...). A signature made for one context
// never verifies under another.
//
// Binary layout (integers big-endian):
//
//	"EFS" | version=1 (1) | len(context) (1) | context | len(signer) (1) | signer |
//	len(payload) (4) | payload | ML-DSA-65 signature (3309)
//
// The signature covers every byte before it, with the context string also
// passed as the FIPS 204 context.
type SignedMessage struct {
	Context   string // what the payload is; at most 255 bytes
	SignerID  string // who signed; at most 255 bytes
	Payload   []byte
	Signature []byte
}

const (
	signedMagic   = "EFS"
	signedVersion = 1
	// MaxSignedPayload bounds the payload of a SignedMessage (64 MiB).
	MaxSignedPayload = 64 << 20
)

// Sign creates a SignedMessage over payload.
func Sign(k *SigningKey, context, signerID string, payload []byte) (*SignedMessage, error) {
	m := &SignedMessage{Context: context, SignerID: signerID, Payload: payload}
	tbs, err := m.signedBytes()
	if err != nil {
		return nil, err
	}
	sig, err := k.Sign(context, tbs)
	if err != nil {
		return nil, err
	}
	m.Signature = sig
	return m, nil
}

func (m *SignedMessage) signedBytes() ([]byte, error) {
	if len(m.Context) > MaxContextSize || len(m.SignerID) > 255 {
		return nil, fmt.Errorf("pqcrypto: signed message: context or signer id longer than 255 bytes: %w", ErrMalformed)
	}
	if len(m.Payload) > MaxSignedPayload {
		return nil, fmt.Errorf("pqcrypto: signed message: payload of %d bytes exceeds %d: %w", len(m.Payload), MaxSignedPayload, ErrMalformed)
	}
	b := make([]byte, 0, len(signedMagic)+3+len(m.Context)+len(m.SignerID)+4+len(m.Payload)+SignatureSize)
	b = append(b, signedMagic...)
	b = append(b, signedVersion, byte(len(m.Context)))
	b = append(b, m.Context...)
	b = append(b, byte(len(m.SignerID)))
	b = append(b, m.SignerID...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Payload)))
	b = append(b, m.Payload...)
	return b, nil
}

// Verify checks that the message was signed by pub under context. The
// context is what the caller expects the payload to be, not what the message
// claims: a message whose Context differs is rejected.
func (m *SignedMessage) Verify(pub *VerifyingKey, context string) error {
	if pub == nil {
		return fmt.Errorf("pqcrypto: signed message: no verifying key: %w", ErrWrongKey)
	}
	if m.Context != context {
		return fmt.Errorf("pqcrypto: signed message has context %q, want %q: %w", m.Context, context, ErrBadSignature)
	}
	tbs, err := m.signedBytes()
	if err != nil {
		return err
	}
	return pub.Verify(context, tbs, m.Signature)
}

// MarshalBinary encodes the message in the layout described on SignedMessage.
func (m *SignedMessage) MarshalBinary() ([]byte, error) {
	if len(m.Signature) != SignatureSize {
		return nil, fmt.Errorf("pqcrypto: signed message: signature is %d bytes, want %d: %w", len(m.Signature), SignatureSize, ErrMalformed)
	}
	b, err := m.signedBytes()
	if err != nil {
		return nil, err
	}
	return append(b, m.Signature...), nil
}

// ParseSignedMessage decodes a SignedMessage. It checks structure only; call
// Verify before trusting anything in it.
func ParseSignedMessage(b []byte) (*SignedMessage, error) {
	r := reader{b: b, what: "signed message"}
	magic := r.bytes(len(signedMagic))
	if r.err == nil && string(magic) != signedMagic {
		return nil, fmt.Errorf("pqcrypto: signed message: bad magic %x: %w", magic, ErrMalformed)
	}
	if v := r.u8(); r.err == nil && v != signedVersion {
		return nil, fmt.Errorf("pqcrypto: signed message version %d: %w", v, ErrUnsupportedVersion)
	}
	m := &SignedMessage{}
	m.Context = string(r.bytes(int(r.u8())))
	m.SignerID = string(r.bytes(int(r.u8())))
	n := r.u32()
	if r.err == nil && n > MaxSignedPayload {
		return nil, fmt.Errorf("pqcrypto: signed message: payload of %d bytes exceeds %d: %w", n, MaxSignedPayload, ErrMalformed)
	}
	m.Payload = append([]byte(nil), r.bytes(int(n))...)
	m.Signature = append([]byte(nil), r.bytes(SignatureSize)...)
	if r.err != nil {
		return nil, r.err
	}
	if r.off != len(b) {
		return nil, fmt.Errorf("pqcrypto: signed message: %d trailing bytes: %w", len(b)-r.off, ErrMalformed)
	}
	return m, nil
}

// SignJSON signs the JSON encoding of v: a typed signed statement.
func SignJSON[T any](k *SigningKey, context, signerID string, v T) (*SignedMessage, error) {
	payload, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("pqcrypto: signed message: encoding payload: %w", err)
	}
	return Sign(k, context, signerID, payload)
}

// VerifyJSON verifies m under context with pub and decodes its JSON payload.
func VerifyJSON[T any](m *SignedMessage, pub *VerifyingKey, context string) (T, error) {
	var v T
	if err := m.Verify(pub, context); err != nil {
		return v, err
	}
	if err := json.Unmarshal(m.Payload, &v); err != nil {
		return v, fmt.Errorf("pqcrypto: signed message: decoding payload: %w: %v", ErrMalformed, err)
	}
	return v, nil
}

// reader decodes big-endian fields from a byte slice; the first short read
// sets err to ErrTruncated and later reads return zero values.
type reader struct {
	b    []byte
	off  int
	err  error
	what string
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.b)-r.off < n {
		r.err = fmt.Errorf("pqcrypto: %s: need %d more bytes at offset %d, have %d: %w", r.what, n, r.off, len(r.b)-r.off, ErrTruncated)
		return nil
	}
	v := r.b[r.off : r.off+n]
	r.off += n
	return v
}

func (r *reader) u8() uint8 {
	v := r.bytes(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (r *reader) u16() uint16 {
	v := r.bytes(2)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint16(v)
}

func (r *reader) u32() uint32 {
	v := r.bytes(4)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}
