package localapi

import (
	"net/http"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/agent/membership"
)

// handleStatus answers GET /v1/status: the agent at a glance, composed
// from what the other endpoints and the heartbeat report. The ingestion
// rate is not a field: two answers give it (agentapi.IngestRate).
func (s *server) handleStatus(w http.ResponseWriter, r *http.Request) {
	now := s.clk.Now()
	st := agentapi.Status{
		Node:    s.b.Name(),
		Version: s.cfg.Version,
		Running: s.b.Running(),
		At:      now,
		Ingest:  s.ingestStatus(r.Context()),
		Uplink:  s.uplinkStatus(),
		Keys:    s.statusKeys(),
	}
	if st.Running {
		st.StartedAt = s.b.StartedAt()
		st.UptimeSeconds = max(now.Sub(st.StartedAt).Seconds(), 0)
		st.Health = wireHealth(s.b.Health())
	}
	members := s.b.Members()
	st.Members.List = wireMembers(members)
	for _, m := range members {
		switch m.State {
		case membership.StateAlive:
			st.Members.Alive++
		case membership.StateDead:
			st.Members.Dead++
		case membership.StateLeft:
			st.Members.Left++
		}
	}
	writeJSON(w, http.StatusOK, st)
}

// statusKeys describes the keys the agent holds, without material.
func (s *server) statusKeys() agentapi.StatusKeys {
	out := agentapi.StatusKeys{Held: []agentapi.HeldKey{}, Gossip: agentapi.GossipKeyring{Versions: []uint32{}}}
	for _, k := range s.b.HeldKeys() {
		h := agentapi.HeldKey{Name: k.Name, Purpose: string(k.Purpose), Primary: k.Primary, Versions: []uint32{}}
		for _, v := range k.Versions {
			h.Versions = append(h.Versions, v.Version)
		}
		out.Held = append(out.Held, h)
	}
	if gs, ok := s.b.GossipKeys(); ok {
		out.Gossip = agentapi.GossipKeyring{Encrypted: true, Primary: gs.Primary, Versions: gs.Versions, Bootstrap: gs.Bootstrap}
		if out.Gossip.Versions == nil {
			out.Gossip.Versions = []uint32{}
		}
	}
	return out
}
