package controlplane

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
)

// Revocation list. Every decommissioned agent is on the list the control
// plane signs with its key-message signing key (dkms.RevocationList) and
// hands to every agent with each answer of GET /v1/agent/keys. Agents
// carry it in replicated state to peers that cannot reach the control
// plane, and refuse the listed nodes at the membership layer (package
// agent/keys, agent/membership). A decommission wakes every held key
// request, so agents on the key watch learn of it within a round trip.

// revocationRefresh bounds how long a cached list is used without
// re-reading the agent registry (another replica may have decommissioned
// an agent); the list is re-signed only when its entries changed.
const revocationRefresh = 10 * time.Second

// revocationState caches the signed list.
type revocationState struct {
	mu      sync.Mutex
	list    *dkms.RevocationList
	raw     []byte
	builtAt time.Time
	stale   bool
}

// revocationList returns the current signed list in binary form and its
// version (0 and nil when no agent is revoked).
func (s *Server) revocationList(ctx context.Context) ([]byte, uint64, error) {
	rs := &s.keys.revocations
	now := clock.Or(s.cfg.Clock).Now()
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.list != nil && !rs.stale && now.Sub(rs.builtAt) < revocationRefresh && !now.Before(rs.builtAt) {
		return rs.raw, rs.list.Version, nil
	}
	agents, err := s.store.ListAgents(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("controlplane: revocation list: %w", err)
	}
	var revoked []dkms.RevokedAgent
	for _, a := range agents {
		if a.DecommissionedAt != nil {
			revoked = append(revoked, dkms.RevokedAgent{ID: a.ID, Name: a.Name, RevokedAt: a.DecommissionedAt.UTC().Truncate(time.Millisecond)})
		}
	}
	rs.builtAt, rs.stale = now, false
	if rs.list != nil && slices.Equal(rs.list.Agents, sortedRevoked(revoked)) {
		return rs.raw, rs.list.Version, nil
	}
	l, err := dkms.NewRevocationList(revoked, now)
	if err != nil {
		return nil, 0, fmt.Errorf("controlplane: revocation list: %w", err)
	}
	if err := s.keys.svc.SignRevocationList(l); err != nil {
		return nil, 0, err
	}
	raw, err := l.MarshalBinary()
	if err != nil {
		return nil, 0, err
	}
	if len(l.Agents) == 0 {
		raw = nil
	}
	rs.list, rs.raw = l, raw
	s.log.Info("revocation list issued", "version", l.Version, "agents", len(l.Agents))
	return raw, l.Version, nil
}

func sortedRevoked(in []dkms.RevokedAgent) []dkms.RevokedAgent {
	out := slices.Clone(in)
	slices.SortFunc(out, func(a, b dkms.RevokedAgent) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return out
}

// revocationChanged re-issues the list after a decommission and wakes the
// held key requests, which answer with it.
func (s *Server) revocationChanged(ctx context.Context) {
	if s.keys == nil {
		return
	}
	s.keys.revocations.mu.Lock()
	s.keys.revocations.stale = true
	s.keys.revocations.mu.Unlock()
	if _, _, err := s.revocationList(ctx); err != nil {
		s.log.Error("issuing the revocation list failed; it is issued at the next key request", "err", err)
	}
	s.keys.watch.notify()
}

// Gossip key rotation on revocation. A revocation rotates every key the
// revoked agent could receive (dkms.Service.Revoke), the gossip key among
// them: its new version is installed by every agent at once and becomes
// memberlist primary at its ActivateAt (the key's install grace later).
// The versions before it would then stay installed for the remove grace
// (an hour by default), and with them the revoked agent's ability to read
// and forge gossip. Instead the control plane retires them as soon as it
// is safe: once the new version's ActivateAt plus revocationRemoveMargin
// has passed (every agent switched its primary; the margin covers clock
// skew) and every live agent (online, not revoked, registered with the
// key service) has confirmed holding the new version, by sending a key
// request whose cursor includes it. A retired version travels to agents
// as state only, and their gossip rotators remove it from memberlist's
// keyring. Agents that are offline do not hold it up: they catch up when
// they return, as after any rotation. The pending retirements are kept in
// memory; after a restart the key's remove grace applies. The key loop
// (startKeysLoop) ticks at the activation instant; later, every key
// request and every tick checks again.

// revocationRemoveMargin is waited after the new gossip version's
// ActivateAt before older versions are retired: the clock skew between
// agents it tolerates.
const revocationRemoveMargin = 5 * time.Second

// pendingRetire is a gossip key whose versions before version are to be
// retired once every live agent confirmed version.
type pendingRetire struct {
	version    uint32
	activateAt time.Time
}

// retireState tracks pending retirements and agents' confirmed cursors.
type retireState struct {
	mu        sync.Mutex
	pending   map[string]pendingRetire // by key name
	confirmed map[string]keyCursor     // agent id -> cursor its last request started from
	running   bool
	// wake tells the key loop that a retirement was scheduled.
	wake chan struct{}
}

// noteConfirmed records the cursor an agent's key request started from:
// the key state it holds. While a retirement is pending it checks it.
func (s *Server) noteConfirmed(agentID string, held keyCursor) {
	rs := &s.keys.retire
	rs.mu.Lock()
	if rs.confirmed == nil {
		rs.confirmed = map[string]keyCursor{}
	}
	rs.confirmed[agentID] = held
	pending := len(rs.pending) > 0
	rs.mu.Unlock()
	if pending {
		s.retireSupersededAsync()
	}
}

// afterRevocationRotation schedules the retirement of the gossip versions
// a revocation's rotation superseded.
func (s *Server) afterRevocationRotation(ctx context.Context, rotated []dkms.VersionInfo) {
	for _, vi := range rotated {
		k, err := s.keys.svc.Key(ctx, vi.Key)
		if err != nil || k.Purpose != dkms.PurposeGossip || vi.Version < 2 {
			continue
		}
		rs := &s.keys.retire
		rs.mu.Lock()
		if rs.pending == nil {
			rs.pending = map[string]pendingRetire{}
		}
		rs.pending[vi.Key] = pendingRetire{version: vi.Version, activateAt: vi.ActivateAt}
		rs.mu.Unlock()
		s.log.Info("gossip key rotated for a revocation; older versions are retired once every live agent confirmed the new one",
			"key", vi.Key, "version", vi.Version, "not_before", vi.ActivateAt.Add(revocationRemoveMargin))
		// The key loop ticks at that instant.
		select {
		case s.keys.retire.wake <- struct{}{}:
		default:
		}
	}
}

// nextRetireDue is the earliest instant a pending retirement may happen;
// zero when none is pending.
func (s *Server) nextRetireDue() time.Time {
	rs := &s.keys.retire
	rs.mu.Lock()
	defer rs.mu.Unlock()
	var next time.Time
	for _, p := range rs.pending {
		if at := p.activateAt.Add(revocationRemoveMargin); next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return next
}

// retireSupersededAsync runs retireSuperseded unless it is running.
func (s *Server) retireSupersededAsync() {
	rs := &s.keys.retire
	rs.mu.Lock()
	if rs.running {
		rs.mu.Unlock()
		return
	}
	rs.running = true
	rs.mu.Unlock()
	go func() {
		defer func() {
			rs.mu.Lock()
			rs.running = false
			rs.mu.Unlock()
		}()
		s.retireSuperseded(dkms.WithActor(context.Background(), "system:revocation"))
	}()
}

// retireSuperseded retires the superseded gossip versions of every
// pending key whose new version is active and confirmed by every live
// agent.
func (s *Server) retireSuperseded(ctx context.Context) {
	rs := &s.keys.retire
	now := clock.Or(s.cfg.Clock).Now()
	rs.mu.Lock()
	var due []string
	for name, p := range rs.pending {
		if !now.Before(p.activateAt.Add(revocationRemoveMargin)) {
			due = append(due, name)
		}
	}
	rs.mu.Unlock()
	if len(due) == 0 || s.keys.svc.Status().Sealed {
		return
	}
	live, err := s.liveKeyAgents(ctx, now)
	if err != nil {
		s.log.Warn("checking gossip key confirmations failed; checked again at the next key request", "err", err)
		return
	}
	for _, name := range due {
		rs.mu.Lock()
		p, ok := rs.pending[name]
		var waiting []string
		for _, id := range live {
			if c, ok := rs.confirmed[id]; !ok || !cursorHolds(c, name, p.version) {
				waiting = append(waiting, id)
			}
		}
		rs.mu.Unlock()
		s.log.Debug("gossip retirement check", "key", name, "live", live, "waiting", waiting)
		if !ok || len(waiting) > 0 {
			continue
		}
		k, err := s.keys.svc.Key(ctx, name)
		if err != nil {
			s.log.Warn("retiring superseded gossip versions failed", "key", name, "err", err)
			continue
		}
		var retired []uint32
		for _, v := range k.Versions {
			if v.Version >= p.version || v.State != dkms.StateDecryptOnly {
				continue
			}
			if _, err := s.keys.svc.Retire(ctx, name, v.Version); err != nil {
				s.log.Warn("retiring a superseded gossip version failed; retried at the next key request", "key", name, "version", v.Version, "err", err)
				continue
			}
			retired = append(retired, v.Version)
		}
		rs.mu.Lock()
		if cur, ok := rs.pending[name]; ok && cur == p {
			delete(rs.pending, name)
		}
		rs.mu.Unlock()
		s.log.Info("superseded gossip key versions retired: every live agent holds the new one", "key", name, "version", p.version, "retired", retired, "live_agents", len(live))
	}
}

// liveKeyAgents lists the agents that must confirm a gossip version:
// online, not decommissioned, registered and not revoked in the key
// service.
func (s *Server) liveKeyAgents(ctx context.Context, now time.Time) ([]string, error) {
	agents, err := s.store.ListAgents(ctx)
	if err != nil {
		return nil, err
	}
	registered, err := s.keys.svc.Agents(ctx)
	if err != nil {
		return nil, err
	}
	keyed := map[string]bool{}
	for _, r := range registered {
		if !r.Revoked() {
			keyed[r.ID] = true
		}
	}
	var out []string
	for _, a := range agents {
		if keyed[a.ID] && s.stateOf(a, now) == cpapi.StateOnline {
			out = append(out, a.ID)
		}
	}
	return out, nil
}

// cursorHolds reports whether cursor c includes version v of key name.
func cursorHolds(c keyCursor, name string, v uint32) bool {
	for _, k := range c.keys {
		if k.name == name {
			return k.latest >= v
		}
	}
	return false
}
