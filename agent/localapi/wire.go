package localapi

import (
	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/agent/uplink"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// The agent's domain types and their wire types (package agentapi), in
// one place. Where the two have the same fields, a Go conversion does it
// (devices.Record, ingest.Stats and StoreStats, uplink.Status,
// cpapi.Health): a field added to one side only breaks the build here.
// The others copy field by field. TestWireMatchesDomain checks that each
// wire value encodes as its domain value does.

// wireIngestStats is the wire form of the ingestor's counters.
func wireIngestStats(s ingest.Stats) agentapi.IngestStats { return agentapi.IngestStats(s) }

// wireStoreStats is the wire form of the ingestion database's stats.
func wireStoreStats(s ingest.StoreStats) agentapi.IngestStoreStats {
	return agentapi.IngestStoreStats(s)
}

// wireUplink is the wire form of the uplink's status.
func wireUplink(s uplink.Status) agentapi.UplinkStatus { return agentapi.UplinkStatus(s) }

// wireHealth is the wire form of the health checks; nil stays nil.
func wireHealth(h *cpapi.Health) *agentapi.AgentHealth {
	if h == nil {
		return nil
	}
	w := agentapi.AgentHealth{Status: h.Status, Checks: h.Checks}
	for _, inc := range h.Incidents {
		w.Incidents = append(w.Incidents, agentapi.DBIncident(inc))
	}
	return &w
}

// wireMembers is the wire form of a member list (never nil).
func wireMembers(ms []membership.Member) []agentapi.Member {
	out := make([]agentapi.Member, 0, len(ms))
	for _, m := range ms {
		out = append(out, agentapi.Member{Name: m.Name, Addr: m.Addr, State: m.State,
			Meta: agentapi.NodeMeta(m.Meta)})
	}
	return out
}

// wireDeadLetters is the wire form of a page of dead letters.
func wireDeadLetters(p ingest.DeadLetterPage) agentapi.DeadLetterPage {
	out := agentapi.DeadLetterPage{Items: make([]agentapi.DeadLetter, 0, len(p.Items)), Next: p.Next}
	for _, d := range p.Items {
		out.Items = append(out.Items, agentapi.DeadLetter{ID: d.ID, At: d.At, Topic: d.Topic, Reason: string(d.Reason),
			Error: d.Error, Payload: d.Payload, PayloadSize: d.PayloadSize, Truncated: d.Truncated})
	}
	return out
}
