package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
)

// Key relay: GET /v1/agent/keys/relay hands an enrolled agent the key
// messages of OTHER agents that are behind, so that it writes them into
// the fleet's replicated state (collection "keys.relay") where the
// addressed agent, cut off from the control plane but not from its peers,
// picks them up. Each message is sealed to its recipient's X-Wing key and
// signed by the control plane, so a relaying agent can neither read nor
// alter it: handing it to any enrolled agent reveals nothing.
//
// Who is behind is decided from what the server saw of each agent's
// GET /v1/agent/keys, kept IN MEMORY (lost at a restart): the cursor it
// was answered last. An agent whose cursor is not the current state of
// the keys it may hold lacks the versions that differ. Only changes older
// than one heartbeat interval count, so agents that are online and simply
// have not polled yet are not relayed. An agent the server has not seen
// since it started is behind for every version changed since then. The
// relay carries, per (recipient, key), only the newest version the
// recipient lacks (the one that matters for sealing and for the gossip
// keyring; the rest comes with the agent's next own fetch), at most
// RelayPageSize entries per page. Messages are built once per (recipient,
// key, version, state) and answered again from a cache until half their
// validity has passed, so every agent relays identical bytes and polling
// costs no cryptography.

const (
	// RelayPageSize bounds the entries of one GET /v1/agent/keys/relay
	// answer.
	RelayPageSize = 200
	// maxRelayCursor bounds the "after" parameter of the relay.
	maxRelayCursor = 512
)

// relayPageSize is RelayPageSize; tests lower it.
var relayPageSize = RelayPageSize

// relayState is what the relay knows of agents' own key fetches, and its
// message cache.
type relayState struct {
	mu      sync.Mutex
	fetched map[string]relayFetch
	fetchGn uint64
	msgs    map[relayRef]relayMsg
	// list is the computed set of lagging (recipient, key) pairs, valid
	// while the generations match.
	list                    []relayItem
	listKeys, listAg, listF uint64
	listOK                  bool
	agents                  []dkms.AgentInfo
	agentsGen               uint64
	agentsOK                bool
}

type relayFetch struct {
	cursor string
	parsed keyCursor
}

type relayRef struct {
	agent, key string
}

type relayMsg struct {
	version uint32
	state   dkms.State
	raw     []byte
	refresh time.Time // build again from here on
}

// relayItem is one recipient lacking one version of one key.
type relayItem struct {
	agent     string
	key       string
	version   uint32
	state     dkms.State
	changedAt time.Time
}

func (it relayItem) pos() string { return it.agent + "/" + it.key }

// noteFetch records an agent's successful GET /v1/agent/keys.
func (ks *keyState) noteFetch(agentID, cursor string, parsed keyCursor) {
	r := &ks.relay
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fetched == nil {
		r.fetched = map[string]relayFetch{}
	}
	if f, ok := r.fetched[agentID]; ok && f.cursor == cursor {
		return
	}
	r.fetched[agentID] = relayFetch{cursor: cursor, parsed: parsed}
	r.fetchGn++
}

// relayAgents returns the registered agents, cached per agents generation.
func (ks *keyState) relayAgents(ctx context.Context) ([]dkms.AgentInfo, error) {
	r := &ks.relay
	gen := ks.cache.agentsGen.Load()
	r.mu.Lock()
	if r.agentsOK && r.agentsGen == gen {
		a := r.agents
		r.mu.Unlock()
		return a, nil
	}
	r.mu.Unlock()
	agents, err := ks.svc.Agents(ctx)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(agents, func(x, y dkms.AgentInfo) int { return strings.Compare(x.ID, y.ID) })
	if ks.cache.agentsGen.Load() == gen {
		r.mu.Lock()
		r.agents, r.agentsGen, r.agentsOK = agents, gen, true
		r.mu.Unlock()
	}
	return agents, nil
}

// lagging lists, sorted by recipient and key, the newest version each
// lagging agent lacks of each key it may hold.
func (ks *keyState) lagging(ctx context.Context, started time.Time) ([]relayItem, error) {
	keysGen, agGen := ks.cache.keysGen.Load(), ks.cache.agentsGen.Load()
	agents, err := ks.relayAgents(ctx)
	if err != nil {
		return nil, err
	}
	keys, err := ks.keyInfos(ctx)
	if err != nil {
		return nil, err
	}
	r := &ks.relay
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.listOK && r.listKeys == keysGen && r.listAg == agGen && r.listF == r.fetchGn {
		return r.list, nil
	}
	var out []relayItem
	for _, a := range agents {
		if a.Revoked() {
			continue
		}
		cur, allowed := agentKeyState(a, keys)
		f, known := r.fetched[a.ID]
		if known && f.cursor == cur.String() {
			continue
		}
		var need map[string][]uint32
		if known {
			need = missing(f.parsed, allowed)
		}
		for _, k := range allowed {
			var best *dkms.VersionInfo
			for i := range k.Versions {
				v := &k.Versions[i]
				if v.Version < k.Policy.MinDecryptVersion {
					continue
				}
				if known {
					if !slices.Contains(need[k.Name], v.Version) {
						continue
					}
				} else if !v.ChangedAt.After(started) {
					continue
				}
				if best == nil || v.Version > best.Version {
					best = v
				}
			}
			if best != nil {
				out = append(out, relayItem{agent: a.ID, key: k.Name, version: best.Version, state: best.State, changedAt: best.ChangedAt})
			}
		}
	}
	r.list, r.listKeys, r.listAg, r.listF, r.listOK = out, keysGen, agGen, r.fetchGn, true
	return out, nil
}

// relayMessage returns the message of it, from the cache while it is
// fresh.
func (s *Server) relayMessage(ctx context.Context, it relayItem, now time.Time) ([]byte, error) {
	r := &s.keys.relay
	ref := relayRef{it.agent, it.key}
	r.mu.Lock()
	m, ok := r.msgs[ref]
	r.mu.Unlock()
	if ok && m.version == it.version && m.state == it.state && now.Before(m.refresh) {
		return m.raw, nil
	}
	if err := s.requireUnsealed(); err != nil {
		return nil, err
	}
	km, err := s.keys.svc.MessageFor(ctx, it.agent, it.key, it.version)
	if err != nil {
		return nil, err
	}
	raw, err := km.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("controlplane: encoding a relayed key message: %w", err)
	}
	refresh := km.IssuedAt.Add(km.ExpiresAt.Sub(km.IssuedAt) / 2)
	r.mu.Lock()
	if r.msgs == nil {
		r.msgs = map[relayRef]relayMsg{}
	}
	r.msgs[ref] = relayMsg{version: it.version, state: it.state, raw: raw, refresh: refresh}
	r.mu.Unlock()
	return raw, nil
}

// pruneRelayCache forgets cached messages of pairs no longer lagging.
func (ks *keyState) pruneRelayCache(items []relayItem) {
	r := &ks.relay
	live := make(map[relayRef]struct{}, len(items))
	for _, it := range items {
		live[relayRef{it.agent, it.key}] = struct{}{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for ref := range r.msgs {
		if _, ok := live[ref]; !ok {
			delete(r.msgs, ref)
		}
	}
}

// handleAgentKeysRelay answers a page of key messages for lagging agents
// other than the caller.
func (s *Server) handleAgentKeysRelay(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	for k, vs := range q {
		if k != "after" {
			return badRequest("query parameter %q unknown (accepted: after)", k)
		}
		if len(vs) > 1 {
			return badRequest("query parameter %q given %d times", k, len(vs))
		}
	}
	after := q.Get("after")
	if len(after) > maxRelayCursor || (after != "" && !strings.Contains(after, "/")) {
		return badRequest("after: not a cursor returned by GET /v1/agent/keys/relay; omit it to start from the first page")
	}
	ctx := keyCtx(r.Context(), c)
	fail := func(err error) error {
		s.keys.metrics.relay.WithLabelValues("error").Inc()
		return err
	}
	agent, err := s.keys.agentInfo(ctx, c.agentID)
	if err != nil && !errors.Is(err, dkms.ErrUnknownAgent) {
		return fail(s.keyError(err))
	}
	if err == nil && agent.Revoked() {
		s.setRevoked(c.serial, true)
		return fail(errorf(http.StatusForbidden, "agent %s is decommissioned; it relays no keys", c.agentID))
	}
	items, err := s.keys.lagging(ctx, s.started)
	if err != nil {
		return fail(s.keyError(err))
	}
	now := s.cfg.Clock.Now()
	grace := s.cfg.HeartbeatInterval
	out := cpapi.AgentKeysRelayResponse{Entries: []cpapi.AgentKeysRelayEntry{}}
	last := ""
	for _, it := range items {
		if it.agent == c.agentID || (after != "" && it.pos() <= after) || now.Sub(it.changedAt) < grace {
			continue
		}
		if len(out.Entries) == relayPageSize {
			out.Cursor = last
			break
		}
		raw, err := s.relayMessage(ctx, it, now)
		if err != nil {
			if errors.Is(err, dkms.ErrRevoked) || errors.Is(err, dkms.ErrNotAuthorized) || errors.Is(err, dkms.ErrUnknownAgent) {
				continue // changed since the list was made
			}
			return fail(s.keyError(err))
		}
		out.Entries = append(out.Entries, cpapi.AgentKeysRelayEntry{RecipientAgentID: it.agent, Message: raw})
		last = it.pos()
	}
	if after == "" && out.Cursor == "" {
		s.keys.pruneRelayCache(items)
	}
	result := "empty"
	if len(out.Entries) > 0 {
		result = "entries"
		s.keys.metrics.relayed.Add(float64(len(out.Entries)))
	}
	s.keys.metrics.relay.WithLabelValues(result).Inc()
	writeJSON(w, http.StatusOK, out)
	return nil
}
