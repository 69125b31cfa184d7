package controlplane

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// Files of the key service in DataDir.
const (
	// KeysDatabaseFile is the key service's SQLite store (dkms.SQLiteStore):
	// the key hierarchy, wrapped under the root key, and registered agents.
	KeysDatabaseFile = "keys.db"
	// SigningKeyFile holds the seed of the control plane's ML-DSA-65 key
	// (mode 0600). Key messages to agents are signed with it; agents pin
	// its public half.
	SigningKeyFile = "keys-signing.pem"

	signingKeyPEMType = "EDGEFLEET ML-DSA-65 SEED"
)

// Defaults of KeyConfig.
const (
	// DefaultKeyShares is the number of root key shares made at first start.
	DefaultKeyShares = 5
	// DefaultKeyThreshold is the number of shares that unseal.
	DefaultKeyThreshold = 3
	// DefaultKeyRotationPeriod is the automatic rotation period of keys
	// created without one.
	DefaultKeyRotationPeriod = 30 * 24 * time.Hour
	// DefaultKeyCheckInterval is how often keys due for rotation are
	// looked for.
	DefaultKeyCheckInterval = time.Minute
)

// DevUnsealWarning is logged at WARN level on every start in dev mode.
const DevUnsealWarning = "dev mode: root key auto-unsealed, do not use in production"

// KeyConfig configures the control plane's key service (package dkms).
type KeyConfig struct {
	// Shares is how many root key shares the first start makes (default
	// 5, at most 255).
	Shares int
	// Threshold is how many of them unseal the key service (default 3, or
	// Shares when that is smaller; 1..Shares).
	Threshold int
	// DevUnseal keeps the root key IN THE CLEAR in the key store and
	// unseals at every start, logging DevUnsealWarning each time. For the
	// simulator and development only. A dev store cannot be opened without
	// DevUnseal, nor a production store with it.
	DevUnseal bool
	// RotationPeriod is the automatic rotation period of keys whose
	// policy names none (default 30 days; negative: rotation on demand
	// only).
	RotationPeriod time.Duration
	// CheckInterval is how often, on the server's Config.Clock, the server
	// rotates keys that are due and applies revocations deferred while it
	// was sealed (default 1m).
	CheckInterval time.Duration
	// MessageTTL is how long key messages to agents stay valid (default
	// dkms.DefaultMessageTTL, 24h).
	MessageTTL time.Duration
	// Store holds the key hierarchy. Nil opens SQLite at
	// DataDir/keys.db; a store passed in is not closed by Server.Close.
	Store dkms.Store
	// GossipRotationPeriod is the rotation period of the built-in key
	// "gossip" when it is created (default RotationPeriod; negative:
	// rotation on demand only). Its policy can be changed later like any
	// other key's.
	GossipRotationPeriod time.Duration
	// RequireSealedTelemetry refuses plain telemetry uploads (415, the
	// message starting with ErrUnsealedTelemetry's text): agents must seal
	// them under the key "telemetry". Default false, so agents and tools
	// that upload plain JSON keep working; turn it on once every agent
	// seals (agents do by default, control_plane.seal_telemetry).
	RequireSealedTelemetry bool
}

func (k *KeyConfig) setDefaults() {
	if k.Shares == 0 {
		k.Shares = DefaultKeyShares
	}
	if k.Threshold == 0 {
		k.Threshold = min(DefaultKeyThreshold, k.Shares)
	}
	if k.RotationPeriod == 0 {
		k.RotationPeriod = DefaultKeyRotationPeriod
	}
	if k.CheckInterval == 0 {
		k.CheckInterval = DefaultKeyCheckInterval
	}
	if k.GossipRotationPeriod == 0 {
		k.GossipRotationPeriod = k.RotationPeriod
	}
}

func (k *KeyConfig) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: Keys."+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	switch {
	case k.Shares < 1 || k.Shares > dkms.MaxShares:
		return bad("Shares %d out of range 1..%d", k.Shares, dkms.MaxShares)
	case k.Threshold < 1 || k.Threshold > k.Shares:
		return bad("Threshold %d out of range 1..Shares (%d)", k.Threshold, k.Shares)
	case k.RotationPeriod > 0 && k.RotationPeriod < time.Second:
		return bad("RotationPeriod %s is below 1s", k.RotationPeriod)
	case k.GossipRotationPeriod > 0 && k.GossipRotationPeriod < time.Second:
		return bad("GossipRotationPeriod %s is below 1s", k.GossipRotationPeriod)
	case k.CheckInterval < 0:
		return bad("CheckInterval %s is negative", k.CheckInterval)
	case k.MessageTTL < 0:
		return bad("MessageTTL %s is negative", k.MessageTTL)
	}
	return nil
}

// defaultRotation is the rotation period given to keys whose policy names
// none.
func (k *KeyConfig) defaultRotation() time.Duration {
	return max(k.RotationPeriod, 0)
}

// keyState is the server's key service and what goes with it.
type keyState struct {
	svc      *dkms.Service
	store    dkms.Store
	ownStore bool
	signer   *pqcrypto.SigningKey
	metrics  *keyMetrics

	sharesMu   sync.Mutex
	rootShares []string // made by this start, until TakeRootShares

	// revokePending is set while decommissioned agents may still be
	// registered with the key service unrevoked (a decommission while
	// sealed, or a failed revocation).
	revokePending atomic.Bool
	// builtinPending is set until the built-in keys are known to exist.
	builtinPending atomic.Bool

	stop chan struct{}
	done chan struct{}

	cache       keyCache
	relay       relayState
	watch       *keyWatch
	revocations revocationState
	retire      retireState
}

// keyCache keeps the key service's metadata (keys, versions, policies, and
// registered agents) for agents' key polls, which run at every heartbeat
// and mostly find nothing new. Every change the key service makes reports
// an audit event (auditKeyEvent), whatever called it, and bumps a
// generation there; an entry is used only while its generation is
// current, and stored only if no change happened while it was read.
type keyCache struct {
	keysGen   atomic.Uint64
	agentsGen atomic.Uint64

	mu         sync.Mutex
	keys       []dkms.KeyInfo
	keysAt     uint64
	keysLoaded bool
	agents     map[string]cachedAgent
}

type cachedAgent struct {
	info dkms.AgentInfo
	gen  uint64
}

// changed records a key service event in the cache generations and
// reports whether it may have changed key state (what agents hold).
func (c *keyCache) changed(e dkms.AuditEvent) bool {
	switch e.Action {
	case dkms.ActionRegisterAgent, dkms.ActionRevokeAgent:
		c.agentsGen.Add(1)
		c.keysGen.Add(1) // a revocation rotates keys
	case dkms.ActionDistribute, dkms.ActionEncrypt, dkms.ActionDecrypt, dkms.ActionRewrap, dkms.ActionAcceptMessage:
		return false
	default:
		c.keysGen.Add(1)
	}
	return true
}

// keyInfos returns every key, from the cache when it is current.
func (ks *keyState) keyInfos(ctx context.Context) ([]dkms.KeyInfo, error) {
	c := &ks.cache
	gen := c.keysGen.Load()
	c.mu.Lock()
	if c.keysLoaded && c.keysAt == gen {
		keys := c.keys
		c.mu.Unlock()
		return keys, nil
	}
	c.mu.Unlock()
	keys, err := ks.svc.Keys(ctx)
	if err != nil {
		return nil, err
	}
	if c.keysGen.Load() == gen {
		c.mu.Lock()
		c.keys, c.keysAt, c.keysLoaded = keys, gen, true
		c.mu.Unlock()
	}
	return keys, nil
}

// agentInfo returns a registered agent, from the cache when it is current.
func (ks *keyState) agentInfo(ctx context.Context, id string) (dkms.AgentInfo, error) {
	c := &ks.cache
	gen := c.agentsGen.Load()
	c.mu.Lock()
	if a, ok := c.agents[id]; ok && a.gen == gen {
		c.mu.Unlock()
		return a.info, nil
	}
	c.mu.Unlock()
	info, err := ks.svc.Agent(ctx, id)
	if err != nil {
		return info, err
	}
	if c.agentsGen.Load() == gen {
		c.mu.Lock()
		if c.agents == nil {
			c.agents = map[string]cachedAgent{}
		}
		c.agents[id] = cachedAgent{info: info, gen: gen}
		c.mu.Unlock()
	}
	return info, nil
}

type keyMetrics struct {
	delivered prometheus.Counter
	fetches   *prometheus.CounterVec
	rotations *prometheus.CounterVec
	envelopes *prometheus.CounterVec
	relay     *prometheus.CounterVec
	relayed   prometheus.Counter
	held      prometheus.Gauge
}

func newKeyMetrics(reg *prometheus.Registry) (*keyMetrics, error) {
	m := &keyMetrics{
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "controlplane_key_messages_delivered_total",
			Help: "Key messages sent to agents by GET /v1/agent/keys.",
		}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "controlplane_key_fetches_total",
			Help: "Agent key fetches by result (unchanged, incremental, full, error).",
		}, []string{"result"}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "controlplane_key_rotations_total",
			Help: "Key versions created by rotation, by cause (operator, schedule, revocation).",
		}, []string{"cause"}),
		envelopes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "controlplane_telemetry_envelopes_total",
			Help: "Telemetry uploads by sealing result: opened, refused (does not open, or bound to another agent or batch), sealed (key service sealed), unsealed_refused (plain upload while sealed uploads are required).",
		}, []string{"result"}),
	}
	m.relay = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "controlplane_key_relay_fetches_total",
		Help: "GET /v1/agent/keys/relay calls by result (empty, entries, error).",
	}, []string{"result"})
	m.relayed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "controlplane_key_relay_messages_total",
		Help: "Key messages of lagging agents handed to other agents by GET /v1/agent/keys/relay.",
	})
	m.held = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "controlplane_key_watches_held",
		Help: "GET /v1/agent/keys requests with wait held until the agent's key state changes.",
	})
	for _, c := range []prometheus.Collector{m.delivered, m.fetches, m.rotations, m.envelopes, m.relay, m.relayed, m.held} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// openKeys opens the key service. On the first start of a production
// store it creates the root key, keeps its shares for TakeRootShares and
// seals the service again: operators unseal it with the shares they were
// given, which proves they hold them.
func (s *Server) openKeys(ctx context.Context) error {
	kc := s.cfg.Keys
	log := s.cfg.Logger.With("component", "keys")
	ks := &keyState{watch: newKeyWatch()}
	ks.retire.wake = make(chan struct{}, 1)
	m, err := newKeyMetrics(s.cfg.Registry)
	if err != nil {
		return fmt.Errorf("controlplane: register key metrics: %w", err)
	}
	ks.metrics = m
	if ks.signer, err = loadOrCreateSigningKey(s.cfg.DataDir, s.cfg.Rand, log); err != nil {
		return err
	}
	if kc.Store != nil {
		ks.store = kc.Store
	} else {
		path := filepath.Join(s.cfg.DataDir, KeysDatabaseFile)
		st, err := dkms.OpenSQLite(path)
		if err != nil {
			return fmt.Errorf("controlplane: key store: %w", err)
		}
		ks.store, ks.ownStore = st, true
	}
	if kc.DevUnseal {
		log.Warn(DevUnsealWarning, "store", s.keyStorePath())
	}
	svc, err := dkms.Open(dkms.WithActor(ctx, "system"), dkms.Config{
		Store: ks.store, SigningKey: ks.signer, DevMode: kc.DevUnseal, MessageTTL: kc.MessageTTL,
		Rand: s.cfg.Rand, Clock: s.cfg.Clock, Logger: log, Auditor: dkms.AuditFunc(s.auditKeyEvent), Registry: s.cfg.Registry,
	})
	if err != nil {
		ks.closeStore()
		if errors.Is(err, dkms.ErrDevStore) {
			if kc.DevUnseal {
				return fmt.Errorf("controlplane: key store %s holds a production root key (shares); it cannot be used in dev mode: start without dev unseal, or use another data directory: %w", s.keyStorePath(), err)
			}
			return fmt.Errorf("controlplane: key store %s was created in dev mode (root key stored in the clear); start with dev unseal (--dev-unseal), or use another data directory: %w", s.keyStorePath(), err)
		}
		return fmt.Errorf("controlplane: key service: %w", err)
	}
	ks.svc = svc
	if st := svc.Status(); !st.Initialized {
		shares, err := svc.Initialize(dkms.WithActor(ctx, "system"), kc.Threshold, kc.Shares)
		if err != nil {
			ks.closeStore()
			return fmt.Errorf("controlplane: initializing the key service: %w", err)
		}
		for _, sh := range shares {
			ks.rootShares = append(ks.rootShares, sh.Text())
		}
		svc.Seal(dkms.WithActor(ctx, "system"))
		log.Warn("key service initialized: the root key was split into shares that are shown once; the service stays sealed until enough of them are given to POST /v1/keys/unseal",
			"shares", kc.Shares, "threshold", kc.Threshold)
	}
	ks.revokePending.Store(true)
	ks.builtinPending.Store(true)
	s.keys = ks
	if !svc.Status().Sealed {
		s.ensureBuiltinKeys(ctx)
		s.reconcileRevocations(ctx)
	} else {
		st := svc.Status()
		log.Info("key service is sealed; key operations are refused until it is unsealed", "threshold", st.Threshold, "shares", st.Shares)
	}
	return nil
}

func (s *Server) keyStorePath() string {
	if s.cfg.Keys.Store != nil {
		return "(injected store)"
	}
	return filepath.Join(s.cfg.DataDir, KeysDatabaseFile)
}

func (ks *keyState) closeStore() error {
	if ks.ownStore && ks.store != nil {
		return ks.store.Close()
	}
	return nil
}

// loadOrCreateSigningKey reads DataDir/keys-signing.pem, creating it on
// first start.
func loadOrCreateSigningKey(dir string, rnd io.Reader, log *slog.Logger) (*pqcrypto.SigningKey, error) {
	path := filepath.Join(dir, SigningKeyFile)
	b, err := readSecretFile(path, log)
	switch {
	case err == nil:
		seed, err := decodePEM(b, signingKeyPEMType, path)
		if err != nil {
			return nil, err
		}
		k, err := pqcrypto.NewSigningKey(seed)
		clear(seed)
		if err != nil {
			return nil, fmt.Errorf("controlplane: %s: %w", path, err)
		}
		return k, nil
	case errors.Is(err, fs.ErrNotExist):
	default:
		return nil, err
	}
	k, err := pqcrypto.GenerateSigningKey(rnd)
	if err != nil {
		return nil, fmt.Errorf("controlplane: signing key: %w", err)
	}
	seed := k.Bytes()
	defer clear(seed)
	if err := writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: signingKeyPEMType, Bytes: seed}), 0o600); err != nil {
		return nil, err
	}
	log.Info("created key-message signing key", "path", path, "fingerprint", k.Public().Fingerprint())
	return k, nil
}

// TakeRootShares returns, once, the text form of the root key shares made
// when this start initialized the key service, and forgets them; nil when
// the key service was initialized before (or runs in dev mode). The server
// keeps no other copy: hand each share to one custodian. If they are lost
// before any key exists, stop the server, delete DataDir/keys.db and start
// again.
func (s *Server) TakeRootShares() []string {
	s.keys.sharesMu.Lock()
	defer s.keys.sharesMu.Unlock()
	out := s.keys.rootShares
	s.keys.rootShares = nil
	return out
}

// KeyService returns the server's key service, for embedding programs and
// tests that seal or open data in-process.
func (s *Server) KeyService() *dkms.Service { return s.keys.svc }

// KeyStatus reports the key service's custody state.
func (s *Server) KeyStatus() cpapi.KeyServiceStatus {
	st := s.keys.svc.Status()
	return cpapi.KeyServiceStatus{
		Initialized: st.Initialized, Sealed: st.Sealed, DevMode: st.DevMode,
		SharesProvided: st.Progress, SharesNeeded: st.Threshold, SharesTotal: st.Shares,
		RootVersion: st.RootVersion, RootKCV: st.RootKCV, KEKVersion: st.KEKVersion,
		VerifyingKeyFingerprint: s.keys.signer.Public().Fingerprint(),
	}
}

// ---- audit ----

type callCtxKey struct{}

// keyCtx is the context handed to the key service from a request: it
// names the caller in audit events and lets the route wrapper know that the
// key service audited the call itself.
func keyCtx(ctx context.Context, c *call) context.Context {
	ctx = dkms.WithActor(ctx, c.actor)
	return context.WithValue(ctx, callCtxKey{}, c)
}

// auditKeyEvent appends a key service event to the audit log. Successful
// deliveries of key messages to agents and successful decryptions (every
// sealed telemetry upload is one) are data-plane traffic, as heartbeats
// are: they are counted (dkms_operations_total,
// controlplane_key_messages_delivered_total,
// controlplane_telemetry_envelopes_total) rather than recorded, so a
// rotation in a fleet of thousands does not write thousands of records.
// Failed ones are recorded.
func (s *Server) auditKeyEvent(ctx context.Context, e dkms.AuditEvent) {
	if s.keys != nil && s.keys.cache.changed(e) {
		s.keys.watch.notify()
	}
	if (e.Action == dkms.ActionDistribute || e.Action == dkms.ActionDecrypt) && e.Result == dkms.ResultOK {
		return
	}
	if c, ok := ctx.Value(callCtxKey{}).(*call); ok {
		c.keyAudited = true
	}
	result := e.Result
	if result != dkms.ResultOK {
		result = "error: " + cleanKeyError(result)
	}
	entry := AuditEntry{Time: e.Time, Actor: e.Actor, Action: "key." + e.Action, Target: keyAuditTarget(e), Result: result}
	if _, err := s.store.AppendAudit(context.WithoutCancel(ctx), entry); err != nil {
		s.log.Error("audit append failed", "action", entry.Action, "actor", entry.Actor, "err", err)
		return
	}
	s.metrics.auditAppended.Inc()
}

func keyAuditTarget(e dkms.AuditEvent) string {
	var parts []string
	switch {
	case e.Action == dkms.ActionSetPolicy:
		parts = append(parts, fmt.Sprintf("%s, min decrypt version %d", e.Key, e.Version))
	case e.Key != "" && e.Version != 0:
		parts = append(parts, fmt.Sprintf("%s v%d", e.Key, e.Version))
	case e.Key != "":
		parts = append(parts, e.Key)
	case e.Version != 0:
		parts = append(parts, fmt.Sprintf("root v%d", e.Version))
	case e.Agent == "":
		parts = append(parts, "root")
	}
	if e.Agent != "" {
		parts = append(parts, "agent "+e.Agent)
	}
	return strings.Join(parts, ", ")
}

// cleanKeyError drops the "dkms: " prefixes that the key service's
// messages carry once per wrapped layer.
func cleanKeyError(msg string) string {
	return strings.ReplaceAll(strings.ReplaceAll(msg, "dkms: ", ""), "pqcrypto: ", "")
}

// ---- errors ----

// sealedError is the answer to a key operation while sealed.
func (s *Server) sealedError() error {
	st := s.keys.svc.Status()
	if !st.Initialized {
		return errorf(503, "controlplane: key service sealed: not initialized")
	}
	return errorf(503, "controlplane: key service sealed: %d of %d root key shares given; unseal with POST /v1/keys/unseal (edgectl keys unseal)", st.Progress, st.Threshold)
}

// keyError maps a key service error to the HTTP answer.
func (s *Server) keyError(err error) error {
	if err == nil {
		return nil
	}
	var he *httpError
	if errors.As(err, &he) {
		return err
	}
	msg := cleanKeyError(err.Error())
	switch {
	case errors.Is(err, dkms.ErrSealed), errors.Is(err, dkms.ErrNotInitialized):
		return s.sealedError()
	case errors.Is(err, dkms.ErrUnknownKey), errors.Is(err, dkms.ErrUnknownVersion), errors.Is(err, dkms.ErrUnknownAgent):
		return errorf(404, "%s", msg)
	case errors.Is(err, dkms.ErrKeyExists), errors.Is(err, dkms.ErrAgentExists), errors.Is(err, dkms.ErrPrimaryVersion), errors.Is(err, dkms.ErrDevStore),
		errors.Is(err, dkms.ErrKeyVersionRetired), errors.Is(err, dkms.ErrKeyVersionDestroyed),
		errors.Is(err, dkms.ErrBelowMinVersion), errors.Is(err, dkms.ErrRevoked), errors.Is(err, dkms.ErrDuplicateShare):
		return errorf(409, "%s", msg)
	case errors.Is(err, dkms.ErrNotAuthorized):
		return errorf(403, "%s", msg)
	case errors.Is(err, dkms.ErrBadShare), errors.Is(err, dkms.ErrInvalidName), errors.Is(err, dkms.ErrInvalidPolicy),
		errors.Is(err, dkms.ErrWrongPurpose), errors.Is(err, dkms.ErrWrongKey), errors.Is(err, dkms.ErrMalformed),
		errors.Is(err, pqcrypto.ErrAuthFailed), errors.Is(err, pqcrypto.ErrTruncated), errors.Is(err, pqcrypto.ErrMalformed),
		errors.Is(err, pqcrypto.ErrUnsupportedVersion), errors.Is(err, pqcrypto.ErrUnknownSuite), errors.Is(err, pqcrypto.ErrKeyVersion),
		errors.Is(err, pqcrypto.ErrWrongKey), errors.Is(err, pqcrypto.ErrWrongRecipient), errors.Is(err, pqcrypto.ErrBadSignature):
		return errorf(400, "%s", msg)
	}
	return err
}

// ---- agents: registration and revocation ----

// registerAgentKey records an enrolled agent's X-Wing key with the key
// service. A failure is logged: the agent is registered later, when it
// first fetches its keys.
func (s *Server) registerAgentKey(ctx context.Context, id string, xwing []byte, labels map[string]string) {
	pub, err := pqcrypto.ParseXWingPublicKey(xwing)
	if err == nil {
		_, err = s.keys.svc.RegisterAgent(ctx, id, pub, labels)
	}
	if err != nil {
		s.log.Error("registering the agent's X-Wing key with the key service failed; retried when the agent fetches its keys", "agent", id, "err", err)
	}
}

// updateAgentKeyLabels gives the key service an agent's new labels (key
// policies may select agents by label).
func (s *Server) updateAgentKeyLabels(ctx context.Context, id string, labels map[string]string) {
	info, err := s.keys.svc.Agent(ctx, id)
	if errors.Is(err, dkms.ErrUnknownAgent) {
		return
	}
	if err == nil {
		_, err = s.keys.svc.RegisterAgent(ctx, id, info.PublicKey, labels)
	}
	if err != nil {
		s.log.Error("updating the agent's labels in the key service failed", "agent", id, "err", err)
	}
}

// revokeAgentKeys revokes a decommissioned agent in the key service, which
// rotates every key it could receive. While sealed the revocation is
// deferred until the service is unsealed.
func (s *Server) revokeAgentKeys(ctx context.Context, id string) {
	if _, err := s.keys.svc.Agent(ctx, id); errors.Is(err, dkms.ErrUnknownAgent) {
		return // enrolled without an X-Wing key: it never received keys
	}
	if s.keys.svc.Status().Sealed {
		s.keys.revokePending.Store(true)
		s.log.Warn("key service is sealed: the decommissioned agent's keys are rotated when it is unsealed", "agent", id)
		return
	}
	rotated, err := s.keys.svc.Revoke(ctx, id)
	if err != nil {
		s.keys.revokePending.Store(true)
		s.log.Error("revoking the decommissioned agent in the key service failed; retried", "agent", id, "err", err)
		return
	}
	s.keys.metrics.rotations.WithLabelValues("revocation").Add(float64(len(rotated)))
	s.log.Info("agent revoked in the key service", "agent", id, "keys_rotated", len(rotated))
	s.afterRevocationRotation(ctx, rotated)
}

// reconcileRevocations revokes every decommissioned agent that the key
// service still holds unrevoked. It runs when the service is unsealed,
// at start when unsealed, and on the check interval while a revocation is
// pending.
func (s *Server) reconcileRevocations(ctx context.Context) {
	if !s.keys.revokePending.Load() || s.keys.svc.Status().Sealed {
		return
	}
	s.keys.revokePending.Store(false)
	fail := func(err error) {
		s.keys.revokePending.Store(true)
		s.log.Error("applying deferred key revocations failed; retried", "err", err)
	}
	agents, err := s.store.ListAgents(ctx)
	if err != nil {
		fail(err)
		return
	}
	registered, err := s.keys.svc.Agents(ctx)
	if err != nil {
		fail(err)
		return
	}
	gone := map[string]bool{}
	for _, a := range agents {
		if a.DecommissionedAt != nil {
			gone[a.ID] = true
		}
	}
	ctx = dkms.WithActor(ctx, "system")
	for _, r := range registered {
		if !gone[r.ID] || r.Revoked() {
			continue
		}
		rotated, err := s.keys.svc.Revoke(ctx, r.ID)
		if err != nil {
			fail(err)
			continue
		}
		s.keys.metrics.rotations.WithLabelValues("revocation").Add(float64(len(rotated)))
		s.log.Info("deferred key revocation applied", "agent", r.ID, "keys_rotated", len(rotated))
		s.afterRevocationRotation(ctx, rotated)
	}
}

// ---- built-in keys ----

// builtinKeys are the keys every deployment needs: TelemetryKeyName seals
// agents' telemetry uploads, GossipKeyName is their memberlist keyring.
// Both go to every agent; the telemetry key rotates every
// Keys.RotationPeriod, the gossip key every Keys.GossipRotationPeriod.
func (s *Server) builtinKeys() []struct {
	name    string
	purpose dkms.Purpose
	policy  dkms.Policy
} {
	return []struct {
		name    string
		purpose dkms.Purpose
		policy  dkms.Policy
	}{
		{cpapi.TelemetryKeyName, dkms.PurposeData, dkms.Policy{AllAgents: true, RotationPeriod: s.cfg.Keys.defaultRotation()}},
		{cpapi.GossipKeyName, dkms.PurposeGossip, dkms.Policy{AllAgents: true, RotationPeriod: max(s.cfg.Keys.GossipRotationPeriod, 0)}},
	}
}

// ensureBuiltinKeys creates the built-in keys that do not exist yet. It
// runs once the service is unsealed (at start in dev mode, at unseal, and
// on the check interval until it succeeded); a key of that name that
// exists already, whatever its policy, is left alone.
func (s *Server) ensureBuiltinKeys(ctx context.Context) {
	if !s.keys.builtinPending.Load() || s.keys.svc.Status().Sealed {
		return
	}
	ctx = dkms.WithActor(ctx, "system")
	ok := true
	for _, b := range s.builtinKeys() {
		_, err := s.keys.svc.Key(ctx, b.name)
		if err == nil {
			continue
		}
		if errors.Is(err, dkms.ErrUnknownKey) {
			if _, err = s.keys.svc.CreateKey(ctx, b.name, b.purpose, b.policy); err == nil || errors.Is(err, dkms.ErrKeyExists) {
				s.log.Info("created built-in key", "key", b.name, "purpose", string(b.purpose), "rotation_period", b.policy.RotationPeriod)
				continue
			}
		}
		ok = false
		s.log.Error("creating a built-in key failed; retried on the key check interval", "key", b.name, "err", err)
	}
	if ok {
		s.keys.builtinPending.Store(false)
	}
}

// ---- scheduled work ----

// startKeysLoop runs keysTick every Keys.CheckInterval until stopKeysLoop,
// and once early when a gossip retirement falls due before the next tick.
func (s *Server) startKeysLoop() {
	ks := s.keys
	ks.stop, ks.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ks.done)
		every := s.cfg.Keys.CheckInterval
		t := s.cfg.Clock.NewTicker(every)
		defer t.Stop()
		interval := every
		for {
			select {
			case <-ks.stop:
				return
			case <-ks.retire.wake:
				// Tick early when a revocation's gossip retirement falls due
				// before the next tick.
				if due := s.nextRetireDue(); !due.IsZero() {
					if d := max(due.Sub(s.cfg.Clock.Now()), time.Millisecond); d < interval {
						t.Reset(d)
						interval = d
					}
				}
			case <-t.C():
				if interval != every {
					t.Reset(every)
					interval = every
				}
				s.keysTick(context.Background())
			}
		}
	}()
}

func (s *Server) stopKeysLoop() {
	if s.keys.stop != nil {
		close(s.keys.stop)
		<-s.keys.done
		s.keys.stop = nil
	}
}

// keysTick rotates the keys whose rotation period has passed at the
// server's clock and applies pending revocations. Nothing happens while
// sealed.
func (s *Server) keysTick(ctx context.Context) {
	if s.keys.svc.Status().Sealed {
		return
	}
	s.ensureBuiltinKeys(ctx)
	rotated, err := s.keys.svc.RotateDue(dkms.WithActor(ctx, "system:schedule"), s.cfg.Clock.Now())
	if err != nil {
		s.log.Error("scheduled key rotation failed", "err", err)
	}
	if len(rotated) > 0 {
		s.keys.metrics.rotations.WithLabelValues("schedule").Add(float64(len(rotated)))
	}
	s.reconcileRevocations(ctx)
	s.retireSupersededAsync()
}
