package dkms

import (
	"errors"

	"github.com/edgefleet/edgefleet/pqcrypto"
)

// Sentinel errors. Every rejection wraps exactly one of these (test with
// errors.Is) behind a "dkms: " prefixed message that names what was wrong.
// Errors of pqcrypto (ErrAuthFailed, ErrTruncated, ...) are wrapped as they
// are when an envelope or key message fails to open. Failures of the store or
// of injected readers are wrapped as they are.
var (
	// ErrSealed reports an operation that needs key material while the key
	// service is sealed: unseal it with enough root key shares first.
	ErrSealed = errors.New("dkms: key service is sealed")

	// ErrNotInitialized reports a key service whose store holds no root key
	// yet: call Initialize.
	ErrNotInitialized = errors.New("dkms: key service is not initialized")

	// ErrAlreadyInitialized reports Initialize on a store that already has a
	// root key.
	ErrAlreadyInitialized = errors.New("dkms: key service is already initialized")

	// ErrDevStore reports a store initialized in dev mode (root key in the
	// clear) opened without Config.DevMode, or a production store opened in
	// dev mode.
	ErrDevStore = errors.New("dkms: dev-mode store mismatch")

	// ErrBadShare reports a root key share that is malformed, corrupt
	// (checksum), from another root (key-check value), for another threshold,
	// or whose value does not match the one recorded at initialization.
	ErrBadShare = errors.New("dkms: bad root key share")

	// ErrDuplicateShare reports a share whose index was already given in the
	// current unseal attempt.
	ErrDuplicateShare = errors.New("dkms: duplicate root key share")

	// ErrInvalidName reports a key or agent name outside the allowed syntax.
	ErrInvalidName = errors.New("dkms: invalid name")

	// ErrInvalidPolicy reports a key policy that cannot be applied.
	ErrInvalidPolicy = errors.New("dkms: invalid policy")

	// ErrInvalidConfig reports a configuration rejected by a constructor.
	ErrInvalidConfig = errors.New("dkms: invalid configuration")

	// ErrKeyExists reports CreateKey with a name that is taken.
	ErrKeyExists = errors.New("dkms: key already exists")

	// ErrUnknownKey reports a key name the service or keyring does not hold.
	ErrUnknownKey = errors.New("dkms: unknown key")

	// ErrUnknownVersion reports a key version that does not exist.
	ErrUnknownVersion = errors.New("dkms: unknown key version")

	// ErrWrongKey reports an envelope sealed under another key than the one
	// named by the caller, or not sealed under a data key at all.
	ErrWrongKey = errors.New("dkms: envelope is for another key")

	// ErrWrongPurpose reports a key used for something its purpose does not
	// allow, such as sealing data under a gossip key.
	ErrWrongPurpose = errors.New("dkms: key purpose does not allow this")

	// ErrPrimaryVersion reports an attempt to retire or destroy the primary
	// version of a key: rotate first.
	ErrPrimaryVersion = errors.New("dkms: operation not allowed on the primary version")

	// ErrKeyVersionRetired reports a key version that was retired (disabled):
	// it decrypts nothing.
	ErrKeyVersionRetired = errors.New("dkms: key version retired")

	// ErrKeyVersionDestroyed reports a key version whose material was erased.
	ErrKeyVersionDestroyed = errors.New("dkms: key version destroyed")

	// ErrBelowMinVersion reports an envelope or key message whose key
	// version is below the key's minimum decryption version.
	ErrBelowMinVersion = errors.New("dkms: key version below the minimum decryption version")

	// ErrUnknownAgent reports an agent id that is not registered.
	ErrUnknownAgent = errors.New("dkms: unknown agent")

	// ErrAgentExists reports RegisterAgent for an id that is registered with
	// another public key.
	ErrAgentExists = errors.New("dkms: agent already registered")

	// ErrRevoked reports an agent that was revoked: it receives no key
	// versions any more.
	ErrRevoked = errors.New("dkms: agent revoked")

	// ErrNotAuthorized reports an agent that the key's policy does not allow.
	ErrNotAuthorized = errors.New("dkms: agent not authorized for key")

	// ErrMalformed reports a key message or stored record that does not
	// decode.
	ErrMalformed = errors.New("dkms: malformed input")

	// ErrBadSignature reports a key message whose ML-DSA signature does not
	// verify against the pinned control-plane key. It is pqcrypto's
	// sentinel, so either name matches.
	ErrBadSignature = pqcrypto.ErrBadSignature

	// ErrNotForThisAgent reports a key message addressed to another agent.
	ErrNotForThisAgent = errors.New("dkms: key message is for another agent")

	// ErrExpired reports a key message past its expiry time.
	ErrExpired = errors.New("dkms: key message expired")

	// ErrNotYetValid reports a key message issued further in the future than
	// the allowed clock skew.
	ErrNotYetValid = errors.New("dkms: key message not yet valid")

	// ErrReplay reports a key message whose id was already accepted.
	ErrReplay = errors.New("dkms: key message replayed")

	// ErrRollback reports a key message that would replace the material of a
	// version already held, or bring back a destroyed version.
	ErrRollback = errors.New("dkms: key version rollback")
)
