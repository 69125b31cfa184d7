package uplink

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the uplink's Prometheus metrics.
type metrics struct {
	breaker   prometheus.Gauge
	requests  *prometheus.CounterVec
	seconds   *prometheus.HistogramVec
	batches   prometheus.Counter
	conflicts prometheus.Counter
	readings  prometheus.Counter
	skipped   *prometheus.CounterVec
	enrolled  prometheus.Gauge
	decommiss prometheus.Gauge
}

func newMetrics(reg *prometheus.Registry) (*metrics, error) {
	m := &metrics{
		breaker: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgefleet_uplink_breaker_state",
			Help: "Circuit breaker toward the control plane: 0 closed, 1 half-open, 2 open."}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgefleet_uplink_requests_total",
			Help: "Requests to the control plane by op (enroll, heartbeat, upload, keys) and result (ok, duplicate, failed, rejected, unauthorized, sealed, canceled)."},
			[]string{"op", "result"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "edgefleet_uplink_request_seconds",
			Help:    "Duration of requests to the control plane, by op.",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}},
			[]string{"op"}),
		batches: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgefleet_uplink_batches_uploaded_total",
			Help: "Outbox batches delivered to the control plane and acknowledged (including batches it already had)."}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgefleet_uplink_batch_conflicts_total",
			Help: "Uploads the control plane refused as conflicts: it holds other readings under the batch's identity (agent, epoch, batch_seq). The batch stays in the outbox."}),
		readings: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgefleet_uplink_readings_uploaded_total",
			Help: "Readings the control plane stored from this agent's uploads."}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgefleet_uplink_readings_skipped_total",
			Help: "Outbox readings not uploaded, by reason (text: string or data values; bad_name, bad_value, bad_time: refused by the control plane's rules; too_large)."},
			[]string{"reason"}),
		enrolled: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgefleet_uplink_enrolled",
			Help: "1 when the agent holds a control plane identity."}),
		decommiss: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgefleet_uplink_decommissioned",
			Help: "1 when the control plane refuses the agent's certificate (decommissioned or revoked)."}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.breaker, m.requests, m.seconds, m.batches, m.conflicts, m.readings, m.skipped, m.enrolled, m.decommiss} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("uplink: register metrics: %w", err)
		}
	}
	return m, nil
}
