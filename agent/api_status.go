package agent

import (
	"net/http"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/buildinfo"
)

// Status is the answer of GET /v1/status: the agent at a glance, composed
// from what the other endpoints and the heartbeat report.
//
// The ingestion rate is not a field: two answers give it, as the change
// of Ingest.Stats.Received between them over the change of At (what
// `edge-agent status` does). Model and scheduler state will join as
// fields "model" and "scheduler" once the agent has those subsystems;
// until then they are absent.
type Status struct {
	Node    string `json:"node"`
	Version string `json:"version"`
	// Running is false while the agent is starting or stopping.
	Running bool `json:"running"`
	// At is when this status was taken, on the agent's clock.
	At time.Time `json:"at"`
	// StartedAt is when the agent started (zero before), UptimeSeconds
	// the time since.
	StartedAt     time.Time     `json:"started_at"`
	UptimeSeconds float64       `json:"uptime_seconds"`
	Health        *cpapi.Health `json:"health"`
	Members       StatusMembers `json:"members"`
	// Ingest is the answer of GET /v1/ingest: the pending count of its
	// stats is the backlog (received, not yet committed and acknowledged),
	// its store's outbox_pending the readings waiting for the uplink.
	Ingest any `json:"ingest"`
	// Uplink is the answer of GET /v1/uplink.
	Uplink any        `json:"uplink"`
	Keys   StatusKeys `json:"keys"`
}

// StatusMembers counts the members this agent knows by state and lists
// them (as GET /v1/members).
type StatusMembers struct {
	Alive int      `json:"alive"`
	Dead  int      `json:"dead"`
	Left  int      `json:"left"`
	List  []Member `json:"list"`
}

// StatusKeys are the key versions the agent holds.
type StatusKeys struct {
	// Held are the dkms keys the control plane sent this agent (empty
	// without a control plane and until the agent is enrolled).
	Held []HeldKey `json:"held"`
	// Gossip is the memberlist keyring gossip is encrypted with.
	Gossip GossipKeyring `json:"gossip"`
}

// HeldKey is one key of the agent's keyring, without material.
type HeldKey struct {
	Name     string   `json:"name"`
	Purpose  string   `json:"purpose"`
	Primary  uint32   `json:"primary"`
	Versions []uint32 `json:"versions"`
}

// GossipKeyring describes the gossip keyring without key material.
type GossipKeyring struct {
	// Encrypted is false when gossip runs unencrypted (no gossip key).
	Encrypted bool `json:"encrypted"`
	// Primary is the dkms version gossip is encrypted with; 0 for the
	// bootstrap key.
	Primary uint32 `json:"primary"`
	// Versions are the dkms versions installed, ascending.
	Versions []uint32 `json:"versions"`
	// Bootstrap is true while the bootstrap key (or another key dkms did
	// not deliver) is installed.
	Bootstrap bool `json:"bootstrap"`
}

func (a *Agent) handleStatus(w http.ResponseWriter, r *http.Request) {
	now := a.clk.Now()
	st := Status{
		Node:    a.Name(),
		Version: buildinfo.Get().Version,
		Running: a.running.Load(),
		At:      now,
		Ingest:  a.ingestStatus(r.Context()),
		Uplink:  a.uplinkStatus(),
		Keys:    a.statusKeys(),
	}
	if st.Running {
		st.StartedAt = a.startedAt
		st.UptimeSeconds = max(now.Sub(a.startedAt).Seconds(), 0)
		st.Health = a.health()
	}
	st.Members.List = a.Members()
	for _, m := range st.Members.List {
		switch m.State {
		case StateAlive:
			st.Members.Alive++
		case StateDead:
			st.Members.Dead++
		case StateLeft:
			st.Members.Left++
		}
	}
	writeJSON(w, http.StatusOK, st)
}

// statusKeys describes the keys the agent holds.
func (a *Agent) statusKeys() StatusKeys {
	out := StatusKeys{Held: []HeldKey{}, Gossip: GossipKeyring{Versions: []uint32{}}}
	if ks := a.Keys(); ks != nil {
		for _, k := range ks.Keys() {
			h := HeldKey{Name: k.Name, Purpose: string(k.Purpose), Primary: k.Primary, Versions: []uint32{}}
			for _, v := range k.Versions {
				h.Versions = append(h.Versions, v.Version)
			}
			out.Held = append(out.Held, h)
		}
	}
	if a.running.Load() && a.gossipKeys != nil {
		gs := a.gossipKeys.State()
		out.Gossip = GossipKeyring{Encrypted: true, Primary: gs.Primary, Versions: gs.Versions, Bootstrap: gs.Bootstrap}
		if out.Gossip.Versions == nil {
			out.Gossip.Versions = []uint32{}
		}
	}
	return out
}
