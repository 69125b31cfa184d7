package agent

import (
	"strconv"
	"sync/atomic"

	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/agent/replication"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the agent's Prometheus metrics, registered on its own
// registry. Counters that Stats also reports are kept in atomics and
// exposed through CounterFuncs so both read the same numbers.
type metrics struct {
	traffic  membership.Traffic
	members  membership.Counters
	repl     replication.Counters
	rejected atomic.Uint64

	rejectedVec *prometheus.CounterVec
	refusedVec  *prometheus.CounterVec
}

// Stats is a snapshot of an agent's counters.
type Stats struct {
	GossipBytesSent        uint64 // all memberlist traffic out: packets + streams
	GossipBytesReceived    uint64 // all memberlist traffic in
	GossipMessagesSent     uint64 // packets sent + streams dialed
	GossipMessagesReceived uint64 // packets received + streams accepted
	DeltasApplied          uint64 // remote ops applied to the store
	SyncRounds             uint64 // anti-entropy exchanges
	Rejected               uint64 // messages rejected as bad input (all reasons)
	Dropped                uint64 // messages dropped because the inbound queue was full
	Broadcasts             uint64 // local deltas queued for gossip
	Relayed                uint64 // deltas received by gossip, new here, queued for gossip again
	RelaySkipped           uint64 // relayed deltas dropped from the full relay queue before all their sends
	Reconnects             uint64 // failed members rejoined by the reconnect loop
	SyncChunksSent         uint64 // anti-entropy messages sent carrying deltas
	MemberSyncs            uint64 // push/pulls run because a peer saw other members alive
	SyncSkipped            uint64 // sync requests not sent: the peer had just reported holding nothing new
	RefusedOps             uint64 // remote ops refused: their origin's clock is too far ahead
	DeferredOps            uint64 // remote ops refused while this agent's wall clock was wrong and no peer's clock was known
	BroadcastsQueued       int    // local deltas (and leave intents) waiting in the gossip queue
	RelayQueued            int    // relayed deltas waiting in the relay queue
	GossipStreamBytesSent  uint64 // the stream part of GossipBytesSent (reliable messages, push/pulls)
	// ReplicationBytesSent and ReplicationMessagesSent are replication's
	// part of the traffic out, by kind (replication.SentKinds), before
	// memberlist's framing and encryption.
	ReplicationBytesSent    map[string]uint64
	ReplicationMessagesSent map[string]uint64
}

func newMetrics(reg *prometheus.Registry, members func(state string) float64, syncLag, clockSane func() float64) (*metrics, error) {
	m := &metrics{
		rejectedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_gossip_rejected_total",
			Help: "Gossip messages and deltas rejected as bad input, by reason.",
		}, []string{"reason"}),
		refusedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_gossip_refused_ops_total",
			Help: "Remote ops refused because their origin's clock is too far ahead, by origin (" + replication.RefusedOther + " beyond the first " + strconv.Itoa(replication.MaxRefusedOrigins) + " origins).",
		}, []string{"origin"}),
	}
	counterFunc := func(name, help string, labels prometheus.Labels, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(v.Load()) })
	}
	cs := []prometheus.Collector{
		m.rejectedVec,
		m.refusedVec,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgefleet_clock_wall_sane",
			Help: "1 while the local wall clock is sane and clock drift is judged against it; 0 while it is known wrong (judged against the median of peers' clocks or the last timestamp).",
		}, clockSane),
		counterFunc("edgefleet_gossip_messages_total", "Memberlist messages (packets and streams).", prometheus.Labels{"dir": "out"}, &m.traffic.MsgsOut),
		counterFunc("edgefleet_gossip_messages_total", "Memberlist messages (packets and streams).", prometheus.Labels{"dir": "in"}, &m.traffic.MsgsIn),
		counterFunc("edgefleet_gossip_bytes_total", "Memberlist bytes on the wire (packets and streams).", prometheus.Labels{"dir": "out"}, &m.traffic.BytesOut),
		counterFunc("edgefleet_gossip_bytes_total", "Memberlist bytes on the wire (packets and streams).", prometheus.Labels{"dir": "in"}, &m.traffic.BytesIn),
		counterFunc("edgefleet_deltas_applied_total", "Remote CRDT ops applied to the local store.", nil, &m.repl.DeltasApplied),
		counterFunc("edgefleet_sync_rounds_total", "Anti-entropy exchanges answered or completed.", nil, &m.repl.SyncRounds),
		counterFunc("edgefleet_gossip_dropped_total", "Replication messages dropped because the inbound queue was full (anti-entropy repairs them).", nil, &m.repl.Dropped),
		counterFunc("edgefleet_gossip_deferred_ops_total", "Remote ops refused while this agent's wall clock was wrong and no peer's clock was known yet (anti-entropy offers them again).", nil, &m.repl.DeferredOps),
		counterFunc("edgefleet_broadcasts_total", "Local deltas queued for gossip broadcast.", nil, &m.repl.Broadcasts),
		counterFunc("edgefleet_gossip_relayed_total", "Deltas received by gossip, new to this agent, queued for gossip again.", nil, &m.repl.Relayed),
		counterFunc("edgefleet_gossip_relay_skipped_total", "Relayed deltas dropped from the full relay queue before all their sends, the most sent first (anti-entropy carries them).", nil, &m.repl.RelaySkipped),
		counterFunc("edgefleet_reconnects_total", "Failed members rejoined by the reconnect loop.", nil, &m.members.Reconnects),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgefleet_sync_lag_ops",
			Help: "Ops that known live peers reported holding and this agent lacks (from their version vectors).",
		}, syncLag),
	}
	for _, kind := range replication.SentKinds {
		cs = append(cs,
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name:        "edgefleet_replication_sent_bytes_total",
				Help:        "Replication bytes handed to memberlist, by kind of message (before memberlist's framing and encryption).",
				ConstLabels: prometheus.Labels{"kind": kind},
			}, func() float64 { return float64(m.repl.Sent.Bytes(kind)) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name:        "edgefleet_replication_sent_messages_total",
				Help:        "Replication messages handed to memberlist, by kind.",
				ConstLabels: prometheus.Labels{"kind": kind},
			}, func() float64 { return float64(m.repl.Sent.Msgs(kind)) }))
	}
	for _, state := range membership.States {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "edgefleet_members",
			Help:        "Cluster members known to this agent, by state (this agent included).",
			ConstLabels: prometheus.Labels{"state": state},
		}, func() float64 { return members(state) }))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) reject(reason string) {
	m.rejected.Add(1)
	m.rejectedVec.WithLabelValues(reason).Inc()
}

func (m *metrics) refused(origin string, ops int) {
	m.refusedVec.WithLabelValues(origin).Add(float64(ops))
}

func (m *metrics) stats() Stats {
	st := Stats{
		GossipBytesSent:         m.traffic.BytesOut.Load(),
		GossipBytesReceived:     m.traffic.BytesIn.Load(),
		GossipMessagesSent:      m.traffic.MsgsOut.Load(),
		GossipMessagesReceived:  m.traffic.MsgsIn.Load(),
		DeltasApplied:           m.repl.DeltasApplied.Load(),
		SyncRounds:              m.repl.SyncRounds.Load(),
		Rejected:                m.rejected.Load(),
		Dropped:                 m.repl.Dropped.Load(),
		Broadcasts:              m.repl.Broadcasts.Load(),
		Relayed:                 m.repl.Relayed.Load(),
		RelaySkipped:            m.repl.RelaySkipped.Load(),
		Reconnects:              m.members.Reconnects.Load(),
		SyncChunksSent:          m.repl.ChunksSent.Load(),
		MemberSyncs:             m.members.MemberSyncs.Load(),
		SyncSkipped:             m.repl.SyncSkipped.Load(),
		RefusedOps:              m.repl.RefusedOps.Load(),
		DeferredOps:             m.repl.DeferredOps.Load(),
		GossipStreamBytesSent:   m.traffic.StreamBytesOut.Load(),
		ReplicationBytesSent:    map[string]uint64{},
		ReplicationMessagesSent: map[string]uint64{},
	}
	for _, k := range replication.SentKinds {
		st.ReplicationBytesSent[k] = m.repl.Sent.Bytes(k)
		st.ReplicationMessagesSent[k] = m.repl.Sent.Msgs(k)
	}
	return st
}
