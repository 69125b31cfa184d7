package controlplane

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/clock"
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
