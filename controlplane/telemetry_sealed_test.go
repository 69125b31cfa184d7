package controlplane

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// sealBatch seals a batch as an agent does: its gzip JSON form under the
// agent's primary version of the telemetry key, bound to agent and seq.
func sealBatch(t *testing.T, a *pqAgent, aadAgent string, aadSeq uint64, b cpapi.TelemetryBatch) []byte {
	t.Helper()
	data, err := cpapi.EncodeTelemetryBatch(b)
	if err != nil {
		t.Fatal(err)
	}
	env, err := a.keys.Encrypt(context.Background(), cpapi.TelemetryKeyName, data, cpapi.TelemetryAAD(aadAgent, testEpoch, aadSeq))
	if err != nil {
		t.Fatalf("seal: %v", err)
	}
	return env
}

func testBatch(seq uint64, at time.Time, n int) cpapi.TelemetryBatch {
	b := cpapi.TelemetryBatch{BatchSeq: seq, Epoch: testEpoch}
	for i := range n {
		b.Readings = append(b.Readings, cpapi.Reading{Device: "pump-1", Metric: "flow", TS: at.Add(time.Duration(i) * time.Second), Value: float64(i) + 0.5})
	}
	return b
}

// storedPoints counts the readings the server holds for an agent.
func storedPoints(t *testing.T, e *keyEnv, agent string) int {
	t.Helper()
	now := e.clock.Now()
	res, err := e.admin.QueryTelemetry(e.ctx(), cpapi.TelemetryQuery{Agent: agent, From: now.Add(-24 * time.Hour), To: now.Add(time.Hour), Limit: 100000})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range res.Series {
		n += len(s.Points)
	}
	return n
}

func wantNamed(t *testing.T, err error, status int, named error) {
	t.Helper()
	ae := wantStatus(t, err, status)
	if !strings.HasPrefix(ae.Message, named.Error()+": ") {
		t.Fatalf("answer %q does not start with %q", ae.Message, named.Error())
	}
}

func TestBuiltinKeysAreCreatedAtFirstUnseal(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.GossipRotationPeriod = 24 * time.Hour })
	ctx := e.ctx()
	list, err := e.admin.ListKeys(ctx)
	if err != nil || len(list.Keys) != 0 {
		t.Fatalf("keys while sealed at first start: %+v %v", list, err)
	}
	e.unseal()
	list, err = e.admin.ListKeys(ctx)
	if err != nil || len(list.Keys) != 2 {
		t.Fatalf("keys after the first unseal: %+v %v", list, err)
	}
	g, tk := list.Keys[0], list.Keys[1]
	if tk.Name != cpapi.TelemetryKeyName || tk.Purpose != "data" || !tk.Policy.AllAgents || tk.Policy.RotationPeriod != DefaultKeyRotationPeriod.String() || tk.PrimaryVersion != 1 {
		t.Errorf("telemetry key: %+v", tk)
	}
	if g.Name != cpapi.GossipKeyName || g.Purpose != "gossip" || !g.Policy.AllAgents || g.Policy.RotationPeriod != "24h0m0s" || g.PrimaryVersion != 1 {
		t.Errorf("gossip key: %+v", g)
	}
	// An operator's policy change stays; later unseals create nothing.
	if _, err := e.admin.SetKeyPolicy(ctx, cpapi.TelemetryKeyName, cpapi.KeyPolicy{AllowedLabels: map[string]string{"site": "x"}}); err != nil {
		t.Fatal(err)
	}
	e.restart()
	e.unseal(1, 2, 3)
	e.srv.keysTick(ctx)
	k, err := e.srv.KeyService().Key(ctx, cpapi.TelemetryKeyName)
	if err != nil || k.Policy.AllAgents || k.Latest != 1 {
		t.Fatalf("telemetry key after restart: %+v %v", k, err)
	}
	creates := 0
	for _, r := range auditActions(t, e) {
		if r.Action == "key.create-key" {
			creates++
			if r.Actor != "system" || r.Result != "ok" {
				t.Errorf("built-in key creation record %+v", r)
			}
		}
	}
	if creates != 2 {
		t.Fatalf("%d key creations audited, want 2", creates)
	}
}

func TestBuiltinKeysInDevModeExistAtStart(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true; c.Keys.GossipRotationPeriod = -1 })
	list, err := e.admin.ListKeys(e.ctx())
	if err != nil || len(list.Keys) != 2 || list.Keys[0].Policy.RotationPeriod != "0s" {
		t.Fatalf("dev mode keys: %+v %v", list, err)
	}
}

func TestSealedTelemetryIsStoredOnce(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true })
	ctx := e.ctx()
	a := e.enrollPQ("edge-s", nil, 61)
	if n := a.fetch(t, ctx); n != 2 {
		t.Fatalf("agent received %d key messages, want telemetry and gossip", n)
	}
	b := testBatch(1, e.clock.Now().Add(-time.Minute), 20)
	env := sealBatch(t, a, a.id, 1, b)
	if bytes.Contains(env, []byte("pump-1")) {
		t.Fatal("device name in the clear in the envelope")
	}
	res, err := a.client.UploadTelemetrySealed(ctx, a.id, testEpoch, 1, env)
	if err != nil || res.Accepted != 20 || res.Duplicate {
		t.Fatalf("sealed upload: %+v %v", res, err)
	}
	// A retry is sealed again (other bytes) and recognized.
	res, err = a.client.UploadTelemetrySealed(ctx, a.id, testEpoch, 1, sealBatch(t, a, a.id, 1, b))
	if err != nil || !res.Duplicate {
		t.Fatalf("sealed retry: %+v %v", res, err)
	}
	if n := storedPoints(t, e, a.id); n != 20 {
		t.Fatalf("%d readings stored, want 20", n)
	}
	if v := counterValue(t, e.srv.cfg.Registry, "controlplane_telemetry_envelopes_total", map[string]string{"result": "opened"}); v != 2 {
		t.Errorf("opened envelopes = %v", v)
	}
	// Successful openings are counted, not recorded in the audit log.
	for _, r := range auditActions(t, e) {
		if r.Action == "key.decrypt" {
			t.Errorf("decryption audited: %+v", r)
		}
	}
	// Plain uploads still work while RequireSealedTelemetry is off.
	if _, err := a.client.UploadTelemetry(ctx, testBatch(2, e.clock.Now().Add(-time.Hour), 1)); err != nil {
		t.Fatalf("plain upload: %v", err)
	}
}

func TestSealedTelemetryRefusesWrongBindingAndTampering(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true })
	ctx := e.ctx()
	a := e.enrollPQ("edge-a", nil, 71)
	other := e.enrollPQ("edge-b", nil, 72)
	a.fetch(t, ctx)
	other.fetch(t, ctx)
	at := e.clock.Now().Add(-time.Minute)

	// Headers naming another agent: refused before any key is used.
	_, err := a.client.UploadTelemetrySealed(ctx, other.id, testEpoch, 1, sealBatch(t, a, other.id, 1, testBatch(1, at, 3)))
	wantNamed(t, err, 400, cpapi.ErrEnvelopeBinding)
	// Another agent's envelope replayed by a: its headers name a, the
	// sealed associated data b.
	stolen := sealBatch(t, other, other.id, 1, testBatch(1, at, 3))
	_, err = a.client.UploadTelemetrySealed(ctx, a.id, testEpoch, 1, stolen)
	wantNamed(t, err, 400, cpapi.ErrEnvelopeUnopened)
	// Sealed for batch_seq 5, sent as 6.
	_, err = a.client.UploadTelemetrySealed(ctx, a.id, testEpoch, 6, sealBatch(t, a, a.id, 5, testBatch(5, at, 3)))
	wantNamed(t, err, 400, cpapi.ErrEnvelopeUnopened)
	// Sealed and sent as 7, the batch inside says 8.
	_, err = a.client.UploadTelemetrySealed(ctx, a.id, testEpoch, 7, sealBatch(t, a, a.id, 7, testBatch(8, at, 3)))
	wantNamed(t, err, 400, cpapi.ErrEnvelopeBinding)
	// Sealed for one epoch, sent as another.
	_, err = a.client.UploadTelemetrySealed(ctx, a.id, "ep-else", 7, sealBatch(t, a, a.id, 7, testBatch(7, at, 3)))
	wantNamed(t, err, 400, cpapi.ErrEnvelopeUnopened)
	// Sealed and sent for one epoch, the batch inside names another.
	inner := testBatch(7, at, 3)
	inner.Epoch = "ep-else"
	_, err = a.client.UploadTelemetrySealed(ctx, a.id, testEpoch, 7, sealBatch(t, a, a.id, 7, inner))
	wantNamed(t, err, 400, cpapi.ErrEnvelopeBinding)
	// No epoch header (an agent from before epochs).
	_, err = a.client.UploadTelemetrySealed(ctx, a.id, "", 7, sealBatch(t, a, a.id, 7, testBatch(7, at, 3)))
	if ae := wantStatus(t, err, 400); !strings.Contains(ae.Message, cpapi.HeaderSealedEpoch+": missing") {
		t.Fatalf("no epoch header: %s", ae.Message)
	}
	// One flipped bit anywhere, and a truncated envelope.
	good := sealBatch(t, a, a.id, 9, testBatch(9, at, 3))
	for _, i := range []int{0, 10, len(good) / 2, len(good) - 1} {
		bad := bytes.Clone(good)
		bad[i] ^= 0x04
		_, err = a.client.UploadTelemetrySealed(ctx, a.id, testEpoch, 9, bad)
		if ae := wantStatus(t, err, 400); !strings.HasPrefix(ae.Message, cpapi.ErrEnvelopeUnopened.Error()) && !strings.Contains(ae.Message, "envelope") {
			t.Fatalf("flipped byte %d: %s", i, ae.Message)
		}
	}
	_, err = a.client.UploadTelemetrySealed(ctx, a.id, testEpoch, 9, good[:len(good)-20])
	wantNamed(t, err, 400, cpapi.ErrEnvelopeUnopened)
	// An envelope of another data key.
	if _, err := e.admin.CreateKey(ctx, cpapi.CreateKeyRequest{Name: "fleet", Policy: &cpapi.KeyPolicy{AllAgents: true}}); err != nil {
		t.Fatal(err)
	}
	a.fetch(t, ctx)
	data, _ := cpapi.EncodeTelemetryBatch(testBatch(9, at, 3))
	foreign, err := a.keys.Encrypt(ctx, "fleet", data, cpapi.TelemetryAAD(a.id, testEpoch, 9))
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.client.UploadTelemetrySealed(ctx, a.id, testEpoch, 9, foreign)
	wantNamed(t, err, 400, cpapi.ErrEnvelopeUnopened)
	// Missing or bad headers, other content types.
	for _, h := range []map[string]string{
		{"Content-Type": cpapi.EnvelopeContentType, cpapi.HeaderSealedBatchSeq: "9"},
		{"Content-Type": cpapi.EnvelopeContentType, cpapi.HeaderSealedAgent: a.id, cpapi.HeaderSealedBatchSeq: "0"},
		{"Content-Type": cpapi.EnvelopeContentType, cpapi.HeaderSealedAgent: a.id, cpapi.HeaderSealedBatchSeq: "nine"},
		{"Content-Type": cpapi.EnvelopeContentType, cpapi.HeaderSealedAgent: a.id},
	} {
		status, body := e.rawRequest("POST", "/v1/agents/self/telemetry", "", good, h, &a.cert)
		if status != 400 || !strings.Contains(body, "header Edgefleet-Sealed") {
			t.Errorf("headers %v: %d %s", h, status, body)
		}
	}
	status, body := e.rawRequest("POST", "/v1/agents/self/telemetry", "", good,
		map[string]string{"Content-Type": "application/octet-stream"}, &a.cert)
	if status != 415 || !strings.Contains(body, cpapi.EnvelopeContentType) {
		t.Errorf("octet-stream: %d %s", status, body)
	}
	// The good envelope still goes through; nothing else was stored.
	if _, err := a.client.UploadTelemetrySealed(ctx, a.id, testEpoch, 9, good); err != nil {
		t.Fatal(err)
	}
	if n := storedPoints(t, e, a.id); n != 3 {
		t.Fatalf("%d readings stored, want only the good batch's 3", n)
	}
	// Failed openings are recorded.
	failed := 0
	for _, r := range auditActions(t, e) {
		if r.Action == "key.decrypt" && strings.HasPrefix(r.Result, "error") {
			failed++
		}
	}
	if failed == 0 {
		t.Error("failed decryptions not in the audit log")
	}
}

func TestSealedTelemetryAcrossRotationAndSealing(t *testing.T) {
	e := newKeyEnv(t, nil)
	ctx := e.ctx()
	a := e.enrollPQ("edge-r", nil, 81)
	// Sealed: no key reaches the agent, and an envelope cannot be opened.
	_, err := a.client.KeyMessages(ctx, "")
	if !errors.Is(wantStatus(t, err, 503), cpapi.ErrSealed) {
		t.Fatal("key fetch while sealed does not unwrap to ErrSealed")
	}
	e.unseal()
	a.fetch(t, ctx)
	at := e.clock.Now().Add(-time.Minute)
	old := sealBatch(t, a, a.id, 1, testBatch(1, at, 4))

	if _, err := e.admin.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = a.client.UploadTelemetrySealed(ctx, a.id, testEpoch, 1, old)
	if ae := wantStatus(t, err, 503); !strings.Contains(ae.Message, "key service sealed") {
		t.Fatalf("sealed: %s", ae.Message)
	}
	e.unseal(2, 3, 4)

	// Rotation: the agent seals under v2, a batch sealed under v1 before
	// still opens (v1 is decrypt-only).
	if _, err := e.admin.RotateKey(ctx, cpapi.TelemetryKeyName); err != nil {
		t.Fatal(err)
	}
	if n := a.fetch(t, ctx); n != 2 {
		t.Fatalf("%d messages after the rotation", n)
	}
	dk, err := a.keys.PrimaryDataKey(cpapi.TelemetryKeyName)
	if err != nil || dk.Version() != 2 {
		t.Fatalf("agent's primary telemetry version: %v %v", dk, err)
	}
	if _, err := a.client.UploadTelemetrySealed(ctx, a.id, testEpoch, 2, sealBatch(t, a, a.id, 2, testBatch(2, at.Add(time.Hour), 4))); err != nil {
		t.Fatalf("upload under v2: %v", err)
	}
	if _, err := a.client.UploadTelemetrySealed(ctx, a.id, testEpoch, 1, old); err != nil {
		t.Fatalf("pending batch under v1: %v", err)
	}
	if n := storedPoints(t, e, a.id); n != 8 {
		t.Fatalf("%d readings stored, want 8", n)
	}
	// Once v1 is retired it opens nothing: the agent is told to seal again.
	if _, err := e.admin.RetireKeyVersion(ctx, cpapi.TelemetryKeyName, 1); err != nil {
		t.Fatal(err)
	}
	_, err = a.client.UploadTelemetrySealed(ctx, a.id, testEpoch, 1, old)
	wantNamed(t, err, 409, cpapi.ErrEnvelopeUnopened)
}

func TestRequireSealedTelemetryRefusesPlainUploads(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true; c.Keys.RequireSealedTelemetry = true })
	ctx := e.ctx()
	a := e.enrollPQ("edge-q", nil, 91)
	a.fetch(t, ctx)
	at := e.clock.Now().Add(-time.Minute)
	_, err := a.client.UploadTelemetry(ctx, testBatch(1, at, 2))
	wantNamed(t, err, 415, cpapi.ErrUnsealedTelemetry)
	if _, err := a.client.UploadTelemetrySealed(ctx, a.id, testEpoch, 1, sealBatch(t, a, a.id, 1, testBatch(1, at, 2))); err != nil {
		t.Fatalf("sealed upload: %v", err)
	}
	if n := storedPoints(t, e, a.id); n != 2 {
		t.Fatalf("%d readings stored", n)
	}
}

func TestTelemetryAADIsUnambiguous(t *testing.T) {
	seen := map[string]string{}
	for _, c := range []struct {
		agent, epoch string
		seq          uint64
	}{{"ag_1", "e", 1}, {"ag_1", "e", 256}, {"ag_12", "e", 1}, {"ag_1\x00", "e", 1}, {"", "e", 1},
		{"ag_1", "e2", 1}, {"ag_1", "", 1}, {"ag_1\x00e", "", 1}} {
		k := string(cpapi.TelemetryAAD(c.agent, c.epoch, c.seq))
		if prev, dup := seen[k]; dup {
			t.Fatalf("%q/%q/%d and %s share associated data", c.agent, c.epoch, c.seq, prev)
		}
		seen[k] = c.agent + "/" + c.epoch + "/" + strconv.FormatUint(c.seq, 10)
	}
}

// FuzzSealedTelemetryUpload feeds arbitrary headers and bodies to the
// sealed upload handler: no panic, every refusal is a 4xx with a message,
// and what is accepted is a batch sealed for the calling agent.
func FuzzSealedTelemetryUpload(f *testing.F) {
	srv, err := New(Config{
		DataDir: f.TempDir(), Listen: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler),
		Rand: newTestRand(3), SQLite: SQLiteOptions{Synchronous: "NORMAL"}, Keys: KeyConfig{DevUnseal: true},
	})
	if err != nil {
		f.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		f.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()
	env, err := srv.KeyService().Encrypt(ctx, cpapi.TelemetryKeyName, mustEncode(f, testBatch(3, time.Now().Add(-time.Hour), 2)), cpapi.TelemetryAAD("ag_fuzz", testEpoch, 3))
	if err != nil {
		f.Fatal(err)
	}
	f.Add("ag_fuzz", "3", env)
	f.Add("ag_fuzz", "3", env[:len(env)/2])
	f.Add("ag_other", "3", env)
	f.Add("ag_fuzz", "18446744073709551615", []byte("EFE"))
	f.Add("", "", []byte{})
	f.Fuzz(func(t *testing.T, agent, seq string, body []byte) {
		r := httptest.NewRequest("POST", "/v1/agents/self/telemetry", bytes.NewReader(body))
		r.Header.Set("Content-Type", cpapi.EnvelopeContentType)
		r.Header.Set(cpapi.HeaderSealedAgent, agent)
		r.Header.Set(cpapi.HeaderSealedBatchSeq, seq)
		w := httptest.NewRecorder()
		err := srv.handleTelemetryUpload(w, r, &call{now: time.Now(), agentID: "ag_fuzz", actor: "agent:ag_fuzz"})
		if err == nil {
			if w.Code != http.StatusOK || agent != "ag_fuzz" {
				t.Fatalf("accepted with %d for agent %q", w.Code, agent)
			}
			return
		}
		var he *httpError
		if !errors.As(err, &he) || he.status < 400 || he.status > 499 || he.msg == "" {
			t.Fatalf("refusal %v is not a 4xx with a message", err)
		}
	})
}

// pqcryptoSeal seals as dkms.AgentKeys.Encrypt does, without the keyring.
func pqcryptoSeal(dk *pqcrypto.DataKey, data, aad []byte) ([]byte, error) {
	return pqcrypto.SealWithDataKey(nil, dk, data, &pqcrypto.SealOptions{AAD: aad})
}

func mustEncode(f *testing.F, b cpapi.TelemetryBatch) []byte {
	data, err := cpapi.EncodeTelemetryBatch(b)
	if err != nil {
		f.Fatal(err)
	}
	return data
}

// counterValue sums a counter over the series whose labels include want.
func counterValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := want[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// BenchmarkSealedTelemetry measures what sealing adds to an upload of
// 1,000 readings: the agent's seal (AgentKeys.Encrypt of the gzip JSON)
// and the server's open (Service.Decrypt, one key-store read). Compare
// with BenchmarkIngest* for the whole upload.
func BenchmarkSealedTelemetry(b *testing.B) {
	srv, err := New(Config{
		DataDir: b.TempDir(), Listen: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler),
		SQLite: SQLiteOptions{Synchronous: "NORMAL"}, Keys: KeyConfig{DevUnseal: true},
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()
	svc := srv.KeyService()
	dk, err := svc.PrimaryDataKey(ctx, cpapi.TelemetryKeyName)
	if err != nil {
		b.Fatal(err)
	}
	batch := testBatch(1, time.Now().Add(-time.Hour), 1000)
	data, err := cpapi.EncodeTelemetryBatch(batch)
	if err != nil {
		b.Fatal(err)
	}
	aad := cpapi.TelemetryAAD("ag_bench", testEpoch, 1)
	env, err := svc.Encrypt(ctx, cpapi.TelemetryKeyName, data, aad)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("1,000 readings: %d bytes of gzip JSON, %d sealed", len(data), len(env))
	b.Run("encode", func(b *testing.B) {
		for b.Loop() {
			if _, err := cpapi.EncodeTelemetryBatch(batch); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("seal", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, err := pqcryptoSeal(dk, data, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("open", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, err := svc.Decrypt(ctx, cpapi.TelemetryKeyName, env, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
}
