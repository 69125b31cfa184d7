package dkms

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// serviceMetrics are the key service's Prometheus metrics.
type serviceMetrics struct {
	ops    *prometheus.CounterVec // dkms_operations_total{action,result}
	sealed prometheus.Gauge       // dkms_sealed
}

func newServiceMetrics(reg *prometheus.Registry) (*serviceMetrics, error) {
	m := &serviceMetrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dkms_operations_total",
			Help: "Key service operations by action and result (ok or error).",
		}, []string{"action", "result"}),
		sealed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dkms_sealed",
			Help: "1 while the key service is sealed, 0 once unsealed.",
		}),
	}
	if err := register(reg, m.ops, m.sealed); err != nil {
		return nil, err
	}
	return m, nil
}

// agentMetrics are an agent keyring's Prometheus metrics.
type agentMetrics struct {
	messages *prometheus.CounterVec // dkms_agent_key_messages_total{result}
	ops      *prometheus.CounterVec // dkms_agent_operations_total{action,result}
}

func newAgentMetrics(reg *prometheus.Registry) (*agentMetrics, error) {
	m := &agentMetrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dkms_agent_key_messages_total",
			Help: "Key messages handled by the agent keyring by result (accepted, or the rejection reason).",
		}, []string{"result"}),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dkms_agent_operations_total",
			Help: "Agent keyring seal and open operations by action and result.",
		}, []string{"action", "result"}),
	}
	if err := register(reg, m.messages, m.ops); err != nil {
		return nil, err
	}
	return m, nil
}

func register(reg *prometheus.Registry, cs ...prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func okOrError(err error) string {
	if err == nil {
		return "ok"
	}
	return "error"
}

// rejectReason names a key message rejection for metrics.
func rejectReason(err error) string {
	for _, r := range []struct {
		err  error
		name string
	}{
		{ErrMalformed, "malformed"},
		{ErrNotForThisAgent, "not_for_this_agent"},
		{ErrBadSignature, "bad_signature"},
		{ErrExpired, "expired"},
		{ErrNotYetValid, "not_yet_valid"},
		{ErrReplay, "replay"},
		{ErrRollback, "rollback"},
		{ErrBelowMinVersion, "below_min_version"},
		{ErrWrongPurpose, "wrong_purpose"},
	} {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	return "other"
}
