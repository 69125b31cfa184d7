package pqcrypto

import "errors"

// Sentinel errors. Every error caused by the input (envelopes, keys,
// messages, options) wraps one of these (test with errors.Is) and carries a
// "pqcrypto: " prefixed message naming what was wrong. Failures of injected
// readers and writers are wrapped as they are.
var (
	// ErrTruncated reports input that ends early: a header cut short, a chunk
	// shorter than its length word, or a stream that ends before its final
	// chunk (STREAM truncation).
	ErrTruncated = errors.New("pqcrypto: truncated")

	// ErrAuthFailed reports that authenticated decryption failed: the
	// ciphertext, the header bound as associated data, the chunk order or the
	// key does not match. Reordered, duplicated or dropped chunks end here.
	ErrAuthFailed = errors.New("pqcrypto: authentication failed")

	// ErrTampered is ErrAuthFailed under the name callers often look for.
	ErrTampered = ErrAuthFailed

	// ErrBadSignature reports an ML-DSA signature that does not verify.
	ErrBadSignature = errors.New("pqcrypto: bad signature")

	// ErrUnknownSuite reports a suite name or id that is not in the registry,
	// or a suite used in a mode it does not support.
	ErrUnknownSuite = errors.New("pqcrypto: unknown suite")

	// ErrUnsupportedVersion reports an envelope or message format version this
	// build does not read.
	ErrUnsupportedVersion = errors.New("pqcrypto: unsupported format version")

	// ErrMalformed reports structurally invalid input: wrong magic, a field
	// out of range, bad lengths or trailing bytes.
	ErrMalformed = errors.New("pqcrypto: malformed input")

	// ErrWrongRecipient reports an envelope addressed to another recipient id.
	ErrWrongRecipient = errors.New("pqcrypto: wrong recipient")

	// ErrKeyVersion reports an envelope naming a key id or key version the
	// caller cannot supply (unknown, retired or destroyed).
	ErrKeyVersion = errors.New("pqcrypto: key version not available")

	// ErrWrongKey reports a key that does not fit: a KEM key of another
	// algorithm than the suite's, or no key source for the envelope's mode.
	ErrWrongKey = errors.New("pqcrypto: wrong key type")

	// ErrInvalidKey reports key bytes that do not decode to a valid key.
	ErrInvalidKey = errors.New("pqcrypto: invalid key")

	// ErrUnsupported reports an operation the chosen suite or mode cannot do,
	// such as HPKE auth mode with a KEM that is not authenticated (X-Wing).
	ErrUnsupported = errors.New("pqcrypto: unsupported operation")
)
