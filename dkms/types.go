package dkms

import (
	"fmt"
	"slices"
	"time"
)

// Purpose says what a key's versions are for.
type Purpose string

const (
	// PurposeData keys seal data in pqcrypto data-key envelopes (Encrypt,
	// Decrypt, Rewrap).
	PurposeData Purpose = "data"
	// PurposeGossip keys are 32-byte AES-256 keys for memberlist's gossip
	// keyring; they never seal envelopes. See GossipKeyring.
	PurposeGossip Purpose = "gossip"
	// PurposeKEK marks the key service's own key-encryption keys. Callers
	// cannot create keys of this purpose.
	PurposeKEK Purpose = "kek"
)

func (p Purpose) valid() bool { return p == PurposeData || p == PurposeGossip }

// State is the lifecycle state of a key version. States only move forward:
// primary -> decrypt-only -> retired -> destroyed.
type State uint8

const (
	// StatePrimary is the version new data is sealed under (one per key).
	StatePrimary State = 1
	// StateDecryptOnly versions open existing envelopes but seal nothing.
	StateDecryptOnly State = 2
	// StateRetired versions are disabled: they open nothing
	// (ErrKeyVersionRetired), but their material is kept.
	StateRetired State = 3
	// StateDestroyed versions have had their material erased
	// (ErrKeyVersionDestroyed).
	StateDestroyed State = 4
)

// String names the state.
func (s State) String() string {
	switch s {
	case StatePrimary:
		return "primary"
	case StateDecryptOnly:
		return "decrypt-only"
	case StateRetired:
		return "retired"
	case StateDestroyed:
		return "destroyed"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

func (s State) valid() bool { return s >= StatePrimary && s <= StateDestroyed }

// usable reports whether a version in this state opens envelopes.
func (s State) usable() bool { return s == StatePrimary || s == StateDecryptOnly }

// Defaults for gossip keyring rotation (see Policy).
const (
	// DefaultGossipInstallGrace is how long a new gossip key version is
	// installed everywhere before it becomes the primary.
	DefaultGossipInstallGrace = time.Minute
	// DefaultGossipRemoveGrace is how long the previous versions stay in
	// keyrings after a new version became primary: agents offline for less
	// than this rejoin gossip with the key they have.
	DefaultGossipRemoveGrace = time.Hour
)

// Policy is a key's per-key policy.
type Policy struct {
	// RotationPeriod makes RotateDue create a new version once the primary
	// is this old; zero means rotation on demand only.
	RotationPeriod time.Duration `json:"rotation_period,omitempty"`
	// MinDecryptVersion refuses to open envelopes under lower versions
	// (ErrBelowMinVersion), whatever their state. Zero means no minimum.
	MinDecryptVersion uint32 `json:"min_decrypt_version,omitempty"`
	// AllAgents distributes the key to every registered, non-revoked agent.
	AllAgents bool `json:"all_agents,omitempty"`
	// AllowedAgents distributes the key to these agent ids.
	AllowedAgents []string `json:"allowed_agents,omitempty"`
	// AllowedLabels distributes the key to agents that carry every one of
	// these labels with the same value. A key with no AllAgents,
	// AllowedAgents or AllowedLabels stays on the control plane.
	AllowedLabels map[string]string `json:"allowed_labels,omitempty"`
	// InstallGrace (gossip keys) is how long after its creation a version
	// becomes primary in agents' keyrings; zero means
	// DefaultGossipInstallGrace.
	InstallGrace time.Duration `json:"install_grace,omitempty"`
	// RemoveGrace (gossip keys) is how long after a version becomes primary
	// the versions before it stay installed; zero means
	// DefaultGossipRemoveGrace.
	RemoveGrace time.Duration `json:"remove_grace,omitempty"`
}

// Allows reports whether an agent with this id and these labels may receive
// the key's versions (revocation is checked separately).
func (p Policy) Allows(agentID string, labels map[string]string) bool {
	if p.AllAgents || slices.Contains(p.AllowedAgents, agentID) {
		return true
	}
	if len(p.AllowedLabels) == 0 {
		return false
	}
	for k, v := range p.AllowedLabels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func (p Policy) installGrace() time.Duration {
	if p.InstallGrace == 0 {
		return DefaultGossipInstallGrace
	}
	return p.InstallGrace
}

func (p Policy) removeGrace() time.Duration {
	if p.RemoveGrace == 0 {
		return DefaultGossipRemoveGrace
	}
	return p.RemoveGrace
}

func (p Policy) validate() error {
	if p.RotationPeriod < 0 || (p.RotationPeriod > 0 && p.RotationPeriod < time.Second) {
		return fmt.Errorf("dkms: rotation period %v must be zero or at least 1s: %w", p.RotationPeriod, ErrInvalidPolicy)
	}
	if p.InstallGrace < 0 || p.RemoveGrace < 0 {
		return fmt.Errorf("dkms: gossip grace periods must not be negative: %w", ErrInvalidPolicy)
	}
	for _, a := range p.AllowedAgents {
		if err := checkAgentID(a); err != nil {
			return fmt.Errorf("dkms: allowed agent: %w: %w", err, ErrInvalidPolicy)
		}
	}
	for k := range p.AllowedLabels {
		if k == "" {
			return fmt.Errorf("dkms: empty label name in allowed labels: %w", ErrInvalidPolicy)
		}
	}
	return nil
}

func (p Policy) clone() Policy {
	p.AllowedAgents = slices.Clone(p.AllowedAgents)
	if p.AllowedLabels != nil {
		m := make(map[string]string, len(p.AllowedLabels))
		for k, v := range p.AllowedLabels {
			m[k] = v
		}
		p.AllowedLabels = m
	}
	return p
}

// KeyInfo describes a key and its versions. It never carries material.
type KeyInfo struct {
	Name      string
	Purpose   Purpose
	Policy    Policy
	Primary   uint32 // primary version
	Latest    uint32 // highest version
	CreatedAt time.Time
	RotatedAt time.Time // when the primary version was created
	Versions  []VersionInfo
}

// VersionInfo describes one key version.
type VersionInfo struct {
	Key          string
	Version      uint32
	State        State
	CreatedAt    time.Time
	ChangedAt    time.Time
	ActivateAt   time.Time // gossip keys: when it becomes keyring primary
	PrevRemoveAt time.Time // gossip keys: when older versions leave keyrings
}

// RotationDue reports whether the key's automatic rotation period has passed
// at now. It is a pure function of its arguments.
func RotationDue(k KeyInfo, now time.Time) bool {
	if k.Policy.RotationPeriod <= 0 || k.Primary == 0 {
		return false
	}
	return !now.Before(k.RotatedAt.Add(k.Policy.RotationPeriod))
}

// NextRotation is when RotationDue turns true, or the zero time for keys
// without a rotation period.
func NextRotation(k KeyInfo) time.Time {
	if k.Policy.RotationPeriod <= 0 || k.Primary == 0 {
		return time.Time{}
	}
	return k.RotatedAt.Add(k.Policy.RotationPeriod)
}

// Names: key names are 1..128 characters of [A-Za-z0-9._-] starting with a
// letter or digit; agent ids are 1..255 characters of [A-Za-z0-9._:@-].
const (
	maxKeyName = 128
	maxAgentID = 255
)

func checkName(kind, s string, max int, extra string) error {
	if len(s) == 0 || len(s) > max {
		return fmt.Errorf("dkms: %s %q must be 1..%d characters: %w", kind, s, max, ErrInvalidName)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return fmt.Errorf("dkms: %s %q must start with a letter or digit: %w", kind, s, ErrInvalidName)
		}
		if !alnum && c != '.' && c != '_' && c != '-' && !containsByte(extra, c) {
			return fmt.Errorf("dkms: %s %q has character %q: %w", kind, s, c, ErrInvalidName)
		}
	}
	return nil
}

func containsByte(s string, c byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return true
		}
	}
	return false
}

func checkKeyName(s string) error { return checkName("key name", s, maxKeyName, "") }
func checkAgentID(s string) error { return checkName("agent id", s, maxAgentID, ":@") }
