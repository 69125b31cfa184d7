package controlplane

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// keyEnv is a test server with the root shares of its first start.
type keyEnv struct {
	*testEnv
	shares []string
}

func newKeyEnv(t *testing.T, mutate func(*Config)) *keyEnv {
	t.Helper()
	e := newTestEnv(t, mutate)
	return &keyEnv{testEnv: e, shares: e.srv.TakeRootShares()}
}

// unseal gives the shares at these indexes (0-based) and fails unless the
// service ends unsealed.
func (e *keyEnv) unseal(idx ...int) {
	e.t.Helper()
	if len(idx) == 0 {
		idx = []int{0, 1, 2}
	}
	var st cpapi.KeyServiceStatus
	for _, i := range idx {
		var err error
		if st, err = e.admin.Unseal(e.ctx(), e.shares[i]); err != nil {
			e.t.Fatalf("unseal with share %d: %v", i+1, err)
		}
	}
	if st.Sealed {
		e.t.Fatalf("still sealed after %d shares: %+v", len(idx), st)
	}
}

// pqAgent is an agent enrolled with an X-Wing key, and its keyring.
type pqAgent struct {
	*enrolledAgent
	sk     *pqcrypto.PrivateKey
	cpKey  *pqcrypto.VerifyingKey
	device *pqcrypto.DataKey
	path   string
	keys   *dkms.AgentKeys
	cursor string
}

func (e *keyEnv) enrollPQ(name string, labels map[string]string, seed byte) *pqAgent {
	e.t.Helper()
	toks, err := e.admin.CreateEnrollmentTokens(e.ctx(), time.Hour, labels, 1)
	if err != nil {
		e.t.Fatal(err)
	}
	sk, err := pqcrypto.GenerateXWingKey(newTestRand(seed))
	if err != nil {
		e.t.Fatal(err)
	}
	key, csr, err := cpapi.GenerateAgentKey(name)
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := e.client("").Enroll(e.ctx(), cpapi.EnrollRequest{Token: toks[0].Token, CSR: csr, Name: name, XWingPublic: sk.Public().Bytes()})
	if err != nil {
		e.t.Fatalf("enroll: %v", err)
	}
	cert, err := cpapi.AgentCertificate(resp.Certificate, key)
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := cpapi.NewClient(cpapi.ClientConfig{URL: e.srv.URL(), CAPEM: []byte(resp.CABundle), Certificate: &cert, Timeout: 20 * time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(c.CloseIdleConnections)
	cpKey, err := pqcrypto.ParseVerifyingKey(resp.KeysVerifyingKey)
	if err != nil {
		e.t.Fatalf("enroll response's keys_verifying_key: %v", err)
	}
	secret := make([]byte, 32)
	secret[0], secret[1] = seed, 0xde
	device, err := dkms.NewDeviceKey(secret)
	if err != nil {
		e.t.Fatal(err)
	}
	a := &pqAgent{
		enrolledAgent: &enrolledAgent{id: resp.AgentID, resp: resp, cert: cert, client: c},
		sk:            sk, cpKey: cpKey, device: device, path: filepath.Join(e.dir, name+".keyring"),
	}
	a.keys = e.openKeyring(a, a.path)
	return a
}

func (e *keyEnv) openKeyring(a *pqAgent, path string) *dkms.AgentKeys {
	e.t.Helper()
	k, err := dkms.OpenAgentKeys(context.Background(), dkms.AgentConfig{
		AgentID: a.id, PrivateKey: a.sk, ControlPlaneKey: a.cpKey, DeviceKey: a.device,
		Store: dkms.FileBlobStore{Path: path}, Clock: e.clock, Rand: newTestRand(7), Logger: e.cfg.Logger,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return k
}

// fetch gets the agent's key messages over mutual TLS, accepts them all and
// returns how many there were.
func (a *pqAgent) fetch(t *testing.T, ctx context.Context) int {
	t.Helper()
	resp, err := a.client.KeyMessages(ctx, a.cursor)
	if err != nil {
		t.Fatalf("agent %s: key messages: %v", a.id, err)
	}
	for i, m := range resp.Messages {
		if _, err := a.keys.Accept(ctx, m); err != nil {
			t.Fatalf("agent %s: message %d of %d refused: %v", a.id, i+1, len(resp.Messages), err)
		}
	}
	if resp.Cursor == "" {
		t.Fatal("empty cursor")
	}
	a.cursor = resp.Cursor
	return len(resp.Messages)
}

func (e *keyEnv) createKey(name string, policy *cpapi.KeyPolicy) cpapi.Key {
	e.t.Helper()
	k, err := e.admin.CreateKey(e.ctx(), cpapi.CreateKeyRequest{Name: name, Policy: policy})
	if err != nil {
		e.t.Fatalf("create key %s: %v", name, err)
	}
	return k
}

func versionState(k cpapi.Key, v uint32) string {
	for _, kv := range k.Versions {
		if kv.Version == v {
			return kv.State
		}
	}
	return "absent"
}

func auditActions(t *testing.T, e *keyEnv) []cpapi.AuditRecord {
	t.Helper()
	recs, err := e.admin.ListAudit(e.ctx(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return recs.Records
}

func TestKeysSealedStartRefusesKeyOpsButNotEnrollment(t *testing.T) {
	e := newKeyEnv(t, nil)
	if len(e.shares) != DefaultKeyShares {
		t.Fatalf("first start gave %d shares, want %d", len(e.shares), DefaultKeyShares)
	}
	for _, sh := range e.shares {
		if !strings.HasPrefix(sh, dkms.ShareTextPrefix) {
			t.Fatalf("share %q is not in text form", sh)
		}
	}
	if again := e.srv.TakeRootShares(); again != nil {
		t.Fatalf("shares handed out twice: %v", again)
	}
	st, err := e.admin.KeyStatus(e.ctx())
	if err != nil {
		t.Fatal(err)
	}
	if !st.Initialized || !st.Sealed || st.DevMode || st.SharesNeeded != 3 || st.SharesTotal != 5 || st.SharesProvided != 0 || st.RootKCV == "" || st.VerifyingKeyFingerprint == "" {
		t.Fatalf("status at first start: %+v", st)
	}
	// The shares are nowhere in the data directory.
	files, _ := filepath.Glob(filepath.Join(e.dir, "*"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, sh := range e.shares {
			if strings.Contains(string(b), sh) {
				t.Fatalf("share stored in %s", f)
			}
		}
	}

	// Key operations answer 503 with the sealed message.
	status, body := e.rawRequest("POST", "/v1/keys", e.adminToken, []byte(`{"name":"k1"}`), map[string]string{"Content-Type": "application/json"}, nil)
	if status != 503 || !strings.HasPrefix(body, `{"error":"controlplane: key service sealed: 0 of 3 root key shares given`) {
		t.Fatalf("create while sealed: %d %s", status, body)
	}
	_, err = e.admin.RotateKey(e.ctx(), "k1")
	if ae := wantStatus(t, err, 503); !errors.Is(ae, cpapi.ErrSealed) {
		t.Fatalf("503 does not unwrap to ErrSealed: %v", ae)
	}
	status, body = e.rawRequest("POST", "/v1/keys/k1/versions/1/retire", e.adminToken, nil, nil, nil)
	if status != 503 {
		t.Fatalf("retire while sealed: %d %s", status, body)
	}

	// Enrollment, heartbeats and telemetry keep working.
	a := e.enrollPQ("sealed-1", map[string]string{"site": "x"}, 11)
	if _, err := a.client.Heartbeat(e.ctx(), cpapi.Heartbeat{Health: &cpapi.Health{Status: "ok"}}); err != nil {
		t.Fatalf("heartbeat while sealed: %v", err)
	}
	if _, err := a.client.UploadTelemetry(e.ctx(), cpapi.TelemetryBatch{BatchSeq: 1, Epoch: testEpoch, Readings: []cpapi.Reading{{Device: "d", Metric: "m", TS: e.clock.Now(), Value: 1}}}); err != nil {
		t.Fatalf("telemetry while sealed: %v", err)
	}
	// The agent was registered with the key service while sealed.
	if _, err := e.srv.KeyService().Agent(e.ctx(), a.id); err != nil {
		t.Fatalf("agent not registered with the key service: %v", err)
	}
	// Its key fetch waits for the unseal; the verifying key does not.
	_, err = a.client.KeyMessages(e.ctx(), "")
	wantStatus(t, err, 503)
	vk, err := a.client.KeysVerifyingKey(e.ctx())
	if err != nil || !slices.Equal(vk.PublicKey, a.resp.KeysVerifyingKey) || vk.Algorithm != "ML-DSA-65" || vk.Context != dkms.KeyMessageContext {
		t.Fatalf("verifying key: %+v, %v", vk, err)
	}
	// Listing works while sealed and says so.
	list, err := e.admin.ListKeys(e.ctx())
	if err != nil || !list.Sealed || len(list.Keys) != 0 {
		t.Fatalf("list while sealed: %+v %v", list, err)
	}
}

func TestKeysUnsealWithSharesNamesBadOnes(t *testing.T) {
	e := newKeyEnv(t, nil)
	other := newKeyEnv(t, func(c *Config) { c.Rand = newTestRand(2) })

	st, err := e.admin.Unseal(e.ctx(), e.shares[0])
	if err != nil || !st.Sealed || st.SharesProvided != 1 || st.SharesNeeded != 3 {
		t.Fatalf("first share: %+v %v", st, err)
	}
	// The same share again is named as a duplicate and does not count.
	_, err = e.admin.Unseal(e.ctx(), e.shares[0])
	if ae := wantStatus(t, err, 409); !strings.Contains(ae.Message, "share 1 was already given") || !strings.Contains(ae.Message, "duplicate root key share") {
		t.Fatalf("duplicate share: %s", ae.Message)
	}
	// A share of another control plane's root.
	_, err = e.admin.Unseal(e.ctx(), other.shares[1])
	if ae := wantStatus(t, err, 400); !strings.Contains(ae.Message, "bad root key share") || !strings.Contains(ae.Message, "this service's root") {
		t.Fatalf("foreign share: %s", ae.Message)
	}
	// A mistyped share fails its checksum.
	typo := []byte(e.shares[1])
	i := len(dkms.ShareTextPrefix) + 10
	if typo[i] == 'A' {
		typo[i] = 'B'
	} else {
		typo[i] = 'A'
	}
	_, err = e.admin.Unseal(e.ctx(), string(typo))
	if ae := wantStatus(t, err, 400); !strings.Contains(ae.Message, "checksum") || strings.Contains(ae.Message, e.shares[1][len(dkms.ShareTextPrefix):]) {
		t.Fatalf("mistyped share: %s", ae.Message)
	}
	_, err = e.admin.Unseal(e.ctx(), "not a share")
	if ae := wantStatus(t, err, 400); !strings.Contains(ae.Message, "does not start with") {
		t.Fatalf("garbage share: %s", ae.Message)
	}
	// Only admins unseal.
	_, err = e.client(e.tokenFor(cpapi.RoleOperator)).Unseal(e.ctx(), e.shares[1])
	wantStatus(t, err, 403)
	st, _ = e.admin.KeyStatus(e.ctx())
	if st.SharesProvided != 1 || !st.Sealed {
		t.Fatalf("refused shares counted: %+v", st)
	}
	// Two more valid shares unseal.
	if st, err = e.admin.Unseal(e.ctx(), e.shares[3]); err != nil || !st.Sealed || st.SharesProvided != 2 {
		t.Fatalf("second share: %+v %v", st, err)
	}
	if st, err = e.admin.Unseal(e.ctx(), e.shares[4]); err != nil || st.Sealed || st.KEKVersion == 0 {
		t.Fatalf("third share: %+v %v", st, err)
	}
	e.createKey("after-unseal", nil)

	// A restart is sealed again and shows no shares; any three unseal it.
	e.restart()
	if sh := e.srv.TakeRootShares(); sh != nil {
		t.Fatalf("restart made shares again: %d", len(sh))
	}
	if st, _ := e.admin.KeyStatus(e.ctx()); !st.Sealed {
		t.Fatal("restart is not sealed")
	}
	e.unseal(4, 2, 1)
	if _, err := e.admin.RotateKey(e.ctx(), "after-unseal"); err != nil {
		t.Fatalf("rotate after second unseal: %v", err)
	}
	// Operators can seal again.
	if st, err := e.admin.Seal(e.ctx()); err != nil || !st.Sealed {
		t.Fatalf("seal: %+v %v", st, err)
	}
	_, err = e.admin.RotateKey(e.ctx(), "after-unseal")
	wantStatus(t, err, 503)

	// Each share given is audited without revealing it; refusals once.
	var unseals, errs int
	for _, r := range auditActions(t, e) {
		for _, sh := range e.shares {
			if strings.Contains(r.Result+r.Target, sh[len(dkms.ShareTextPrefix):]) {
				t.Fatalf("share in audit record %+v", r)
			}
		}
		if r.Action == "key.unseal" {
			unseals++
			if !strings.HasPrefix(r.Result, "ok") {
				errs++
			}
		}
	}
	// 1+1(dup)+1(foreign)+1(typo)+1(garbage)+1(403)+2, then 3 after restart.
	if unseals != 11 || errs != 5 {
		t.Fatalf("unseal audit records: %d (%d refused), want 11 (5)", unseals, errs)
	}
}

func TestKeysRotateRewrapPolicyRetireDestroyThroughAPI(t *testing.T) {
	e := newKeyEnv(t, nil)
	e.unseal()
	ctx := e.ctx()
	k := e.createKey("billing", &cpapi.KeyPolicy{AllAgents: true})
	if k.PrimaryVersion != 1 || k.Purpose != "data" || k.Policy.RotationPeriod != DefaultKeyRotationPeriod.String() || k.NextRotation == nil {
		t.Fatalf("created: %+v", k)
	}
	if _, err := e.admin.CreateKey(ctx, cpapi.CreateKeyRequest{Name: "billing"}); err == nil {
		t.Fatal("duplicate key created")
	} else {
		wantStatus(t, err, 409)
	}
	_, err := e.admin.CreateKey(ctx, cpapi.CreateKeyRequest{Name: "g", Purpose: "signing"})
	wantStatus(t, err, 400)
	status, body := e.rawRequest("POST", "/v1/keys", e.adminToken, []byte(`{"name":"bad/name"}`), nil, nil)
	if status != 400 || !strings.Contains(body, "bad/name") {
		t.Fatalf("bad name: %d %s", status, body)
	}

	svc := e.srv.KeyService()
	aad := []byte("device-7")
	env1, err := svc.Encrypt(ctx, "billing", []byte("reading 21.5"), aad)
	if err != nil {
		t.Fatal(err)
	}

	// A viewer may list but not rotate.
	viewer := e.client(e.tokenFor(cpapi.RoleViewer))
	if _, err := viewer.ListKeys(ctx); err != nil {
		t.Fatalf("viewer list: %v", err)
	}
	_, err = viewer.RotateKey(ctx, "billing")
	if ae := wantStatus(t, err, 403); !strings.Contains(ae.Message, "role viewer") {
		t.Fatalf("viewer rotate: %s", ae.Message)
	}

	op := e.client(e.tokenFor(cpapi.RoleOperator))
	k, err = op.RotateKey(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	if k.PrimaryVersion != 2 || versionState(k, 1) != "decrypt-only" || versionState(k, 2) != "primary" {
		t.Fatalf("after rotate: %+v", k)
	}
	_, err = op.RotateKey(ctx, "nope")
	wantStatus(t, err, 404)

	// Rewrap moves the envelope to v2 without returning the plaintext.
	rw, err := op.Rewrap(ctx, "billing", env1, aad)
	if err != nil {
		t.Fatal(err)
	}
	if rw.FromVersion != 1 || rw.Version != 2 || rw.Key != "billing" || strings.Contains(string(rw.Envelope), "reading 21.5") {
		t.Fatalf("rewrap: from %d to %d", rw.FromVersion, rw.Version)
	}
	if pt, err := svc.Decrypt(ctx, "billing", rw.Envelope, aad); err != nil || string(pt) != "reading 21.5" {
		t.Fatalf("rewrapped envelope opens to %q, %v", pt, err)
	}
	_, err = op.Rewrap(ctx, "billing", env1, []byte("other aad"))
	if ae := wantStatus(t, err, 400); !strings.Contains(ae.Message, "authentication failed") {
		t.Fatalf("wrong aad: %s", ae.Message)
	}
	_, err = op.Rewrap(ctx, "billing", []byte("garbage"), nil)
	wantStatus(t, err, 400)
	e.createKey("other", nil)
	_, err = op.Rewrap(ctx, "other", env1, aad)
	if ae := wantStatus(t, err, 400); !strings.Contains(ae.Message, "another key") {
		t.Fatalf("envelope of another key: %s", ae.Message)
	}

	// The primary can be neither retired nor destroyed.
	_, err = op.RetireKeyVersion(ctx, "billing", 2)
	if ae := wantStatus(t, err, 409); !strings.Contains(ae.Message, "rotate first") {
		t.Fatalf("retire primary: %s", ae.Message)
	}
	_, err = op.RetireKeyVersion(ctx, "billing", 9)
	wantStatus(t, err, 404)
	status, body = e.rawRequest("POST", "/v1/keys/telemetry/versions/zero/retire", e.adminToken, nil, nil, nil)
	if status != 400 || !strings.Contains(body, "version") {
		t.Fatalf("bad version: %d %s", status, body)
	}

	// Raise the minimum, retire, destroy (admin only).
	pol := k.Policy
	pol.MinDecryptVersion = 2
	pol.RotationPeriod = "0"
	k, err = op.SetKeyPolicy(ctx, "billing", pol)
	if err != nil || k.MinDecryptVersion != 2 || k.Policy.RotationPeriod != "0s" || k.NextRotation != nil || !k.Policy.AllAgents {
		t.Fatalf("set policy: %+v %v", k, err)
	}
	if _, err := svc.Decrypt(ctx, "billing", env1, aad); !errors.Is(err, dkms.ErrBelowMinVersion) {
		t.Fatalf("v1 envelope after raising the minimum: %v", err)
	}
	_, err = op.SetKeyPolicy(ctx, "billing", cpapi.KeyPolicy{MinDecryptVersion: 3})
	wantStatus(t, err, 400)
	_, err = op.SetKeyPolicy(ctx, "billing", cpapi.KeyPolicy{RotationPeriod: "soon"})
	wantStatus(t, err, 400)
	if k, err = op.RetireKeyVersion(ctx, "billing", 1); err != nil || versionState(k, 1) != "retired" {
		t.Fatalf("retire: %+v %v", k, err)
	}
	_, err = op.DestroyKeyVersion(ctx, "billing", 1)
	wantStatus(t, err, 403)
	if k, err = e.admin.DestroyKeyVersion(ctx, "billing", 1); err != nil || versionState(k, 1) != "destroyed" {
		t.Fatalf("destroy: %+v %v", k, err)
	}
	_, err = op.RetireKeyVersion(ctx, "billing", 1)
	wantStatus(t, err, 409)

	list, err := viewer.ListKeys(ctx)
	if err != nil || list.Sealed || len(list.Keys) != 4 || list.Keys[0].Name != "billing" || list.Keys[0].LatestVersion != 2 {
		t.Fatalf("list: %+v %v", list, err)
	}
}

func TestKeysAuditHasKeyEventsAndVerifies(t *testing.T) {
	e := newKeyEnv(t, nil)
	e.unseal()
	ctx := e.ctx()
	e.createKey("k", nil)
	if _, err := e.admin.RotateKey(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.RetireKeyVersion(ctx, "k", 2); err == nil {
		t.Fatal("retired the primary")
	}
	viewer := e.client(e.tokenFor(cpapi.RoleViewer))
	if _, err := viewer.RotateKey(ctx, "k"); err == nil {
		t.Fatal("viewer rotated")
	}
	a := e.enrollPQ("au", nil, 3)
	if _, err := e.admin.Decommission(ctx, a.id); err != nil {
		t.Fatal(err)
	}
	recs := auditActions(t, e)
	count := map[string]int{}
	for _, r := range recs {
		count[r.Action+" "+strings.SplitN(r.Result, ":", 2)[0]]++
		builtin := r.Action == "key.create-key" && r.Actor == "system" && (r.Target == cpapi.TelemetryKeyName+" v1" || r.Target == cpapi.GossipKeyName+" v1")
		// Revoking the agent rotates the built-in keys it held.
		revocation := r.Action == "key.rotate" && strings.HasSuffix(r.Target, ", agent "+a.id)
		if strings.HasPrefix(r.Action, "key.") && r.Action != "key.initialize" && r.Action != "key.seal" && r.Action != "key.revoke-agent" &&
			r.Action != "key.register-agent" && !builtin && !revocation && !strings.HasPrefix(r.Actor, "token:") {
			t.Errorf("key record without the operator's token as actor: %+v", r)
		}
	}
	want := map[string]int{
		// k by the operator, telemetry and gossip (built in) at unseal
		"key.initialize ok": 1, "key.seal ok": 1, "key.unseal ok": 3, "key.create-key ok": 3,
		// k by the operator, telemetry and gossip at the revocation
		"key.rotate ok": 3,
		// retiring the primary is refused once (by the key service), the
		// viewer's rotation once (by the role check)
		"key.retire error": 1, "key.rotate denied": 1,
		"key.register-agent ok": 1, "key.revoke-agent ok": 1,
	}
	for k, n := range want {
		if count[k] != n {
			t.Errorf("%q: %d audit records, want %d (all: %v)", k, count[k], n, count)
		}
	}
	for _, r := range recs {
		if r.Action == "key.rotate" && r.Result == "ok" && !strings.HasSuffix(r.Target, ", agent "+a.id) && r.Target != "k v2" {
			t.Errorf("rotate target %q", r.Target)
		}
		if r.Action == "key.revoke-agent" && r.Target != "agent "+a.id {
			t.Errorf("revoke target %q", r.Target)
		}
	}
	v, err := e.admin.VerifyAudit(ctx)
	if err != nil || !v.OK {
		t.Fatalf("audit verify: %+v %v", v, err)
	}
}

func TestKeysAgentFetchesKeyMessagesOverMutualTLS(t *testing.T) {
	e := newKeyEnv(t, nil)
	e.unseal()
	ctx := e.ctx()
	a := e.enrollPQ("edge-1", map[string]string{"site": "berlin"}, 21)
	e.createKey("fleet", &cpapi.KeyPolicy{AllAgents: true})
	e.createKey("berlin", &cpapi.KeyPolicy{AllowedLabels: map[string]string{"site": "berlin"}})
	e.createKey("cp-only", nil)
	if _, err := e.admin.CreateKey(ctx, cpapi.CreateKeyRequest{Name: "mesh", Purpose: "gossip", Policy: &cpapi.KeyPolicy{AllAgents: true}}); err != nil {
		t.Fatal(err)
	}

	if n := a.fetch(t, ctx); n != 5 {
		t.Fatalf("first fetch: %d messages, want 5 (fleet, berlin, mesh, and the built-in telemetry and gossip)", n)
	}
	held := map[string]bool{}
	for _, k := range a.keys.Keys() {
		held[k.Name] = true
	}
	if !held["fleet"] || !held["berlin"] || held["cp-only"] {
		t.Fatalf("agent holds %v", held)
	}
	svc := e.srv.KeyService()
	env, err := svc.Encrypt(ctx, "fleet", []byte("model weights"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := a.keys.Decrypt(ctx, "fleet", env, nil); err != nil || string(pt) != "model weights" {
		t.Fatalf("agent decrypts %q, %v", pt, err)
	}
	// Nothing changed: no messages.
	if n := a.fetch(t, ctx); n != 0 {
		t.Fatalf("unchanged fetch: %d messages", n)
	}
	// A rotation reaches the agent incrementally: v2 and v1 (now
	// decrypt-only), not the other keys.
	if _, err := e.admin.RotateKey(ctx, "fleet"); err != nil {
		t.Fatal(err)
	}
	if n := a.fetch(t, ctx); n != 2 {
		t.Fatalf("fetch after rotation: %d messages, want 2", n)
	}
	env2, err := svc.Encrypt(ctx, "fleet", []byte("v2 data"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := a.keys.Decrypt(ctx, "fleet", env2, nil); err != nil || string(pt) != "v2 data" {
		t.Fatalf("agent decrypts v2 data: %q, %v", pt, err)
	}
	// A change at the same clock instant as the previous one arrives
	// (the test clock does not move), and only it.
	if _, err := e.admin.RetireKeyVersion(ctx, "fleet", 1); err != nil {
		t.Fatal(err)
	}
	if n := a.fetch(t, ctx); n != 1 {
		t.Fatalf("retirement: %d messages, want 1", n)
	}
	if _, err := a.keys.Decrypt(ctx, "fleet", env, nil); !errors.Is(err, dkms.ErrKeyVersionRetired) {
		t.Fatalf("agent opens retired v1: %v", err)
	}
	// The agent loses the label: the berlin key's next version does not
	// reach it.
	if _, err := e.admin.UpdateLabels(ctx, a.id, cpapi.LabelsPatch{Remove: []string{"site"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.RotateKey(ctx, "berlin"); err != nil {
		t.Fatal(err)
	}
	if n := a.fetch(t, ctx); n != 0 {
		t.Fatalf("fetch after losing the label: %d messages", n)
	}
	// Raising a minimum decryption version is sent (with the primary).
	if _, err := e.admin.SetKeyPolicy(ctx, "mesh", cpapi.KeyPolicy{AllAgents: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.RotateKey(ctx, "mesh"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.SetKeyPolicy(ctx, "mesh", cpapi.KeyPolicy{AllAgents: true, MinDecryptVersion: 2}); err != nil {
		t.Fatal(err)
	}
	if n := a.fetch(t, ctx); n != 1 {
		t.Fatalf("fetch after rotating gossip and raising its minimum: %d messages, want v2", n)
	}
	env3, err := svc.Encrypt(ctx, "berlin", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.keys.Decrypt(ctx, "berlin", env3, nil); err == nil {
		t.Fatal("agent without the label opens data under the new berlin version")
	}
	// A fresh keyring catches up with everything from an empty cursor.
	fresh := &pqAgent{enrolledAgent: a.enrolledAgent, sk: a.sk, cpKey: a.cpKey, device: a.device}
	fresh.keys = e.openKeyring(fresh, filepath.Join(e.dir, "fresh.keyring"))
	if n := fresh.fetch(t, ctx); n != 5 {
		// fleet v1 (retired) and v2, mesh v2, telemetry v1, gossip v1
		t.Fatalf("fresh keyring: %d messages", n)
	}
	// Bad cursors are named.
	_, err = a.client.KeyMessages(ctx, "AgE")
	if ae := wantStatus(t, err, 400); !strings.Contains(ae.Message, "not a cursor") {
		t.Fatalf("bad cursor: %s", ae.Message)
	}
	// Operators cannot call the agent endpoint.
	status, _ := e.rawRequest("GET", "/v1/agent/keys", e.adminToken, nil, nil, nil)
	if status != 401 {
		t.Fatalf("bearer token on the agent endpoint: %d", status)
	}
}

func TestKeysAgentWithoutXWingKeyAndLateRegistration(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true })
	ctx := e.ctx()
	plain := e.enroll("no-pq", nil)
	_, err := plain.client.KeyMessages(ctx, "")
	if ae := wantStatus(t, err, 409); !strings.Contains(ae.Message, "without an X-Wing public key") {
		t.Fatalf("agent without X-Wing key: %s", ae.Message)
	}
	// An agent the key service does not know (its store was replaced) is
	// registered at its first fetch.
	a := e.enrollPQ("late", nil, 5)
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{KeysDatabaseFile, KeysDatabaseFile + "-wal", KeysDatabaseFile + "-shm"} {
		os.Remove(filepath.Join(e.dir, f))
	}
	e.start()
	a.client, err = cpapi.NewClient(cpapi.ClientConfig{URL: e.srv.URL(), CAPEM: []byte(a.resp.CABundle), Certificate: &a.cert})
	if err != nil {
		t.Fatal(err)
	}
	defer a.client.CloseIdleConnections()
	if _, err := e.srv.KeyService().Agent(ctx, a.id); !errors.Is(err, dkms.ErrUnknownAgent) {
		t.Fatalf("agent known to a new key store: %v", err)
	}
	e.createKey("fleet", &cpapi.KeyPolicy{AllAgents: true})
	if n := a.fetch(t, ctx); n != 3 {
		t.Fatalf("late registration: %d messages, want fleet and the built-in telemetry and gossip", n)
	}
}

func TestKeysDecommissionRevokesAgent(t *testing.T) {
	e := newKeyEnv(t, nil)
	e.unseal()
	ctx := e.ctx()
	gone := e.enrollPQ("gone", nil, 31)
	stay := e.enrollPQ("stay", nil, 32)
	e.createKey("fleet", &cpapi.KeyPolicy{AllAgents: true})
	gone.fetch(t, ctx)
	stay.fetch(t, ctx)
	// An attacker keeps a copy of the revoked agent's keyring.
	b, err := os.ReadFile(gone.path)
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(e.dir, "stolen.keyring")
	if err := os.WriteFile(copyPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	stolen := e.openKeyring(gone, copyPath)

	if _, err := e.admin.Decommission(ctx, gone.id); err != nil {
		t.Fatal(err)
	}
	k, err := e.admin.ListKeys(ctx)
	if err != nil || k.Keys[0].PrimaryVersion != 2 {
		t.Fatalf("decommission did not rotate the key: %+v %v", k, err)
	}
	info, err := e.srv.KeyService().Agent(ctx, gone.id)
	if err != nil || !info.Revoked() {
		t.Fatalf("agent not revoked in the key service: %+v %v", info, err)
	}
	// The revoked agent is refused; the other receives the new version.
	_, err = gone.client.KeyMessages(ctx, gone.cursor)
	wantStatus(t, err, 403)
	if n := stay.fetch(t, ctx); n != 6 {
		// the new and previous versions of fleet, telemetry and gossip
		t.Fatalf("remaining agent: %d messages after the revocation, want 6", n)
	}
	env, err := e.srv.KeyService().Encrypt(ctx, "fleet", []byte("after revocation"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := stay.keys.Decrypt(ctx, "fleet", env, nil); err != nil || string(pt) != "after revocation" {
		t.Fatalf("remaining agent: %q %v", pt, err)
	}
	if _, err := stolen.Decrypt(ctx, "fleet", env, nil); err == nil {
		t.Fatal("a copy of the revoked agent's keyring opens data sealed after the revocation")
	}
	if _, err := e.srv.KeyService().CatchUp(ctx, gone.id); !errors.Is(err, dkms.ErrRevoked) {
		t.Fatalf("catch-up for the revoked agent: %v", err)
	}
}

func TestKeysDecommissionWhileSealedRevokesAtUnseal(t *testing.T) {
	e := newKeyEnv(t, nil)
	e.unseal()
	ctx := e.ctx()
	a := e.enrollPQ("a", nil, 41)
	e.createKey("fleet", &cpapi.KeyPolicy{AllAgents: true})
	if _, err := e.admin.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.Decommission(ctx, a.id); err != nil {
		t.Fatalf("decommission while sealed: %v", err)
	}
	if info, _ := e.srv.KeyService().Agent(ctx, a.id); info.Revoked() {
		t.Fatal("revoked while sealed")
	}
	// A restart in between loses nothing: the registry is the record.
	e.restart()
	e.unseal(2, 3, 4)
	info, err := e.srv.KeyService().Agent(ctx, a.id)
	if err != nil || !info.Revoked() {
		t.Fatalf("not revoked after unseal: %+v %v", info, err)
	}
	k, _ := e.srv.KeyService().Key(ctx, "fleet")
	if k.Primary != 2 {
		t.Fatalf("key not rotated at unseal: primary v%d", k.Primary)
	}
}

func TestKeysScheduledRotation(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.RotationPeriod = time.Hour })
	e.unseal()
	ctx := e.ctx()
	e.createKey("hourly", nil)
	e.createKey("manual", &cpapi.KeyPolicy{RotationPeriod: "off"})
	e.srv.keysTick(ctx)
	if k, _ := e.srv.KeyService().Key(ctx, "hourly"); k.Latest != 1 {
		t.Fatalf("rotated early: v%d", k.Latest)
	}
	e.clock.Advance(time.Hour + time.Second)
	e.srv.keysTick(ctx)
	hourly, _ := e.srv.KeyService().Key(ctx, "hourly")
	manual, _ := e.srv.KeyService().Key(ctx, "manual")
	if hourly.Latest != 2 || manual.Latest != 1 {
		t.Fatalf("after an hour: hourly v%d, manual v%d", hourly.Latest, manual.Latest)
	}
	found := false
	for _, r := range auditActions(t, e) {
		if r.Action == "key.rotate" && r.Actor == "system:schedule" && r.Target == "hourly v2" {
			found = true
		}
	}
	if !found {
		t.Fatal("scheduled rotation not audited")
	}
	// Sealed: the tick does nothing (and records nothing).
	before := len(auditActions(t, e))
	e.admin.Seal(ctx)
	e.clock.Advance(2 * time.Hour)
	e.srv.keysTick(ctx)
	if after := len(auditActions(t, e)); after != before+1 {
		t.Fatalf("sealed tick wrote %d records", after-before-1)
	}
}

// TestKeysSchedulerRunsOnTheCheckInterval: the background check ticks on
// the server's clock, so an hour's interval passes when the clock says so.
func TestKeysSchedulerRunsOnTheCheckInterval(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) {
		c.Keys.DevUnseal = true
		c.Keys.RotationPeriod = time.Minute
		c.Keys.CheckInterval = time.Hour
	})
	e.createKey("k", nil)
	deadline := time.Now().Add(10 * time.Second)
	for e.clock.Waiters() == 0 { // the check's ticker
		if time.Now().After(deadline) {
			t.Fatal("the background check never started its ticker")
		}
		time.Sleep(time.Millisecond)
	}
	e.clock.Advance(time.Hour)
	for {
		k, _ := e.srv.KeyService().Key(e.ctx(), "k")
		if k.Latest >= 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the key was not rotated by the background check")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestKeysDevUnseal(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true })
	if e.shares != nil {
		t.Fatal("dev mode handed out shares")
	}
	st, _ := e.admin.KeyStatus(e.ctx())
	if st.Sealed || !st.DevMode {
		t.Fatalf("dev status: %+v", st)
	}
	e.createKey("k", nil)
	e.restart()
	if n := strings.Count(e.logs.String(), DevUnsealWarning); n != 2 {
		t.Fatalf("dev warning logged %d times over two starts", n)
	}
	if !strings.Contains(e.logs.String(), "level=WARN msg=\""+DevUnsealWarning) {
		t.Fatal("dev warning is not at WARN level")
	}
	if _, err := e.admin.RotateKey(e.ctx(), "k"); err != nil {
		t.Fatalf("rotate after dev restart: %v", err)
	}
	// The dev store refuses a production start, and the other way round.
	e.srv.Close()
	cfg := e.cfg
	cfg.Keys.DevUnseal = false
	_, err := New(cfg)
	if !errors.Is(err, dkms.ErrDevStore) || !strings.Contains(err.Error(), "--dev-unseal") {
		t.Fatalf("production start on a dev store: %v", err)
	}
	p := newKeyEnv(t, nil)
	p.srv.Close()
	cfg = p.cfg
	cfg.Keys.DevUnseal = true
	if _, err := New(cfg); !errors.Is(err, dkms.ErrDevStore) {
		t.Fatalf("dev start on a production store: %v", err)
	}
}

func TestKeysConfigValidation(t *testing.T) {
	for _, kc := range []KeyConfig{
		{Shares: 2, Threshold: 3},
		{Shares: 256},
		{Shares: 3, Threshold: -1},
		{RotationPeriod: time.Millisecond},
		{CheckInterval: -time.Second},
	} {
		_, err := New(Config{DataDir: t.TempDir(), Keys: kc})
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "Keys.") {
			t.Errorf("%+v: %v", kc, err)
		}
	}
	e := newKeyEnv(t, func(c *Config) { c.Keys.Shares, c.Keys.Threshold = 2, 0 })
	if len(e.shares) != 2 {
		t.Fatalf("%d shares", len(e.shares))
	}
	if st, _ := e.admin.KeyStatus(e.ctx()); st.SharesNeeded != 2 {
		t.Fatalf("threshold defaults to %d with 2 shares", st.SharesNeeded)
	}
	e.unseal(0, 1)
}

func TestKeyCursorRoundTripAndDifference(t *testing.T) {
	c := keyCursor{keys: []cursorKey{
		{name: "a", min: 0, latest: 3, states: []dkms.State{dkms.StateRetired, dkms.StateDecryptOnly, dkms.StatePrimary}},
		{name: "b", min: 2, latest: 4, states: []dkms.State{dkms.StateDecryptOnly, dkms.StateDecryptOnly, dkms.StatePrimary}},
	}}
	got, err := parseKeyCursor(c.String())
	if err != nil || got.String() != c.String() || len(got.keys) != 2 || got.keys[1].first() != 2 {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	if empty, err := parseKeyCursor(keyCursor{}.String()); err != nil || len(empty.keys) != 0 {
		t.Fatalf("empty cursor: %+v %v", empty, err)
	}
	now := []dkms.KeyInfo{
		{Name: "a", Primary: 4, Latest: 4, Versions: []dkms.VersionInfo{{Version: 1, State: dkms.StateDestroyed}, {Version: 2, State: dkms.StateDecryptOnly}, {Version: 3, State: dkms.StateDecryptOnly}, {Version: 4, State: dkms.StatePrimary}}},
		{Name: "b", Primary: 4, Latest: 4, Policy: dkms.Policy{MinDecryptVersion: 3}, Versions: []dkms.VersionInfo{{Version: 1}, {Version: 2, State: dkms.StateDecryptOnly}, {Version: 3, State: dkms.StateDecryptOnly}, {Version: 4, State: dkms.StatePrimary}}},
		{Name: "c", Primary: 1, Latest: 1, Versions: []dkms.VersionInfo{{Version: 1, State: dkms.StatePrimary}}},
	}
	need := missing(c, now)
	want := map[string][]uint32{"a": {1, 3, 4}, "b": {4}, "c": {1}}
	for k, vs := range want {
		if !slices.Equal(need[k], vs) {
			t.Errorf("key %s: missing %v, want %v", k, need[k], vs)
		}
	}
	for _, bad := range []string{"", "!!", "Ag", base64URL(1, 0), base64URL(1, 1, 'a', 0, 2, 1, 1, 1), base64URL(1, 1, 'a', 0, 1, 1, 9, 1),
		base64URL(1, 1, 'b', 0, 1, 1, 1, 1, 1, 'a', 0, 1, 1, 1, 1), base64URL(1, 1, 'a', 5, 1, 0)} {
		if _, err := parseKeyCursor(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func base64URL(b ...byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func FuzzParseKeyCursor(f *testing.F) {
	f.Add(keyCursor{keys: []cursorKey{{name: "fleet", latest: 2, states: []dkms.State{dkms.StateDecryptOnly, dkms.StatePrimary}}}}.String())
	f.Add(keyCursor{}.String())
	f.Add(base64URL(1, 1, 'a', 0, 3, 2, 2, 2, 1, 1))
	f.Add("AQ")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseKeyCursor(s)
		if err != nil {
			var he *httpError
			if !errors.As(err, &he) || he.status != 400 {
				t.Fatalf("refusal %v is not a 400", err)
			}
			return
		}
		again, err := parseKeyCursor(c.String())
		if err != nil || again.String() != c.String() {
			t.Fatalf("%q parsed to %+v, which does not round-trip: %v", s, c, err)
		}
	})
}

func FuzzKeyPolicyFromWire(f *testing.F) {
	f.Add("720h", "1m", "", "site", "berlin", uint32(2), true)
	f.Add("off", "", "-1h", "", "", uint32(0), false)
	f.Add("soon", "x", "y", "bad key!", "\x00", uint32(1<<31), false)
	f.Fuzz(func(t *testing.T, rot, ig, rg, lk, lv string, minV uint32, all bool) {
		p := &cpapi.KeyPolicy{RotationPeriod: rot, InstallGrace: ig, RemoveGrace: rg, MinDecryptVersion: minV, AllAgents: all}
		if lk != "" {
			p.AllowedLabels = map[string]string{lk: lv}
		}
		out, err := policyFromWire(p, time.Hour)
		if err != nil {
			var he *httpError
			if !errors.As(err, &he) || he.status != 400 || he.msg == "" {
				t.Fatalf("refusal %v is not a 400 with a message", err)
			}
			return
		}
		if out.RotationPeriod < 0 || out.InstallGrace < 0 || out.RemoveGrace < 0 {
			t.Fatalf("negative duration accepted: %+v", out)
		}
	})
}

func TestKeysAgentPollSeesChangesMadeInProcess(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true })
	ctx := e.ctx()
	a := e.enrollPQ("p", map[string]string{"zone": "a"}, 51)
	svc := e.srv.KeyService()
	if _, err := svc.CreateKey(ctx, "direct", dkms.PurposeData, dkms.Policy{AllowedLabels: map[string]string{"zone": "b"}}); err != nil {
		t.Fatal(err)
	}
	if n := a.fetch(t, ctx); n != 2 {
		t.Fatalf("%d messages, want only the built-in telemetry and gossip keys, not one the agent may not hold", n)
	}
	// Changes made through KeyService, not the HTTP API, reach the next
	// poll: a policy change, then the agent's labels.
	if _, err := svc.SetPolicy(ctx, "direct", dkms.Policy{AllAgents: true}); err != nil {
		t.Fatal(err)
	}
	if n := a.fetch(t, ctx); n != 1 {
		t.Fatalf("after the policy change: %d messages", n)
	}
	if _, err := svc.Rotate(ctx, "direct"); err != nil {
		t.Fatal(err)
	}
	if n := a.fetch(t, ctx); n != 2 {
		t.Fatalf("after a rotation: %d messages", n)
	}
	if _, err := svc.SetPolicy(ctx, "direct", dkms.Policy{AllowedLabels: map[string]string{"zone": "a"}}); err != nil {
		t.Fatal(err)
	}
	if n := a.fetch(t, ctx); n != 0 {
		t.Fatalf("same versions under a label policy the agent matches: %d messages", n)
	}
	if _, err := e.admin.UpdateLabels(ctx, a.id, cpapi.LabelsPatch{Set: map[string]string{"zone": "c"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Rotate(ctx, "direct"); err != nil {
		t.Fatal(err)
	}
	if n := a.fetch(t, ctx); n != 0 {
		t.Fatalf("after losing the label: %d messages", n)
	}
}

// FuzzKeyRequestBodies feeds arbitrary bytes to the decoding and checking
// of the key service's request bodies: no panic, and every refusal is a
// 400 or 413 with a message.
func FuzzKeyRequestBodies(f *testing.F) {
	f.Add([]byte(`{"name":"telemetry","purpose":"data","policy":{"rotation_period":"720h","all_agents":true,"allowed_labels":{"site":"x"}}}`))
	f.Add([]byte(`{"rotation_period":"0","min_decrypt_version":3,"allowed_agents":["ag_1"],"install_grace":"1m","remove_grace":"1h"}`))
	f.Add([]byte(`{"envelope":"RUZFAQ==","aad":"eA=="}`))
	f.Add([]byte(`{"share":"dkms-share:AAAA"}`))
	f.Add([]byte(`{"purpose":"gossip","policy":null}`))
	f.Add([]byte(`{"envelope":"!!"}`))
	f.Add([]byte(`{"shares":5,"threshold":3}`))
	f.Add([]byte(`{"shares":2,"threshold":3}`))
	s := &Server{cfg: Config{MaxBodyBytes: 4096}}
	f.Fuzz(func(t *testing.T, body []byte) {
		decode := func(v any) error {
			r := httptest.NewRequest("POST", "/", bytes.NewReader(body))
			r.Header.Set("Content-Type", "application/json")
			return s.decodeJSON(httptest.NewRecorder(), r, v)
		}
		check := func(err error) {
			if err == nil {
				return
			}
			var he *httpError
			if !errors.As(err, &he) || (he.status != http.StatusBadRequest && he.status != http.StatusRequestEntityTooLarge) || he.msg == "" {
				t.Fatalf("refusal %v is not a 400/413 with a message", err)
			}
		}
		var ck cpapi.CreateKeyRequest
		if err := decode(&ck); err == nil {
			if _, err := purposeFromWire(ck.Purpose); err != nil {
				check(err)
			}
			_, err := policyFromWire(ck.Policy, time.Hour)
			check(err)
		} else {
			check(err)
		}
		var kp cpapi.KeyPolicy
		if err := decode(&kp); err == nil {
			_, err := policyFromWire(&kp, 0)
			check(err)
		} else {
			check(err)
		}
		var rw cpapi.RewrapRequest
		if err := decode(&rw); err == nil {
			pqcrypto.ParseHeader(rw.Envelope)
		} else {
			check(err)
		}
		var ur cpapi.UnsealRequest
		if err := decode(&ur); err == nil {
			dkms.ParseShare(ur.Share)
		} else {
			check(err)
		}
		var rk cpapi.RekeyRootRequest
		if err := decode(&rk); err == nil {
			check(checkRekeyRequest(rk))
		} else {
			check(err)
		}
	})
}
