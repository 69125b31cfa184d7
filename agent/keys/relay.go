package keys

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/edgefleet/edgefleet/dkms"
)

// Key relay over gossip. An agent whose uplink is cut still gets new key
// versions from its peers: every agent with a working uplink fetches, each
// heartbeat round, the control plane's page of key messages for agents
// that are behind (GET /v1/agent/keys/relay) and writes each into the
// replicated LWW collection RelayCollection, key
// "<recipient agent id>/<key name>/<version>", value the raw key message.
// Every agent scans that collection every Gossip.SyncInterval and hands
// the entries addressed to it to its keyring (dkms AgentKeys.Accept), then
// runs the keys-changed hooks (the gossip keyring rotator follows). A key
// message is sealed to its recipient's X-Wing key and signed by the
// control plane, so relaying agents can neither read nor alter it, and the
// recipient checks everything before using it.
//
// The collection stays small: the recipient deletes its entries once it
// has them (accepted, or already held: a replay or an older copy), anyone
// deletes entries whose message has expired (dkms messages live
// DefaultMessageTTL, 24 h) and malformed ones, an agent writes each message
// once, and no one writes while the collection holds maxRelayEntries live
// entries.

// RelayCollection is the replicated LWW collection of relayed key
// messages.
const RelayCollection = "keys.relay"

// maxRelayEntries bounds the live entries of RelayCollection agents
// write to (a relayed message is about 4.7 KB).
const maxRelayEntries = 1024

// State is what the relay needs of the replicated state.
type State interface {
	// LiveStore returns the store, or an error when the agent is not
	// running.
	LiveStore() (*crdt.Store, error)
	// Broadcast gossips the delta of a local write at once (anti-entropy
	// carries it otherwise).
	Broadcast(crdt.Delta)
}

// RelayConfig configures a Relay. State and Keys are required.
type RelayConfig struct {
	State State
	// Keys returns the agent's keyring; nil before it is enrolled.
	Keys func() *dkms.AgentKeys
	// Changed runs after a scan changed the keyring (Hooks.Fire).
	Changed func()
	// Interval is how often Run scans the collection.
	Interval time.Duration
	// Clock is the key messages' clock (the uplink's); nil means clock.Real().
	Clock clock.Clock
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
	// Registry receives the agent_key_relay_* metrics; nil leaves them
	// unregistered.
	Registry *prometheus.Registry
}

// Relay is an agent's side of the key relay.
type Relay struct {
	state    State
	keys     func() *dkms.AgentKeys
	changed  func()
	clock    clock.Clock
	log      *slog.Logger
	interval time.Duration

	mu      sync.Mutex
	written map[[dkms.MessageIDSize]byte]time.Time // message id -> expiry
	live    int                                    // live entries at the last scan

	writes   prometheus.Counter
	accepted *prometheus.CounterVec
	rejected *prometheus.CounterVec
	deleted  *prometheus.CounterVec
}

// NewRelay returns a relay; it registers its metrics and does nothing else
// until Run, Scan or Write.
func NewRelay(cfg RelayConfig) (*Relay, error) {
	if cfg.State == nil || cfg.Keys == nil {
		return nil, errors.New("keys: relay: State and Keys are required")
	}
	if cfg.Interval <= 0 {
		return nil, fmt.Errorf("keys: relay: interval %v is not positive", cfg.Interval)
	}
	r := &Relay{state: cfg.State, keys: cfg.Keys, changed: cfg.Changed, clock: clock.Or(cfg.Clock), log: cfg.Logger,
		interval: cfg.Interval, written: map[[dkms.MessageIDSize]byte]time.Time{}}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.changed == nil {
		r.changed = func() {}
	}
	reg := cfg.Registry
	r.writes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "agent_key_relay_written_total",
		Help: "Key messages for other agents written into the replicated collection keys.relay.",
	})
	r.accepted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "agent_key_relay_accepted_total",
		Help: "Key messages addressed to this agent taken from keys.relay, by result (new: the keyring changed; held: it had them already).",
	}, []string{"result"})
	r.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "agent_key_relay_rejected_total",
		Help: "keys.relay entries refused, by reason (malformed, bad_signature, expired, below_min_version, not_yet_valid, keyring, dropped_full).",
	}, []string{"reason"})
	r.deleted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "agent_key_relay_deleted_total",
		Help: "keys.relay entries deleted by this agent, by reason (taken, expired, malformed, refused).",
	}, []string{"reason"})
	if reg != nil {
		for _, c := range []prometheus.Collector{r.writes, r.accepted, r.rejected, r.deleted} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return r, nil
}

// relayEntryKey is the collection key of message m.
func relayEntryKey(m *dkms.KeyMessage) string {
	return m.AgentID + "/" + m.Key + "/" + strconv.FormatUint(uint64(m.Version), 10)
}

// selfID is this agent's id at the control plane ("" before enrollment).
func (r *Relay) selfID() string {
	if ak := r.keys(); ak != nil {
		return ak.ID()
	}
	return ""
}

// Write writes relayed entries from the control plane into the
// collection, each message once (the uplink's Deps.KeyRelay).
func (r *Relay) Write(ctx context.Context, entries []cpapi.AgentKeysRelayEntry) {
	self, now := r.selfID(), r.clock.Now()
	s, err := r.state.LiveStore()
	if err != nil {
		return
	}
	for _, e := range entries {
		if len(e.Message) > dkms.MaxKeyMessageSize {
			r.rejected.WithLabelValues("malformed").Inc()
			continue
		}
		m, err := dkms.ParseKeyMessage(e.Message)
		if err != nil || m.AgentID != e.RecipientAgentID {
			r.rejected.WithLabelValues("malformed").Inc()
			r.log.Warn("key relay: the control plane sent a malformed entry; skipped", "recipient", e.RecipientAgentID, "err", err)
			continue
		}
		if m.AgentID == self || !now.Before(m.ExpiresAt) {
			continue
		}
		r.mu.Lock()
		_, done := r.written[m.ID]
		full := r.live >= maxRelayEntries
		r.mu.Unlock()
		if done {
			continue
		}
		if full {
			r.rejected.WithLabelValues("dropped_full").Inc()
			continue
		}
		key := relayEntryKey(m)
		if cur, ok, err := s.Get(ctx, RelayCollection, key); err == nil && ok && string(cur.Value) == string(e.Message) {
			r.remember(m)
			continue
		}
		d, err := s.Put(ctx, RelayCollection, key, e.Message)
		if err != nil {
			r.log.Warn("key relay: writing an entry failed", "key", key, "err", err)
			continue
		}
		r.state.Broadcast(d)
		r.remember(m)
		r.mu.Lock()
		r.live++
		r.mu.Unlock()
		r.writes.Inc()
	}
}

func (r *Relay) remember(m *dkms.KeyMessage) {
	r.mu.Lock()
	if len(r.written) >= 4*maxRelayEntries {
		clear(r.written) // bounded; at worst a message is written again
	}
	r.written[m.ID] = m.ExpiresAt
	r.mu.Unlock()
}

// Run scans the collection every interval until ctx ends.
func (r *Relay) Run(ctx context.Context) {
	t := r.clock.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			r.Scan(ctx)
		}
	}
}

// Scan takes the entries addressed to this agent and deletes what is
// taken, expired or malformed. It reports whether the keyring changed.
func (r *Relay) Scan(ctx context.Context) bool {
	s, err := r.state.LiveStore()
	if err != nil {
		return false
	}
	entries, err := s.List(ctx, RelayCollection)
	if err != nil {
		r.log.Warn("key relay: reading the collection failed", "err", err)
		return false
	}
	ak := r.keys()
	self := ""
	if ak != nil {
		self = ak.ID()
	}
	now := r.clock.Now()
	changed := false
	live := 0
	del := func(key, reason string) {
		d, err := s.Delete(ctx, RelayCollection, key)
		if err != nil {
			r.log.Warn("key relay: deleting an entry failed", "key", key, "err", err)
			return
		}
		r.state.Broadcast(d)
		r.deleted.WithLabelValues(reason).Inc()
	}
	for _, e := range entries {
		m, err := parseRelayEntry(e.Key, e.Value)
		if err != nil {
			r.rejected.WithLabelValues("malformed").Inc()
			r.log.Warn("key relay: malformed entry in the replicated collection; deleted", "key", e.Key, "origin", e.Origin, "err", err)
			del(e.Key, "malformed")
			continue
		}
		if !now.Before(m.ExpiresAt) {
			del(e.Key, "expired")
			continue
		}
		if self == "" || m.AgentID != self {
			live++
			continue
		}
		res, err := ak.Accept(ctx, e.Value)
		switch {
		case err == nil:
			if res.Changed {
				changed = true
				r.accepted.WithLabelValues("new").Inc()
				r.log.Info("key version received from peers over gossip", "key", m.Key, "version", m.Version, "origin", e.Origin)
			} else {
				r.accepted.WithLabelValues("held").Inc()
			}
			del(e.Key, "taken")
		case errors.Is(err, dkms.ErrReplay), errors.Is(err, dkms.ErrRollback):
			// A copy of something held (the control plane may have sent
			// the same version directly): not an error.
			r.accepted.WithLabelValues("held").Inc()
			del(e.Key, "taken")
		case errors.Is(err, dkms.ErrNotYetValid):
			r.rejected.WithLabelValues("not_yet_valid").Inc()
			live++
		default:
			reason := "keyring"
			switch {
			case errors.Is(err, dkms.ErrMalformed):
				reason = "malformed"
			case errors.Is(err, dkms.ErrBadSignature):
				reason = "bad_signature"
			case errors.Is(err, dkms.ErrExpired):
				reason = "expired"
			case errors.Is(err, dkms.ErrBelowMinVersion):
				reason = "below_min_version"
			}
			r.rejected.WithLabelValues(reason).Inc()
			r.log.Warn("key relay: a relayed key message was refused; deleted", "key", e.Key, "origin", e.Origin, "reason", reason, "err", err)
			del(e.Key, "refused")
		}
	}
	r.mu.Lock()
	r.live = live
	for id, exp := range r.written {
		if !now.Before(exp) {
			delete(r.written, id)
		}
	}
	r.mu.Unlock()
	if changed {
		r.changed()
	}
	return changed
}

// parseRelayEntry checks a keys.relay entry read from replicated state:
// a well-formed key message stored under its own key.
func parseRelayEntry(key string, value []byte) (*dkms.KeyMessage, error) {
	if len(value) > dkms.MaxKeyMessageSize {
		return nil, errors.New("keys: key relay entry larger than a key message")
	}
	if strings.Count(key, "/") != 2 {
		return nil, errors.New("keys: key relay entry key is not recipient/key/version")
	}
	m, err := dkms.ParseKeyMessage(value)
	if err != nil {
		return nil, err
	}
	if relayEntryKey(m) != key {
		return nil, errors.New("keys: key relay entry is stored under another key than its message's recipient/key/version")
	}
	return m, nil
}
