package cpapi

import "time"

// Wire types of the key service API (/v1/keys, /v1/agent/keys).

// MaxKeyWatchWait bounds the "wait" parameter of GET /v1/agent/keys
// (Client.WatchKeyMessages).
const MaxKeyWatchWait = 5 * time.Minute

// KeyServiceStatus is the answer of GET /v1/keys/status and of
// POST /v1/keys/unseal.
type KeyServiceStatus struct {
	Initialized bool `json:"initialized"`
	// Sealed is true until SharesNeeded shares were given.
	Sealed bool `json:"sealed"`
	// DevMode is true when the root key is stored in the clear and the
	// service unseals itself (controlplane.KeyConfig.DevUnseal).
	DevMode bool `json:"dev_mode"`
	// SharesProvided counts distinct valid shares given so far in the
	// current unseal attempt.
	SharesProvided int `json:"shares_provided"`
	// SharesNeeded is the threshold; SharesTotal the shares issued.
	SharesNeeded int `json:"shares_needed"`
	SharesTotal  int `json:"shares_total"`
	// RootVersion and RootKCV identify the root key (its key-check value,
	// hex) without revealing it; shares name them too.
	RootVersion uint32 `json:"root_version"`
	RootKCV     string `json:"root_kcv"`
	// KEKVersion is the primary key-encryption key version (0 while
	// sealed).
	KEKVersion uint32 `json:"kek_version"`
	// VerifyingKeyFingerprint identifies the ML-DSA-65 key that signs key
	// messages.
	VerifyingKeyFingerprint string `json:"verifying_key_fingerprint"`
}

// UnsealRequest is the body of POST /v1/keys/unseal.
type UnsealRequest struct {
	// Share is one root key share in its text form ("dkms-share:...").
	Share string `json:"share"`
}

// RotateKEKResponse is the answer of POST /v1/keys/rotate-kek.
type RotateKEKResponse struct {
	// KEKVersion is the new primary key-encryption key version. Every key
	// version is wrapped under it now; the older KEK versions are destroyed.
	KEKVersion uint32 `json:"kek_version"`
}

// RekeyRootRequest is the body of POST /v1/keys/rekey-root.
type RekeyRootRequest struct {
	// Shares is how many shares the new root key is split into
	// (1..255).
	Shares int `json:"shares"`
	// Threshold is how many of them unseal the key service (1..Shares).
	Threshold int `json:"threshold"`
}

// RekeyRootResponse is the answer of POST /v1/keys/rekey-root: the new
// root key's shares, shown this once and stored nowhere. The previous
// shares no longer unseal.
type RekeyRootResponse struct {
	// RootVersion and RootKCV identify the new root key (as in
	// KeyServiceStatus).
	RootVersion uint32 `json:"root_version"`
	RootKCV     string `json:"root_kcv"`
	// SharesNeeded is the threshold; SharesTotal the shares issued.
	SharesNeeded int `json:"shares_needed"`
	SharesTotal  int `json:"shares_total"`
	// Shares are the new root key shares in their text form
	// ("dkms-share:..."), one per custodian.
	Shares []string `json:"shares"`
}

// KeyPolicy is a key's policy on the wire. Durations are Go durations
// ("720h", "90m").
type KeyPolicy struct {
	// RotationPeriod: automatic rotation once the primary version is this
	// old. In requests, empty means the server's default
	// (controlplane.KeyConfig.RotationPeriod) and "0" (or "off") rotation on demand only;
	// answers always name it ("0s" for on demand only).
	RotationPeriod string `json:"rotation_period,omitempty"`
	// MinDecryptVersion refuses to open data under lower versions (0: no
	// minimum). At most the primary version.
	MinDecryptVersion uint32 `json:"min_decrypt_version,omitempty"`
	// AllAgents sends the key to every registered agent that is not
	// revoked; AllowedAgents to these agent ids; AllowedLabels to agents
	// carrying all of these labels. None of them: the key stays on the
	// control plane.
	AllAgents     bool              `json:"all_agents,omitempty"`
	AllowedAgents []string          `json:"allowed_agents,omitempty"`
	AllowedLabels map[string]string `json:"allowed_labels,omitempty"`
	// InstallGrace and RemoveGrace (gossip keys) time the keyring change
	// on agents: a new version becomes primary InstallGrace after its
	// creation, older versions leave RemoveGrace later. Empty: 1m and 1h.
	InstallGrace string `json:"install_grace,omitempty"`
	RemoveGrace  string `json:"remove_grace,omitempty"`
}

// KeyVersion describes one version of a key; it never carries material.
type KeyVersion struct {
	Version uint32 `json:"version"`
	// State is "primary", "decrypt-only", "retired" or "destroyed".
	State     string    `json:"state"`
	CreatedAt time.Time `json:"created_at"`
	ChangedAt time.Time `json:"changed_at"`
	// ActivateAt and PrevRemoveAt (gossip keys): when the version becomes
	// the keyring primary on agents, and when older versions leave.
	ActivateAt   *time.Time `json:"activate_at,omitempty"`
	PrevRemoveAt *time.Time `json:"prev_remove_at,omitempty"`
}

// Key describes a key of the key service and its versions; it never
// carries material.
type Key struct {
	Name string `json:"name"`
	// Purpose is "data" (envelope encryption) or "gossip" (memberlist
	// keyring).
	Purpose           string    `json:"purpose"`
	PrimaryVersion    uint32    `json:"primary_version"`
	LatestVersion     uint32    `json:"latest_version"`
	MinDecryptVersion uint32    `json:"min_decrypt_version"`
	Policy            KeyPolicy `json:"policy"`
	CreatedAt         time.Time `json:"created_at"`
	// RotatedAt is when the primary version was created; NextRotation when
	// the schedule rotates it (absent without a rotation period).
	RotatedAt    time.Time    `json:"rotated_at"`
	NextRotation *time.Time   `json:"next_rotation,omitempty"`
	Versions     []KeyVersion `json:"versions"`
}

// KeysResponse lists keys. The listing works while the service is sealed.
type KeysResponse struct {
	Keys   []Key `json:"keys"`
	Sealed bool  `json:"sealed"`
}

// CreateKeyRequest is the body of POST /v1/keys.
type CreateKeyRequest struct {
	// Name: 1..128 characters of letters, digits, '.', '_', '-', starting
	// with a letter or digit.
	Name string `json:"name"`
	// Purpose is "data" (default) or "gossip".
	Purpose string `json:"purpose,omitempty"`
	// Policy defaults to the server's rotation period and no agents.
	Policy *KeyPolicy `json:"policy,omitempty"`
}

// RewrapRequest is the body of POST /v1/keys/{name}/rewrap.
type RewrapRequest struct {
	// Envelope is a pqcrypto data-key envelope sealed under a version of
	// the key (base64 in JSON).
	Envelope []byte `json:"envelope"`
	// AAD is the associated data the envelope was sealed with, if any; the
	// new envelope is bound to the same bytes.
	AAD []byte `json:"aad,omitempty"`
}

// RewrapResponse carries the envelope re-encrypted under the primary
// version. The plaintext never leaves the server.
type RewrapResponse struct {
	Key string `json:"key"`
	// FromVersion is the version the envelope was sealed under, Version
	// the one it is sealed under now.
	FromVersion uint32 `json:"from_version"`
	Version     uint32 `json:"version"`
	Envelope    []byte `json:"envelope"`
}

// VerifyingKeyResponse is the control plane's key-message signing key,
// which agents pin (dkms.AgentConfig.ControlPlaneKey).
type VerifyingKeyResponse struct {
	// Algorithm is "ML-DSA-65".
	Algorithm string `json:"algorithm"`
	// PublicKey is the encoded ML-DSA-65 public key (base64 in JSON;
	// pqcrypto.ParseVerifyingKey reads it).
	PublicKey   []byte `json:"public_key"`
	Fingerprint string `json:"fingerprint"`
	// Context is the ML-DSA context string of key messages.
	Context string `json:"context"`
}

// AgentKeysResponse is the answer of GET /v1/agent/keys: the key messages
// the calling agent should accept, oldest first, and the cursor to send as
// "after" next time.
type AgentKeysResponse struct {
	// Messages are dkms key messages in their binary form
	// (dkms.KeyMessage.MarshalBinary; base64 in JSON), each sealed to the
	// agent's X-Wing key and signed by the control plane. Hand each to
	// dkms.AgentKeys.Accept.
	Messages [][]byte `json:"messages"`
	// Cursor names the key state the messages bring the agent to. Passing
	// it back as "after" returns only what changed since; an empty or
	// unknown "after" returns everything the agent should hold.
	Cursor string `json:"cursor"`
	// Revocations is the control plane's signed list of revoked agents
	// (dkms.RevocationList.MarshalBinary; base64 in JSON), absent while no
	// agent is revoked. Agents verify it, carry it to their peers in
	// replicated state and refuse the listed nodes.
	Revocations []byte `json:"revocations,omitempty"`
}

// AgentKeysRelayEntry is one key message for another agent.
type AgentKeysRelayEntry struct {
	// RecipientAgentID is the agent the message is sealed to.
	RecipientAgentID string `json:"recipient_agent_id"`
	// Message is the dkms key message in its binary form (base64 in
	// JSON); only the recipient can open it, anyone can check its
	// signature.
	Message []byte `json:"message"`
}

// AgentKeysRelayResponse is the answer of GET /v1/agent/keys/relay.
type AgentKeysRelayResponse struct {
	// Entries are sorted by recipient, then key name.
	Entries []AgentKeysRelayEntry `json:"entries"`
	// Cursor, when not empty, names where the next page starts: pass it
	// as "after". Empty when this page was the last.
	Cursor string `json:"cursor"`
}
