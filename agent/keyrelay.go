package agent

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
)

// Key relay over gossip. An agent whose uplink is cut still gets new key
// versions from its peers: every agent with a working uplink fetches, each
// heartbeat round, the control plane's page of key messages for agents
// that are behind (GET /v1/agent/keys/relay) and writes each into the
// replicated LWW collection KeyRelayCollection, key
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

// KeyRelayCollection is the replicated LWW collection of relayed key
// messages.
const KeyRelayCollection = "keys.relay"

// maxRelayEntries bounds the live entries of KeyRelayCollection agents
// write to (a relayed message is about 4.7 KB).
const maxRelayEntries = 1024

// keyRelay is an agent's side of the key relay.
type keyRelay struct {
	a        *Agent
	now      func() time.Time
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

func newKeyRelay(a *Agent, now func() time.Time, interval time.Duration, log *slog.Logger, reg *prometheus.Registry) (*keyRelay, error) {
	r := &keyRelay{a: a, now: now, log: log, interval: interval, written: map[[dkms.MessageIDSize]byte]time.Time{}}
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
func (r *keyRelay) selfID() string {
	if ak := r.a.Keys(); ak != nil {
		return ak.ID()
	}
	return ""
}

// store writes relayed entries from the control plane into the
// collection, each message once.
func (r *keyRelay) store(ctx context.Context, entries []cpapi.AgentKeysRelayEntry) {
	self, now := r.selfID(), r.now()
	s, err := r.a.liveStore()
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
		if cur, ok, err := s.Get(ctx, KeyRelayCollection, key); err == nil && ok && string(cur.Value) == string(e.Message) {
			r.remember(m)
			continue
		}
		d, err := s.Put(ctx, KeyRelayCollection, key, e.Message)
		if err != nil {
			r.log.Warn("key relay: writing an entry failed", "key", key, "err", err)
			continue
		}
		r.a.broadcast(d)
		r.remember(m)
		r.mu.Lock()
		r.live++
		r.mu.Unlock()
		r.writes.Inc()
	}
}

func (r *keyRelay) remember(m *dkms.KeyMessage) {
	r.mu.Lock()
	if len(r.written) >= 4*maxRelayEntries {
		clear(r.written) // bounded; at worst a message is written again
	}
	r.written[m.ID] = m.ExpiresAt
	r.mu.Unlock()
}

// run scans the collection every interval until ctx ends.
func (r *keyRelay) run(ctx context.Context) {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.scan(ctx)
		}
	}
}

// scan takes the entries addressed to this agent and deletes what is
// taken, expired or malformed. It reports whether the keyring changed.
func (r *keyRelay) scan(ctx context.Context) bool {
	s, err := r.a.liveStore()
	if err != nil {
		return false
	}
	entries, err := s.List(ctx, KeyRelayCollection)
	if err != nil {
		r.log.Warn("key relay: reading the collection failed", "err", err)
		return false
	}
	ak := r.a.Keys()
	self := ""
	if ak != nil {
		self = ak.ID()
	}
	now := r.now()
	changed := false
	live := 0
	del := func(key, reason string) {
		d, err := s.Delete(ctx, KeyRelayCollection, key)
		if err != nil {
			r.log.Warn("key relay: deleting an entry failed", "key", key, "err", err)
			return
		}
		r.a.broadcast(d)
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
		r.a.fireKeysChanged()
	}
	return changed
}

// parseRelayEntry checks a keys.relay entry read from replicated state:
// a well-formed key message stored under its own key.
func parseRelayEntry(key string, value []byte) (*dkms.KeyMessage, error) {
	if len(value) > dkms.MaxKeyMessageSize {
		return nil, errors.New("agent: key relay entry larger than a key message")
	}
	if strings.Count(key, "/") != 2 {
		return nil, errors.New("agent: key relay entry key is not recipient/key/version")
	}
	m, err := dkms.ParseKeyMessage(value)
	if err != nil {
		return nil, err
	}
	if relayEntryKey(m) != key {
		return nil, errors.New("agent: key relay entry is stored under another key than its message's recipient/key/version")
	}
	return m, nil
}

// relayKeys is the uplink's Deps.KeyRelay: it stores the page in the
// collection once the relay runs.
func (a *Agent) relayKeys(ctx context.Context, entries []cpapi.AgentKeysRelayEntry) {
	if r := a.keyRelay.Load(); r != nil {
		r.store(ctx, entries)
	}
}

// startKeyRelay starts scanning keys.relay for this agent's messages; it
// does nothing without a control plane.
func (a *Agent) startKeyRelay(ctx context.Context) error {
	if a.cfg.ControlPlane.URL == "" {
		return nil
	}
	now := a.wall
	if c := a.deps.UplinkClock; c != nil {
		now = c.Now
	}
	r, err := newKeyRelay(a, now, a.cfg.Gossip.SyncInterval, a.log.With("component", "key-relay"), a.reg)
	if err != nil {
		return err
	}
	a.keyRelay.Store(r)
	a.goLoop(func() { r.run(ctx) })
	return nil
}
