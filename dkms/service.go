package dkms

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// Reserved names. User key names cannot contain '/', so they never collide.
const (
	// RootKeyID is the pqcrypto key id of the root key (KEK versions are
	// sealed under it).
	RootKeyID = "dkms/root"
	// KEKName is the key name of the key service's key-encryption keys.
	KEKName = "dkms/kek"
	// DefaultSignerID is the sender id written into key messages.
	DefaultSignerID = "controlplane"
	// DefaultMessageTTL is how long a key message stays valid.
	DefaultMessageTTL = 24 * time.Hour
	// KeySize is the length of every key version's material (32 bytes:
	// a pqcrypto data key, or an AES-256 key for memberlist).
	KeySize = 32
)

const (
	metaRoot    = "root"
	metaDevRoot = "dev_root"
	labelWrap   = "edgefleet/dkms/v1 wrapped key"
)

// Config configures a key service. Store and SigningKey are required; every
// other field has a default.
type Config struct {
	// Store keeps the key hierarchy (see OpenSQLite).
	Store Store
	// SigningKey is the control plane's ML-DSA-65 key; key messages are
	// signed with it and agents pin its public half.
	SigningKey *pqcrypto.SigningKey
	// SignerID names the control plane in key messages; empty means
	// DefaultSignerID.
	SignerID string
	// DevMode auto-initializes and auto-unseals: the root key is stored in
	// the clear in the store, and every start logs a warning. For
	// `edgectl sim` and tests of other packages only.
	DevMode bool
	// MessageTTL is how long key messages stay valid; zero means
	// DefaultMessageTTL.
	MessageTTL time.Duration
	// Suite is the pqcrypto data-key suite for wrapping and for Encrypt;
	// empty means pqcrypto.DefaultDataKeySuite.
	Suite string
	// RecipientSuite is the pqcrypto suite key messages are sealed with;
	// empty means pqcrypto.DefaultRecipientSuite (X-Wing).
	RecipientSuite string
	// Rand supplies every random byte dkms draws; nil means crypto/rand.
	Rand io.Reader
	// Clock is the service's clock (key creation, rotation schedule,
	// message validity); nil means clock.Real().
	Clock clock.Clock
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
	// Auditor receives every key operation; nil discards them.
	Auditor Auditor
	// Registry receives the service's metrics; nil leaves them unregistered.
	Registry *prometheus.Registry
}

// Service is the control plane's key service: root key custody, the key
// hierarchy, key operations and distribution to agents. Safe for concurrent
// use. One Service owns its Store.
type Service struct {
	store    Store
	rand     io.Reader
	now      func() time.Time
	log      *slog.Logger
	audit    Auditor
	m        *serviceMetrics
	signer   *pqcrypto.SigningKey
	signerID string
	ttl      time.Duration
	suite    string
	rsuite   string
	dev      bool

	mu      sync.RWMutex
	meta    *rootMeta         // nil until initialized
	root    *pqcrypto.DataKey // nil while sealed
	keks    map[uint32]*pqcrypto.DataKey
	kek     uint32 // primary KEK version
	pending []Share

	cacheMu sync.Mutex
	cache   map[versionRef]*pqcrypto.DataKey
}

type versionRef struct {
	name    string
	version uint32
}

// rootMeta is the stored, public description of the root key.
type rootMeta struct {
	Version   uint32   `json:"version"`
	KCV       string   `json:"kcv"`
	Threshold int      `json:"threshold"`
	Total     int      `json:"total"`
	Digests   []string `json:"digests"`
	Dev       bool     `json:"dev,omitempty"`
}

// lockedReader serializes reads of an injected random source, which need
// not be safe for concurrent use.
type lockedReader struct {
	mu sync.Mutex
	r  io.Reader
}

func (l *lockedReader) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Read(p)
}

// Open starts a key service on cfg.Store. A store without a root key is
// uninitialized (call Initialize), unless DevMode, which initializes it. A
// store with a root key starts sealed (call Unseal with enough shares),
// unless it is a dev-mode store, which unseals at once.
func Open(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, fmt.Errorf("dkms: config needs a Store: %w", ErrInvalidConfig)
	}
	if cfg.SigningKey == nil {
		return nil, fmt.Errorf("dkms: config needs the control plane's SigningKey: %w", ErrInvalidConfig)
	}
	if cfg.SignerID == "" {
		cfg.SignerID = DefaultSignerID
	}
	if err := checkAgentID(cfg.SignerID); err != nil {
		return nil, fmt.Errorf("dkms: signer id: %w: %w", err, ErrInvalidConfig)
	}
	if cfg.MessageTTL < 0 {
		return nil, fmt.Errorf("dkms: message ttl %v is negative: %w", cfg.MessageTTL, ErrInvalidConfig)
	}
	if cfg.MessageTTL == 0 {
		cfg.MessageTTL = DefaultMessageTTL
	}
	if cfg.Suite == "" {
		cfg.Suite = pqcrypto.DefaultDataKeySuite
	}
	if st, err := pqcrypto.LookupSuite(cfg.Suite); err != nil || st.Mode() != pqcrypto.ModeDataKey {
		return nil, fmt.Errorf("dkms: suite %q is not a data-key suite: %w", cfg.Suite, ErrInvalidConfig)
	}
	if cfg.RecipientSuite == "" {
		cfg.RecipientSuite = pqcrypto.DefaultRecipientSuite
	}
	if st, err := pqcrypto.LookupSuite(cfg.RecipientSuite); err != nil || st.Mode() != pqcrypto.ModeRecipient || !st.PostQuantum() {
		return nil, fmt.Errorf("dkms: recipient suite %q is not a post-quantum recipient suite: %w", cfg.RecipientSuite, ErrInvalidConfig)
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
	m, err := newServiceMetrics(cfg.Registry)
	if err != nil {
		return nil, fmt.Errorf("dkms: register metrics: %w", err)
	}
	s := &Service{
		store: cfg.Store, rand: &lockedReader{r: cfg.Rand}, now: cfg.Clock.Now, log: cfg.Logger, audit: cfg.Auditor, m: m,
		signer: cfg.SigningKey, signerID: cfg.SignerID, ttl: cfg.MessageTTL, suite: cfg.Suite, rsuite: cfg.RecipientSuite, dev: cfg.DevMode,
		cache: map[versionRef]*pqcrypto.DataKey{},
	}
	s.m.sealed.Set(1)
	var (
		meta    *rootMeta
		devRoot []byte
	)
	err = s.store.View(ctx, func(tx Tx) error {
		b, err := tx.GetMeta(metaRoot)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		meta = &rootMeta{}
		if err := json.Unmarshal(b, meta); err != nil {
			return fmt.Errorf("dkms: stored root description: %v: %w", err, ErrMalformed)
		}
		if meta.Dev {
			if devRoot, err = tx.GetMeta(metaDevRoot); err != nil {
				return fmt.Errorf("dkms: dev-mode store without its root key: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	switch {
	case meta == nil && cfg.DevMode:
		if err := s.initDev(ctx); err != nil {
			return nil, err
		}
	case meta == nil:
		s.log.Info("dkms: key service is not initialized; call Initialize to create the root key")
	case meta.Dev != cfg.DevMode:
		return nil, fmt.Errorf("dkms: store dev mode is %v but Config.DevMode is %v: %w", meta.Dev, cfg.DevMode, ErrDevStore)
	case meta.Dev:
		s.meta = meta
		s.warnDev()
		root, err := pqcrypto.NewDataKey(RootKeyID, meta.Version, devRoot)
		clear(devRoot)
		if err != nil {
			return nil, fmt.Errorf("dkms: dev-mode root key: %w", err)
		}
		err = s.loadKEKs(ctx, root)
		s.done(ctx, ActionUnseal, "", meta.Version, "", err)
		if err != nil {
			return nil, err
		}
	default:
		s.meta = meta
		s.log.Info("dkms: key service is sealed", "threshold", meta.Threshold, "shares", meta.Total, "root_version", meta.Version)
	}
	return s, nil
}

func (s *Service) warnDev() {
	s.log.Warn("dkms: DEV MODE: the root key is stored IN THE CLEAR in the key store and the service unseals itself; never use this outside development and simulation")
}

// initDev creates a dev-mode root key stored in the clear.
func (s *Service) initDev(ctx context.Context) error {
	s.warnDev()
	secret := make([]byte, KeySize)
	if _, err := io.ReadFull(s.rand, secret); err != nil {
		return fmt.Errorf("dkms: reading randomness for the dev root key: %w", err)
	}
	defer clear(secret)
	root, err := pqcrypto.NewDataKey(RootKeyID, 1, secret)
	if err != nil {
		return err
	}
	kcv := KeyCheckValue(secret)
	meta := &rootMeta{Version: 1, KCV: hex.EncodeToString(kcv[:]), Dev: true}
	if err := s.createRoot(ctx, meta, root, secret); err != nil {
		return err
	}
	s.meta = meta
	return s.loadKEKs(ctx, root)
}

// createRoot stores a new root description and the first KEK version.
func (s *Service) createRoot(ctx context.Context, meta *rootMeta, root *pqcrypto.DataKey, devSecret []byte) error {
	mb, err := json.Marshal(meta)
	if err != nil {
		return fmt.Errorf("dkms: encode root description: %w", err)
	}
	now := s.now()
	return s.store.Update(ctx, func(tx Tx) error {
		if _, err := tx.GetMeta(metaRoot); err == nil {
			return fmt.Errorf("dkms: store already has a root key: %w", ErrAlreadyInitialized)
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		if err := tx.PutMeta(metaRoot, mb); err != nil {
			return err
		}
		if devSecret != nil {
			if err := tx.PutMeta(metaDevRoot, devSecret); err != nil {
				return err
			}
		}
		kek := &KeyRecord{Name: KEKName, Purpose: PurposeKEK, Primary: 1, Latest: 1, CreatedAt: now, RotatedAt: now}
		v, err := s.newMaterial(root, kek, 1, now)
		if err != nil {
			return err
		}
		if err := tx.PutVersion(v); err != nil {
			return err
		}
		return tx.PutKey(kek)
	})
}

// Initialize creates the root key, splits it into shares of which threshold
// are needed to unseal, and creates the first key-encryption key. The
// service is unsealed afterwards. The shares are returned once and never
// stored: hand one to each operator (Share.Text).
func (s *Service) Initialize(ctx context.Context, threshold, shares int) (out []Share, err error) {
	defer func() { s.done(ctx, ActionInitialize, "", 1, "", err) }()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.meta != nil {
		return nil, fmt.Errorf("dkms: initialize: %w", ErrAlreadyInitialized)
	}
	rootKey, out, err := splitRoot(s.rand, 1, threshold, shares)
	if err != nil {
		return nil, err
	}
	defer clear(rootKey)
	root, err := pqcrypto.NewDataKey(RootKeyID, 1, rootKey)
	if err != nil {
		return nil, err
	}
	meta := newRootMeta(1, rootKey, out)
	if err := s.createRoot(ctx, meta, root, nil); err != nil {
		return nil, err
	}
	s.meta = meta
	if err := s.loadKEKs(ctx, root); err != nil {
		return nil, err
	}
	s.log.Info("dkms: key service initialized", "threshold", threshold, "shares", shares, "kcv", meta.KCV)
	return out, nil
}

func newRootMeta(version uint32, rootKey []byte, shares []Share) *rootMeta {
	kcv := KeyCheckValue(rootKey)
	meta := &rootMeta{Version: version, KCV: hex.EncodeToString(kcv[:]), Threshold: int(shares[0].Threshold), Total: len(shares)}
	for _, sh := range shares {
		d := sh.digest()
		meta.Digests = append(meta.Digests, hex.EncodeToString(d[:]))
	}
	return meta
}

// UnsealStatus reports the progress of unsealing.
type UnsealStatus struct {
	Sealed    bool
	Threshold int // shares needed
	Progress  int // distinct valid shares given so far
}

// Unseal adds one root key share. Shares accumulate until Threshold distinct
// ones are in; then the root key is recovered, checked against its key-check
// value, and the service unseals. A share that is malformed, from another
// root or altered is rejected with ErrBadShare and does not count; a share
// given twice is ErrDuplicateShare. Unseal on an unsealed service reports its
// status.
func (s *Service) Unseal(ctx context.Context, share Share) (st UnsealStatus, err error) {
	defer func() { s.done(ctx, ActionUnseal, "", share.RootVersion, "", err) }()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.meta == nil {
		return UnsealStatus{Sealed: true}, fmt.Errorf("dkms: unseal: %w", ErrNotInitialized)
	}
	st = UnsealStatus{Sealed: s.root == nil, Threshold: s.meta.Threshold, Progress: len(s.pending)}
	if s.root != nil {
		st.Progress = 0
		return st, nil
	}
	if err := s.checkShare(share); err != nil {
		return st, err
	}
	for _, p := range s.pending {
		if p.Index == share.Index {
			return st, fmt.Errorf("dkms: share %d was already given: %w", share.Index, ErrDuplicateShare)
		}
	}
	s.pending = append(s.pending, share)
	st.Progress = len(s.pending)
	if len(s.pending) < s.meta.Threshold {
		s.log.Info("dkms: unseal progress", "have", len(s.pending), "need", s.meta.Threshold)
		return st, nil
	}
	rootKey, err := combineShares(s.pending)
	s.pending = nil
	st.Progress = 0
	if err != nil {
		return st, err
	}
	defer clear(rootKey)
	kcv := KeyCheckValue(rootKey)
	if hex.EncodeToString(kcv[:]) != s.meta.KCV {
		return st, fmt.Errorf("dkms: shares combine to a key with kcv %x, want %s; start again: %w", kcv, s.meta.KCV, ErrBadShare)
	}
	root, err := pqcrypto.NewDataKey(RootKeyID, s.meta.Version, rootKey)
	if err != nil {
		return st, err
	}
	if err := s.loadKEKs(ctx, root); err != nil {
		return st, err
	}
	st.Sealed = false
	s.log.Info("dkms: key service unsealed", "root_version", s.meta.Version)
	return st, nil
}

func (s *Service) checkShare(sh Share) error {
	if err := sh.check(); err != nil {
		return err
	}
	m := s.meta
	kcv := hex.EncodeToString(sh.KCV[:])
	if sh.RootVersion != m.Version || kcv != m.KCV {
		return fmt.Errorf("dkms: share %d is for root v%d kcv %s, this service's root is v%d kcv %s: %w", sh.Index, sh.RootVersion, kcv, m.Version, m.KCV, ErrBadShare)
	}
	if int(sh.Threshold) != m.Threshold || int(sh.Total) != m.Total {
		return fmt.Errorf("dkms: share %d says %d of %d, the root was split %d of %d: %w", sh.Index, sh.Threshold, sh.Total, m.Threshold, m.Total, ErrBadShare)
	}
	d := sh.digest()
	if int(sh.Index) > len(m.Digests) || hex.EncodeToString(d[:]) != m.Digests[sh.Index-1] {
		return fmt.Errorf("dkms: share %d does not match the share issued at initialization (altered or corrupt value): %w", sh.Index, ErrBadShare)
	}
	return nil
}

// loadKEKs unwraps every usable KEK version with root and marks the service
// unsealed. The caller holds s.mu, or is Open.
func (s *Service) loadKEKs(ctx context.Context, root *pqcrypto.DataKey) error {
	keks := map[uint32]*pqcrypto.DataKey{}
	var primary uint32
	err := s.store.View(ctx, func(tx Tx) error {
		k, err := tx.GetKey(KEKName)
		if err != nil {
			return err
		}
		primary = k.Primary
		vs, err := tx.ListVersions(KEKName)
		if err != nil {
			return err
		}
		for _, v := range vs {
			if !v.State.usable() {
				continue
			}
			dk, err := s.unwrapKey(v, PurposeKEK, pqcrypto.DataKeys(root))
			if err != nil {
				return err
			}
			keks[v.Version] = dk
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("dkms: loading key-encryption keys: %w", err)
	}
	if keks[primary] == nil {
		return fmt.Errorf("dkms: primary key-encryption key v%d is missing: %w", primary, ErrMalformed)
	}
	s.root, s.keks, s.kek = root, keks, primary
	s.m.sealed.Set(0)
	return nil
}

// Seal forgets the root key and every unwrapped key; the service needs
// shares again (a dev-mode service too, until it is reopened).
func (s *Service) Seal(ctx context.Context) {
	s.mu.Lock()
	s.root, s.keks, s.kek, s.pending = nil, nil, 0, nil
	s.mu.Unlock()
	s.cacheMu.Lock()
	clear(s.cache)
	s.cacheMu.Unlock()
	s.m.sealed.Set(1)
	s.log.Info("dkms: key service sealed")
	s.done(ctx, ActionSeal, "", 0, "", nil)
}

// Status describes the service's custody state.
type Status struct {
	Initialized bool
	Sealed      bool
	DevMode     bool
	Threshold   int    // shares needed to unseal
	Shares      int    // shares issued
	Progress    int    // shares given so far in the current unseal attempt
	RootVersion uint32 // increases with RekeyRoot
	RootKCV     string // hex key-check value of the root key
	KEKVersion  uint32 // primary key-encryption key version (0 while sealed)
}

// Status reports whether the service is initialized and sealed.
func (s *Service) Status() Status {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := Status{Sealed: s.root == nil, DevMode: s.dev, Progress: len(s.pending), KEKVersion: s.kek}
	if s.meta != nil {
		st.Initialized = true
		st.Threshold, st.Shares, st.RootVersion, st.RootKCV = s.meta.Threshold, s.meta.Total, s.meta.Version, s.meta.KCV
	}
	return st
}

// RekeyRoot replaces the root key with a new one split into new shares
// (root version + 1) and rewraps every key-encryption key under it. The old
// shares stop working. Not available in dev mode.
func (s *Service) RekeyRoot(ctx context.Context, threshold, shares int) (out []Share, err error) {
	var version uint32
	defer func() { s.done(ctx, ActionRekeyRoot, "", version, "", err) }()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.unsealedLocked(); err != nil {
		return nil, err
	}
	if s.meta.Dev {
		return nil, fmt.Errorf("dkms: a dev-mode root has no shares to rekey: %w", ErrDevStore)
	}
	version = s.meta.Version + 1
	rootKey, out, err := splitRoot(s.rand, version, threshold, shares)
	if err != nil {
		return nil, err
	}
	defer clear(rootKey)
	root, err := pqcrypto.NewDataKey(RootKeyID, version, rootKey)
	if err != nil {
		return nil, err
	}
	meta := newRootMeta(version, rootKey, out)
	mb, err := json.Marshal(meta)
	if err != nil {
		return nil, fmt.Errorf("dkms: encode root description: %w", err)
	}
	err = s.store.Update(ctx, func(tx Tx) error {
		vs, err := tx.ListVersions(KEKName)
		if err != nil {
			return err
		}
		for _, v := range vs {
			if v.Wrapped == nil {
				continue
			}
			if v.Wrapped, err = s.rewrapKey(v, PurposeKEK, pqcrypto.DataKeys(s.root), root); err != nil {
				return err
			}
			if err := tx.PutVersion(v); err != nil {
				return err
			}
		}
		return tx.PutMeta(metaRoot, mb)
	})
	if err != nil {
		return nil, err
	}
	s.meta, s.root = meta, root
	s.log.Info("dkms: root key replaced", "root_version", version, "threshold", threshold, "shares", shares, "kcv", meta.KCV)
	return out, nil
}

// RotateKEK creates a new key-encryption key version, rewraps every stored
// key version under it and destroys the previous KEK versions, all in one
// transaction. Run it after destroying key versions to make copies of the
// old wrapped material (backups, disk remnants) undecryptable too.
func (s *Service) RotateKEK(ctx context.Context) (version uint32, err error) {
	defer func() { s.done(ctx, ActionRotateKEK, KEKName, version, "", err) }()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.unsealedLocked(); err != nil {
		return 0, err
	}
	var newKEK *pqcrypto.DataKey
	now := s.now()
	err = s.store.Update(ctx, func(tx Tx) error {
		k, err := tx.GetKey(KEKName)
		if err != nil {
			return err
		}
		version = k.Latest + 1
		v, err := s.newMaterial(s.root, k, version, now)
		if err != nil {
			return err
		}
		if newKEK, err = s.unwrapKey(v, PurposeKEK, pqcrypto.DataKeys(s.root)); err != nil {
			return err
		}
		keys, err := tx.ListKeys()
		if err != nil {
			return err
		}
		for _, key := range keys {
			if key.Purpose == PurposeKEK {
				continue
			}
			vs, err := tx.ListVersions(key.Name)
			if err != nil {
				return err
			}
			for _, kv := range vs {
				if kv.Wrapped == nil {
					continue
				}
				if kv.Wrapped, err = s.rewrapKey(kv, key.Purpose, s.kekLookup, newKEK); err != nil {
					return err
				}
				if err := tx.PutVersion(kv); err != nil {
					return err
				}
			}
		}
		old, err := tx.ListVersions(KEKName)
		if err != nil {
			return err
		}
		for _, ov := range old {
			if ov.State == StateDestroyed {
				continue
			}
			ov.State, ov.Wrapped, ov.ChangedAt = StateDestroyed, nil, now
			if err := tx.PutVersion(ov); err != nil {
				return err
			}
		}
		if err := tx.PutVersion(v); err != nil {
			return err
		}
		k.Primary, k.Latest, k.RotatedAt = version, version, now
		return tx.PutKey(k)
	})
	if err != nil {
		return 0, err
	}
	s.keks, s.kek = map[uint32]*pqcrypto.DataKey{version: newKEK}, version
	s.scrub(ctx)
	s.log.Info("dkms: key-encryption key rotated", "kek_version", version)
	return version, nil
}

func (s *Service) unsealedLocked() error {
	if s.meta == nil {
		return fmt.Errorf("dkms: %w", ErrNotInitialized)
	}
	if s.root == nil {
		return fmt.Errorf("dkms: %w (%d of %d shares given)", ErrSealed, len(s.pending), s.meta.Threshold)
	}
	return nil
}

// kekLookup finds an unwrapped KEK version; the caller holds s.mu.
func (s *Service) kekLookup(id string, version uint32) (*pqcrypto.DataKey, error) {
	if k := s.keks[version]; k != nil && id == KEKName {
		return k, nil
	}
	return nil, fmt.Errorf("dkms: key-encryption key %q v%d is not available: %w", id, version, pqcrypto.ErrKeyVersion)
}

func wrapAAD(name string, purpose Purpose, version uint32) []byte {
	b := make([]byte, 0, len(labelWrap)+len(name)+len(purpose)+7)
	b = append(b, labelWrap...)
	b = append(b, 0)
	b = append(b, name...)
	b = append(b, 0)
	b = append(b, purpose...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint32(b, version)
}

// newMaterial creates version of key k with fresh material wrapped under
// parent (the root for KEK versions, the primary KEK otherwise).
func (s *Service) newMaterial(parent *pqcrypto.DataKey, k *KeyRecord, version uint32, now time.Time) (*VersionRecord, error) {
	material := make([]byte, KeySize)
	defer clear(material)
	if _, err := io.ReadFull(s.rand, material); err != nil {
		return nil, fmt.Errorf("dkms: reading randomness for %q v%d: %w", k.Name, version, err)
	}
	wrapped, err := pqcrypto.SealWithDataKey(nil, parent, material, &pqcrypto.SealOptions{Suite: s.suite, AAD: wrapAAD(k.Name, k.Purpose, version), Rand: s.rand})
	if err != nil {
		return nil, fmt.Errorf("dkms: wrapping %q v%d: %w", k.Name, version, err)
	}
	v := &VersionRecord{Name: k.Name, Version: version, State: StatePrimary, Wrapped: wrapped, CreatedAt: now, ChangedAt: now}
	if k.Purpose == PurposeGossip {
		if version == 1 {
			v.ActivateAt, v.PrevRemoveAt = now, now
		} else {
			v.ActivateAt = now.Add(k.Policy.installGrace())
			v.PrevRemoveAt = v.ActivateAt.Add(k.Policy.removeGrace())
		}
	}
	return v, nil
}

// unwrapKey opens a version's wrapped material as a data key.
func (s *Service) unwrapKey(v *VersionRecord, purpose Purpose, lookup func(string, uint32) (*pqcrypto.DataKey, error)) (*pqcrypto.DataKey, error) {
	if v.Wrapped == nil {
		return nil, fmt.Errorf("dkms: key %q version %d: %w", v.Name, v.Version, ErrKeyVersionDestroyed)
	}
	material, _, err := pqcrypto.Open(nil, v.Wrapped, &pqcrypto.Keys{DataKey: lookup, AAD: wrapAAD(v.Name, purpose, v.Version)})
	if err != nil {
		return nil, fmt.Errorf("dkms: unwrapping key %q version %d: %w", v.Name, v.Version, err)
	}
	defer clear(material)
	return pqcrypto.NewDataKey(v.Name, v.Version, material)
}

// rewrapKey unwraps a version with lookup and wraps it again under parent.
func (s *Service) rewrapKey(v *VersionRecord, purpose Purpose, lookup func(string, uint32) (*pqcrypto.DataKey, error), parent *pqcrypto.DataKey) ([]byte, error) {
	dk, err := s.unwrapKey(v, purpose, lookup)
	if err != nil {
		return nil, err
	}
	material := dk.Secret()
	defer clear(material)
	wrapped, err := pqcrypto.SealWithDataKey(nil, parent, material, &pqcrypto.SealOptions{Suite: s.suite, AAD: wrapAAD(v.Name, purpose, v.Version), Rand: s.rand})
	if err != nil {
		return nil, fmt.Errorf("dkms: rewrapping %q v%d: %w", v.Name, v.Version, err)
	}
	return wrapped, nil
}

// scrub asks the store to purge erased material from its files, if it can.
func (s *Service) scrub(ctx context.Context) {
	if sc, ok := s.store.(interface{ Scrub(context.Context) error }); ok {
		if err := sc.Scrub(ctx); err != nil {
			s.log.Error("dkms: scrubbing the store after erasing material failed", "err", err)
		}
	}
}

// done records an operation in metrics and the audit log.
func (s *Service) done(ctx context.Context, action, key string, version uint32, agent string, err error) {
	s.m.ops.WithLabelValues(action, okOrError(err)).Inc()
	s.audit.Audit(ctx, AuditEvent{Time: s.now(), Actor: ActorFrom(ctx), Action: action, Key: key, Version: version, Agent: agent, Result: resultOf(err)})
}
