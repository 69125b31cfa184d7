package ingest

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// storeMetrics are the store's Prometheus metrics. Values that Stats
// also reports live in atomics read by CounterFuncs and GaugeFuncs, so
// scraping never waits for a write transaction.
type storeMetrics struct {
	deadLetters *prometheus.CounterVec
	deadTotal   atomic.Int64
	stored      atomic.Int64
	duplicates  atomic.Int64
	dupMessages atomic.Int64
	deadEvicted atomic.Int64
	obEvicted   atomic.Int64
	retAge      atomic.Int64
	retSize     atomic.Int64
	obBytes     atomic.Int64
	obBatches   atomic.Int64
	obReadings  atomic.Int64
	usedBytes   atomic.Int64
	pressure    atomic.Value // string: "" none, "store", "outbox"
}

func newStoreMetrics(reg *prometheus.Registry, s *Store) (*storeMetrics, error) {
	m := &storeMetrics{
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_ingest_dead_letters_total",
			Help: "Messages refused and stored as dead letters, by reason.",
		}, []string{"reason"}),
	}
	m.pressure.Store("")
	for _, r := range reasons {
		m.deadLetters.WithLabelValues(string(r))
	}
	m.sync(s)
	if reg == nil {
		return m, nil
	}
	cf := func(name, help string, v *atomic.Int64, labels prometheus.Labels) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(v.Load()) })
	}
	gf := func(name, help string, v *atomic.Int64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help},
			func() float64 { return float64(v.Load()) })
	}
	cs := []prometheus.Collector{
		m.deadLetters,
		cf("edgefleet_ingest_readings_stored_total", "Readings committed to the time series (duplicates excluded).", &m.stored, nil),
		cf("edgefleet_ingest_readings_duplicate_total", "Readings ignored because the same device, metric and time was already stored.", &m.duplicates, nil),
		cf("edgefleet_ingest_messages_duplicate_total", "Redelivered messages with receive-time readings recognized by their hash and skipped.", &m.dupMessages, nil),
		cf("edgefleet_ingest_dead_letters_evicted_total", "Dead letters deleted by the count or age bound.", &m.deadEvicted, nil),
		cf("edgefleet_ingest_outbox_evicted_readings_total", "Raw readings replaced by per-minute rollups in a full outbox.", &m.obEvicted, nil),
		cf("edgefleet_ingest_retention_deleted_readings_total", "Raw readings deleted by retention (their rollups stay).", &m.retAge, prometheus.Labels{"cause": "age"}),
		cf("edgefleet_ingest_retention_deleted_readings_total", "Raw readings deleted by retention (their rollups stay).", &m.retSize, prometheus.Labels{"cause": "size"}),
		gf("edgefleet_ingest_outbox_pending_bytes", "Payload bytes of outbox batches not yet acknowledged by the uplink.", &m.obBytes),
		gf("edgefleet_ingest_outbox_pending_batches", "Outbox batches not yet acknowledged by the uplink.", &m.obBatches),
		gf("edgefleet_ingest_outbox_pending_readings", "Readings in outbox batches not yet acknowledged by the uplink.", &m.obReadings),
		gf("edgefleet_ingest_db_used_bytes", "Used size of the ingestion database at the last check.", &m.usedBytes),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// sync copies the store's counters into the atomics. The caller holds
// s.wmu (or is the constructor).
func (m *storeMetrics) sync(s *Store) {
	m.deadTotal.Store(s.ctr[metaDeadLetters])
	m.stored.Store(s.ctr[metaStoredReadings])
	m.duplicates.Store(s.ctr[metaDuplicates])
	m.dupMessages.Store(s.ctr[metaDupMessages])
	m.deadEvicted.Store(s.ctr[metaDeadEvicted])
	m.obEvicted.Store(s.ctr[metaOutboxEvicted])
	m.retAge.Store(s.ctr[metaRetainedAge])
	m.retSize.Store(s.ctr[metaRetainedSize])
	m.obBytes.Store(s.obBytes)
	m.obBatches.Store(s.obBatches)
	m.obReadings.Store(s.obReadings)
	m.usedBytes.Store(s.usedBytesMem)
}

func (m *storeMetrics) commit(s *Store, deadByReason map[Reason]int) {
	for r, n := range deadByReason {
		m.deadLetters.WithLabelValues(string(r)).Add(float64(n))
	}
	m.sync(s)
}

// ingestMetrics are the ingestor's own metrics.
type ingestMetrics struct {
	received    atomic.Int64
	acked       atomic.Int64
	pending     atomic.Int64
	commits     atomic.Int64
	commitErrs  atomic.Int64
	connected   atomic.Int64
	published   atomic.Int64
	copies      atomic.Int64
	diskFree    atomic.Int64 // bytes free on the store's file system at the last check
	pressureVec *prometheus.GaugeVec
	commitSecs  prometheus.Histogram
	batchSize   prometheus.Histogram
}

// backpressure reasons: the gauge edgefleet_ingest_backpressure{reason}.
const (
	pressureStore  = "store"     // database above its high-water mark
	pressureOutbox = "outbox"    // outbox full and nothing evictable
	pressureQueue  = "queue"     // in-memory queue of received messages full
	pressureError  = "error"     // commits failing (disk I/O error, locked, read-only), retrying
	pressureDisk   = "disk_full" // file system under Config.MinFreeBytes free, or commits failing because it is full
)

var pressureReasons = []string{pressureStore, pressureOutbox, pressureQueue, pressureError, pressureDisk}

func newIngestMetrics(reg *prometheus.Registry) (*ingestMetrics, error) {
	m := &ingestMetrics{
		pressureVec: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "edgefleet_ingest_backpressure",
			Help: "1 while ingestion holds back acknowledgements (and reading from the broker), by reason: store, outbox, queue, error, disk_full.",
		}, []string{"reason"}),
		commitSecs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "edgefleet_ingest_commit_seconds",
			Help:    "Duration of group commits (one transaction, synced to disk).",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5},
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "edgefleet_ingest_commit_messages",
			Help:    "Messages per group commit.",
			Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000},
		}),
	}
	for _, r := range pressureReasons {
		m.pressureVec.WithLabelValues(r).Set(0)
	}
	if reg == nil {
		return m, nil
	}
	cf := func(name, help string, v *atomic.Int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(v.Load()) })
	}
	gf := func(name, help string, v *atomic.Int64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help},
			func() float64 { return float64(v.Load()) })
	}
	cs := []prometheus.Collector{
		m.pressureVec, m.commitSecs, m.batchSize,
		cf("edgefleet_ingest_messages_received_total", "MQTT messages received.", &m.received),
		cf("edgefleet_ingest_messages_acked_total", "Messages acknowledged after their commit.", &m.acked),
		cf("edgefleet_ingest_commits_total", "Group commits.", &m.commits),
		cf("edgefleet_ingest_commit_errors_total", "Group commits that failed and were retried.", &m.commitErrs),
		cf("edgefleet_ingest_published_total", "Messages published by the agent (device commands), acknowledged by the broker.", &m.published),
		cf("edgefleet_ingest_messages_inflight_copies_total", "Embedded broker: QoS 1 publishes dropped as copies of one still in flight on the same connection (same packet id, not yet acknowledged).", &m.copies),
		gf("edgefleet_ingest_pending_messages", "Messages received and not yet acknowledged.", &m.pending),
		gf("edgefleet_ingest_mqtt_connected", "1 while connected to the MQTT broker.", &m.connected),
		gf("edgefleet_ingest_disk_free_bytes", "Bytes free (to unprivileged users) on the ingestion database's file system at the last check.", &m.diskFree),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
