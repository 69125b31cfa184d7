// Package dkms is edgefleet's distributed key management: versioned keys in
// a hierarchy under a threshold-held root key, rotation, rewrap, retirement
// and destruction, distribution of key versions sealed to each agent,
// revocation, and gossip keyring rotation. Every primitive comes from
// pqcrypto (HPKE with X-Wing, ML-DSA-65, data-key envelopes) and circl
// (Shamir secret sharing); nothing here implements one.
//
// The control plane runs a Service; each agent runs an AgentKeys.
//
// # Key hierarchy
//
//	root key (32 bytes, never stored; k-of-n Shamir shares held by operators)
//	  └─ key-encryption keys "dkms/kek" v1, v2, ... (stored wrapped under the root)
//	       └─ data and gossip keys, each versioned (stored wrapped under a KEK)
//
// Every stored key version is a pqcrypto data-key envelope of its 32-byte
// material under the level above, with the key name, purpose and version
// bound as associated data, so a wrapped blob cannot be moved to another
// key or version. RotateKEK rewraps everything under a new KEK and erases
// the old KEKs; RekeyRoot replaces the root and its shares and rewraps the
// KEKs.
//
// # Custody: sealed, unsealed, dev mode
//
// Initialize creates the root as a ristretto255 scalar, splits it with
// circl's secretsharing into n shares of which k recover it, and derives
// the root key with HKDF-SHA256. The store keeps only the root's key-check
// value (KeyCheckValue), the split parameters and a SHA-256 digest of each
// share. A Service opened on an initialized store is sealed: every
// operation that needs material or changes a key fails with ErrSealed,
// while Key, Keys, Agents, Status and RegisterAgent keep working. Operators
// each give their share (ParseShare of the text form, then Unseal); shares
// accumulate, and Unseal reports progress. A malformed or corrupt share
// (checksum), one from another root (key-check value), or one whose value
// differs from what was issued (digest) is named and rejected with
// ErrBadShare without counting; a repeated index is ErrDuplicateShare. With
// k shares the root is recovered, checked against its key-check value, and
// the KEKs are unwrapped. Seal forgets everything again.
//
// Config.DevMode (for `edgectl sim`) initializes the store itself and
// stores the root key IN THE CLEAR in it, then unseals at every start with
// a slog warning each time. A dev store cannot be opened without DevMode,
// nor a production store with it (ErrDevStore).
//
// # Keys and versions
//
// CreateKey(name, purpose, policy) makes version 1 the primary. Purposes:
// PurposeData (envelope encryption) and PurposeGossip (memberlist AES-256
// keys). Rotate adds a version, makes it primary and turns the previous
// primary decrypt-only. Retire disables a decrypt-only version
// (ErrKeyVersionRetired); Destroy erases its material (the SQLite store
// runs with secure_delete and checkpoints its log afterwards), after which
// envelopes under it fail with ErrKeyVersionDestroyed. The primary can be
// neither (ErrPrimaryVersion). States only move forward: primary,
// decrypt-only, retired, destroyed.
//
// Policy (SetPolicy) holds the automatic rotation period, the minimum
// decryption version (ErrBelowMinVersion below it) and who receives the
// key (AllAgents, AllowedAgents, AllowedLabels), plus the gossip grace
// periods. RotationDue(info, now) is a pure function; Service.RotateDue(ctx,
// now) rotates every key that is due, for a caller that ticks it.
//
// # Using keys
//
// Encrypt seals under the primary version of a data key; Decrypt opens with
// the version the envelope's header names, after checking the envelope is
// for that key (ErrWrongKey) and that the version is usable. Rewrap
// re-encrypts an envelope under the primary version without returning the
// plaintext. PrimaryDataKey and OpenKeys serve pqcrypto's streaming Writer
// and Reader with the same checks. The retirement path of old data is:
// Rotate, Rewrap what is stored, SetPolicy with a higher
// MinDecryptVersion, Retire, Destroy, and RotateKEK to make copies of the
// old wrapped material useless.
//
// # Distribution and agents
//
// Agents are registered with their X-Wing public key and labels
// (RegisterAgent). Distribute(name, version) builds one KeyMessage per
// agent the key's policy allows: the version's material sealed with HPKE
// (X-Wing) to that agent, its id as recipient, the message header as
// associated data, the whole message signed with the control plane's
// ML-DSA-65 key (see KeyMessage for the layout). Retired and destroyed
// versions travel as state only. MessageFor builds one message; CatchUp
// builds everything an agent should hold, for agents that were offline.
// Because each message is sealed to its agent, any peer can relay it (over
// gossip) and check its signature without being able to read it.
//
// On the agent, OpenAgentKeys loads the keyring, sealed at rest under a
// device key (a 32-byte data key from a file or secret store,
// LoadOrCreateDeviceKeyFile) in a BlobStore (a file, or a table of the
// agent's SQLite database). Accept verifies a message against the pinned
// control-plane key and rejects, with distinct errors, malformed input
// (ErrMalformed), messages for another agent (ErrNotForThisAgent), bad
// signatures (ErrBadSignature), messages from the future (ErrNotYetValid)
// or past their expiry (ErrExpired), replays of an accepted message id
// (ErrReplay; ids are remembered until their message expires, at most
// AgentConfig.ReplayCacheSize of them), versions below the minimum
// (ErrBelowMinVersion), and rollbacks (ErrRollback): a version at or below
// the newest accepted that arrives with other material than the agent
// holds, or a destroyed version coming back. A version the agent never
// held may arrive late (catching up) and is installed; it becomes primary
// only if it is the newest. AgentKeys.Encrypt, Decrypt, PrimaryDataKey,
// DataKey and OpenKeys mirror the Service's.
//
// # Revocation
//
// Revoke(agentID) marks the agent revoked and rotates, in the same
// transaction, every key its policy allowed; it returns the new versions
// for the caller to distribute. A revoked agent never receives another
// message, so a copy of its keyring opens nothing sealed after the
// revocation. What it could open before stays readable to that copy:
// rewrap such data and destroy the old versions if that matters.
//
// A RevocationList tells agents which peers to refuse: every revoked
// agent (id, node name, when), versioned by the number of entries
// (revocations are never undone), signed by SignRevocationList with the
// key-message signing key under RevocationListContext. Agents parse it
// with ParseRevocationList and check it with Verify against the pinned
// control-plane key (AgentKeys.ControlPlaneKey) before using it.
//
// # Gossip keyring
//
// memberlist encrypts gossip with the primary key of its keyring and
// accepts messages under any installed key. A gossip key (PurposeGossip)
// has 32-byte AES-256 versions for that keyring. Rotating it must never
// leave two agents without a common key, so every agent follows the same
// schedule, which the control plane fixes when it creates a version and
// sends in the key message:
//
//  1. install: as soon as an agent accepts version N (at its creation time
//     T, or when it catches up), N joins its keyring as a secondary key;
//  2. make primary: at ActivateAt = T + InstallGrace every agent makes N
//     its primary key (agents disagree only by their clock skew, and
//     during that window both keys are installed everywhere);
//  3. remove old: at PrevRemoveAt = ActivateAt + RemoveGrace every agent
//     removes the versions before N.
//
// InstallGrace (Policy.InstallGrace, default 1 minute) must cover the
// time a key message takes to reach online agents plus clock skew; during
// it, version N's messages can also travel over gossip itself, relayed by
// peers to agents that cannot reach the control plane, because everyone
// still sends under the old key.
//
// RemoveGrace (Policy.RemoveGrace, default 1 hour) is the grace period for
// agents that were offline during a rotation. Until T + InstallGrace +
// RemoveGrace every agent still accepts the old key, so a returning agent's
// traffic gets through: it can announce itself and fetch its pending key
// messages from the control plane (CatchUp) or from a peer that kept them
// (key messages are sealed to the agent and signed, so they need no gossip
// encryption to travel). Once it holds version N it follows the schedule
// and is back in the cluster. An agent returning after the grace period
// shares no key with the cluster and is ignored by it: it must fetch
// CatchUp from the control plane over its own uplink, or be re-enrolled,
// before it can gossip again.
//
// PlanGossipKeyring computes the keyring for an instant and GossipSteps
// the memberlist calls (AddKey, UseKey, RemoveKey, in that order) that
// reach it; both are pure functions, so an agent ticks them with its clock
// (NextGossipChange says when the answer changes next). Versions past their
// removal stay stored, though not installed, until the control plane
// retires or destroys them or raises the key's minimum decryption version.
//
// # Audit, logs, metrics
//
// Every key operation, on both sides, calls the injected Auditor once with
// actor (WithActor), action, key, version, agent and result; events never
// carry material. Logs go to the injected slog.Logger; metrics
// (dkms_operations_total, dkms_sealed, dkms_agent_key_messages_total,
// dkms_agent_operations_total) to the injected Prometheus registry.
//
// # Randomness and time
//
// Every random byte comes from the injected Config.Rand / AgentConfig.Rand
// (nil means crypto/rand), with two exceptions inside circl: ML-DSA signing
// is hedged with crypto/rand, and ristretto255 draws the Shamir polynomial's
// coefficients from crypto/rand (so shares differ between runs while the
// root derived from the injected randomness does not). Time comes from the
// injected clock.
//
// # Errors
//
// Errors are prefixed "dkms: " and wrap one sentinel (see the variables
// block), or pqcrypto's sentinel when an envelope fails to open
// (pqcrypto.ErrAuthFailed, ErrTruncated, ...).
package dkms
