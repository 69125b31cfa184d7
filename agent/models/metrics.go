package models

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/agent/ingest"
)

// metrics are the model runtime's Prometheus metrics.
type metrics struct {
	predictions     *prometheus.CounterVec // {model}
	latency         prometheus.Histogram
	info            *prometheus.GaugeVec   // {model, version, digest}
	installFailures *prometheus.CounterVec // {reason}
	storeFailures   prometheus.Counter
	evicted         prometheus.Counter
	reg             *prometheus.Registry
}

// latencyBuckets span 5 µs to 10 ms: a forward pass of a small model
// takes microseconds; the budget of one is 1 ms.
var latencyBuckets = []float64{5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2}

func newMetrics(reg *prometheus.Registry, _ *Manager) (*metrics, error) {
	m := &metrics{
		predictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_inference_predictions_total",
			Help: "Predictions made, by model (on arriving readings and through the local API).",
		}, []string{"model"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "edgefleet_inference_latency_seconds",
			Help:    "Time to predict on one arriving reading: feature extraction over the device's window, normalisation and the forward pass.",
			Buckets: latencyBuckets,
		}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "edgefleet_model_info",
			Help: "1 for each model serving, with its version and digest.",
		}, []string{"model", "version", "digest"}),
		installFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_model_install_failures_total",
			Help: "Model files refused (at install or when loaded at start), by reason; the previous version keeps serving.",
		}, []string{"reason"}),
		storeFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_inference_store_failures_total",
			Help: "Predictions that could not be stored in the predictions database.",
		}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_inference_devices_evicted_total",
			Help: "Devices whose window of recent readings was dropped to stay within the device bound (least recently seen first).",
		}),
		reg: reg,
	}
	for _, r := range reasons {
		m.installFailures.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.predictions, m.latency, m.info, m.installFailures, m.storeFailures, m.evicted} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// RegisterTap registers the count of readings the tap dropped from its
// full queue.
func RegisterTap(reg *prometheus.Registry, tap *ingest.Tap) error {
	if reg == nil {
		return nil
	}
	return reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "edgefleet_inference_dropped_readings_total",
		Help: "Committed readings dropped, oldest first, from the full queue between ingestion and inference (they are stored; only their predictions are lost).",
	}, func() float64 { return float64(tap.Dropped()) }))
}
