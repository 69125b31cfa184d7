package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/sqlitecheck"
	"github.com/edgefleet/edgefleet/internal/testutil"
)

// quarantinedFiles lists the databases named <base>.corrupt-* in dir
// (not their -wal and -shm files).
func quarantinedFiles(t *testing.T, dir, base string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, base+".corrupt-*"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range m {
		if !strings.HasSuffix(f, "-wal") && !strings.HasSuffix(f, "-shm") {
			out = append(out, f)
		}
	}
	return out
}

// fleetWithState starts three agents and writes 200 keys of 300 bytes
// from each, so each state.db is large enough that its middle is a data
// page; it returns once all three hold the same state. The keys a2
// wrote come back to a new empty store of a2 only through the state
// transfer for a fresh store under a known replica id (anti-entropy
// alone is refused them: "claims ops 1..n of this replica, which has
// only issued 0").
func fleetWithState(t *testing.T) (*cluster, []*Agent) {
	t.Helper()
	c := newCluster(t)
	agents := c.startN(3)
	waitFor(t, 10*time.Second, "membership", func() (bool, string) { return allAlive(agents) })
	value := []byte(strings.Repeat("v", 300))
	for i, a := range agents {
		for k := 0; k < 200; k++ {
			if err := a.Put(context.Background(), "kv", fmt.Sprintf("a%d-%03d", i, k), value); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, 20*time.Second, "convergence", func() (bool, string) { return sameState(agents) })
	return c, agents
}

// TestCorruptStateDBQuarantinedAndRebuilt: 4 KiB in the middle of a
// stopped agent's state.db overwritten; on restart it finds it, keeps
// the file under a quarantine name, says it is not ready (with the
// reason) while it has nobody to rebuild from, and once it reaches a peer
// holds the fleet's state (same state hash) again, ready but degraded,
// and reports the incident in its heartbeat.
func TestCorruptStateDBQuarantinedAndRebuilt(t *testing.T) {
	t.Parallel()
	c, agents := fleetWithState(t)
	ctx := context.Background()
	want, err := agents[0].Store().StateHash(ctx)
	if err != nil {
		t.Fatal(err)
	}

	if err := agents[2].Kill(); err != nil {
		t.Fatal(err)
	}
	dir := c.dirs["a2"]
	path := filepath.Join(dir, stateDBFile)
	testutil.CorruptMiddle(t, path)
	if err := sqlitecheck.Check(ctx, path); !sqlitecheck.IsCorrupt(err) {
		t.Fatalf("the overwritten state.db passes quick_check: %v", err)
	}

	// Restarted with a seed nobody answers: nothing to rebuild from yet.
	a2 := c.start("a2", []string{"127.0.0.1:1"}, nil)
	if q := quarantinedFiles(t, dir, stateDBFile); len(q) != 1 {
		t.Fatalf("quarantined files %v, want state.db.corrupt-<time>", q)
	}
	if got := metricSum(t, a2.Registry(), "edgefleet_db_quarantined_total", "state"); got != 1 {
		t.Errorf("edgefleet_db_quarantined_total{db=state} = %v", got)
	}
	if err := sqlitecheck.Check(ctx, path); err != nil {
		t.Fatalf("the new state.db: %v", err)
	}
	api := apiClient{t: t, base: "http://" + a2.APIAddr()}
	if obj := api.expect("GET", "/readyz", "", 503); !strings.Contains(fmt.Sprint(obj["error"]), "rebuilding") {
		t.Fatalf("readyz while rebuilding: %v", obj)
	}
	if h := a2.health(); h.Status != healthDegraded || len(h.Incidents) != 1 || h.Incidents[0].DB != "state" ||
		h.Incidents[0].Status != incidentRebuilding || h.Incidents[0].QuarantinedAs == "" {
		t.Fatalf("heartbeat health while rebuilding: %+v", h)
	}

	start := time.Now()
	if _, err := a2.cluster.Memberlist().Join([]string{agents[0].GossipAddr()}); err != nil {
		t.Fatal(err)
	}
	now := []*Agent{agents[0], agents[1], a2}
	waitFor(t, 30*time.Second, "the quarantined agent holds the fleet's state", func() (bool, string) { return sameState(now) })
	got, _ := a2.Store().StateHash(ctx)
	if got != want {
		t.Fatalf("state hash %s, fleet's %s", got, want)
	}
	t.Logf("state rebuilt from peers in %v", time.Since(start))
	if _, ok, err := a2.Store().Get(ctx, "kv", "a2-199"); err != nil || !ok {
		t.Fatalf("a2's own last write before the damage is not back: %v %v", ok, err)
	}
	// Its new writes reach the fleet (no sequence number reused).
	if err := a2.Put(ctx, "kv", "after-rebuild", []byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a2's new write everywhere", func() (bool, string) {
		_, ok, err := agents[0].Store().Get(ctx, "kv", "after-rebuild")
		return ok && err == nil, fmt.Sprint(err)
	})
	waitFor(t, 10*time.Second, "ready again", func() (bool, string) {
		r := a2.Readiness()
		return r.NotReady == "" && r.Degraded != "", fmt.Sprintf("%+v", r)
	})
	if obj := api.expect("GET", "/readyz", "", 200); !strings.Contains(fmt.Sprint(obj["degraded"]), "state database quarantined") {
		t.Fatalf("readyz after the rebuild: %v", obj)
	}
	if inc := a2.Incidents(); len(inc) != 1 || inc[0].Status != incidentRebuilt {
		t.Fatalf("incidents after the rebuild: %+v", inc)
	}
	// The quarantined file is kept as it was.
	q := quarantinedFiles(t, dir, stateDBFile)
	if fi, err := os.Stat(q[0]); err != nil || fi.Size() < 16<<10 {
		t.Fatalf("quarantined file: %v %v", fi, err)
	}
}

// ingestReadings publishes 600 messages of 20 metrics (12,000 readings,
// an ingest.db of a few hundred KiB) to edge and waits until they are
// stored; msg(i) is the i-th message.
func ingestReadings(t *testing.T, edge *Agent) (msg func(i int) string) {
	t.Helper()
	dev := mqttClient(t, edge.MQTTURL(), "sensor-1")
	base := time.Now().Add(-time.Hour).Unix()
	var metrics []string
	for m := 0; m < 20; m++ {
		metrics = append(metrics, fmt.Sprintf(`"m%02d":%d.5`, m, m))
	}
	msg = func(i int) string { return fmt.Sprintf(`{"ts":%d,%s}`, base+int64(i), strings.Join(metrics, ",")) }
	for i := 0; i < 600; i++ {
		publish(t, dev, "devices/sensor-1/telemetry", msg(i))
	}
	waitFor(t, 20*time.Second, "readings stored", func() (bool, string) {
		st, err := edge.ingestStore.Stats(context.Background())
		return err == nil && st.Readings == 600*20, fmt.Sprintf("%+v %v", st, err)
	})
	return msg
}

// TestCorruptIngestDBSalvaged: a 4 KiB page in the middle of a stopped
// agent's ingest.db readings overwritten; on restart it finds it, quarantines it, copies
// the readings and outbox rows that still read into a new database,
// counts the lost ones, reports it (readyz degraded, heartbeat, metrics)
// and goes on ingesting.
func TestCorruptIngestDBSalvaged(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	agents := c.startN(2)
	edge := c.start("a2", []string{agents[0].GossipAddr()}, withIngest)
	ingestReadings(t, edge)
	ctx := context.Background()
	held := int64(600 * 20)
	if err := edge.Kill(); err != nil {
		t.Fatal(err)
	}
	dir := c.dirs["a2"]
	path := filepath.Join(dir, "ingest.db")
	testutil.CorruptTablePage(t, path, "readings")
	if err := sqlitecheck.Check(ctx, path); !sqlitecheck.IsCorrupt(err) {
		t.Fatalf("the overwritten ingest.db passes quick_check: %v", err)
	}

	edge = c.start("a2", []string{agents[0].GossipAddr()}, withIngest)
	if q := quarantinedFiles(t, dir, "ingest.db"); len(q) != 1 {
		t.Fatalf("quarantined files %v, want ingest.db.corrupt-<time>", q)
	}
	if err := sqlitecheck.Check(ctx, path); err != nil {
		t.Fatalf("the new ingest.db: %v", err)
	}
	inc := edge.Incidents()
	if len(inc) != 1 || inc[0].DB != "ingest" || inc[0].Status != incidentSalvaged {
		t.Fatalf("incidents: %+v", inc)
	}
	t.Logf("incident: %+v", inc[0])
	st, err := edge.ingestStore.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Readings == 0 || st.Readings != inc[0].SalvagedReadings || inc[0].LostReadings <= 0 || inc[0].SalvagedReadings+inc[0].LostReadings != held {
		t.Fatalf("store holds %d readings; incident salvaged %d, lost %d, of %d", st.Readings, inc[0].SalvagedReadings, inc[0].LostReadings, held)
	}
	if got := metricSum(t, edge.Registry(), "edgefleet_db_quarantined_total", "ingest"); got != 1 {
		t.Errorf("edgefleet_db_quarantined_total{db=ingest} = %v", got)
	}
	if got := metricSum(t, edge.Registry(), "edgefleet_db_salvaged_rows_total", "readings"); got != float64(st.Readings) {
		t.Errorf("edgefleet_db_salvaged_rows_total{table=readings} = %v, want %d", got, st.Readings)
	}
	api := apiClient{t: t, base: "http://" + edge.APIAddr()}
	if obj := api.expect("GET", "/readyz", "", 200); !strings.Contains(fmt.Sprint(obj["degraded"]), "ingest database quarantined") {
		t.Fatalf("readyz: %v", obj)
	}
	if h := edge.health(); h.Status != healthDegraded || len(h.Incidents) != 1 {
		t.Fatalf("heartbeat health: %+v", h)
	}
	// Ingestion goes on into the new database.
	dev := mqttClient(t, edge.MQTTURL(), "sensor-1b")
	publish(t, dev, "devices/sensor-1/telemetry", `{"after":1}`)
	waitFor(t, 10*time.Second, "a reading after the salvage", func() (bool, string) {
		now, err := edge.ingestStore.Stats(ctx)
		return err == nil && now.Readings == st.Readings+1, fmt.Sprintf("%+v %v", now, err)
	})
}

// TestStateDBDamagedInUse: a page of a running agent's state.db (of its
// lww table) overwritten; the read that meets it makes the store report damage, the
// agent stops serving (Failed, readyz 503) and leaves a marker; its next
// start quarantines the file (quick_check or not) and holds the fleet's
// state again.
func TestStateDBDamagedInUse(t *testing.T) {
	t.Parallel()
	c, agents := fleetWithState(t)
	ctx := context.Background()
	// Restart a2, alone (a seed nobody answers), so its whole state sits
	// in the database file, read by nothing yet.
	if err := agents[2].Kill(); err != nil {
		t.Fatal(err)
	}
	a2 := c.start("a2", []string{"127.0.0.1:1"}, nil)
	path := filepath.Join(c.dirs["a2"], stateDBFile)
	testutil.CorruptTablePage(t, path, "lww") // a table StateHash reads
	if _, err := a2.Store().StateHash(ctx); err == nil {
		t.Fatal("reading the whole state over a damaged page succeeded")
	}
	select {
	case err := <-a2.Failed():
		if !strings.Contains(err.Error(), "state database") {
			t.Fatalf("failed with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not give up on its damaged state database")
	}
	api := apiClient{t: t, base: "http://" + a2.APIAddr()}
	if obj := api.expect("GET", "/readyz", "", 503); !strings.Contains(fmt.Sprint(obj["error"]), "damaged in use") {
		t.Fatalf("readyz: %v", obj)
	}
	if _, err := os.Stat(path + damagedSuffix); err != nil {
		t.Fatalf("marker: %v", err)
	}
	if err := a2.Kill(); err != nil {
		t.Fatal(err)
	}

	a2 = c.start("a2", []string{agents[0].GossipAddr()}, nil)
	if q := quarantinedFiles(t, c.dirs["a2"], stateDBFile); len(q) != 1 {
		t.Fatalf("quarantined files %v", q)
	}
	if _, err := os.Stat(path + damagedSuffix); !os.IsNotExist(err) {
		t.Fatalf("marker left after the quarantine: %v", err)
	}
	if inc := a2.Incidents(); len(inc) != 1 || !strings.Contains(inc[0].Reason, "damaged in use") {
		t.Fatalf("incidents: %+v", inc)
	}
	now := []*Agent{agents[0], agents[1], a2}
	waitFor(t, 30*time.Second, "the quarantined agent holds the fleet's state", func() (bool, string) { return sameState(now) })
	waitFor(t, 10*time.Second, "ready again", func() (bool, string) {
		r := a2.Readiness()
		return r.NotReady == "", fmt.Sprintf("%+v", r)
	})
}

// TestIngestDBDamagedInUse: a page of a running agent's ingest.db (of its
// readings) overwritten; the commit that meets it fails (its messages
// are not acknowledged), the agent stops serving and its next start
// quarantines and salvages the database.
func TestIngestDBDamagedInUse(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	edge := c.start("a2", nil, withIngest)
	msg := ingestReadings(t, edge)
	// Restart so the readings sit in the database file, read by nothing.
	if err := edge.Kill(); err != nil {
		t.Fatal(err)
	}
	edge = c.start("a2", nil, withIngest)
	path := filepath.Join(c.dirs["a2"], "ingest.db")
	testutil.CorruptTablePage(t, path, "readings")
	// Messages again at every time: each commit touches every series'
	// pages, the damaged one among them.
	dev := mqttClient(t, edge.MQTTURL(), "sensor-1b")
	// A slow acknowledgement (a loaded machine) does not end the stream:
	// only the test's end does.
	done := make(chan struct{})
	defer close(done)
	go func() {
		for i := 0; i < 600; i += 7 {
			tok := dev.Publish("devices/sensor-1/telemetry", 1, false, msg(i))
			select {
			case <-tok.Done():
			case <-done:
				return
			}
		}
	}()
	select {
	case err := <-edge.Failed():
		if !strings.Contains(err.Error(), "ingest database") {
			t.Fatalf("failed with %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the agent did not give up on its damaged ingestion database")
	}
	if err := edge.Kill(); err != nil {
		t.Fatal(err)
	}
	edge = c.start("a2", nil, withIngest)
	if q := quarantinedFiles(t, c.dirs["a2"], "ingest.db"); len(q) != 1 {
		t.Fatalf("quarantined files %v", q)
	}
	inc := edge.Incidents()
	if len(inc) != 1 || inc[0].Status != incidentSalvaged || !strings.Contains(inc[0].Reason, "damaged in use") ||
		inc[0].SalvagedReadings == 0 || inc[0].LostReadings <= 0 {
		t.Fatalf("incidents: %+v", inc)
	}
	t.Logf("salvaged %d readings, lost %d", inc[0].SalvagedReadings, inc[0].LostReadings)
}
