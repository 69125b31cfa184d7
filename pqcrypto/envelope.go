package pqcrypto

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

const (
	// payloadExportLabel is the HPKE exporter context from which a recipient
	// envelope's payload key is derived.
	payloadExportLabel = "edgefleet/pqcrypto/v1 envelope payload key"
	// envelopeSignContext is the ML-DSA context of envelope signatures.
	envelopeSignContext = "edgefleet/pqcrypto/v1 envelope"

	tagSize   = 16
	finalBit  = 1 << 31
	maxChunks = 1 << 32
)

// SealOptions tune sealing. The zero value (or nil) is valid.
type SealOptions struct {
	// Suite is a registry name; empty means DefaultRecipientSuite or
	// DefaultDataKeySuite for the envelope's mode.
	Suite string
	// RecipientID names who the envelope is for (an agent id, "controlplane",
	// ...). It is bound into the header; openers with another id get
	// ErrWrongRecipient.
	RecipientID string
	// ChunkSize is the plaintext bytes per chunk; 0 means DefaultChunkSize.
	ChunkSize int
	// AAD is extra associated data bound to the envelope but not stored in
	// it; the opener must supply the same bytes in Keys.AAD.
	AAD []byte
	// Rand supplies the salt or KEM randomness; nil means crypto/rand.
	Rand io.Reader
	// Signer, with SenderID, signs the envelope with ML-DSA-65 (one-shot
	// sealing only). The sender id is bound into the header, so the
	// signature cannot be stripped and replaced by another sender's.
	Signer   *SigningKey
	SenderID string
}

// RecipientKey is the public key an envelope is sealed to, with the id and
// version dkms knows it by.
type RecipientKey struct {
	// KeyID names the key; empty means PublicKey.Fingerprint().
	KeyID      string
	KeyVersion uint32
	PublicKey  *PublicKey
}

// Keys supplies what opening needs. Only the fields the envelope's mode uses
// are consulted; a missing one is ErrWrongKey.
type Keys struct {
	// RecipientID is who is opening; it must equal the header's recipient
	// id, else ErrWrongRecipient.
	RecipientID string
	// DataKey returns the data key with this id and version (data-key
	// envelopes). Return an error wrapping ErrKeyVersion for unknown,
	// retired or destroyed versions.
	DataKey func(id string, version uint32) (*DataKey, error)
	// PrivateKey returns the KEM private key with this id and version
	// (recipient envelopes).
	PrivateKey func(id string, version uint32) (*PrivateKey, error)
	// SenderKey returns the ML-DSA verifying key of a sender. When set, the
	// envelope must be signed by that sender (an unsigned one is
	// ErrBadSignature); when nil, signed envelopes are rejected with
	// ErrWrongKey since their signature cannot be checked.
	SenderKey func(senderID string) (*VerifyingKey, error)
	// AAD must equal SealOptions.AAD of the sealer.
	AAD []byte
}

// DataKeys returns a Keys.DataKey lookup over a fixed set of keys.
func DataKeys(keys ...*DataKey) func(id string, version uint32) (*DataKey, error) {
	return func(id string, version uint32) (*DataKey, error) {
		for _, k := range keys {
			if k != nil && k.id == id && k.version == version {
				return k, nil
			}
		}
		return nil, fmt.Errorf("pqcrypto: data key %q version %d: %w", id, version, ErrKeyVersion)
	}
}

// PrivateKeyFor returns a Keys.PrivateKey lookup holding one key.
func PrivateKeyFor(keyID string, version uint32, sk *PrivateKey) func(id string, version uint32) (*PrivateKey, error) {
	return func(id string, v uint32) (*PrivateKey, error) {
		if id != keyID || v != version {
			return nil, fmt.Errorf("pqcrypto: private key %q version %d: %w", id, v, ErrKeyVersion)
		}
		return sk, nil
	}
}

// SenderKeyFor returns a Keys.SenderKey lookup trusting one sender.
func SenderKeyFor(senderID string, vk *VerifyingKey) func(string) (*VerifyingKey, error) {
	return func(id string) (*VerifyingKey, error) {
		if id != senderID {
			return nil, fmt.Errorf("pqcrypto: unknown sender %q: %w", id, ErrWrongKey)
		}
		return vk, nil
	}
}

// sealSetup is the outcome of preparing a new envelope.
type sealSetup struct {
	out    []byte // dst with the header appended
	hdr    []byte // encoded header (aliases the end of out)
	header *Header
	cc     *chunkCipher
}

// noOptions stands in for nil options; it is never modified.
var noOptions SealOptions

func (o *SealOptions) orDefault() *SealOptions {
	if o == nil {
		return &noOptions
	}
	return o
}

func newHeader(mode Mode, o *SealOptions, keyID string, keyVersion uint32) (*Header, error) {
	name := o.Suite
	if name == "" {
		name = DefaultRecipientSuite
		if mode == ModeDataKey {
			name = DefaultDataKeySuite
		}
	}
	s, err := LookupSuite(name)
	if err != nil {
		return nil, err
	}
	if s.mode != mode {
		return nil, fmt.Errorf("pqcrypto: suite %s cannot seal %s envelopes: %w", s.name, mode, ErrUnknownSuite)
	}
	cs := o.ChunkSize
	if cs == 0 {
		cs = DefaultChunkSize
	}
	if cs < 0 || cs > MaxChunkSize {
		return nil, fmt.Errorf("pqcrypto: chunk size %d outside 1..%d: %w", cs, MaxChunkSize, ErrMalformed)
	}
	if (o.Signer == nil) != (o.SenderID == "") {
		return nil, fmt.Errorf("pqcrypto: signing needs both Signer and SenderID: %w", ErrWrongKey)
	}
	return &Header{
		Version: FormatVersion, Mode: mode, Suite: s, ChunkSize: uint32(cs),
		KeyID: keyID, KeyVersion: keyVersion, RecipientID: o.RecipientID, SenderID: o.SenderID,
	}, nil
}

// setupDataKey builds the header and chunk cipher of a data-key envelope,
// appending the header to dst.
func setupDataKey(dst []byte, key *DataKey, o *SealOptions) (sealSetup, error) {
	if key == nil {
		return sealSetup{}, fmt.Errorf("pqcrypto: seal: no data key: %w", ErrWrongKey)
	}
	h, err := newHeader(ModeDataKey, o, key.id, key.version)
	if err != nil {
		return sealSetup{}, err
	}
	rnd := o.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	h.Salt = h.tail[:saltSize]
	if _, err := io.ReadFull(rnd, h.Salt); err != nil {
		return sealSetup{}, fmt.Errorf("pqcrypto: seal: reading salt: %w", err)
	}
	if err := h.validate(); err != nil {
		return sealSetup{}, err
	}
	start := len(dst)
	dst = h.appendPrefix(dst)
	dst = append(dst, h.Salt...)
	hdr := dst[start:]
	var aead cipher.AEAD
	err = key.withMessageKey(h.Suite.id, h.Salt, func(mk []byte) (err error) {
		aead, err = h.Suite.newAEAD(mk)
		return err
	})
	if err != nil {
		return sealSetup{}, err
	}
	return sealSetup{out: dst, hdr: hdr, header: h, cc: newChunkCipher(aead, hdr, o.AAD)}, nil
}

// setupRecipient builds the header and chunk cipher of a recipient envelope:
// HPKE base mode to the recipient key with the header (without enc) as info;
// the payload key is exported from the HPKE context.
func setupRecipient(dst []byte, to RecipientKey, o *SealOptions) (sealSetup, error) {
	if to.PublicKey == nil {
		return sealSetup{}, fmt.Errorf("pqcrypto: seal: no recipient public key: %w", ErrWrongKey)
	}
	keyID := to.KeyID
	if keyID == "" {
		keyID = to.PublicKey.Fingerprint()
	}
	h, err := newHeader(ModeRecipient, o, keyID, to.KeyVersion)
	if err != nil {
		return sealSetup{}, err
	}
	if err := h.Suite.checkKEM("recipient key", to.PublicKey.kem); err != nil {
		return sealSetup{}, err
	}
	h.Enc = make([]byte, h.Suite.kem.EncapsulatedKeySize()) // sized for validate; replaced below
	if err := h.validate(); err != nil {
		return sealSetup{}, err
	}
	start := len(dst)
	dst = h.appendPrefix(dst)
	info := dst[start:]
	enc, sealer, err := h.Suite.NewSealer(o.Rand, to.PublicKey, info)
	if err != nil {
		return sealSetup{}, err
	}
	h.Enc = enc
	dst = append(dst, enc...)
	hdr := dst[start:]
	key, err := sealer.Export([]byte(payloadExportLabel), h.Suite.KeySize())
	if err != nil {
		return sealSetup{}, err
	}
	aead, err := h.Suite.newAEAD(key)
	clear(key)
	if err != nil {
		return sealSetup{}, err
	}
	return sealSetup{out: dst, hdr: hdr, header: h, cc: newChunkCipher(aead, hdr, o.AAD)}, nil
}

// SealWithDataKey seals plaintext under a data key and appends the envelope
// to dst (which may be nil; it must not overlap plaintext). Large plaintexts
// are split into chunks of SealOptions.ChunkSize.
func SealWithDataKey(dst []byte, key *DataKey, plaintext []byte, opt *SealOptions) ([]byte, error) {
	return sealOneShot(dst, plaintext, opt.orDefault(), key, nil)
}

// SealToRecipient seals plaintext to a recipient's KEM public key with HPKE
// and appends the envelope to dst (which may be nil; it must not overlap
// plaintext).
func SealToRecipient(dst []byte, to RecipientKey, plaintext []byte, opt *SealOptions) ([]byte, error) {
	return sealOneShot(dst, plaintext, opt.orDefault(), nil, &to)
}

// sealOneShot seals under key (data-key mode) or to (recipient mode).
func sealOneShot(dst, plaintext []byte, o *SealOptions, key *DataKey, to *RecipientKey) ([]byte, error) {
	cs := o.ChunkSize
	if cs <= 0 {
		cs = DefaultChunkSize
	}
	chunks := max(1, (len(plaintext)+cs-1)/cs)
	if uint64(chunks) > maxChunks {
		return nil, fmt.Errorf("pqcrypto: seal: %d chunks exceed the limit of 2^32: %w", chunks, ErrUnsupported)
	}
	var (
		s   sealSetup
		err error
	)
	if to != nil {
		s, err = setupRecipient(dst, *to, o)
	} else {
		s, err = setupDataKey(dst, key, o)
	}
	if err != nil {
		return nil, err
	}
	start := len(s.out) - len(s.hdr)
	// Size the output once for all chunks (and the signature).
	body := chunks*(4+tagSize) + len(plaintext)
	if o.Signer != nil {
		body += SignatureSize
	}
	out := slices.Grow(s.out, body)
	for i := 0; i < chunks; i++ {
		end := min(len(plaintext), (i+1)*cs)
		out, err = s.cc.seal(out, plaintext[i*cs:end], i == chunks-1)
		if err != nil {
			return nil, err
		}
	}
	if o.Signer != nil {
		sig, err := o.Signer.Sign(envelopeSignContext, out[start:])
		if err != nil {
			return nil, err
		}
		out = append(out, sig...)
	}
	return out, nil
}

// Open verifies and decrypts an envelope in either mode, appending the
// plaintext to dst (which may be nil; it must not overlap envelope). It
// returns the parsed header; when the header parsed but opening failed, the
// header is returned with the error, for diagnostics only, and the plaintext
// is nil (anything already decrypted into dst is wiped).
//
// Order of checks: structure, recipient id, signature (before any key is
// used), key lookup, then authenticated decryption of every chunk. No
// plaintext is returned unless the whole envelope authenticates.
func Open(dst, envelope []byte, keys *Keys) ([]byte, *Header, error) {
	if keys == nil {
		keys = &Keys{}
	}
	h, n, err := ParseHeader(envelope)
	if err != nil {
		return nil, nil, err
	}
	body := envelope[n:]
	if err := checkRecipientAndSigner(h, keys, false); err != nil {
		return nil, h, err
	}
	if h.Signed() {
		if len(body) < SignatureSize {
			return nil, h, fmt.Errorf("pqcrypto: signed envelope shorter than its signature: %w", ErrTruncated)
		}
		signed := envelope[:len(envelope)-SignatureSize]
		if err := verifyEnvelope(h, keys, signed, envelope[len(signed):]); err != nil {
			return nil, h, err
		}
		body = body[:len(body)-SignatureSize]
	}
	cc, err := openSetup(h, envelope[:n], keys)
	if err != nil {
		return nil, h, err
	}
	start := len(dst)
	dst = slices.Grow(dst, len(body))
	for first := true; ; first = false {
		if len(body) < 4 {
			clear(dst[start:])
			return nil, h, fmt.Errorf("pqcrypto: envelope ended after chunk %d without a final chunk: %w", cc.counter, ErrTruncated)
		}
		size, final, err := parseWord(binary.BigEndian.Uint32(body), h.ChunkSize, first)
		if err != nil {
			clear(dst[start:])
			return nil, h, err
		}
		if len(body)-4 < size+tagSize {
			clear(dst[start:])
			return nil, h, fmt.Errorf("pqcrypto: chunk %d needs %d bytes, %d left: %w", cc.counter, size+tagSize, len(body)-4, ErrTruncated)
		}
		dst, err = cc.open(dst, body[4:4+size+tagSize], final)
		if err != nil {
			clear(dst[start:])
			return nil, h, err
		}
		body = body[4+size+tagSize:]
		if final {
			break
		}
	}
	if len(body) != 0 {
		clear(dst[start:])
		return nil, h, fmt.Errorf("pqcrypto: %d bytes after the final chunk: %w", len(body), ErrMalformed)
	}
	return dst, h, nil
}

// checkRecipientAndSigner applies the checks that need no key material.
func checkRecipientAndSigner(h *Header, keys *Keys, streaming bool) error {
	if h.RecipientID != keys.RecipientID {
		return fmt.Errorf("pqcrypto: envelope is for recipient %q, not %q: %w", h.RecipientID, keys.RecipientID, ErrWrongRecipient)
	}
	switch {
	case h.Signed() && streaming:
		return fmt.Errorf("pqcrypto: signed envelope from %q must be opened whole with Open: %w", h.SenderID, ErrUnsupported)
	case h.Signed() && keys.SenderKey == nil:
		return fmt.Errorf("pqcrypto: envelope signed by %q but no sender keys given: %w", h.SenderID, ErrWrongKey)
	case !h.Signed() && keys.SenderKey != nil:
		return fmt.Errorf("pqcrypto: envelope is not signed but a signed one is required: %w", ErrBadSignature)
	}
	return nil
}

func verifyEnvelope(h *Header, keys *Keys, signed, sig []byte) error {
	vk, err := keys.SenderKey(h.SenderID)
	if err != nil {
		return wrapLookup(err, ErrWrongKey, "sender key of %q", h.SenderID)
	}
	if vk == nil {
		return fmt.Errorf("pqcrypto: no verifying key for sender %q: %w", h.SenderID, ErrWrongKey)
	}
	if err := vk.Verify(envelopeSignContext, signed, sig); err != nil {
		return fmt.Errorf("pqcrypto: envelope from %q: %w", h.SenderID, err)
	}
	return nil
}

// wrapLookup wraps an error from a caller-supplied key lookup so that it
// matches sentinel as well as anything the caller wrapped.
func wrapLookup(err, sentinel error, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if errors.Is(err, sentinel) {
		return fmt.Errorf("pqcrypto: %s: %w", msg, err)
	}
	return fmt.Errorf("pqcrypto: %s: %w: %w", msg, sentinel, err)
}

// openSetup finds the key the header names and builds the chunk cipher.
func openSetup(h *Header, hdr []byte, keys *Keys) (*chunkCipher, error) {
	var key []byte
	switch h.Mode {
	case ModeDataKey:
		if keys.DataKey == nil {
			return nil, fmt.Errorf("pqcrypto: data-key envelope but no data keys given: %w", ErrWrongKey)
		}
		dk, err := keys.DataKey(h.KeyID, h.KeyVersion)
		if err != nil {
			return nil, wrapLookup(err, ErrKeyVersion, "data key %q version %d", h.KeyID, h.KeyVersion)
		}
		if dk == nil || dk.id != h.KeyID || dk.version != h.KeyVersion {
			return nil, fmt.Errorf("pqcrypto: lookup for data key %q version %d returned another key: %w", h.KeyID, h.KeyVersion, ErrKeyVersion)
		}
		var aead cipher.AEAD
		err = dk.withMessageKey(h.Suite.id, h.Salt, func(mk []byte) (err error) {
			aead, err = h.Suite.newAEAD(mk)
			return err
		})
		if err != nil {
			return nil, err
		}
		return newChunkCipher(aead, hdr, keys.AAD), nil
	case ModeRecipient:
		if keys.PrivateKey == nil {
			return nil, fmt.Errorf("pqcrypto: recipient envelope but no private keys given: %w", ErrWrongKey)
		}
		sk, err := keys.PrivateKey(h.KeyID, h.KeyVersion)
		if err != nil {
			return nil, wrapLookup(err, ErrKeyVersion, "private key %q version %d", h.KeyID, h.KeyVersion)
		}
		if sk == nil {
			return nil, fmt.Errorf("pqcrypto: no private key %q version %d: %w", h.KeyID, h.KeyVersion, ErrKeyVersion)
		}
		opener, err := h.Suite.NewOpener(sk, h.Enc, hdr[:len(hdr)-len(h.Enc)])
		if err != nil {
			return nil, err
		}
		if key, err = opener.Export([]byte(payloadExportLabel), h.Suite.KeySize()); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("pqcrypto: mode %s: %w", h.Mode, ErrMalformed)
	}
	aead, err := h.Suite.newAEAD(key)
	clear(key)
	if err != nil {
		return nil, err
	}
	return newChunkCipher(aead, hdr, keys.AAD), nil
}

// parseWord decodes a chunk word. Non-final chunks must be full; an empty
// final chunk is only valid as the first chunk (the empty message).
func parseWord(w uint32, chunkSize uint32, first bool) (size int, final bool, err error) {
	final = w&finalBit != 0
	n := w &^ finalBit
	switch {
	case n > chunkSize:
		return 0, false, fmt.Errorf("pqcrypto: chunk of %d bytes exceeds chunk size %d: %w", n, chunkSize, ErrMalformed)
	case !final && n != chunkSize:
		return 0, false, fmt.Errorf("pqcrypto: non-final chunk of %d bytes, want %d: %w", n, chunkSize, ErrMalformed)
	case final && n == 0 && !first:
		return 0, false, fmt.Errorf("pqcrypto: empty final chunk after data: %w", ErrMalformed)
	}
	return int(n), final, nil
}

// chunkCipher is the STREAM construction (Hoang, Reyhanitabar, Rogaway,
// Vizár 2015) over one AEAD key that is unique to the envelope: chunk i is
// sealed with nonce 0x00*7 || uint32(i) || final, where final is 1 on the
// last chunk and 0 otherwise, and with the header (plus caller AAD) as
// associated data. Reordering, duplicating or dropping chunks changes a
// nonce; cutting the stream at a chunk boundary leaves no chunk sealed as
// final. Either way authentication fails or ErrTruncated is reported.
type chunkCipher struct {
	aead    cipher.AEAD
	aad     []byte
	counter uint64
	nonce   [12]byte
}

func newChunkCipher(aead cipher.AEAD, hdr, extra []byte) *chunkCipher {
	aad := hdr
	if len(extra) > 0 {
		aad = append(append(make([]byte, 0, len(hdr)+len(extra)), hdr...), extra...)
	}
	return &chunkCipher{aead: aead, aad: aad}
}

func (c *chunkCipher) nonceFor(final bool) []byte {
	binary.BigEndian.PutUint32(c.nonce[7:11], uint32(c.counter))
	c.nonce[11] = 0
	if final {
		c.nonce[11] = 1
	}
	return c.nonce[:]
}

// seal appends the chunk word and the sealed chunk to dst.
func (c *chunkCipher) seal(dst, pt []byte, final bool) ([]byte, error) {
	if c.counter >= maxChunks {
		return nil, fmt.Errorf("pqcrypto: more than 2^32 chunks in one envelope: %w", ErrUnsupported)
	}
	w := uint32(len(pt))
	if final {
		w |= finalBit
	}
	dst = binary.BigEndian.AppendUint32(dst, w)
	dst = c.aead.Seal(dst, c.nonceFor(final), pt, c.aad)
	c.counter++
	return dst, nil
}

// open authenticates and decrypts one chunk, appending the plaintext to dst.
func (c *chunkCipher) open(dst, ct []byte, final bool) ([]byte, error) {
	if c.counter >= maxChunks {
		return nil, fmt.Errorf("pqcrypto: more than 2^32 chunks in one envelope: %w", ErrMalformed)
	}
	out, err := c.aead.Open(dst, c.nonceFor(final), ct, c.aad)
	if err != nil {
		return dst, fmt.Errorf("pqcrypto: chunk %d (final=%t) does not authenticate: %w", c.counter, final, ErrAuthFailed)
	}
	c.counter++
	return out, nil
}
