package pqcrypto

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
	"sync"
)

// DataKeySize is the length of a data key secret: 256 bits.
const DataKeySize = 32

// dataKeyLabel separates per-message key derivation from any other use of a
// data key.
const dataKeyLabel = "edgefleet/pqcrypto/v1 data-key message key"

// DataKey is a versioned symmetric key that seals envelopes in ModeDataKey.
// dkms owns data keys (generation, rotation, distribution); this type only
// uses them. Safe for concurrent use.
//
// Every envelope gets its own message key,
//
//	K_msg = HKDF-Expand(PRK = secret, info = label || suite id || salt, L = 32)
//
// with a fresh 32-byte random salt stored in the header (RFC 5869 allows
// skipping HKDF-Extract because the secret is already a uniformly random
// 256-bit key). Nonces under K_msg are the STREAM chunk counter, so they never
// repeat; and because keys repeat only if two 256-bit salts collide, a data
// key has no practical limit on the number of messages it seals (unlike
// AES-GCM with random 96-bit nonces under one key, which is limited to 2^32
// messages).
type DataKey struct {
	id      string
	version uint32
	secret  [DataKeySize]byte
	macs    sync.Pool // keyed HMAC-SHA256 states, reset and reused
}

// NewDataKey wraps a 32-byte secret as data key id at version.
func NewDataKey(id string, version uint32, secret []byte) (*DataKey, error) {
	if len(id) == 0 || len(id) > 255 {
		return nil, fmt.Errorf("pqcrypto: data key id must be 1..255 bytes, got %d: %w", len(id), ErrInvalidKey)
	}
	if len(secret) != DataKeySize {
		return nil, fmt.Errorf("pqcrypto: data key %q secret is %d bytes, want %d: %w", id, len(secret), DataKeySize, ErrInvalidKey)
	}
	k := &DataKey{id: id, version: version}
	copy(k.secret[:], secret)
	k.macs.New = func() any { return &macState{h: hmac.New(sha256.New, k.secret[:])} }
	return k, nil
}

// GenerateDataKey creates a data key with a secret read from rand (nil means
// crypto/rand).
func GenerateDataKey(rnd io.Reader, id string, version uint32) (*DataKey, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	secret := make([]byte, DataKeySize)
	if _, err := io.ReadFull(rnd, secret); err != nil {
		return nil, fmt.Errorf("pqcrypto: data key %q: reading randomness: %w", id, err)
	}
	return NewDataKey(id, version, secret)
}

// ID is the key's name.
func (k *DataKey) ID() string { return k.id }

// Version is the key's version.
func (k *DataKey) Version() uint32 { return k.version }

// Secret returns a copy of the 32-byte secret (for sealing it to agents or
// storing it encrypted). Keep it secret.
func (k *DataKey) Secret() []byte { return append([]byte(nil), k.secret[:]...) }

// Equal reports whether both keys have the same id, version and secret.
func (k *DataKey) Equal(o *DataKey) bool {
	return o != nil && k.id == o.id && k.version == o.version && subtle.ConstantTimeCompare(k.secret[:], o.secret[:]) == 1
}

// macState is a pooled, pre-keyed HMAC-SHA256 with scratch space, so that
// deriving a message key allocates nothing.
type macState struct {
	h   hash.Hash
	in  [len(dataKeyLabel) + 2 + saltSize + 1]byte
	out [sha256.Size]byte
}

// withMessageKey derives the per-message key for suite and salt and passes it
// to use, wiping it afterwards. The derivation is HKDF-Expand (RFC 5869) for
// one output block, T(1) = HMAC-SHA256(PRK, info || 0x01), computed on a
// pooled, pre-keyed HMAC so the key setup is not repeated per message.
func (k *DataKey) withMessageKey(suiteID uint16, salt []byte, use func(key []byte) error) error {
	m := k.macs.Get().(*macState)
	m.h.Reset()
	n := copy(m.in[:], dataKeyLabel)
	binary.BigEndian.PutUint16(m.in[n:], suiteID)
	n += 2
	n += copy(m.in[n:], salt)
	m.in[n] = 0x01
	m.h.Write(m.in[:n+1])
	key := m.h.Sum(m.out[:0])
	err := use(key)
	clear(m.out[:])
	k.macs.Put(m)
	return err
}

// messageKey returns a copy of the per-message key (for tests).
func (k *DataKey) messageKey(suiteID uint16, salt []byte) []byte {
	var out []byte
	_ = k.withMessageKey(suiteID, salt, func(key []byte) error {
		out = append(out, key...)
		return nil
	})
	return out
}

// dataKeyInfo is the HKDF info string messageKey uses (for tests comparing
// with crypto/hkdf).
func dataKeyInfo(suiteID uint16, salt []byte) string {
	b := append([]byte(dataKeyLabel), byte(suiteID>>8), byte(suiteID))
	return string(append(b, salt...))
}
