package pqcrypto

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/cloudflare/circl/kem"
)

// PublicKey is a KEM public key (for X-Wing 1216 bytes encoded). Safe for
// concurrent use.
type PublicKey struct {
	kem *KEM
	pk  kem.PublicKey
	raw []byte
}

// PrivateKey is a KEM private key. For X-Wing the encoded form is the 32-byte
// seed from which the full key is derived, as in the X-Wing specification.
// Safe for concurrent use.
type PrivateKey struct {
	kem *KEM
	sk  kem.PrivateKey
	raw []byte
	pub *PublicKey
}

// GenerateKeyPair creates a key pair from randomness read from rand (nil
// means crypto/rand). The result is a deterministic function of the bytes
// read: for X-Wing the 32 bytes read are the private key seed; for
// DHKEM(X25519) they are the ikm of RFC 9180 DeriveKeyPair.
func (k *KEM) GenerateKeyPair(rnd io.Reader) (*PrivateKey, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	seed := make([]byte, k.scheme.SeedSize())
	if _, err := io.ReadFull(rnd, seed); err != nil {
		return nil, fmt.Errorf("pqcrypto: %s key generation: reading randomness: %w", k.name, err)
	}
	if k == kemXWing {
		return k.NewPrivateKey(seed)
	}
	return k.DeriveKeyPair(seed)
}

// NewPrivateKey decodes a private key: for X-Wing the 32-byte seed, for
// DHKEM(X25519) the 32-byte scalar.
func (k *KEM) NewPrivateKey(b []byte) (*PrivateKey, error) {
	if len(b) != k.scheme.PrivateKeySize() {
		return nil, fmt.Errorf("pqcrypto: %s private key is %d bytes, want %d: %w",
			k.name, len(b), k.scheme.PrivateKeySize(), ErrInvalidKey)
	}
	sk, err := k.scheme.UnmarshalBinaryPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("pqcrypto: %s private key: %w: %v", k.name, ErrInvalidKey, err)
	}
	return newPrivateKey(k, sk)
}

// DeriveKeyPair is the HPKE DeriveKeyPair(ikm) function of the KEM (RFC 9180
// section 7.1.3; for X-Wing the ikm is first hashed with SHAKE256 to a seed).
// DHKEM(X25519) takes exactly 32 bytes of ikm, X-Wing at least 32.
func (k *KEM) DeriveKeyPair(ikm []byte) (*PrivateKey, error) {
	n := k.scheme.SeedSize()
	if len(ikm) < n || (k != kemXWing && len(ikm) != n) {
		return nil, fmt.Errorf("pqcrypto: %s DeriveKeyPair: ikm is %d bytes, want %d: %w", k.name, len(ikm), n, ErrInvalidKey)
	}
	_, sk := k.scheme.DeriveKeyPair(ikm)
	return newPrivateKey(k, sk)
}

func newPrivateKey(k *KEM, sk kem.PrivateKey) (*PrivateKey, error) {
	raw, err := sk.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("pqcrypto: %s private key: %w: %v", k.name, ErrInvalidKey, err)
	}
	pk := sk.Public()
	praw, err := pk.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("pqcrypto: %s public key: %w: %v", k.name, ErrInvalidKey, err)
	}
	return &PrivateKey{kem: k, sk: sk, raw: raw, pub: &PublicKey{kem: k, pk: pk, raw: praw}}, nil
}

// ParsePublicKey decodes a public key. X-Wing keys get the ML-KEM
// encapsulation key check of FIPS 203.
func (k *KEM) ParsePublicKey(b []byte) (*PublicKey, error) {
	if len(b) != k.scheme.PublicKeySize() {
		return nil, fmt.Errorf("pqcrypto: %s public key is %d bytes, want %d: %w",
			k.name, len(b), k.scheme.PublicKeySize(), ErrInvalidKey)
	}
	pk, err := k.scheme.UnmarshalBinaryPublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("pqcrypto: %s public key: %w: %v", k.name, ErrInvalidKey, err)
	}
	return &PublicKey{kem: k, pk: pk, raw: append([]byte(nil), b...)}, nil
}

// GenerateXWingKey creates an X-Wing key pair from a 32-byte seed read from
// rand (nil means crypto/rand).
func GenerateXWingKey(rnd io.Reader) (*PrivateKey, error) { return kemXWing.GenerateKeyPair(rnd) }

// NewXWingKeyFromSeed derives the X-Wing key pair of a 32-byte seed.
func NewXWingKeyFromSeed(seed []byte) (*PrivateKey, error) { return kemXWing.NewPrivateKey(seed) }

// ParseXWingPublicKey decodes a 1216-byte X-Wing public key.
func ParseXWingPublicKey(b []byte) (*PublicKey, error) { return kemXWing.ParsePublicKey(b) }

// KEM is the key's algorithm.
func (k *PublicKey) KEM() *KEM { return k.kem }

// Bytes returns a copy of the encoded key.
func (k *PublicKey) Bytes() []byte { return append([]byte(nil), k.raw...) }

// MarshalBinary returns the encoded key.
func (k *PublicKey) MarshalBinary() ([]byte, error) { return k.Bytes(), nil }

// Equal reports whether both keys are the same key of the same KEM.
func (k *PublicKey) Equal(o *PublicKey) bool {
	return o != nil && k.kem == o.kem && k.pk.Equal(o.pk)
}

// Fingerprint is a short stable identifier of the key: the first 16 bytes of
// SHA-256(KEM id || encoded key), hex encoded. Usable as a key id.
func (k *PublicKey) Fingerprint() string {
	h := sha256.New()
	h.Write([]byte{byte(k.kem.id >> 8), byte(k.kem.id)})
	h.Write(k.raw)
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// KEM is the key's algorithm.
func (k *PrivateKey) KEM() *KEM { return k.kem }

// Public returns the matching public key.
func (k *PrivateKey) Public() *PublicKey { return k.pub }

// Bytes returns a copy of the encoded key (the 32-byte seed for X-Wing).
// Keep it secret.
func (k *PrivateKey) Bytes() []byte { return append([]byte(nil), k.raw...) }

// MarshalBinary returns the encoded key.
func (k *PrivateKey) MarshalBinary() ([]byte, error) { return k.Bytes(), nil }

// Equal reports whether both keys are the same key of the same KEM.
func (k *PrivateKey) Equal(o *PrivateKey) bool {
	return o != nil && k.kem == o.kem && k.sk.Equal(o.sk)
}

// EncapsulationSeedSize is how many random bytes Encapsulate reads (64 for
// X-Wing, 32 for DHKEM(X25519)).
func (k *KEM) EncapsulationSeedSize() int { return k.scheme.EncapsulationSeedSize() }

// Encapsulate is the raw KEM operation: it reads EncapsulationSeedSize bytes
// from rnd (nil means crypto/rand) and returns the encapsulated key and the
// shared secret for pk. Envelopes and HPKE use it internally; it is exported
// for known-answer tests and benchmarks.
func (k *KEM) Encapsulate(rnd io.Reader, pk *PublicKey) (enc, sharedSecret []byte, err error) {
	if pk == nil || pk.kem != k {
		return nil, nil, fmt.Errorf("pqcrypto: %s encapsulate: public key of another KEM: %w", k.name, ErrWrongKey)
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	seed := make([]byte, k.scheme.EncapsulationSeedSize())
	if _, err := io.ReadFull(rnd, seed); err != nil {
		return nil, nil, fmt.Errorf("pqcrypto: %s encapsulate: reading randomness: %w", k.name, err)
	}
	enc, ss, err := k.scheme.EncapsulateDeterministically(pk.pk, seed)
	if err != nil {
		return nil, nil, fmt.Errorf("pqcrypto: %s encapsulate: %w: %v", k.name, ErrInvalidKey, err)
	}
	return enc, ss, nil
}

// Decapsulate is the raw KEM operation: it recovers the shared secret of enc
// with sk. X-Wing never fails on a well-sized enc (ML-KEM's implicit
// rejection yields an unrelated secret instead).
func (k *KEM) Decapsulate(sk *PrivateKey, enc []byte) ([]byte, error) {
	if sk == nil || sk.kem != k {
		return nil, fmt.Errorf("pqcrypto: %s decapsulate: private key of another KEM: %w", k.name, ErrWrongKey)
	}
	if len(enc) != k.scheme.CiphertextSize() {
		return nil, fmt.Errorf("pqcrypto: %s decapsulate: enc is %d bytes, want %d: %w", k.name, len(enc), k.scheme.CiphertextSize(), ErrMalformed)
	}
	ss, err := k.scheme.Decapsulate(sk.sk, enc)
	if err != nil {
		return nil, fmt.Errorf("pqcrypto: %s decapsulate: %w: %v", k.name, ErrAuthFailed, err)
	}
	return ss, nil
}
