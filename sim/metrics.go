package sim

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// counterValue sums the counter (or gauge) samples of family name whose
// labels include every pair of labels (name, value, name, value, ...).
func counterValue(reg *prometheus.Registry, name string, labels ...string) float64 {
	var t float64
	for _, m := range metricSamples(reg, name, labels) {
		switch {
		case m.GetCounter() != nil:
			t += m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			t += m.GetGauge().GetValue()
		}
	}
	return t
}

// gaugeValue returns the value of an unlabelled gauge.
func gaugeValue(reg *prometheus.Registry, name string) (float64, bool) {
	ms := metricSamples(reg, name, nil)
	if len(ms) != 1 || ms[0].GetGauge() == nil {
		return 0, false
	}
	return ms[0].GetGauge().GetValue(), true
}

func metricSamples(reg *prometheus.Registry, name string, labels []string) []*dto.Metric {
	if reg == nil {
		return nil
	}
	fams, err := reg.Gather()
	if err != nil {
		return nil
	}
	var out []*dto.Metric
	for _, fam := range fams {
		if fam.GetName() != name {
			continue
		}
	next:
		for _, m := range fam.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
						break
					}
				}
				if !found {
					continue next
				}
			}
			out = append(out, m)
		}
	}
	return out
}
