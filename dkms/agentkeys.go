package dkms

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// Agent keyring defaults.
const (
	// DefaultMaxClockSkew is how far in the future a key message's issue
	// time may lie.
	DefaultMaxClockSkew = 5 * time.Minute
	// DefaultReplayCacheSize bounds the message ids an agent remembers.
	DefaultReplayCacheSize = 4096

	labelAgentKeyring = "edgefleet/dkms/v1 agent keyring"
)

// AgentConfig configures an agent's keyring. AgentID, PrivateKey,
// ControlPlaneKey and DeviceKey are required.
type AgentConfig struct {
	// AgentID is this agent's id; messages for other ids are rejected.
	AgentID string
	// PrivateKey is the agent's X-Wing key whose public half the control
	// plane registered at enrollment.
	PrivateKey *pqcrypto.PrivateKey
	// ControlPlaneKey is the pinned ML-DSA-65 key of the control plane.
	ControlPlaneKey *pqcrypto.VerifyingKey
	// DeviceKey seals the keyring at rest (see LoadOrCreateDeviceKeyFile,
	// NewDeviceKey).
	DeviceKey *pqcrypto.DataKey
	// Store keeps the sealed keyring; nil keeps it in memory only.
	Store BlobStore
	// Suite is the data-key suite for Encrypt and for the keyring at rest;
	// empty means pqcrypto.DefaultDataKeySuite.
	Suite string
	// MaxClockSkew tolerates messages issued slightly in the future; zero
	// means DefaultMaxClockSkew.
	MaxClockSkew time.Duration
	// ReplayCacheSize bounds the remembered message ids; zero means
	// DefaultReplayCacheSize.
	ReplayCacheSize int
	// Rand supplies random bytes; nil means crypto/rand.
	Rand io.Reader
	// Clock is the keyring's clock (message validity, keyring changes);
	// nil means clock.Real().
	Clock clock.Clock
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
	// Auditor receives every accepted or rejected key message; nil
	// discards them.
	Auditor Auditor
	// Registry receives the keyring's metrics; nil leaves them unregistered.
	Registry *prometheus.Registry
}

// AgentKeys is an agent's keyring: the key versions the control plane sent
// it, checked, kept sealed at rest under the device key, and used to seal
// and open data. Safe for concurrent use.
type AgentKeys struct {
	id       string
	sk       *pqcrypto.PrivateKey
	skID     string
	cp       *pqcrypto.VerifyingKey
	device   *pqcrypto.DataKey
	store    BlobStore
	suite    string
	skew     time.Duration
	maxSeen  int
	rand     io.Reader
	now      func() time.Time
	log      *slog.Logger
	audit    Auditor
	m        *agentMetrics
	atRestAD []byte

	mu  sync.RWMutex
	st  *agentState
	dks map[versionRef]*pqcrypto.DataKey
}

// agentState is the keyring as stored (JSON, sealed under the device key).
type agentState struct {
	Keys map[string]*agentKey `json:"keys"`
	Seen map[string]time.Time `json:"seen"` // message id (hex) -> expiry
}

type agentKey struct {
	Purpose    Purpose                  `json:"purpose"`
	MinVersion uint32                   `json:"min_version,omitempty"`
	Newest     uint32                   `json:"newest"`
	Versions   map[uint32]*agentVersion `json:"versions"`
}

type agentVersion struct {
	State        State     `json:"state"`
	Material     []byte    `json:"material,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	ChangedAt    time.Time `json:"changed_at"`
	ActivateAt   time.Time `json:"activate_at,omitzero"`
	PrevRemoveAt time.Time `json:"prev_remove_at,omitzero"`
}

func (st *agentState) clone() *agentState {
	c := &agentState{Keys: make(map[string]*agentKey, len(st.Keys)), Seen: make(map[string]time.Time, len(st.Seen))}
	for id, exp := range st.Seen {
		c.Seen[id] = exp
	}
	for name, k := range st.Keys {
		ck := *k
		ck.Versions = make(map[uint32]*agentVersion, len(k.Versions))
		for v, av := range k.Versions {
			cv := *av
			ck.Versions[v] = &cv
		}
		c.Keys[name] = &ck
	}
	return c
}

// OpenAgentKeys opens an agent's keyring, loading and unsealing what
// cfg.Store holds.
func OpenAgentKeys(ctx context.Context, cfg AgentConfig) (*AgentKeys, error) {
	if err := checkAgentID(cfg.AgentID); err != nil {
		return nil, fmt.Errorf("dkms: agent keyring: %w: %w", err, ErrInvalidConfig)
	}
	if cfg.PrivateKey == nil || cfg.PrivateKey.KEM().ID() != pqcrypto.XWing().ID() {
		return nil, fmt.Errorf("dkms: agent keyring needs the agent's X-Wing private key: %w", ErrInvalidConfig)
	}
	if cfg.ControlPlaneKey == nil {
		return nil, fmt.Errorf("dkms: agent keyring needs the pinned control-plane key: %w", ErrInvalidConfig)
	}
	if cfg.DeviceKey == nil {
		return nil, fmt.Errorf("dkms: agent keyring needs a device key: %w", ErrInvalidConfig)
	}
	if cfg.Suite == "" {
		cfg.Suite = pqcrypto.DefaultDataKeySuite
	}
	if st, err := pqcrypto.LookupSuite(cfg.Suite); err != nil || st.Mode() != pqcrypto.ModeDataKey {
		return nil, fmt.Errorf("dkms: suite %q is not a data-key suite: %w", cfg.Suite, ErrInvalidConfig)
	}
	if cfg.MaxClockSkew < 0 || cfg.ReplayCacheSize < 0 {
		return nil, fmt.Errorf("dkms: clock skew and replay cache size must not be negative: %w", ErrInvalidConfig)
	}
	if cfg.MaxClockSkew == 0 {
		cfg.MaxClockSkew = DefaultMaxClockSkew
	}
	if cfg.ReplayCacheSize == 0 {
		cfg.ReplayCacheSize = DefaultReplayCacheSize
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	cfg.Clock = clock.Or(cfg.Clock)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Auditor == nil {
		cfg.Auditor = nopAuditor{}
	}
	m, err := newAgentMetrics(cfg.Registry)
	if err != nil {
		return nil, fmt.Errorf("dkms: register metrics: %w", err)
	}
	a := &AgentKeys{
		id: cfg.AgentID, sk: cfg.PrivateKey, skID: cfg.PrivateKey.Public().Fingerprint(), cp: cfg.ControlPlaneKey,
		device: cfg.DeviceKey, store: cfg.Store, suite: cfg.Suite, skew: cfg.MaxClockSkew, maxSeen: cfg.ReplayCacheSize,
		rand: &lockedReader{r: cfg.Rand}, now: cfg.Clock.Now, log: cfg.Logger, audit: cfg.Auditor, m: m,
		atRestAD: append([]byte(labelAgentKeyring+"\x00"), cfg.AgentID...),
		st:       &agentState{Keys: map[string]*agentKey{}, Seen: map[string]time.Time{}},
		dks:      map[versionRef]*pqcrypto.DataKey{},
	}
	if a.store == nil {
		return a, nil
	}
	blob, err := a.store.Load(ctx)
	if err != nil {
		return nil, err
	}
	if blob == nil {
		return a, nil
	}
	plain, _, err := pqcrypto.Open(nil, blob, &pqcrypto.Keys{DataKey: pqcrypto.DataKeys(a.device), AAD: a.atRestAD})
	if err != nil {
		return nil, fmt.Errorf("dkms: unsealing the agent keyring (wrong device key or damaged file): %w", err)
	}
	defer clear(plain)
	st := &agentState{}
	if err := json.Unmarshal(plain, st); err != nil {
		return nil, fmt.Errorf("dkms: agent keyring content: %v: %w", err, ErrMalformed)
	}
	if st.Keys == nil {
		st.Keys = map[string]*agentKey{}
	}
	if st.Seen == nil {
		st.Seen = map[string]time.Time{}
	}
	dks, err := dataKeysOf(st)
	if err != nil {
		return nil, err
	}
	a.st, a.dks = st, dks
	return a, nil
}

// dataKeysOf builds the data keys of every version that holds material.
func dataKeysOf(st *agentState) (map[versionRef]*pqcrypto.DataKey, error) {
	out := map[versionRef]*pqcrypto.DataKey{}
	for name, k := range st.Keys {
		if k.Versions == nil {
			k.Versions = map[uint32]*agentVersion{}
		}
		for v, av := range k.Versions {
			if av == nil || !av.State.valid() {
				return nil, fmt.Errorf("dkms: agent keyring: key %q version %d has no valid state: %w", name, v, ErrMalformed)
			}
			if av.Material == nil {
				continue
			}
			dk, err := pqcrypto.NewDataKey(name, v, av.Material)
			if err != nil {
				return nil, fmt.Errorf("dkms: agent keyring: key %q version %d: %w", name, v, err)
			}
			out[versionRef{name, v}] = dk
		}
	}
	return out, nil
}

// AcceptResult reports what an accepted key message did.
type AcceptResult struct {
	Key     string
	Version uint32
	State   State // the version's state in the keyring afterwards
	Changed bool  // false when the keyring already held exactly this
}

// Accept checks and applies an encoded key message. Checks, in order:
// structure (ErrMalformed), addressee (ErrNotForThisAgent), the control
// plane's signature (ErrBadSignature), validity time (ErrNotYetValid,
// ErrExpired), the sealed material (pqcrypto errors), message id
// (ErrReplay), then the keyring rules: a key's purpose never changes
// (ErrWrongPurpose), versions below the minimum decryption version are
// refused (ErrBelowMinVersion), a version held with other material or
// destroyed cannot be brought back (ErrRollback). States only move forward;
// the newest primary version is the primary. A rejected message changes
// nothing.
func (a *AgentKeys) Accept(ctx context.Context, raw []byte) (AcceptResult, error) {
	m, err := ParseKeyMessage(raw)
	if err != nil {
		a.accepted(ctx, &KeyMessage{}, AcceptResult{}, err)
		return AcceptResult{}, err
	}
	return a.AcceptMessage(ctx, m)
}

// AcceptMessage is Accept for a message already parsed.
func (a *AgentKeys) AcceptMessage(ctx context.Context, m *KeyMessage) (res AcceptResult, err error) {
	defer func() { a.accepted(ctx, m, res, err) }()
	if m.AgentID != a.id {
		return res, fmt.Errorf("dkms: key message %s is for agent %q, this is %q: %w", m.IDString(), m.AgentID, a.id, ErrNotForThisAgent)
	}
	if err := m.check(); err != nil {
		return res, err
	}
	if err := m.Verify(a.cp); err != nil {
		return res, err
	}
	now := a.now()
	if m.IssuedAt.After(now.Add(a.skew)) {
		return res, fmt.Errorf("dkms: key message %s issued at %v, now is %v: %w", m.IDString(), m.IssuedAt, now, ErrNotYetValid)
	}
	if !now.Before(m.ExpiresAt) {
		return res, fmt.Errorf("dkms: key message %s expired at %v: %w", m.IDString(), m.ExpiresAt, ErrExpired)
	}
	var material []byte
	if len(m.Envelope) > 0 {
		material, _, err = pqcrypto.Open(nil, m.Envelope, &pqcrypto.Keys{
			RecipientID: a.id, PrivateKey: pqcrypto.PrivateKeyFor(a.skID, 1, a.sk), AAD: m.header(),
		})
		if err != nil {
			return res, fmt.Errorf("dkms: key message %s: opening the key material: %w", m.IDString(), err)
		}
		defer clear(material)
		if len(material) != KeySize {
			return res, fmt.Errorf("dkms: key message %s: material of %d bytes, want %d: %w", m.IDString(), len(material), KeySize, ErrMalformed)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	id := m.IDString()
	if _, seen := a.st.Seen[id]; seen {
		return res, fmt.Errorf("dkms: key message %s: %w", id, ErrReplay)
	}
	st := a.st.clone()
	res, err = applyMessage(st, m, material, now)
	if err != nil {
		return res, err
	}
	rememberSeen(st.Seen, id, m.ExpiresAt, now, a.maxSeen)
	dks, err := dataKeysOf(st)
	if err != nil {
		return AcceptResult{}, err
	}
	if err := a.persist(ctx, st); err != nil {
		return AcceptResult{}, err
	}
	a.st, a.dks = st, dks
	if res.Changed {
		a.log.Info("dkms: key version accepted", "agent", a.id, "key", res.Key, "version", res.Version, "state", res.State.String())
	}
	return res, nil
}

func (a *AgentKeys) accepted(ctx context.Context, m *KeyMessage, res AcceptResult, err error) {
	reason := "accepted"
	if err != nil {
		reason = rejectReason(err)
		a.log.Warn("dkms: key message rejected", "agent", a.id, "message", m.IDString(), "key", m.Key, "version", m.Version, "err", err)
	}
	a.m.messages.WithLabelValues(reason).Inc()
	a.audit.Audit(ctx, AuditEvent{Time: a.now(), Actor: ActorFrom(ctx), Action: ActionAcceptMessage, Key: m.Key, Version: m.Version, Agent: a.id, Result: resultOf(err)})
}

// used records a seal or open in metrics and the audit log.
func (a *AgentKeys) used(ctx context.Context, action, key string, version uint32, err error) {
	a.m.ops.WithLabelValues(action, okOrError(err)).Inc()
	a.audit.Audit(ctx, AuditEvent{Time: a.now(), Actor: ActorFrom(ctx), Action: action, Key: key, Version: version, Agent: a.id, Result: resultOf(err)})
}

// applyMessage merges a verified message into st.
func applyMessage(st *agentState, m *KeyMessage, material []byte, now time.Time) (AcceptResult, error) {
	res := AcceptResult{Key: m.Key, Version: m.Version}
	k := st.Keys[m.Key]
	if k == nil {
		k = &agentKey{Purpose: m.Purpose, Versions: map[uint32]*agentVersion{}}
		st.Keys[m.Key] = k
		res.Changed = true
	} else if k.Purpose != m.Purpose {
		return res, fmt.Errorf("dkms: key %q is a %s key, the message says %s: %w", m.Key, k.Purpose, m.Purpose, ErrWrongPurpose)
	}
	minV := max(k.MinVersion, m.MinVersion)
	if m.Version < minV {
		return res, fmt.Errorf("dkms: key %q version %d is below the minimum decryption version %d: %w", m.Key, m.Version, minV, ErrBelowMinVersion)
	}
	cur := k.Versions[m.Version]
	if cur != nil && material != nil {
		if cur.State == StateDestroyed {
			return res, fmt.Errorf("dkms: key %q version %d was destroyed; a message cannot restore it: %w", m.Key, m.Version, ErrRollback)
		}
		if cur.Material != nil && !bytes.Equal(cur.Material, material) {
			return res, fmt.Errorf("dkms: key %q version %d (newest %d) arrived with other material: %w", m.Key, m.Version, k.Newest, ErrRollback)
		}
	}
	nv := &agentVersion{State: m.State, CreatedAt: m.CreatedAt, ActivateAt: m.ActivateAt, PrevRemoveAt: m.PrevRemoveAt, ChangedAt: now}
	if cur != nil {
		c := *cur
		nv = &c
		if m.State > nv.State {
			nv.State, nv.ChangedAt = m.State, now
		}
	}
	if material != nil && nv.Material == nil && nv.State.usable() {
		nv.Material = slices.Clone(material)
	}
	if nv.State == StateDestroyed {
		nv.Material = nil
	}
	if cur == nil || cur.State != nv.State || (cur.Material == nil) != (nv.Material == nil) {
		res.Changed = true
	}
	k.Versions[m.Version] = nv
	if minV != k.MinVersion || m.Version > k.Newest {
		res.Changed = true
	}
	k.MinVersion, k.Newest = minV, max(k.Newest, m.Version)
	// One primary per key: the newest version in the primary state.
	var top uint32
	for v, av := range k.Versions {
		if av.State == StatePrimary && v > top {
			top = v
		}
	}
	for v, av := range k.Versions {
		if av.State == StatePrimary && v != top {
			av.State, av.ChangedAt = StateDecryptOnly, now
		}
	}
	res.State = k.Versions[m.Version].State
	return res, nil
}

// rememberSeen records a message id until its expiry, first forgetting
// expired ids and, beyond max entries, the ones expiring first. A forgotten
// id that comes back is still harmless: states only move forward and a held
// version cannot change material, so a replay can at most repeat itself.
func rememberSeen(seen map[string]time.Time, id string, expires, now time.Time, maxEntries int) {
	for k, exp := range seen {
		if !now.Before(exp) {
			delete(seen, k)
		}
	}
	if len(seen) >= maxEntries {
		type entry struct {
			id  string
			exp time.Time
		}
		all := make([]entry, 0, len(seen))
		for k, exp := range seen {
			all = append(all, entry{k, exp})
		}
		sort.Slice(all, func(i, j int) bool {
			if !all[i].exp.Equal(all[j].exp) {
				return all[i].exp.Before(all[j].exp)
			}
			return all[i].id < all[j].id
		})
		for _, e := range all[:len(seen)-maxEntries+1] {
			delete(seen, e.id)
		}
	}
	seen[id] = expires
}

// persist seals st under the device key and saves it.
func (a *AgentKeys) persist(ctx context.Context, st *agentState) error {
	if a.store == nil {
		return nil
	}
	plain, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("dkms: encode agent keyring: %w", err)
	}
	defer clear(plain)
	blob, err := pqcrypto.SealWithDataKey(nil, a.device, plain, &pqcrypto.SealOptions{Suite: a.suite, AAD: a.atRestAD, Rand: a.rand})
	if err != nil {
		return fmt.Errorf("dkms: seal agent keyring: %w", err)
	}
	if err := a.store.Save(ctx, blob); err != nil {
		return fmt.Errorf("dkms: saving the agent keyring: %w", err)
	}
	return nil
}

// Encrypt seals plaintext under the primary version of a data key the
// control plane sent, so that the control plane (and agents holding the
// key) can open it.
func (a *AgentKeys) Encrypt(ctx context.Context, name string, plaintext, aad []byte) (env []byte, err error) {
	var version uint32
	defer func() { a.used(ctx, ActionEncrypt, name, version, err) }()
	dk, err := a.PrimaryDataKey(name)
	if dk != nil {
		version = dk.Version()
	}
	if err != nil {
		return nil, err
	}
	env, err = pqcrypto.SealWithDataKey(nil, dk, plaintext, &pqcrypto.SealOptions{Suite: a.suite, AAD: aad, Rand: a.rand})
	if err != nil {
		return nil, fmt.Errorf("dkms: encrypt under %q v%d: %w", name, dk.Version(), err)
	}
	return env, nil
}

// Decrypt opens an envelope sealed under a version of the named data key,
// with the same checks and errors as Service.Decrypt.
func (a *AgentKeys) Decrypt(ctx context.Context, name string, envelope, aad []byte) (pt []byte, err error) {
	var version uint32
	defer func() { a.used(ctx, ActionDecrypt, name, version, err) }()
	h, _, err := pqcrypto.ParseHeader(envelope)
	if h != nil {
		version = h.KeyVersion
	}
	if err != nil {
		return nil, fmt.Errorf("dkms: decrypt with %q: %w", name, err)
	}
	if h.Mode != pqcrypto.ModeDataKey || h.KeyID != name {
		return nil, fmt.Errorf("dkms: decrypt with %q: envelope is a %s envelope for key %q: %w", name, h.Mode, h.KeyID, ErrWrongKey)
	}
	dk, err := a.DataKey(name, h.KeyVersion)
	if err != nil {
		return nil, err
	}
	pt, _, err = pqcrypto.Open(nil, envelope, &pqcrypto.Keys{DataKey: pqcrypto.DataKeys(dk), AAD: aad})
	if err != nil {
		return nil, fmt.Errorf("dkms: decrypt with %q v%d: %w", name, h.KeyVersion, err)
	}
	return pt, nil
}

// PrimaryDataKey returns the primary version of a data key, for streaming
// with pqcrypto's Writer.
func (a *AgentKeys) PrimaryDataKey(name string) (*pqcrypto.DataKey, error) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	k, err := a.keyLocked(name, PurposeData)
	if err != nil {
		return nil, err
	}
	for v, av := range k.Versions {
		if av.State == StatePrimary {
			if dk := a.dks[versionRef{name, v}]; dk != nil {
				return dk, nil
			}
		}
	}
	return nil, fmt.Errorf("dkms: key %q has no primary version on agent %q: %w", name, a.id, ErrUnknownVersion)
}

// DataKey returns a version of a data key for opening, after the state and
// minimum-version checks.
func (a *AgentKeys) DataKey(name string, version uint32) (*pqcrypto.DataKey, error) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	k, err := a.keyLocked(name, PurposeData)
	if err != nil {
		return nil, err
	}
	av := k.Versions[version]
	switch {
	case av == nil:
		return nil, fmt.Errorf("dkms: key %q version %d is not on agent %q: %w", name, version, a.id, ErrUnknownVersion)
	case version < k.MinVersion:
		return nil, fmt.Errorf("dkms: key %q version %d is below the minimum decryption version %d: %w", name, version, k.MinVersion, ErrBelowMinVersion)
	case av.State == StateRetired:
		return nil, fmt.Errorf("dkms: key %q version %d: %w", name, version, ErrKeyVersionRetired)
	case av.State == StateDestroyed:
		return nil, fmt.Errorf("dkms: key %q version %d: %w", name, version, ErrKeyVersionDestroyed)
	}
	dk := a.dks[versionRef{name, version}]
	if dk == nil {
		return nil, fmt.Errorf("dkms: key %q version %d has no material on agent %q: %w", name, version, a.id, ErrUnknownVersion)
	}
	return dk, nil
}

// OpenKeys returns pqcrypto.Keys that open envelopes of the named data key
// with every Decrypt check, for pqcrypto's streaming Reader.
func (a *AgentKeys) OpenKeys(name string, aad []byte) *pqcrypto.Keys {
	return &pqcrypto.Keys{AAD: aad, DataKey: func(id string, version uint32) (*pqcrypto.DataKey, error) {
		if id != name {
			return nil, fmt.Errorf("dkms: envelope is for key %q, not %q: %w", id, name, ErrWrongKey)
		}
		return a.DataKey(name, version)
	}}
}

func (a *AgentKeys) keyLocked(name string, purpose Purpose) (*agentKey, error) {
	k := a.st.Keys[name]
	if k == nil {
		return nil, fmt.Errorf("dkms: key %q is not on agent %q: %w", name, a.id, ErrUnknownKey)
	}
	if k.Purpose != purpose {
		return nil, fmt.Errorf("dkms: key %q is a %s key, not %s: %w", name, k.Purpose, purpose, ErrWrongPurpose)
	}
	return k, nil
}

// Keys describes the keyring's keys (no material). Policy is left zero
// except for the minimum decryption version.
func (a *AgentKeys) Keys() []KeyInfo {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]KeyInfo, 0, len(a.st.Keys))
	for name, k := range a.st.Keys {
		info := KeyInfo{Name: name, Purpose: k.Purpose, Latest: k.Newest, Policy: Policy{MinDecryptVersion: k.MinVersion}}
		for _, v := range slices.Sorted(maps.Keys(k.Versions)) {
			av := k.Versions[v]
			if av.State == StatePrimary {
				info.Primary = v
			}
			info.Versions = append(info.Versions, VersionInfo{Key: name, Version: v, State: av.State, CreatedAt: av.CreatedAt, ChangedAt: av.ChangedAt, ActivateAt: av.ActivateAt, PrevRemoveAt: av.PrevRemoveAt})
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ID is the agent id.
func (a *AgentKeys) ID() string { return a.id }

// OpenSealed opens an envelope the control plane sealed to this agent's
// X-Wing key (recipient id = the agent id) with associated data aad: how
// other material than key messages reaches the agent, such as model files.
func (a *AgentKeys) OpenSealed(envelope, aad []byte) ([]byte, error) {
	pt, _, err := pqcrypto.Open(nil, envelope, &pqcrypto.Keys{
		RecipientID: a.id, PrivateKey: pqcrypto.PrivateKeyFor(a.skID, 1, a.sk), AAD: aad,
	})
	if err != nil {
		return nil, fmt.Errorf("dkms: opening an envelope sealed to agent %q: %w", a.id, err)
	}
	return pt, nil
}

// seenIDs returns the remembered message ids (for tests).
func (a *AgentKeys) seenIDs() []string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]string, 0, len(a.st.Seen))
	for id := range a.st.Seen {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}
