package provider

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the providers' Prometheus counters. One Metrics may serve
// several providers (the provider label tells them apart).
type Metrics struct {
	// Requests counts fetches sent to a provider, by provider and op
	// (current, forecast); cache hits are not counted.
	Requests *prometheus.CounterVec
	// Failures counts failed fetches, by provider and reason (Reason*).
	Failures *prometheus.CounterVec
	// Fallbacks counts answers served from the last good data after a
	// failure, by provider and reason.
	Fallbacks *prometheus.CounterVec
}

// NewMetrics returns the counters, registered on reg unless reg is nil.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_carbon_provider_requests_total",
			Help: "Fetches sent to a carbon-intensity provider (cache misses), by provider and op.",
		}, []string{"provider", "op"}),
		Failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_carbon_provider_failures_total",
			Help: "Failed fetches from a carbon-intensity provider, by provider and reason.",
		}, []string{"provider", "reason"}),
		Fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_carbon_provider_fallbacks_total",
			Help: "Answers served from the last good forecast or reading after a provider failed, by provider and reason.",
		}, []string{"provider", "reason"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.Requests, m.Failures, m.Fallbacks} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
