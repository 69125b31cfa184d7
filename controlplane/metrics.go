package controlplane

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the server's Prometheus collectors, registered on
// Config.Registry.
type metrics struct {
	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	heartbeats    prometheus.Counter
	readings      prometheus.Counter
	batches       *prometheus.CounterVec
	enrollments   *prometheus.CounterVec
	authFailures  *prometheus.CounterVec
	auditAppended prometheus.Counter
	models        *prometheus.CounterVec
	flUpdates     *prometheus.CounterVec
	flEpsilon     *prometheus.GaugeVec
}

func newMetrics(reg *prometheus.Registry) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "controlplane_http_requests_total",
			Help: "HTTP requests by route pattern and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "controlplane_http_request_duration_seconds",
			Help:    "HTTP request handling time by route pattern.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route"}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "controlplane_heartbeats_total",
			Help: "Agent heartbeats recorded.",
		}),
		readings: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "controlplane_telemetry_readings_total",
			Help: "Telemetry readings stored.",
		}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "controlplane_telemetry_batches_total",
			Help: "Telemetry batches received, by result (stored, duplicate, conflict: same identity, other readings, refused).",
		}, []string{"result"}),
		enrollments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "controlplane_enrollments_total",
			Help: "Enrollment attempts by result (ok; retry: a lost answer sent again; refused).",
		}, []string{"result"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "controlplane_auth_failures_total",
			Help: "Refused requests by reason.",
		}, []string{"reason"}),
		auditAppended: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "controlplane_audit_records_total",
			Help: "Audit records appended by this process.",
		}),
		models: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "controlplane_model_files_total",
			Help: "Model files pushed (stored, refused) and delivered to agents (delivered).",
		}, []string{"result"}),
		flUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "controlplane_fl_updates_total",
			Help: "Federated-learning updates received: accepted, accepted_secagg_stage (a secure-aggregation answer other than the masked vector), or refused by reason (not_selected, closed_round, replayed, invalid, late, unsealed, unsigned).",
		}, []string{"result"}),
		flEpsilon: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "controlplane_fl_epsilon",
			Help: "Differential privacy spent by a federated-learning job with DP: ε at the job's δ after its last round.",
		}, []string{"job"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.latency, m.heartbeats, m.readings, m.batches, m.enrollments, m.authFailures, m.auditAppended, m.models, m.flUpdates, m.flEpsilon} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
