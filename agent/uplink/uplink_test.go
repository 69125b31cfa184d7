package uplink

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/testutil"
)

func TestEnrollAndHeartbeatMakeTheAgentOnline(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	a := newAgent(t, clock, cp.config(cp.token()), agentOpts{noStore: true, status: func() cpapi.Heartbeat {
		return cpapi.Heartbeat{Health: &cpapi.Health{Status: "ok", Checks: map[string]string{"ingest": "ok"}},
			Resources: &cpapi.Resources{CPUPercent: 12.5, MemUsedBytes: 1 << 20, MemTotalBytes: 1 << 30}}
	}})
	eventually(t, "first heartbeat", func() bool { return a.up.Status().Heartbeats >= 1 })

	st := a.up.Status()
	if !st.Enabled || !st.Enrolled || st.Decommissioned || st.AgentID == "" || st.Breaker != BreakerClosed || st.LastError != "" {
		t.Fatalf("status after enrollment: %+v", st)
	}
	if !st.LastHeartbeat.Equal(clock.Now()) {
		t.Errorf("LastHeartbeat %s, want the clock's %s", st.LastHeartbeat, clock.Now())
	}
	ag := cp.agentRecord(st.AgentID)
	if ag.State != cpapi.StateOnline {
		t.Errorf("agent state %q, want online", ag.State)
	}
	if ag.Name != "edge-"+filepath.Base(a.dir) || ag.OS != runtime.GOOS || ag.Arch != runtime.GOARCH || ag.Version == "" {
		t.Errorf("registry record name %q os %q arch %q version %q", ag.Name, ag.OS, ag.Arch, ag.Version)
	}
	if ag.Labels["site"] != "test" {
		t.Errorf("labels %v: the token's labels are missing", ag.Labels)
	}
	if ag.Health == nil || ag.Health.Checks["ingest"] != "ok" || ag.Resources == nil || ag.Resources.CPUPercent != 12.5 {
		t.Errorf("heartbeat contents not recorded: health %+v resources %+v", ag.Health, ag.Resources)
	}

	// The identity is on disk: key 0600, certificate, CA, identity.json.
	dir := filepath.Join(a.dir, IdentityDir)
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v", err, fi.Mode())
	}
	var rec identityRecord
	b, err := os.ReadFile(filepath.Join(dir, IdentityFile))
	if err != nil || json.Unmarshal(b, &rec) != nil {
		t.Fatalf("identity.json: %v %s", err, b)
	}
	if rec.AgentID != st.AgentID || rec.Server != cp.srv.URL() || rec.EnrolledAt.IsZero() {
		t.Errorf("identity.json %+v", rec)
	}
	if v := counterValue(t, a.reg, "edgefleet_uplink_enrolled", nil); v != 1 {
		t.Errorf("edgefleet_uplink_enrolled = %v", v)
	}
	if v := counterValue(t, a.reg, "edgefleet_uplink_requests_total", map[string]string{"op": "enroll", "result": "ok"}); v != 1 {
		t.Errorf("enroll requests ok = %v", v)
	}

	// Heartbeats follow the server's interval (10s) on the clock.
	before := a.up.Status().Heartbeats
	settle(t, clock, a.tr, 1)
	clock.Advance(9 * time.Second)
	settle(t, clock, a.tr, 1)
	if n := a.up.Status().Heartbeats; n != before {
		t.Fatalf("heartbeat before the interval: %d -> %d", before, n)
	}
	clock.Advance(time.Second)
	eventually(t, "second heartbeat", func() bool { return a.up.Status().Heartbeats == before+1 })
}

func TestRestartReusesTheStoredIdentity(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	a := newAgent(t, clock, cp.config(cp.token()), agentOpts{noStore: true})
	eventually(t, "first heartbeat", func() bool { return a.up.Status().Heartbeats >= 1 })
	id := a.up.Status().AgentID
	a.up.Stop()

	// No token and no CA file: the stored identity is all it needs.
	cfg := cp.config("")
	cfg.CAFile = ""
	a.start(clock, cfg, nil, nil)
	if st := a.up.Status(); !st.Enrolled || st.AgentID != id {
		t.Fatalf("restarted uplink: %+v, want enrolled as %s", st, id)
	}
	eventually(t, "heartbeat after restart", func() bool { return a.up.Status().Heartbeats >= 1 })
	agents, err := cp.admin.ListAgents(testCtx(t), cpapi.AgentFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(agents) != 1 || agents[0].ID != id {
		t.Fatalf("registry holds %d agents, want only %s", len(agents), id)
	}
	if n := cp.serverCounter("controlplane_enrollments_total", nil); n != 1 {
		t.Errorf("server saw %v enrollments, want 1", n)
	}
}

func TestRecoversIdentityWithoutItsRecord(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	a := newAgent(t, clock, cp.config(cp.token()), agentOpts{noStore: true})
	eventually(t, "enrolled", func() bool { return a.up.Status().Enrolled })
	id := a.up.Status().AgentID
	a.up.Stop()
	// A crash between writing the certificate and identity.json.
	if err := os.Remove(filepath.Join(a.dir, IdentityDir, IdentityFile)); err != nil {
		t.Fatal(err)
	}
	a.start(clock, cp.config(""), nil, nil)
	if st := a.up.Status(); st.AgentID != id {
		t.Fatalf("recovered identity %q, want %q", st.AgentID, id)
	}
	if _, err := os.Stat(filepath.Join(a.dir, IdentityDir, IdentityFile)); err != nil {
		t.Errorf("identity.json not rewritten: %v", err)
	}
}

func TestUsedTokenIsRefusedClearlyAndNotRetried(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	tok := cp.token()
	first := newAgent(t, clock, cp.config(tok), agentOpts{noStore: true})
	eventually(t, "first agent enrolled", func() bool { return first.up.Status().Enrolled })

	second := newAgent(t, clock, cp.config(tok), agentOpts{noStore: true})
	eventually(t, "refusal reported", func() bool { return second.up.Status().LastError != "" })
	st := second.up.Status()
	if st.Enrolled || !strings.Contains(st.LastError, "already used") {
		t.Fatalf("status: %+v", st)
	}
	// Logged right after the error is recorded.
	eventually(t, "refusal logged", func() bool { return strings.Contains(second.logs.String(), "enrollment refused") })
	// Nothing is retried: a used token stays used.
	settle(t, clock, second.tr, 1) // the first agent's heartbeat loop; the second has none waiting
	for range 10 {
		clock.Advance(time.Minute)
		settle(t, clock, second.tr, 1)
	}
	if n := second.tr.requests.Load(); n != 1 {
		t.Errorf("%d enrollment requests, want 1", n)
	}
	if v := counterValue(t, second.reg, "edgefleet_uplink_requests_total", map[string]string{"op": "enroll", "result": "rejected"}); v != 1 {
		t.Errorf("enroll rejected = %v", v)
	}
}

func TestTokenFileIsReadAgainAfterARefusal(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	tok := cp.token()
	first := newAgent(t, clock, cp.config(tok), agentOpts{noStore: true})
	eventually(t, "first agent enrolled", func() bool { return first.up.Status().Enrolled })

	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := cp.config("")
	cfg.EnrollmentTokenFile = tokFile
	second := newAgent(t, clock, cfg, agentOpts{noStore: true})
	eventually(t, "refusal reported", func() bool { return second.up.Status().LastError != "" })

	if err := os.WriteFile(tokFile, []byte(cp.token()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// first's heartbeat loop and second's token-file wait.
	advanceUntil(t, clock, second.tr, 2, 10*time.Second, 5*time.Minute, "enrollment with the new token", func() bool {
		return second.up.Status().Heartbeats >= 1
	})
	if st := second.up.Status(); !st.Enrolled || st.LastError != "" || st.AgentID == first.up.Status().AgentID {
		t.Fatalf("second agent: %+v", st)
	}
}

func TestEnrollmentRetriesWhileTheServerIsUnreachable(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	a := &testAgent{t: t, dir: t.TempDir(), tr: &faultTransport{}, reg: nil, logs: &testutil.SyncBuffer{}, sink: &countingSink{}, keyring: newTestKeyring(t, clock)}
	a.tr.down.Store(true)
	a.reg = newRegistry()
	a.start(clock, cp.config(cp.token()), nil, nil)
	// Three failures open the breaker; it then lets one probe through per
	// cooldown.
	advanceUntil(t, clock, a.tr, 1, time.Second, 10*time.Minute, "breaker open", func() bool {
		return a.up.Status().Breaker == BreakerOpen
	})
	if st := a.up.Status(); st.Enrolled || st.LastError == "" {
		t.Fatalf("status while unreachable: %+v", st)
	}
	a.tr.down.Store(false)
	advanceUntil(t, clock, a.tr, 1, 5*time.Second, 5*time.Minute, "enrolled after the outage", func() bool {
		return a.up.Status().Heartbeats >= 1
	})
	if st := a.up.Status(); st.LastError != "" || st.Breaker != BreakerClosed {
		t.Fatalf("status after the outage: %+v", st)
	}
}

func TestUploadsArriveExactlyOnce(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	a := newAgent(t, clock, cp.config(cp.token()), agentOpts{})
	eventually(t, "enrolled, telemetry key held", func() bool { return a.up.Status().KeyVersions[cpapi.TelemetryKeyName] >= 1 })
	for i := range 10 {
		a.write(clock, "sensor-"+string(rune('a'+i%3)), 25)
		clock.Advance(time.Second)
	}
	a.writeText(clock, "sensor-a")
	id := a.up.Status().AgentID
	eventually(t, "every reading at the control plane", func() bool { return cp.serverPoints(id) == a.written })
	eventually(t, "outbox drained", func() bool { return a.pending() == 0 })

	st := a.up.Status()
	if st.UploadedReadings != int64(a.written) || st.DuplicateBatches != 0 || st.SkippedReadings != 1 || st.LastUpload.IsZero() {
		t.Errorf("status: %+v (written %d)", st, a.written)
	}
	if v := cp.serverCounter("controlplane_telemetry_readings_total", nil); v != float64(a.written) {
		t.Errorf("server stored %v readings, want %d", v, a.written)
	}
	if v := counterValue(t, a.reg, "edgefleet_uplink_readings_skipped_total", map[string]string{"reason": "text"}); v != 1 {
		t.Errorf("skipped text readings = %v", v)
	}
	if v := counterValue(t, a.reg, "edgefleet_uplink_readings_uploaded_total", nil); v != float64(a.written) {
		t.Errorf("edgefleet_uplink_readings_uploaded_total = %v", v)
	}
	// Booleans arrive as 0 and 1.
	res, err := cp.admin.QueryTelemetry(testCtx(t), cpapi.TelemetryQuery{Agent: id, Device: "sensor-a", Metric: "door_open",
		From: clock.Now().Add(-time.Hour), To: clock.Now().Add(time.Hour)})
	if err != nil || len(res.Series) != 1 {
		t.Fatalf("door_open: %v %+v", err, res)
	}
	for _, p := range res.Series[0].Points {
		if p.Value != 0 && p.Value != 1 {
			t.Fatalf("boolean uploaded as %v", p.Value)
		}
	}
}

func TestLostAnswerIsRetriedAndStoredOnce(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	// The 40 messages go into one outbox batch.
	a := newAgent(t, clock, cp.config(cp.token()), agentOpts{batchDelay: 300 * time.Millisecond})
	eventually(t, "enrolled, telemetry key held", func() bool { return a.up.Status().KeyVersions[cpapi.TelemetryKeyName] >= 1 })
	settle(t, clock, a.tr, 2)

	a.tr.dropUpload.Store(a.tr.uploads.Load() + 1) // the server stores the next upload, its answer is lost
	a.write(clock, "pump", 40)
	id := a.up.Status().AgentID
	eventually(t, "first attempt failed", func() bool { return a.tr.dropped.Load() == 1 && a.up.Status().LastError != "" })
	if n := cp.serverPoints(id); n != a.written {
		t.Fatalf("the lost attempt stored %d points, want %d", n, a.written)
	}
	advanceUntil(t, clock, a.tr, 2, time.Second, time.Minute, "retry acknowledged", func() bool {
		return a.up.Status().UploadedBatches >= 1
	})
	st := a.up.Status()
	if st.DuplicateBatches != 1 || st.UploadedReadings != 0 || st.LastError != "" {
		t.Errorf("status after the retry: %+v", st)
	}
	if n := cp.serverPoints(id); n != a.written {
		t.Errorf("server holds %d points, want %d", n, a.written)
	}
	if v := cp.serverCounter("controlplane_telemetry_readings_total", nil); v != float64(a.written) {
		t.Errorf("server stored %v readings, want %d", v, a.written)
	}
	if v := cp.serverCounter("controlplane_telemetry_batches_total", map[string]string{"result": "duplicate"}); v != 1 {
		t.Errorf("server saw %v duplicate batches, want 1", v)
	}
	if a.pending() != 0 {
		t.Errorf("outbox not drained")
	}
}

// memOutbox is an in-memory Outbox.
type memOutbox struct {
	mu       sync.Mutex
	batches  []ingest.OutboxBatch
	leased   map[int64]bool
	acked    []int64
	released int
}

func (m *memOutbox) ClaimOutbox(_ context.Context, max int, lease time.Duration) ([]ingest.OutboxBatch, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ingest.OutboxBatch
	for _, b := range m.batches {
		if len(out) < max && !m.leased[b.Seq] {
			m.leased[b.Seq] = true
			if b.Epoch == "" { // numbered as a store numbers its own batches
				b.Epoch, b.EpochSeq = "mem-outbox", b.Seq
			}
			out = append(out, b)
		}
	}
	return out, nil
}

func (m *memOutbox) AckOutbox(_ context.Context, seqs ...int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, s := range seqs {
		for i, b := range m.batches {
			if b.Seq == s {
				m.batches = append(m.batches[:i], m.batches[i+1:]...)
				m.acked = append(m.acked, s)
				delete(m.leased, s)
				n++
				break
			}
		}
	}
	return n, nil
}

func (m *memOutbox) ReleaseOutbox(_ context.Context, seqs ...int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range seqs {
		delete(m.leased, s)
	}
	m.released += len(seqs)
	return nil
}

func (m *memOutbox) pending() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.batches)
}

func TestLargeBatchAndRollupsArriveOnceAcrossARetry(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	now := clock.Now()
	big := ingest.OutboxBatch{Seq: 7, Kind: ingest.BatchReadings}
	for i := range 12000 {
		big.Readings = append(big.Readings, ingest.Reading{Device: "d1", Metric: "vibration", Time: now.Add(-time.Duration(i) * time.Millisecond), Value: float64(i)})
	}
	roll := ingest.OutboxBatch{Seq: 8, Kind: ingest.BatchRollups, Rollups: []ingest.Rollup{
		{Device: "d1", Metric: "temp", Resolution: time.Minute, Start: now.Truncate(time.Minute).Add(-time.Hour), Count: 4, Sum: 10, Min: 1, Max: 4},
	}}
	ob := &memOutbox{batches: []ingest.OutboxBatch{big, roll}, leased: map[int64]bool{}}
	a := &testAgent{t: t, dir: t.TempDir(), tr: &faultTransport{}, reg: newRegistry(), logs: &testutil.SyncBuffer{}, sink: &countingSink{}, keyring: newTestKeyring(t, clock)}
	a.tr.dropUpload.Store(2) // the second part of the big batch is stored but its answer lost
	a.start(clock, cp.config(cp.token()), ob, nil)
	eventually(t, "enrolled", func() bool { return a.up.Status().Enrolled })
	id := func() string { return a.up.Status().AgentID }
	advanceUntil(t, clock, a.tr, 2, time.Second, 5*time.Minute, "outbox delivered", func() bool { return ob.pending() == 0 })

	if n := cp.serverPoints(id()); n != 12000+4 {
		t.Errorf("server holds %d points, want 12004", n)
	}
	if v := cp.serverCounter("controlplane_telemetry_readings_total", nil); v != 12004 {
		t.Errorf("server stored %v readings, want 12004", v)
	}
	if a.tr.dropped.Load() != 1 {
		t.Errorf("the fault was not injected")
	}
	res, err := cp.admin.QueryTelemetry(testCtx(t), cpapi.TelemetryQuery{Agent: id(), Device: "d1",
		From: now.Add(-2 * time.Hour), To: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, s := range res.Series {
		if strings.HasPrefix(s.Metric, "temp:") && len(s.Points) == 1 {
			got[s.Metric] = s.Points[0].Value
		}
	}
	want := map[string]float64{"temp:min_1m": 1, "temp:max_1m": 4, "temp:avg_1m": 2.5, "temp:count_1m": 4}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (got %v)", k, got[k], v, got)
		}
	}
}

func TestBreakerOpensAfterFailuresAndProbesAfterCooldown(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	a := newAgent(t, clock, cp.config(cp.token()), agentOpts{noStore: true})
	eventually(t, "enrolled, telemetry key held", func() bool { return a.up.Status().KeyVersions[cpapi.TelemetryKeyName] >= 1 })
	settle(t, clock, a.tr, 1)

	a.tr.down.Store(true)
	base := a.tr.requests.Load()
	advanceUntil(t, clock, a.tr, 1, time.Second, 5*time.Minute, "breaker open", func() bool {
		return a.up.Status().Breaker == BreakerOpen
	})
	openedAt := clock.Now()
	st := a.up.Status()
	if got := a.tr.requests.Load() - base; got != 3 || st.ConsecutiveFailures != 3 {
		t.Fatalf("breaker opened after %d requests, %d failures; want 3", got, st.ConsecutiveFailures)
	}
	if v := counterValue(t, a.reg, "edgefleet_uplink_breaker_state", nil); v != 2 {
		t.Errorf("breaker gauge %v, want 2", v)
	}
	// Nothing is sent during the cooldown.
	for clock.Now().Sub(openedAt) < 29*time.Second {
		settle(t, clock, a.tr, 1)
		clock.Advance(time.Second)
	}
	settle(t, clock, a.tr, 1)
	if got := a.tr.requests.Load() - base; got != 3 {
		t.Fatalf("%d requests during the cooldown", got-3)
	}
	// After it, one probe; it fails and the breaker opens again.
	clock.Advance(time.Second)
	settle(t, clock, a.tr, 1)
	if got := a.tr.requests.Load() - base; got != 4 {
		t.Fatalf("%d probes after the cooldown, want 1", got-3)
	}
	if st := a.up.Status(); st.Breaker != BreakerOpen || st.ConsecutiveFailures != 4 {
		t.Fatalf("after a failed probe: %+v", st)
	}
	// The server is back: the next probe closes the breaker.
	a.tr.down.Store(false)
	hb := a.up.Status().Heartbeats
	advanceUntil(t, clock, a.tr, 1, time.Second, time.Minute, "breaker closed", func() bool {
		return a.up.Status().Breaker == BreakerClosed
	})
	if st := a.up.Status(); st.Heartbeats != hb+1 || st.ConsecutiveFailures != 0 || st.LastError != "" {
		t.Fatalf("after the heal: %+v", st)
	}
	if v := counterValue(t, a.reg, "edgefleet_uplink_breaker_state", nil); v != 0 {
		t.Errorf("breaker gauge %v, want 0", v)
	}
}

func TestOneHourOutageHealsByItself(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	a := newAgent(t, clock, cp.config(cp.token()), agentOpts{})
	eventually(t, "enrolled, telemetry key held", func() bool { return a.up.Status().KeyVersions[cpapi.TelemetryKeyName] >= 1 })
	id := a.up.Status().AgentID
	a.write(clock, "before", 10)
	eventually(t, "first readings uploaded", func() bool { return cp.serverPoints(id) == a.written })
	settle(t, clock, a.tr, 2)

	a.tr.down.Store(true)
	outage := clock.Now()
	base := a.tr.requests.Load()
	for clock.Now().Sub(outage) < time.Hour {
		a.write(clock, "during", 3) // ingestion goes on
		settle(t, clock, a.tr, 2)
		clock.Advance(20 * time.Second)
	}
	settle(t, clock, a.tr, 2)
	attempts := a.tr.requests.Load() - base
	st := a.up.Status()
	if st.Breaker == BreakerClosed || st.LastError == "" {
		t.Errorf("status at the end of the outage: %+v", st)
	}
	// The breaker lets one probe per 30s cooldown through: about 120 in
	// an hour, plus the failures that opened it.
	t.Logf("%d requests during the outage, %d batches pending", attempts, a.pending())
	if attempts > 130 {
		t.Errorf("%d requests during a 1h outage: the dead server was hammered", attempts)
	}
	if cp.agentRecord(id).State == cpapi.StateOnline {
		t.Errorf("agent still online after an hour without heartbeats")
	}
	pending := a.pending()
	if pending < 170 {
		t.Errorf("%d outbox batches pending after the outage, want one per commit", pending)
	}

	a.tr.down.Store(false)
	healed := clock.Now()
	advanceUntil(t, clock, a.tr, 2, 5*time.Second, 5*time.Minute, "everything delivered", func() bool {
		st := a.up.Status()
		return cp.serverPoints(id) == a.written && st.LastHeartbeat.After(healed) && !st.LastKeyFetch.Before(healed)
	})
	eventually(t, "outbox drained", func() bool { return a.pending() == 0 })
	st = a.up.Status()
	if st.DuplicateBatches != 0 || st.UploadedReadings != int64(a.written) || st.Breaker != BreakerClosed || st.LastError != "" {
		t.Errorf("status after the heal: %+v (written %d)", st, a.written)
	}
	if v := cp.serverCounter("controlplane_telemetry_readings_total", nil); v != float64(a.written) {
		t.Errorf("server stored %v readings, want %d: something was stored twice or lost", v, a.written)
	}
	if cp.agentRecord(id).State != cpapi.StateOnline {
		t.Errorf("agent not online after the heal")
	}
}

func TestDecommissionedAgentBacksOff(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	a := newAgent(t, clock, cp.config(cp.token()), agentOpts{})
	eventually(t, "enrolled, telemetry key held", func() bool { return a.up.Status().KeyVersions[cpapi.TelemetryKeyName] >= 1 })
	settle(t, clock, a.tr, 2)
	id := a.up.Status().AgentID
	if _, err := cp.admin.Decommission(testCtx(t), id); err != nil {
		t.Fatal(err)
	}
	advanceUntil(t, clock, a.tr, 2, time.Second, time.Minute, "decommissioned", func() bool { return a.up.Status().Decommissioned })
	a.write(clock, "after", 5)
	settle(t, clock, a.tr, 2)
	base := a.tr.requests.Load()
	// Two backoff_max periods: two heartbeats, two upload attempts and two
	// key fetches at most.
	for range 240 {
		clock.Advance(time.Second)
		settle(t, clock, a.tr, 2)
	}
	if got := a.tr.requests.Load() - base; got > 6 {
		t.Errorf("%d requests in 4 minutes while decommissioned, want at most 6", got)
	}
	st := a.up.Status()
	if !st.Decommissioned || st.LastError == "" || st.Breaker != BreakerClosed {
		t.Errorf("status: %+v", st)
	}
	if n := strings.Count(a.logs.String(), "control plane refuses this agent"); n != 1 {
		t.Errorf("decommission logged %d times, want once", n)
	}
	if v := counterValue(t, a.reg, "edgefleet_uplink_decommissioned", nil); v != 1 {
		t.Errorf("edgefleet_uplink_decommissioned = %v", v)
	}
	if a.pending() == 0 {
		t.Errorf("telemetry left the outbox while decommissioned")
	}
}

func TestStartRefusesWhatWaitingCannotFix(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	newUp := func(cfg Config, dir string) *Uplink {
		u, err := New(cfg, dir, "n", Deps{Clock: clock, Keyring: newTestKeyring(t, clock)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(u.Stop)
		return u
	}
	if err := newUp(cp.config(""), t.TempDir()).Start(testCtx(t)); !errors.Is(err, ErrNoEnrollmentToken) {
		t.Errorf("no token: %v", err)
	}
	cfg := cp.config("efe_x")
	cfg.CAFile = ""
	if err := newUp(cfg, t.TempDir()).Start(testCtx(t)); err == nil || !strings.Contains(err.Error(), "ca_file") {
		t.Errorf("no CA file: %v", err)
	}
	cfg.CAFile = filepath.Join(t.TempDir(), "missing.pem")
	if err := newUp(cfg, t.TempDir()).Start(testCtx(t)); err == nil || !strings.Contains(err.Error(), "ca_file") {
		t.Errorf("missing CA file: %v", err)
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, IdentityDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, IdentityDir, IdentityFile), []byte(`{"agent_id":`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := newUp(cp.config("efe_x"), dir).Start(testCtx(t)); !errors.Is(err, ErrIdentity) {
		t.Errorf("corrupt identity: %v", err)
	}
	// Sealing uploads needs a keyring.
	if _, err := New(cp.config("efe_x"), t.TempDir(), "n", Deps{Clock: clock}); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "seal_telemetry") {
		t.Errorf("sealing without a keyring: %v", err)
	}
	// Without a URL the uplink is off and Start does nothing.
	off := newUp(Config{}, "")
	if err := off.Start(testCtx(t)); err != nil {
		t.Errorf("disabled Start: %v", err)
	}
	if st := off.Status(); st.Enabled {
		t.Errorf("disabled status %+v", st)
	}
	if err := off.Start(testCtx(t)); !errors.Is(err, ErrAlreadyStarted) {
		t.Errorf("second Start: %v", err)
	}
}

// TestUploadLingerGathersCommits: the group commits made within
// upload_linger of the last round go up in one request.
func TestUploadLingerGathersCommits(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	cfg := cp.config(cp.token())
	cfg.UploadLinger = time.Second
	a := newAgent(t, clock, cfg, agentOpts{})
	eventually(t, "enrolled, telemetry key held", func() bool { return a.up.Status().KeyVersions[cpapi.TelemetryKeyName] >= 1 })
	a.write(clock, "sensor-a", 5)
	id := a.up.Status().AgentID
	advanceUntil(t, clock, a.tr, 2, 100*time.Millisecond, time.Minute, "first readings uploaded", func() bool { return cp.serverPoints(id) == a.written })
	before := len(a.tr.uploadsSent())
	// Five commits at once: one request after the linger, none before.
	for i := range 5 {
		a.write(clock, "sensor-"+strconv.Itoa(i), 3)
	}
	settle(t, clock, a.tr, 2)
	if n := len(a.tr.uploadsSent()) - before; n != 0 {
		t.Fatalf("%d uploads before the linger ended", n)
	}
	advanceUntil(t, clock, a.tr, 2, 100*time.Millisecond, time.Minute, "the five commits uploaded", func() bool { return cp.serverPoints(id) == a.written })
	if n := len(a.tr.uploadsSent()) - before; n != 1 {
		t.Fatalf("%d uploads for five commits within the linger, want 1", n)
	}
}

// TestConflictingBatchIsKeptAndReported: a batch whose identity the
// control plane stored before with other readings is refused (409); the
// agent logs the reason, counts it, shows it in its status and keeps the
// batch, never acknowledged, and the control plane keeps what it had.
func TestConflictingBatchIsKeptAndReported(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	now := clock.Now()
	batch := func(seq int64, v float64) ingest.OutboxBatch {
		b := ingest.OutboxBatch{Seq: seq, Epoch: "ep-conflict", EpochSeq: 1, Kind: ingest.BatchReadings}
		for i := range 5 {
			b.Readings = append(b.Readings, ingest.Reading{Device: "d1", Metric: "t", Time: now.Add(-time.Duration(i) * time.Second), Value: v})
		}
		return b
	}
	ob := &memOutbox{batches: []ingest.OutboxBatch{batch(1, 1)}, leased: map[int64]bool{}}
	a := &testAgent{t: t, dir: t.TempDir(), tr: &faultTransport{}, reg: newRegistry(), logs: &testutil.SyncBuffer{}, sink: &countingSink{}, keyring: newTestKeyring(t, clock)}
	a.start(clock, cp.config(cp.token()), ob, nil)
	eventually(t, "enrolled", func() bool { return a.up.Status().Enrolled })
	id := a.up.Status().AgentID
	advanceUntil(t, clock, a.tr, 2, time.Second, 5*time.Minute, "first batch delivered", func() bool { return ob.pending() == 0 })

	// Another batch under the same identity (epoch, batch_seq 1), other
	// values: as if two databases had numbered batches in one epoch.
	ob.mu.Lock()
	ob.batches = append(ob.batches, batch(2, 2))
	ob.mu.Unlock()
	advanceUntil(t, clock, a.tr, 2, time.Second, 5*time.Minute, "conflict reported", func() bool { return a.up.Status().ConflictBatches > 0 })
	// Later rounds do not acknowledge it either (this outbox's leases do
	// not expire; the store's offer the batch again, refused again).
	for range 10 {
		settle(t, clock, a.tr, 2)
		clock.Advance(time.Minute)
	}

	st := a.up.Status()
	if !strings.Contains(st.LastError, cpapi.ErrBatchConflict.Error()) || !strings.Contains(st.LastError, `epoch "ep-conflict" batch_seq 1`) {
		t.Errorf("status error %q", st.LastError)
	}
	if ob.pending() != 1 || len(ob.acked) != 1 || ob.acked[0] != 1 {
		t.Errorf("the conflicting batch must stay in the outbox, unacknowledged: pending %d, acked %v", ob.pending(), ob.acked)
	}
	if v := counterValue(t, a.reg, "edgefleet_uplink_batch_conflicts_total", nil); v != float64(st.ConflictBatches) {
		t.Errorf("edgefleet_uplink_batch_conflicts_total = %v, status %d", v, st.ConflictBatches)
	}
	if logs := a.logs.String(); !strings.Contains(logs, "same identity") || !strings.Contains(logs, "batch_seq=1") || !strings.Contains(logs, "stored at") {
		t.Errorf("no logged reason:\n%s", logs)
	}
	if v := cp.serverCounter("controlplane_telemetry_batches_total", map[string]string{"result": "conflict"}); v != float64(st.ConflictBatches) {
		t.Errorf("server counted %v conflicts", v)
	}
	res, err := cp.admin.QueryTelemetry(testCtx(t), cpapi.TelemetryQuery{Agent: id, From: now.Add(-time.Hour), To: now.Add(time.Hour)})
	if err != nil || len(res.Series) != 1 || len(res.Series[0].Points) != 5 {
		t.Fatalf("stored: %+v %v", res, err)
	}
	for _, p := range res.Series[0].Points {
		if p.Value != 1 {
			t.Fatalf("a refused upload changed a stored reading: %+v", p)
		}
	}
}

// The control plane consumed the token but its answer was lost; the agent
// restarts before retrying. It retries with the key and X-Wing key it
// stored before its first attempt, and gets the enrollment it was given.
func TestEnrollmentRetryAfterALostAnswerKeepsTheAgentID(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	cfg := cp.config(cp.token())
	a := &testAgent{t: t, dir: t.TempDir(), tr: &faultTransport{}, logs: &testutil.SyncBuffer{}, sink: &countingSink{}, keyring: newTestKeyring(t, clock)}
	a.tr.dropEnroll.Store(1)
	a.start(clock, cfg, nil, nil)
	eventually(t, "first enrollment answer lost", func() bool { return a.tr.dropped.Load() == 1 })
	agents, err := cp.admin.ListAgents(testCtx(t), cpapi.AgentFilter{})
	if err != nil || len(agents) != 1 {
		t.Fatalf("agents after the lost answer: %v (%v)", agents, err)
	}
	if st := a.up.Status(); st.Enrolled {
		t.Fatalf("enrolled although the answer was lost: %+v", st)
	}
	a.up.Stop()
	a.start(clock, cfg, nil, nil)
	// The restarted agent retries at once.
	eventually(t, "retry answered", func() bool { st := a.up.Status(); return st.Enrolled || st.LastError != "" })
	if st := a.up.Status(); !st.Enrolled {
		t.Fatalf("retry after a lost answer not enrolled: %s", st.LastError)
	}
	advanceUntil(t, clock, a.tr, 1, time.Second, 10*time.Minute, "heartbeat after the retry", func() bool {
		return a.up.Status().Heartbeats >= 1
	})
	st := a.up.Status()
	if st.AgentID != agents[0].ID || st.LastError != "" {
		t.Fatalf("status after the retry: %+v, want agent %s", st, agents[0].ID)
	}
	if after, _ := cp.admin.ListAgents(testCtx(t), cpapi.AgentFilter{}); len(after) != 1 {
		t.Errorf("%d agents after the retry, want 1", len(after))
	}
	if ag := cp.agentRecord(st.AgentID); ag.State != cpapi.StateOnline {
		t.Errorf("agent state %q, want online", ag.State)
	}
}

// TestDeferredUploadGoesInBulk: with Deps.DeferUpload the readings wait in
// the outbox while the deferral holds (none reach the control plane), go
// up together once it lets them, and the deferral's done is called when
// the outbox is empty; the next readings are held again.
func TestDeferredUploadGoesInBulk(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	release := make(chan struct{}, 4)
	var asked, done atomic.Int32
	a := newAgent(t, clock, cp.config(cp.token()), agentOpts{deferUpload: func(ctx context.Context) (func(), error) {
		asked.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return func() { done.Add(1) }, nil
	}})
	eventually(t, "enrolled, telemetry key held", func() bool { return a.up.Status().KeyVersions[cpapi.TelemetryKeyName] >= 1 })
	id := a.up.Status().AgentID
	if n := asked.Load(); n != 0 {
		t.Fatalf("deferral asked %d times with an empty outbox", n)
	}
	for i := range 6 {
		a.write(clock, "sensor-"+strconv.Itoa(i), 20)
		clock.Advance(10 * time.Second)
	}
	eventually(t, "the upload asks the deferral", func() bool { return asked.Load() == 1 })
	// The upload loop is held by the deferral, not the clock: one loop
	// (the heartbeat's) waits on the clock.
	settle(t, clock, a.tr, 1)
	clock.Advance(time.Hour)
	settle(t, clock, a.tr, 1)
	if n := cp.serverPoints(id); n != 0 || len(a.tr.uploadsSent()) != 0 {
		t.Fatalf("%d readings in %d uploads reached the control plane while the upload was deferred", n, len(a.tr.uploadsSent()))
	}
	if a.pending() == 0 {
		t.Fatal("the outbox is empty while the upload is deferred")
	}
	release <- struct{}{}
	advanceUntil(t, clock, a.tr, 2, 100*time.Millisecond, time.Minute, "every reading uploaded", func() bool { return cp.serverPoints(id) == a.written })
	eventually(t, "the deferral told the outbox is drained", func() bool { return done.Load() == 1 && a.pending() == 0 })
	// The next readings wait for the next start.
	uploaded := a.written
	a.write(clock, "sensor-x", 5)
	// (The upload loop leaves the clock once it asks: advance by hand.)
	for end := time.Now().Add(20 * time.Second); asked.Load() < 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the next readings' upload did not ask the deferral")
		}
		clock.Advance(100 * time.Millisecond)
	}
	if n := cp.serverPoints(id); n != uploaded {
		t.Fatalf("%d readings at the control plane, want %d: the new ones went up undeferred", n, uploaded)
	}
}
