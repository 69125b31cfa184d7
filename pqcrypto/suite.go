package pqcrypto

import (
	"crypto/cipher"
	"fmt"
	"slices"
	"strings"

	"github.com/cloudflare/circl/hpke"
	"github.com/cloudflare/circl/kem"
)

// Suite names. Callers pick a suite by name (from configuration) and never
// name algorithms directly, so an algorithm can be replaced by registering a
// new suite and changing a name.
const (
	// SuiteXWingAES256GCM is HPKE with the X-Wing KEM (ML-KEM-768 + X25519),
	// HKDF-SHA256 and AES-256-GCM. The default for sealing to a public key.
	SuiteXWingAES256GCM = "xwing-hkdfsha256-aes256gcm"
	// SuiteXWingChaCha20Poly1305 is HPKE with X-Wing, HKDF-SHA256 and
	// ChaCha20-Poly1305, for devices without AES instructions.
	SuiteXWingChaCha20Poly1305 = "xwing-hkdfsha256-chacha20poly1305"
	// SuiteX25519AES256GCM is HPKE with DHKEM(X25519, HKDF-SHA256),
	// HKDF-SHA256 and AES-256-GCM. Classical only (not post-quantum); present
	// for interoperability, RFC 9180 conformance and HPKE auth mode.
	SuiteX25519AES256GCM = "x25519-hkdfsha256-aes256gcm"
	// SuiteX25519ChaCha20Poly1305 is SuiteX25519AES256GCM with
	// ChaCha20-Poly1305.
	SuiteX25519ChaCha20Poly1305 = "x25519-hkdfsha256-chacha20poly1305"
	// SuiteDataKeyAES256GCM seals under a symmetric data key: a per-message
	// key is derived with HKDF-SHA256 and used with AES-256-GCM.
	SuiteDataKeyAES256GCM = "hkdfsha256-aes256gcm"
	// SuiteDataKeyChaCha20Poly1305 is SuiteDataKeyAES256GCM with
	// ChaCha20-Poly1305.
	SuiteDataKeyChaCha20Poly1305 = "hkdfsha256-chacha20poly1305"

	// DefaultRecipientSuite is used for public-key envelopes when no suite is named.
	DefaultRecipientSuite = SuiteXWingAES256GCM
	// DefaultDataKeySuite is used for data-key envelopes when no suite is named.
	DefaultDataKeySuite = SuiteDataKeyAES256GCM
)

// KEM is a key encapsulation mechanism usable in HPKE. Obtain one with
// XWing, LookupKEM or Suite.KEM.
type KEM struct {
	name        string
	id          hpke.KEM
	scheme      kem.Scheme
	postQuantum bool
	auth        bool
}

var (
	kemXWing = &KEM{
		name:        "xwing",
		id:          hpke.KEM_XWING,
		scheme:      hpke.KEM_XWING.Scheme(),
		postQuantum: true,
	}
	kemX25519 = &KEM{
		name:   "dhkem-x25519-hkdfsha256",
		id:     hpke.KEM_X25519_HKDF_SHA256,
		scheme: hpke.KEM_X25519_HKDF_SHA256.Scheme(),
		auth:   true,
	}
	kems = []*KEM{kemXWing, kemX25519}
)

// XWing returns the X-Wing KEM (ML-KEM-768 + X25519, HPKE KEM id 0x647a).
func XWing() *KEM { return kemXWing }

// LookupKEM finds a KEM by name ("xwing", "x-wing", "dhkem-x25519-hkdfsha256"
// or "x25519"; case-insensitive).
func LookupKEM(name string) (*KEM, error) {
	switch strings.ToLower(name) {
	case "xwing", "x-wing":
		return kemXWing, nil
	case "dhkem-x25519-hkdfsha256", "x25519":
		return kemX25519, nil
	}
	return nil, fmt.Errorf("pqcrypto: kem %q: %w", name, ErrUnknownSuite)
}

// KEMByID finds a KEM by its HPKE KEM identifier.
func KEMByID(id uint16) (*KEM, error) {
	for _, k := range kems {
		if uint16(k.id) == id {
			return k, nil
		}
	}
	return nil, fmt.Errorf("pqcrypto: kem id %#04x: %w", id, ErrUnknownSuite)
}

// Name is the registry name of the KEM.
func (k *KEM) Name() string { return k.name }

// String returns the name.
func (k *KEM) String() string { return k.name }

// ID is the HPKE KEM identifier (0x647a for X-Wing).
func (k *KEM) ID() uint16 { return uint16(k.id) }

// PostQuantum reports whether the KEM resists quantum attackers.
func (k *KEM) PostQuantum() bool { return k.postQuantum }

// SupportsAuth reports whether the KEM is authenticated, i.e. usable in HPKE
// auth mode. X-Wing is not; DHKEM(X25519) is.
func (k *KEM) SupportsAuth() bool { return k.auth }

// PublicKeySize is the encoded public key length in bytes.
func (k *KEM) PublicKeySize() int { return k.scheme.PublicKeySize() }

// PrivateKeySize is the encoded private key length in bytes (for X-Wing the
// 32-byte seed).
func (k *KEM) PrivateKeySize() int { return k.scheme.PrivateKeySize() }

// EncapsulatedKeySize is the length of the HPKE enc value in bytes.
func (k *KEM) EncapsulatedKeySize() int { return k.scheme.CiphertextSize() }

// Mode is the key mode of an envelope.
type Mode uint8

const (
	// ModeRecipient envelopes are sealed with HPKE (base mode) to a
	// recipient's KEM public key.
	ModeRecipient Mode = 1
	// ModeDataKey envelopes are sealed under a symmetric, versioned data key.
	ModeDataKey Mode = 2
)

// String names the mode.
func (m Mode) String() string {
	switch m {
	case ModeRecipient:
		return "recipient"
	case ModeDataKey:
		return "data-key"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Suite is a named combination of algorithms. Obtain one with LookupSuite or
// SuiteByID.
type Suite struct {
	name string
	id   uint16
	mode Mode
	kem  *KEM // nil for data-key suites
	kdf  hpke.KDF
	aead hpke.AEAD
	hs   hpke.Suite // valid for ModeRecipient suites
}

var suites = func() []*Suite {
	hpkeSuite := func(name string, id uint16, k *KEM, a hpke.AEAD) *Suite {
		return &Suite{name: name, id: id, mode: ModeRecipient, kem: k, kdf: hpke.KDF_HKDF_SHA256, aead: a,
			hs: hpke.NewSuite(k.id, hpke.KDF_HKDF_SHA256, a)}
	}
	dataSuite := func(name string, id uint16, a hpke.AEAD) *Suite {
		return &Suite{name: name, id: id, mode: ModeDataKey, kdf: hpke.KDF_HKDF_SHA256, aead: a}
	}
	return []*Suite{
		hpkeSuite(SuiteXWingAES256GCM, 0x0001, kemXWing, hpke.AEAD_AES256GCM),
		hpkeSuite(SuiteXWingChaCha20Poly1305, 0x0002, kemXWing, hpke.AEAD_ChaCha20Poly1305),
		hpkeSuite(SuiteX25519AES256GCM, 0x0003, kemX25519, hpke.AEAD_AES256GCM),
		hpkeSuite(SuiteX25519ChaCha20Poly1305, 0x0004, kemX25519, hpke.AEAD_ChaCha20Poly1305),
		dataSuite(SuiteDataKeyAES256GCM, 0x0101, hpke.AEAD_AES256GCM),
		dataSuite(SuiteDataKeyChaCha20Poly1305, 0x0102, hpke.AEAD_ChaCha20Poly1305),
	}
}()

// LookupSuite finds a suite by name.
func LookupSuite(name string) (*Suite, error) {
	for _, s := range suites {
		if s.name == name {
			return s, nil
		}
	}
	return nil, fmt.Errorf("pqcrypto: suite %q: %w", name, ErrUnknownSuite)
}

// SuiteByID finds a suite by the id stored in envelope headers.
func SuiteByID(id uint16) (*Suite, error) {
	for _, s := range suites {
		if s.id == id {
			return s, nil
		}
	}
	return nil, fmt.Errorf("pqcrypto: suite id %#04x: %w", id, ErrUnknownSuite)
}

// SuiteNames lists the registered suite names in registry order.
func SuiteNames() []string {
	names := make([]string, 0, len(suites))
	for _, s := range suites {
		names = append(names, s.name)
	}
	return slices.Clip(names)
}

// Name is the registry name.
func (s *Suite) Name() string { return s.name }

// String returns the name.
func (s *Suite) String() string { return s.name }

// ID is the compact suite id stored in envelope headers.
func (s *Suite) ID() uint16 { return s.id }

// Mode is the envelope key mode this suite serves.
func (s *Suite) Mode() Mode { return s.mode }

// KEM is the suite's KEM, or nil for data-key suites.
func (s *Suite) KEM() *KEM { return s.kem }

// PostQuantum reports whether confidentiality holds against quantum
// attackers: true for X-Wing suites and for data-key suites (256-bit
// symmetric keys), false for DHKEM(X25519) suites.
func (s *Suite) PostQuantum() bool { return s.kem == nil || s.kem.postQuantum }

// KEMID is the HPKE KEM identifier, or 0 for data-key suites.
func (s *Suite) KEMID() uint16 {
	if s.kem == nil {
		return 0
	}
	return uint16(s.kem.id)
}

// KDFID is the HPKE KDF identifier (0x0001, HKDF-SHA256).
func (s *Suite) KDFID() uint16 { return uint16(s.kdf) }

// AEADID is the HPKE AEAD identifier (0x0002 AES-256-GCM, 0x0003 ChaCha20-Poly1305).
func (s *Suite) AEADID() uint16 { return uint16(s.aead) }

// KeySize is the AEAD key length in bytes.
func (s *Suite) KeySize() int { return int(s.aead.KeySize()) }

// newAEAD instantiates the suite's AEAD (crypto/aes + crypto/cipher GCM, or
// x/crypto ChaCha20-Poly1305, via circl's hpke mapping).
func (s *Suite) newAEAD(key []byte) (cipher.AEAD, error) {
	a, err := s.aead.New(key)
	if err != nil {
		return nil, fmt.Errorf("pqcrypto: %s: aead: %w: %v", s.name, ErrInvalidKey, err)
	}
	return a, nil
}

func (s *Suite) needHPKE() error {
	if s.mode != ModeRecipient {
		return fmt.Errorf("pqcrypto: suite %s is a data-key suite, not HPKE: %w", s.name, ErrUnknownSuite)
	}
	return nil
}
