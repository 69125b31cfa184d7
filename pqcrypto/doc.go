// Package pqcrypto holds edgefleet's hybrid post-quantum primitives, all
// built on cloudflare/circl and the Go standard library; nothing here
// implements a primitive itself.
//
// # What is here
//
//   - HPKE (RFC 9180) base mode with the X-Wing KEM (ML-KEM-768 + X25519,
//     HPKE KEM id 0x647a), HKDF-SHA256 and AES-256-GCM or ChaCha20-Poly1305:
//     Suite.Seal / Suite.Open and multi-message contexts (Suite.NewSealer,
//     Suite.NewOpener). Output is standard HPKE (enc + ciphertext).
//   - HPKE auth mode (Suite.SealAuth / Suite.OpenAuth) for suites whose KEM is
//     authenticated, i.e. DHKEM(X25519).
//   - X-Wing key pairs from a 32-byte seed (GenerateXWingKey,
//     NewXWingKeyFromSeed), encoded as the seed (private) and 1216 bytes
//     (public).
//   - ML-DSA-65 (FIPS 204) signatures with context strings (SigningKey,
//     VerifyingKey) and SignedMessage / SignJSON / VerifyJSON for identity
//     statements, model blobs, rollout manifests and key messages.
//   - A versioned envelope format (see Header for the byte layout) in two key
//     modes: to a recipient's public key (HPKE) or under a versioned
//     symmetric data key; chunked with the STREAM construction; one-shot
//     (SealToRecipient, SealWithDataKey, Open) and streaming (Writer, Reader);
//     optionally signed by the sender with ML-DSA-65.
//   - A suite registry (LookupSuite, SuiteNames): callers name suites such as
//     "xwing-hkdfsha256-aes256gcm", never algorithms.
//
// # X-Wing in HPKE
//
// circl v1.6.5 registers X-Wing as an HPKE KEM (hpke.KEM_XWING = 0x647a,
// kem/xwing behind circl's generic non-authenticated KEM shim), so this package
// uses it directly with no adaptation. Key pairs are X-Wing's own: the private
// key is the 32-byte seed, expanded with SHAKE256 as the X-Wing draft
// specifies; KEM.DeriveKeyPair is HPKE's DeriveKeyPair(ikm), which for X-Wing
// hashes ikm with SHAKE256 to that seed first.
//
// # Sender authentication
//
// HPKE auth mode needs an authenticated KEM (AuthEncap/AuthDecap), which only
// DH-based KEMs provide. X-Wing is not one: ML-KEM has no static-static key
// agreement. So auth mode works with the DHKEM(X25519) suites only, and X-Wing
// suites return ErrUnsupported for it. Those suites are classical; their auth
// mode would give up post-quantum confidentiality and authenticity, so
// edgefleet does not use them for its own traffic.
//
// For sender authentication that survives a quantum attacker, an envelope
// is sealed with HPKE base mode to the recipient's X-Wing key and signed with
// the sender's ML-DSA-65 key (SealOptions.Signer). The sender id is written
// into the header, which is the HPKE info and the AEAD associated data, and
// the signature covers the whole envelope (header, enc and every chunk).
// Encrypt-then-sign alone would let an attacker strip a signature and sign
// the ciphertext with their own key to claim someone else's message; binding
// the sender id into the encrypted part makes that fail, because changing
// the sender id breaks decryption. Openers that set Keys.SenderKey reject
// unsigned envelopes, so the signature cannot simply be removed. Signatures
// are checked before any key is used.
//
// # Nonces and keys
//
// Every envelope encrypts under a key of its own: for recipient envelopes, a
// key exported from a fresh HPKE context; for data-key envelopes, HKDF-Expand
// of the data key with a fresh 256-bit random salt (see DataKey). Chunk
// nonces are the STREAM counter and final flag under that key, so they are
// unique by construction. No random nonce is ever used, and a data key has no
// practical message limit.
//
// # Opening a recipient envelope with another HPKE implementation
//
// A recipient envelope uses only standard HPKE operations, so any RFC 9180
// implementation with X-Wing can open it: parse the header (see Header); run
// SetupBaseR(enc, skR, info) with info = the header bytes up to, not
// including, enc; derive key = Export("edgefleet/pqcrypto/v1 envelope payload
// key", Nk); then open each chunk with the suite's AEAD under key, the STREAM
// nonce below, and associated data = the whole header (plus caller AAD).
//
// # Chunking (STREAM)
//
// The plaintext is cut into chunks of the header's chunk size (64 KiB by
// default). Chunk i is sealed with nonce 0^56 || uint32(i) || final-flag and
// the header as associated data. Reordered, duplicated or dropped chunks fail
// authentication (ErrAuthFailed). An envelope cut at any point, including at a
// chunk boundary, ends before a chunk sealed as final (ErrTruncated). Bytes
// after the final chunk are ErrMalformed.
//
// # Errors
//
// Errors carry the prefix "pqcrypto: " and wrap one of the sentinel errors
// (ErrTruncated, ErrAuthFailed/ErrTampered, ErrBadSignature, ErrUnknownSuite,
// ErrUnsupportedVersion, ErrMalformed, ErrWrongRecipient, ErrKeyVersion,
// ErrWrongKey, ErrInvalidKey, ErrUnsupported) whenever the cause is the input;
// failures of injected readers and writers are wrapped as they are.
// Replay and rollback detection belong to dkms: the header exposes key id
// and key version for it.
//
// # Randomness
//
// Every random input (key seeds, salts, HPKE encapsulation randomness) is read
// from an injected io.Reader; nil means crypto/rand. The one exception is
// ML-DSA signing, which is hedged by circl with crypto/rand internally.
package pqcrypto
