package uplink

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/testutil"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// sealedVersion checks that an upload is an envelope of the telemetry key
// bound to agent and returns its key version.
func sealedVersion(t *testing.T, s sentUpload, agent string) uint32 {
	t.Helper()
	if s.contentType != cpapi.EnvelopeContentType || s.header.Get(cpapi.HeaderSealedAgent) != agent {
		t.Fatalf("upload sent as %q for agent %q, want an envelope for %s", s.contentType, s.header.Get(cpapi.HeaderSealedAgent), agent)
	}
	h, _, err := pqcrypto.ParseHeader(s.body)
	if err != nil || h.KeyID != cpapi.TelemetryKeyName {
		t.Fatalf("upload body is not a telemetry envelope: %+v %v", h, err)
	}
	return h.KeyVersion
}

func TestEnrollsWithXWingKeyAndSealsUploads(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	a := newAgent(t, clock, cp.config(cp.token()), agentOpts{})
	eventually(t, "telemetry key", func() bool { return a.up.Status().KeyVersions[cpapi.TelemetryKeyName] == 1 })
	st := a.up.Status()
	id := st.AgentID
	if !st.SealTelemetry || st.KeysSealed || st.LastKeyFetch.IsZero() || st.KeyVersions[cpapi.GossipKeyName] != 1 || st.LastError != "" {
		t.Fatalf("status after the first key fetch: %+v", st)
	}
	if ag, err := cp.admin.GetAgent(testCtx(t), id); err != nil || !bytes.Equal(ag.XWingPublic, a.keyring.XWingPublic()) {
		t.Fatal("the control plane registered another X-Wing key than the agent's")
	}
	var rec identityRecord
	b, err := os.ReadFile(filepath.Join(a.dir, IdentityDir, IdentityFile))
	if err != nil || json.Unmarshal(b, &rec) != nil {
		t.Fatalf("identity.json: %v %s", err, b)
	}
	vk, err := rec.verifyingKey()
	if err != nil || vk == nil || vk.Fingerprint() != cp.srv.KeyStatus().VerifyingKeyFingerprint {
		t.Fatalf("pinned key %v %v, control plane's %s", vk, err, cp.srv.KeyStatus().VerifyingKeyFingerprint)
	}
	// KeysChanged runs right after the messages are in the keyring.
	eventually(t, "KeysChanged", func() bool { return a.keyring.changed.Load() == 1 })
	if a.up.Keys() == nil || a.up.Keys().ID() != id {
		t.Fatal("Keys() is not the agent's keyring")
	}

	for range 5 {
		a.write(clock, "sensor-x", 20)
		clock.Advance(time.Second)
	}
	eventually(t, "every reading at the control plane", func() bool { return cp.serverPoints(id) == a.written })
	eventually(t, "outbox drained", func() bool { return a.pending() == 0 })
	sent := a.tr.uploadsSent()
	if len(sent) == 0 {
		t.Fatal("no upload seen")
	}
	for _, s := range sent {
		if v := sealedVersion(t, s, id); v != 1 {
			t.Errorf("sealed under v%d", v)
		}
		if bytes.Contains(s.body, []byte("sensor-x")) {
			t.Fatal("device name in the clear on the wire")
		}
	}
	if v := cp.serverCounter("controlplane_telemetry_envelopes_total", map[string]string{"result": "opened"}); v != float64(len(sent)) {
		t.Errorf("server opened %v envelopes, %d sent", v, len(sent))
	}
	if st := a.up.Status(); st.UploadedReadings != int64(a.written) || st.UploadsWaiting != "" {
		t.Errorf("status: %+v", st)
	}
	// Later rounds find nothing new: no further KeysChanged.
	settle(t, clock, a.tr, 2)
	clock.Advance(10 * time.Second)
	settle(t, clock, a.tr, 2)
	if n := a.keyring.changed.Load(); n != 1 {
		t.Errorf("KeysChanged called %d times after an unchanged fetch", n)
	}
}

func TestUploadsWaitWhileTheKeyServiceIsSealed(t *testing.T) {
	clock := newClock()
	cp := newCPWith(t, clock, func(c *controlplane.Config) { c.Keys.DevUnseal = false })
	a := newAgent(t, clock, cp.config(cp.token()), agentOpts{})
	eventually(t, "key service seen sealed", func() bool { return a.up.Status().KeysSealed })
	id := a.up.Status().AgentID
	a.write(clock, "pump", 10)
	for range 6 { // a minute of heartbeats: still waiting, breaker untouched
		settle(t, clock, a.tr, 2)
		clock.Advance(10 * time.Second)
	}
	settle(t, clock, a.tr, 2)
	st := a.up.Status()
	if !strings.Contains(st.UploadsWaiting, "sealed") || st.Breaker != BreakerClosed || st.ConsecutiveFailures != 0 || len(a.tr.uploadsSent()) != 0 || a.pending() == 0 {
		t.Fatalf("while sealed: %+v, %d uploads sent, %d pending", st, len(a.tr.uploadsSent()), a.pending())
	}
	if !strings.Contains(a.logs.String(), "uploads wait in the outbox") {
		t.Error("waiting not logged")
	}

	cp.unseal()
	advanceUntil(t, clock, a.tr, 2, 10*time.Second, 2*time.Minute, "readings delivered after the unseal", func() bool {
		return cp.serverPoints(id) == a.written
	})
	eventually(t, "outbox drained", func() bool { return a.pending() == 0 })
	if st := a.up.Status(); st.KeysSealed || st.UploadsWaiting != "" {
		t.Fatalf("after unseal: %+v", st)
	}

	// Sealed again once the agent holds the key: uploads are answered
	// 503, wait without touching the breaker, and flow after the unseal.
	if _, err := cp.admin.Seal(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	a.write(clock, "pump", 10)
	eventually(t, "upload answered sealed", func() bool { return strings.Contains(a.up.Status().UploadsWaiting, "sealed") })
	if st := a.up.Status(); st.Breaker != BreakerClosed || a.pending() == 0 {
		t.Fatalf("sealed after delivery: %+v", st)
	}
	cp.unseal()
	advanceUntil(t, clock, a.tr, 2, 10*time.Second, 10*time.Minute, "readings delivered after the second unseal", func() bool {
		return cp.serverPoints(id) == a.written
	})
	eventually(t, "outbox drained", func() bool { return a.pending() == 0 })
	if st := a.up.Status(); st.DuplicateBatches != 0 || st.UploadedReadings != int64(a.written) {
		t.Fatalf("not exactly once: %+v (written %d)", st, a.written)
	}
}

func TestRotationMovesUploadsToTheNewVersionAndOldEnvelopesStillOpen(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	a := newAgent(t, clock, cp.config(cp.token()), agentOpts{})
	eventually(t, "telemetry key", func() bool { return a.up.Status().KeyVersions[cpapi.TelemetryKeyName] == 1 })
	id := a.up.Status().AgentID
	a.write(clock, "meter", 10)
	eventually(t, "first batch delivered", func() bool { return cp.serverPoints(id) == a.written })

	// A batch sealed under v1 does not get through.
	a.tr.holdUploads.Store(true)
	n0 := len(a.tr.uploadsSent())
	clock.Advance(time.Second)
	a.write(clock, "meter", 10)
	eventually(t, "held upload", func() bool { return len(a.tr.uploadsSent()) > n0 })
	held := a.tr.uploadsSent()[n0]
	if v := sealedVersion(t, held, id); v != 1 {
		t.Fatalf("held batch sealed under v%d", v)
	}

	if _, err := cp.admin.RotateKey(testCtx(t), cpapi.TelemetryKeyName); err != nil {
		t.Fatal(err)
	}
	advanceUntil(t, clock, a.tr, 2, 10*time.Second, time.Minute, "v2 at the agent", func() bool {
		return a.up.Status().KeyVersions[cpapi.TelemetryKeyName] == 2
	})
	eventually(t, "KeysChanged after the rotation", func() bool { return a.keyring.changed.Load() == 2 })
	// The batch sealed under v1 still opens at the control plane: v1 is
	// decrypt-only.
	seq, err := strconv.ParseUint(held.header.Get(cpapi.HeaderSealedBatchSeq), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	// Sent on a connection of its own, with the agent's certificate.
	a.up.mu.Lock()
	ident := a.up.id
	a.up.mu.Unlock()
	replay, err := cpapi.NewClient(cpapi.ClientConfig{URL: cp.srv.URL(), CAPEM: ident.caPEM, Certificate: &ident.cert})
	if err != nil {
		t.Fatal(err)
	}
	defer replay.CloseIdleConnections()
	res, err := replay.UploadTelemetrySealed(testCtx(t), id, held.header.Get(cpapi.HeaderSealedEpoch), seq, held.body)
	if err != nil || res.Duplicate || res.Accepted == 0 {
		t.Fatalf("v1 envelope after the rotation: %+v %v", res, err)
	}
	// The agent's own retry goes out under v2 and is recognized.
	n1 := len(a.tr.uploadsSent())
	a.tr.holdUploads.Store(false)
	advanceUntil(t, clock, a.tr, 2, 10*time.Second, 5*time.Minute, "outbox drained", func() bool { return a.pending() == 0 })
	after := a.tr.uploadsSent()[n1:]
	if len(after) == 0 {
		t.Fatal("no upload after the rotation")
	}
	for _, s := range after {
		if v := sealedVersion(t, s, id); v != 2 {
			t.Fatalf("upload after the rotation sealed under v%d", v)
		}
	}
	if n := cp.serverPoints(id); n != a.written {
		t.Fatalf("%d readings at the control plane, %d written", n, a.written)
	}
	if st := a.up.Status(); st.DuplicateBatches != 1 {
		t.Errorf("duplicate batches %d, want the replayed one", st.DuplicateBatches)
	}
}

func TestTamperedUploadIsRefusedByNameAndKept(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	a := newAgent(t, clock, cp.config(cp.token()), agentOpts{})
	eventually(t, "telemetry key", func() bool { return a.up.Status().KeyVersions[cpapi.TelemetryKeyName] == 1 })
	id := a.up.Status().AgentID
	a.tr.tamperUploads.Store(true)
	a.write(clock, "valve", 10)
	eventually(t, "refusal", func() bool {
		return strings.Contains(a.up.Status().LastError, cpapi.ErrEnvelopeUnopened.Error())
	})
	if n := cp.serverPoints(id); n != 0 || a.pending() == 0 {
		t.Fatalf("tampered batch: %d readings stored, %d pending", n, a.pending())
	}
	if v := cp.serverCounter("controlplane_telemetry_envelopes_total", map[string]string{"result": "refused"}); v == 0 {
		t.Error("refusal not counted by the server")
	}
	a.tr.tamperUploads.Store(false)
	advanceUntil(t, clock, a.tr, 2, 10*time.Second, 5*time.Minute, "delivered", func() bool { return a.pending() == 0 })
	if n := cp.serverPoints(id); n != a.written {
		t.Fatalf("%d readings stored, want %d", n, a.written)
	}
	if st := a.up.Status(); st.LastError != "" {
		t.Errorf("error left after delivery: %s", st.LastError)
	}
}

func TestRefusedKeyMessageKeepsTheCursor(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	a := &testAgent{t: t, dir: t.TempDir(), tr: &faultTransport{}, logs: &testutil.SyncBuffer{}, sink: &countingSink{}, keyring: newTestKeyring(t, clock)}
	a.tr.tamperKeys.Store(true)
	a.start(clock, cp.config(cp.token()), nil, nil)
	eventually(t, "a refused key message", func() bool { return strings.Contains(a.up.Status().LastError, "key messages refused") })
	// Each refused round (the start-up heartbeat may add a second one
	// before the test looks) counts its tampered message once.
	badSig := func() float64 {
		return counterValue(t, a.keyring.reg, "dkms_agent_key_messages_total", map[string]string{"result": "bad_signature"})
	}
	if v := badSig(); v < 1 {
		t.Fatalf("bad signatures counted: %v", v)
	}
	if len(a.up.Status().KeyVersions) != 1 {
		t.Fatalf("key versions after one refusal: %v", a.up.Status().KeyVersions)
	}
	// The next round asks again from the same cursor and gets both keys.
	a.tr.tamperKeys.Store(false)
	settle(t, clock, a.tr, 1)
	clock.Advance(10 * time.Second)
	eventually(t, "both keys, error cleared", func() bool {
		st := a.up.Status()
		return len(st.KeyVersions) == 2 && st.LastError == ""
	})
	if v, refused := counterValue(t, a.keyring.reg, "dkms_agent_key_messages_total", map[string]string{"result": "accepted"}), badSig(); v != refused+2 {
		t.Errorf("accepted messages: %v, want %v + 2 (the good message of each refused round, then the full set again)", v, refused)
	}
}

func TestOlderEnrollmentPinsTheSigningKeyAtItsFirstFetch(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	a := newAgent(t, clock, cp.config(cp.token()), agentOpts{noStore: true})
	eventually(t, "telemetry key", func() bool { return a.up.Status().KeyVersions[cpapi.TelemetryKeyName] == 1 })
	a.up.Stop()
	// identity.json as written before enrollment pinned the key.
	path := filepath.Join(a.dir, IdentityDir, IdentityFile)
	var rec identityRecord
	b, _ := os.ReadFile(path)
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	rec.KeysVerifyingKey = nil
	if err := writeIdentityRecord(filepath.Join(a.dir, IdentityDir), rec); err != nil {
		t.Fatal(err)
	}
	a.keyring.forget()
	a.start(clock, cp.config(""), nil, nil)
	if a.up.Keys() != nil {
		t.Fatal("keyring open without a pinned key")
	}
	eventually(t, "keys after pinning", func() bool { return a.up.Status().KeyVersions[cpapi.TelemetryKeyName] == 1 })
	b, _ = os.ReadFile(path)
	var again identityRecord
	if err := json.Unmarshal(b, &again); err != nil || len(again.KeysVerifyingKey) == 0 {
		t.Fatalf("key not pinned in identity.json: %s", b)
	}
	if v := counterValue(t, a.reg, "edgefleet_uplink_requests_total", map[string]string{"op": "keys", "result": "ok"}); v != 2 {
		t.Errorf("keys requests: %v, want the signing key and the messages", v)
	}
}

func TestAgentWithoutRegisteredXWingKeyWaitsAndSaysWhy(t *testing.T) {
	clock := newClock()
	cp := newCP(t, clock)
	// Enrolled by an uplink without a keyring: no X-Wing key registered.
	off := false
	cfg := cp.config(cp.token())
	cfg.SealTelemetry = &off
	a := &testAgent{t: t, dir: t.TempDir(), tr: &faultTransport{}, logs: &testutil.SyncBuffer{}, sink: &countingSink{}, keyring: newTestKeyring(t, clock), noKeyring: true}
	a.start(clock, cfg, nil, nil)
	eventually(t, "enrolled", func() bool { return a.up.Status().Heartbeats >= 1 })
	if ag, err := cp.admin.GetAgent(testCtx(t), a.up.Status().AgentID); err != nil || len(ag.XWingPublic) != 0 {
		t.Fatal("X-Wing key registered without a keyring")
	}
	a.up.Stop()

	// Now with a keyring and sealing: the control plane answers 409.
	a.noKeyring = false
	ob := &memOutbox{batches: []ingest.OutboxBatch{{Seq: 1, Kind: ingest.BatchReadings, Readings: []ingest.Reading{
		{Device: "d1", Metric: "temp", Time: clock.Now().Add(-time.Second), Value: 21.5},
	}}}, leased: map[int64]bool{}}
	a.start(clock, cp.config(""), ob, nil)
	for range 3 {
		settle(t, clock, a.tr, 2)
		clock.Advance(10 * time.Second)
	}
	settle(t, clock, a.tr, 2)
	st := a.up.Status()
	if !strings.Contains(st.UploadsWaiting, "no X-Wing key") || len(a.tr.uploadsSent()) != 0 || !strings.Contains(st.LastError, "409") {
		t.Fatalf("status: %+v, %d uploads", st, len(a.tr.uploadsSent()))
	}
	// The 409 is explained once (the error), whatever the rounds; the
	// reason uploads wait is logged apart, when it first applies.
	if n := strings.Count(a.logs.String(), "so it sends it no keys"); n != 1 {
		t.Errorf("409 logged %d times, want once:\n%s", n, a.logs.String())
	}
}

func TestSealedAnswerIsNotAServerFailure(t *testing.T) {
	ctx := testCtx(t)
	sealed := &cpapi.APIError{Status: 503, Message: "controlplane: key service sealed: 1 of 3 root key shares given"}
	if o := classify(ctx, sealed); o != outcomeSealed {
		t.Errorf("sealed key service: %v", o)
	}
	if o := classify(ctx, &cpapi.APIError{Status: 503, Message: "overloaded"}); o != outcomeFailed {
		t.Errorf("plain 503: %v", o)
	}
	if !errors.Is(sealed, cpapi.ErrSealed) {
		t.Error("APIError 503 does not unwrap to ErrSealed")
	}
}
