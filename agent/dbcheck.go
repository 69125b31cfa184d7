package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/edgefleet/edgefleet/internal/sqlitecheck"
	"github.com/prometheus/client_golang/prometheus"
)

// dbCheckTimeout bounds PRAGMA quick_check of each database at start.
// quick_check reads the whole file once: an 86 MiB database took 0.9 s
// on the development machine (file in the page cache); an SD card reading
// 20 MB/s needs about 40 s for the ingestion database's default
// high-water mark of 768 MiB. A check cut short by the bound (or by the
// end of Start's context) leaves the file in use unjudged, logged and
// counted as result="timeout": corruption met later in use is caught
// then.
const dbCheckTimeout = 60 * time.Second

// Incident statuses (cpapi.DBIncident.Status).
const (
	incidentRebuilding = "rebuilding"
	incidentRebuilt    = "rebuilt"
	incidentSalvaged   = "salvaged"
)

// dbMetrics count database checks, quarantines and salvages.
type dbMetrics struct {
	checks      *prometheus.CounterVec
	quarantined *prometheus.CounterVec
	salvaged    *prometheus.CounterVec
	lost        *prometheus.CounterVec
}

func newDBMetrics(reg prometheus.Registerer) (*dbMetrics, error) {
	m := &dbMetrics{
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_db_checks_total",
			Help: "Database quick_checks at start, by database (state, ingest) and result (ok, corrupt, timeout).",
		}, []string{"db", "result"}),
		quarantined: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_db_quarantined_total",
			Help: "Databases found corrupt and quarantined (renamed, kept), by database (state, ingest).",
		}, []string{"db"}),
		salvaged: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_db_salvaged_rows_total",
			Help: "Rows copied from a quarantined ingestion database into its replacement, by table.",
		}, []string{"table"}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_db_lost_rows_total",
			Help: "Rows of a quarantined ingestion database that could not be read, by table (readings: from its counters; others: estimated from key gaps).",
		}, []string{"table"}),
	}
	for _, c := range []prometheus.Collector{m.checks, m.quarantined, m.salvaged, m.lost} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// dbIncidents are the databases quarantined since the agent started.
type dbIncidents struct {
	mu   sync.Mutex
	list []cpapi.DBIncident
	// rebuilding is the index in list of the state database being rebuilt
	// from peers (-1 or unset: none), roundsAt the anti-entropy rounds
	// counted when it was replaced.
	rebuilding int
	roundsAt   uint64
	// damaged, when set, is why the agent stopped serving: a database
	// damaged in use. failed carries it to Run.
	damaged string
	failed  chan error
}

// Incidents lists the databases found corrupt and quarantined since the
// agent started (nil when none).
func (a *Agent) Incidents() []cpapi.DBIncident {
	a.Readiness() // settles a finished rebuild
	a.dbs.mu.Lock()
	defer a.dbs.mu.Unlock()
	return append([]cpapi.DBIncident(nil), a.dbs.list...)
}

// Readiness is the agent's account of the data it serves.
type Readiness struct {
	// NotReady, when set, says why the agent should not be served from
	// (/readyz answers 503 with it): its state database was corrupt and
	// the replicated state is being rebuilt from peers.
	NotReady string
	// Degraded, when set, says what the agent lost while serving again
	// (/readyz answers 200 and carries it): quarantined databases.
	Degraded string
}

// Readiness reports whether the agent's databases serve good data. After
// the state database was quarantined, the agent is not ready until an
// anti-entropy exchange with a peer has completed since and no live peer
// reports holding ops it lacks (an agent with no join seeds and no other
// member known has nobody to rebuild from: it is ready at once, degraded).
func (a *Agent) Readiness() Readiness {
	a.dbs.mu.Lock()
	defer a.dbs.mu.Unlock()
	var r Readiness
	if a.dbs.damaged != "" {
		r.NotReady = a.dbs.damaged
		return r
	}
	if i := a.dbs.rebuilding; i > 0 {
		inc := &a.dbs.list[i-1]
		if !a.stateRebuilt(a.dbs.roundsAt) {
			r.NotReady = fmt.Sprintf("state database %s was corrupt (quarantined as %s): rebuilding the replicated state from peers",
				inc.File, filepath.Base(inc.QuarantinedAs))
			return r
		}
		inc.Status = incidentRebuilt
		a.dbs.rebuilding = 0
		a.log.Warn("replicated state rebuilt from peers after the state database was quarantined",
			"quarantined_as", inc.QuarantinedAs)
	}
	var notes []string
	for _, inc := range a.dbs.list {
		n := fmt.Sprintf("%s database quarantined as %s (%s)", inc.DB, filepath.Base(inc.QuarantinedAs), inc.Status)
		if inc.DB == "ingest" {
			lost := "unknown"
			if inc.LostReadings >= 0 {
				lost = fmt.Sprint(inc.LostReadings)
			}
			n += fmt.Sprintf(": %d readings salvaged, %s lost", inc.SalvagedReadings, lost)
		}
		notes = append(notes, n)
	}
	r.Degraded = strings.Join(notes, "; ")
	return r
}

// stateRebuilt reports whether the replicated state has come back from
// peers since roundsAt anti-entropy rounds.
func (a *Agent) stateRebuilt(roundsAt uint64) bool {
	if !a.running.Load() {
		return false
	}
	others := 0
	for _, m := range a.Members() {
		if m.Name != a.Name() && m.State == StateAlive {
			others++
		}
	}
	if others == 0 && len(a.cfg.Gossip.Join) == 0 {
		return true
	}
	return a.m.repl.SyncRounds.Load() > roundsAt && a.syncLag() == 0
}

// checkDB runs quick_check on the database at path (db names it in logs
// and metrics) and quarantines it when it is corrupt; the incident is nil
// when the file is kept.
func (a *Agent) checkDB(ctx context.Context, db, path string) (*cpapi.DBIncident, error) {
	if marker, err := os.ReadFile(path + damagedSuffix); err == nil {
		inc, err := a.quarantine(db, path, errors.New(strings.TrimSpace(string(marker))))
		if err != nil {
			return nil, err
		}
		if err := os.Remove(path + damagedSuffix); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		return inc, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("agent: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, dbCheckTimeout)
	start := time.Now()
	err := sqlitecheck.Check(cctx, path)
	cancel()
	switch {
	case err == nil:
		a.dbm.checks.WithLabelValues(db, "ok").Inc()
		a.log.Debug("database checked", "db", db, "file", path, "took", time.Since(start))
		return nil, nil
	case errors.Is(err, sqlitecheck.ErrTimeout):
		a.dbm.checks.WithLabelValues(db, "timeout").Inc()
		a.log.Warn("database check did not finish in time: using the file unchecked", "db", db, "file", path,
			"took", time.Since(start), "err", err)
		return nil, nil
	case sqlitecheck.IsCorrupt(err):
		a.dbm.checks.WithLabelValues(db, "corrupt").Inc()
		return a.quarantine(db, path, err)
	default:
		return nil, fmt.Errorf("agent: checking the %s database: %w", db, err)
	}
}

// quarantine renames the corrupt database at path (with its -wal and
// -shm files) and returns the incident; the caller records it.
func (a *Agent) quarantine(db, path string, cause error) (*cpapi.DBIncident, error) {
	now := a.clk.Now()
	q, err := sqlitecheck.Quarantine(path, now)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.dbm.quarantined.WithLabelValues(db).Inc()
	a.log.Error("database corrupt: quarantined, a new one replaces it", "db", db, "file", path,
		"quarantined_as", q.Path, "files", q.Files, "err", cause)
	return &cpapi.DBIncident{DB: db, File: path, QuarantinedAs: q.Path, At: now.UTC(), Reason: cause.Error()}, nil
}

// maxIncidentText bounds an incident's texts in heartbeats (the control
// plane refuses longer ones, and control characters).
const (
	maxIncidentText       = 255
	maxHeartbeatIncidents = 16
)

// heartbeatText makes s fit an incident field of a heartbeat: control
// characters (quick_check reports span lines) become spaces, and a long
// text keeps its start.
func heartbeatText(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxIncidentText {
		s = strings.ToValidUTF8(s[:maxIncidentText-3], "") + "..."
	}
	return s
}

// heartbeatIncidents are the incidents as a heartbeat carries them.
// The latest maxHeartbeatIncidents are sent (the control plane's limit).
func heartbeatIncidents(list []cpapi.DBIncident) []cpapi.DBIncident {
	if len(list) > maxHeartbeatIncidents {
		list = list[len(list)-maxHeartbeatIncidents:]
	}
	for i := range list {
		inc := &list[i]
		inc.File, inc.QuarantinedAs, inc.Reason = heartbeatText(inc.File), heartbeatText(inc.QuarantinedAs), heartbeatText(inc.Reason)
	}
	return list
}

// record adds an incident; a state incident starts a rebuild.
func (a *Agent) record(inc *cpapi.DBIncident) {
	a.dbs.mu.Lock()
	defer a.dbs.mu.Unlock()
	a.dbs.list = append(a.dbs.list, *inc)
	if inc.Status == incidentRebuilding {
		a.dbs.rebuilding = len(a.dbs.list)
		a.dbs.roundsAt = a.m.repl.SyncRounds.Load()
	}
}

// replacingRegisterer registers a store's metrics again after a failed
// open left the first ones registered.
type replacingRegisterer struct{ prometheus.Registerer }

func (r replacingRegisterer) Register(c prometheus.Collector) error {
	err := r.Registerer.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		r.Unregister(are.ExistingCollector)
		return r.Registerer.Register(c)
	}
	return err
}

// corruptOpen reports whether a store's open failed on a damaged file.
func corruptOpen(err error) bool {
	return sqlitecheck.IsCorrupt(err) || errors.Is(err, crdt.ErrCorrupt)
}

// openState checks the state database, quarantines it when corrupt (at
// the check, or when opening it fails on damage) and opens it, or a new
// empty one in its place, whose replicated state anti-entropy brings
// back from peers.
func (a *Agent) openState(ctx context.Context, name string) (*crdt.Store, error) {
	path := filepath.Join(a.cfg.DataDir, stateDBFile)
	inc, err := a.checkDB(ctx, "state", path)
	if err != nil {
		return nil, err
	}
	opts := crdt.Options{
		ReplicaID:    name,
		Wall:         a.clk.Now,
		MaxDrift:     a.cfg.State.MaxClockDrift,
		Logger:       a.log,
		TombstoneTTL: a.cfg.State.TombstoneTTL,
		Registerer:   replacingRegisterer{a.reg},
		// While the wall clock is wrong, drift is judged against the
		// clocks peers report in sync messages.
		Fleet:   func() []time.Time { return a.peers.Load().FleetClocks() },
		MinWall: minPlausibleWall,
	}
	store, err := crdt.Open(path, opts)
	if err != nil && inc == nil && corruptOpen(err) {
		if inc, err = a.quarantine("state", path, err); err != nil {
			return nil, err
		}
		store, err = crdt.Open(path, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("agent: opening state: %w", err)
	}
	if inc != nil {
		inc.Status = incidentRebuilding
		a.record(inc)
	}
	return store, nil
}

// openIngest checks the ingestion database, and when it is corrupt (at
// the check, or when opening it fails on damage) quarantines it and
// salvages what still reads of it into a new one before opening that.
// Ingestion has not started: messages not yet committed stay
// unacknowledged in the broker.
func (a *Agent) openIngest(ctx context.Context, sc ingest.StoreConfig) (*ingest.Store, error) {
	inc, err := a.checkDB(ctx, "ingest", sc.Path)
	if err != nil {
		return nil, err
	}
	if inc == nil {
		store, err := ingest.OpenStore(sc)
		if err == nil || !corruptOpen(err) {
			return store, err
		}
		if inc, err = a.quarantine("ingest", sc.Path, err); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	rep, serr := ingest.Salvage(ctx, sc, inc.QuarantinedAs)
	inc.Status = incidentSalvaged
	inc.SalvagedReadings, inc.LostReadings = rep.Readings, rep.ReadingsLost
	inc.SalvagedOutbox, inc.LostOutbox = rep.OutboxBatches, rep.OutboxLost
	for table, c := range rep.Tables {
		a.dbm.salvaged.WithLabelValues(table).Add(float64(c.Copied))
		a.dbm.lost.WithLabelValues(table).Add(float64(c.LostEstimate))
	}
	if rep.ReadingsLost > 0 {
		a.dbm.lost.WithLabelValues("readings").Add(float64(rep.ReadingsLost))
	}
	if serr != nil {
		inc.Reason += "; salvage stopped early: " + serr.Error()
		a.log.Error("salvage of the quarantined ingestion database stopped early: going on with what it copied",
			"quarantined_as", inc.QuarantinedAs, "err", serr)
	}
	a.log.Error("ingestion database salvaged", "file", sc.Path, "quarantined_as", inc.QuarantinedAs,
		"readings_salvaged", rep.Readings, "readings_lost", rep.ReadingsLost,
		"outbox_salvaged", rep.OutboxBatches, "outbox_lost", rep.OutboxLost, "took", time.Since(start))
	a.record(inc)
	store, err := ingest.OpenStore(sc)
	if err != nil {
		return nil, fmt.Errorf("agent: opening the salvaged ingestion database: %w", err)
	}
	return store, nil
}

// dbWatchInterval is how often the agent asks its stores whether they
// met a damaged page in use.
const dbWatchInterval = time.Second

// damagedSuffix names the marker a database damaged in use leaves beside
// it (path + damagedSuffix, holding the error): the next start
// quarantines that database whatever quick_check says.
const damagedSuffix = ".damaged"

// Failed delivers the error that made the agent give up serving: a
// database found damaged in use. Run then stops the agent and returns
// it, so the process exits with an error and its service manager
// restarts it (deploy/edge-agent.service: Restart=on-failure); the next
// start quarantines the database and rebuilds (state) or salvages
// (ingestion) it, through the same path as corruption found by the
// start-up check. Replacing a store under the running agent would mean
// rewiring replication, ingestion, the uplink and their metrics; a
// restart does it with the code every start runs.
func (a *Agent) Failed() <-chan error { return a.failedCh() }

func (a *Agent) failedCh() chan error {
	a.dbs.mu.Lock()
	defer a.dbs.mu.Unlock()
	if a.dbs.failed == nil {
		a.dbs.failed = make(chan error, 1)
	}
	return a.dbs.failed
}

// watchDBs runs until ctx ends, checking the stores for damage met in use.
func (a *Agent) watchDBs(ctx context.Context) {
	t := a.clk.NewTicker(dbWatchInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		a.mu.Lock()
		state, in := a.store, a.ingestStore
		a.mu.Unlock()
		if state != nil {
			if err := state.Damaged(); err != nil {
				a.dbDamaged("state", filepath.Join(a.cfg.DataDir, stateDBFile), err)
				return
			}
		}
		if in != nil {
			if err := in.Damaged(); err != nil {
				a.dbDamaged("ingest", filepath.Join(a.cfg.DataDir, ingest.StoreFile), err)
				return
			}
		}
	}
}

// dbDamaged leaves the marker that has the next start quarantine the
// database, makes the agent not ready, and signals Failed.
func (a *Agent) dbDamaged(db, path string, cause error) {
	reason := fmt.Sprintf("%s database %s damaged in use: %v", db, path, cause)
	if err := writeMarker(path+damagedSuffix, reason); err != nil {
		a.log.Error("recording the damaged database for the next start", "db", db, "file", path, "err", err)
	}
	a.log.Error("database damaged in use: the agent stops serving; its next start quarantines it", "db", db,
		"file", path, "err", cause)
	ch := a.failedCh()
	a.dbs.mu.Lock()
	a.dbs.damaged = reason + ": stopping, to quarantine it at the next start"
	a.dbs.mu.Unlock()
	select {
	case ch <- fmt.Errorf("agent: %s", reason):
	default:
	}
}

// writeMarker writes text to path durably.
func writeMarker(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text + "\n"); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
