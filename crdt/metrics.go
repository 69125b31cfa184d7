package crdt

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the store's Prometheus metrics, registered on the registerer
// given in Options (or left unregistered without one).
type metrics struct {
	localOps     *prometheus.CounterVec
	localByType  map[Type]prometheus.Counter
	mergedOps    *prometheus.CounterVec
	mergeApplied prometheus.Counter
	mergeDup     prometheus.Counter
	mergeRefused prometheus.Counter
	rejected     *prometheus.CounterVec
	corrupt      prometheus.Counter
	compacted    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		localOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "edgefleet", Subsystem: "crdt", Name: "local_ops_total",
			Help: "Local ops committed, by collection type.",
		}, []string{"type"}),
		mergedOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "edgefleet", Subsystem: "crdt", Name: "merged_ops_total",
			Help: "Remote ops received by Merge, by result (applied, duplicate, refused: the origin's clock is too far ahead).",
		}, []string{"result"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "edgefleet", Subsystem: "crdt", Name: "merge_rejected_total",
			Help: "Merge calls rejected before writing anything, by reason (invalid, conflict).",
		}, []string{"reason"}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "edgefleet", Subsystem: "crdt", Name: "corrupt_rows_total",
			Help: "Database rows found corrupt while reading.",
		}),
		compacted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "edgefleet", Subsystem: "crdt", Name: "compacted_total",
			Help: "Entries removed by compaction, by what (ops, tombstones).",
		}, []string{"what"}),
	}
	m.localByType = map[Type]prometheus.Counter{}
	for _, t := range []Type{TypeLWW, TypeORSet, TypeCounter, TypeMVReg} {
		m.localByType[t] = m.localOps.WithLabelValues(string(t))
	}
	m.mergeApplied = m.mergedOps.WithLabelValues("applied")
	m.mergeDup = m.mergedOps.WithLabelValues("duplicate")
	m.mergeRefused = m.mergedOps.WithLabelValues("refused")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.localOps, m.mergedOps, m.rejected, m.corrupt, m.compacted} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("crdt: register metrics: %w", err)
			}
		}
	}
	return m, nil
}
