package controlplane

import (
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/dkms"
)

// Wire types of the key service API (/v1/keys, /v1/agent/keys).

// KeyServiceStatus is the answer of GET /v1/keys/status and of
// POST /v1/keys/unseal.
type KeyServiceStatus struct {
	Initialized bool `json:"initialized"`
	// Sealed is true until SharesNeeded shares were given.
	Sealed bool `json:"sealed"`
	// DevMode is true when the root key is stored in the clear and the
	// service unseals itself (Keys.DevUnseal).
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

// KeyPolicy is a key's policy on the wire. Durations are Go durations
// ("720h", "90m").
type KeyPolicy struct {
	// RotationPeriod: automatic rotation once the primary version is this
	// old. In requests, empty means the server's default
	// (Keys.RotationPeriod) and "0" (or "off") rotation on demand only;
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
}

// durationText renders a policy duration for answers.
func durationText(d time.Duration) string { return d.String() }

// parsePolicyDuration reads a duration of a policy request; empty returns
// def.
func parsePolicyDuration(field, v string, def time.Duration) (time.Duration, error) {
	switch v {
	case "":
		return def, nil
	case "0", "off", "none":
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, badRequest("%s: %q is not a duration (e.g. \"720h\", \"90m\", or \"0\" for none)", field, v)
	}
	if d < 0 {
		return 0, badRequest("%s: %s is negative", field, v)
	}
	return d, nil
}

// policyFromWire converts a request policy; p may be nil.
func policyFromWire(p *KeyPolicy, defRotation time.Duration) (dkms.Policy, error) {
	if p == nil {
		p = &KeyPolicy{}
	}
	var (
		out dkms.Policy
		err error
	)
	if out.RotationPeriod, err = parsePolicyDuration("policy.rotation_period", p.RotationPeriod, defRotation); err != nil {
		return out, err
	}
	if out.InstallGrace, err = parsePolicyDuration("policy.install_grace", p.InstallGrace, 0); err != nil {
		return out, err
	}
	if out.RemoveGrace, err = parsePolicyDuration("policy.remove_grace", p.RemoveGrace, 0); err != nil {
		return out, err
	}
	if len(p.AllowedAgents) > 10000 {
		return out, badRequest("policy.allowed_agents: %d agents, limit 10000", len(p.AllowedAgents))
	}
	if err := validLabels("policy.allowed_labels", p.AllowedLabels); err != nil {
		return out, err
	}
	out.MinDecryptVersion = p.MinDecryptVersion
	out.AllAgents = p.AllAgents
	out.AllowedAgents = p.AllowedAgents
	out.AllowedLabels = p.AllowedLabels
	return out, nil
}

func policyToWire(p dkms.Policy, purpose dkms.Purpose) KeyPolicy {
	out := KeyPolicy{
		RotationPeriod:    durationText(p.RotationPeriod),
		MinDecryptVersion: p.MinDecryptVersion,
		AllAgents:         p.AllAgents,
		AllowedAgents:     p.AllowedAgents,
		AllowedLabels:     p.AllowedLabels,
	}
	if purpose == dkms.PurposeGossip {
		ig, rg := p.InstallGrace, p.RemoveGrace
		if ig == 0 {
			ig = dkms.DefaultGossipInstallGrace
		}
		if rg == 0 {
			rg = dkms.DefaultGossipRemoveGrace
		}
		out.InstallGrace, out.RemoveGrace = durationText(ig), durationText(rg)
	}
	return out
}

func optionalTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func keyToWire(k dkms.KeyInfo) Key {
	out := Key{
		Name: k.Name, Purpose: string(k.Purpose), PrimaryVersion: k.Primary, LatestVersion: k.Latest,
		MinDecryptVersion: k.Policy.MinDecryptVersion, Policy: policyToWire(k.Policy, k.Purpose),
		CreatedAt: k.CreatedAt.UTC(), RotatedAt: k.RotatedAt.UTC(), NextRotation: optionalTime(dkms.NextRotation(k)),
		Versions: make([]KeyVersion, 0, len(k.Versions)),
	}
	for _, v := range k.Versions {
		out.Versions = append(out.Versions, KeyVersion{
			Version: v.Version, State: v.State.String(), CreatedAt: v.CreatedAt.UTC(), ChangedAt: v.ChangedAt.UTC(),
			ActivateAt: optionalTime(v.ActivateAt), PrevRemoveAt: optionalTime(v.PrevRemoveAt),
		})
	}
	return out
}

// purposeFromWire reads CreateKeyRequest.Purpose.
func purposeFromWire(p string) (dkms.Purpose, error) {
	switch p {
	case "", string(dkms.PurposeData):
		return dkms.PurposeData, nil
	case string(dkms.PurposeGossip):
		return dkms.PurposeGossip, nil
	}
	return "", badRequest("purpose: %q must be %q or %q", p, dkms.PurposeData, dkms.PurposeGossip)
}

// versionText names a key version in messages.
func versionText(name string, v uint32) string { return fmt.Sprintf("%s v%d", name, v) }
