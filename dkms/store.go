package dkms

import (
	"context"
	"errors"
	"time"
)

// Store persists the key service's state. All key material in it is wrapped
// (pqcrypto data-key envelopes) under the level above, except the root key
// of a dev-mode store. One Service owns a store at a time.
//
// Reads and writes happen inside transactions: Update runs fn in a
// read-write transaction committed when fn returns nil and rolled back
// otherwise; View runs fn in a read-only one. A Tx must not be used after fn
// returns. Lookups of absent records return an error wrapping ErrNotFound.
type Store interface {
	Update(ctx context.Context, fn func(Tx) error) error
	View(ctx context.Context, fn func(Tx) error) error
	Close() error
}

// ErrNotFound is returned by Tx lookups of records that do not exist.
var ErrNotFound = errors.New("dkms: record not found")

// Tx is one store transaction.
type Tx interface {
	// GetMeta returns a service-wide value (root parameters, share digests).
	GetMeta(key string) ([]byte, error)
	PutMeta(key string, value []byte) error
	DeleteMeta(key string) error

	GetKey(name string) (*KeyRecord, error)
	PutKey(k *KeyRecord) error
	ListKeys() ([]*KeyRecord, error)

	GetVersion(name string, version uint32) (*VersionRecord, error)
	PutVersion(v *VersionRecord) error
	// ListVersions returns the versions of a key in ascending order.
	ListVersions(name string) ([]*VersionRecord, error)

	GetAgent(id string) (*AgentRecord, error)
	PutAgent(a *AgentRecord) error
	ListAgents() ([]*AgentRecord, error)
}

// KeyRecord is the stored form of a named key.
type KeyRecord struct {
	Name      string
	Purpose   Purpose
	Policy    Policy
	Primary   uint32 // primary version (0 for none)
	Latest    uint32 // highest version ever created
	CreatedAt time.Time
	RotatedAt time.Time // when Primary was created
}

// VersionRecord is the stored form of one key version. Wrapped is the
// version's material sealed under the level above (root for KEK versions,
// a KEK version for data and gossip keys); nil once destroyed.
type VersionRecord struct {
	Name      string
	Version   uint32
	State     State
	Wrapped   []byte
	CreatedAt time.Time
	ChangedAt time.Time // last state change
	// ActivateAt is when the version may become the primary of a gossip
	// keyring; PrevRemoveAt is when the versions before it leave gossip
	// keyrings. Both are zero for other purposes.
	ActivateAt   time.Time
	PrevRemoveAt time.Time
}

// AgentRecord is the stored form of a registered agent.
type AgentRecord struct {
	ID           string
	PublicKey    []byte // X-Wing public key, 1216 bytes
	Labels       map[string]string
	RegisteredAt time.Time
	RevokedAt    time.Time // zero unless revoked
}

// Revoked reports whether the agent was revoked.
func (a *AgentRecord) Revoked() bool { return !a.RevokedAt.IsZero() }
