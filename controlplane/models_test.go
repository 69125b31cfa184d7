package controlplane

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// testModelFile encodes a small valid LR model (3 features, 2 classes)
// whose weights depend on seed.
func testModelFile(t *testing.T, name, version string, seed uint64) []byte {
	t.Helper()
	a, err := fedlearn.ParseArch("lr", 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	f := &fedlearn.File{
		Name: name, Version: version, Arch: a, Weights: fedlearn.InitWeights(a, seed),
		Schema: fedlearn.Schema{Features: []fedlearn.Feature{
			{Name: "temperature", Metric: "temperature", Agg: fedlearn.AggLatest, Mean: 21, Std: 2, Impute: 21},
			{Name: "light", Metric: "light", Agg: fedlearn.AggLatest, Mean: 100, Std: 150, Impute: 100},
			{Name: "co2", Metric: "co2", Agg: fedlearn.AggLatest, Mean: 600, Std: 200, Impute: 600},
		}, Label: fedlearn.Label{Metric: "occupancy"}},
		Labels:   []string{"empty", "occupied"},
		Training: fedlearn.Training{Dataset: "occupancy", Epochs: 3, Seed: seed, Accuracy: 0.97, Loss: 0.1, Created: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)},
	}
	b, err := f.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestModelRegistryPushListGet(t *testing.T) {
	e := newTestEnv(t, nil)
	file := testModelFile(t, "occupancy", "1", 1)
	m, err := e.admin.PushModel(e.ctx(), file)
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := fedlearn.Decode(file)
	if m.Name != "occupancy" || m.Version != "1" || m.Digest != plain.DigestHex() || m.Arch != "lr" || len(m.Features) != 3 ||
		m.Training.Accuracy != 0.97 || !strings.HasPrefix(m.Signer, "controlplane:") || m.PushedBy == "" {
		t.Fatalf("pushed: %+v", m)
	}
	// The stored file verifies with the key the control plane signs key
	// messages with, and keeps the digest it was pushed with.
	signed, err := e.admin.DownloadModel(e.ctx(), "occupancy", "1")
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(signed)) != m.Size {
		t.Errorf("downloaded %d bytes, size says %d", len(signed), m.Size)
	}
	f, err := fedlearn.Verify(signed, e.srv.keys.signer.Public())
	if err != nil {
		t.Fatalf("downloaded file: %v", err)
	}
	if f.DigestHex() != m.Digest || f.SignerID != m.Signer {
		t.Errorf("verified digest %s signer %s, want %s %s", f.DigestHex(), f.SignerID, m.Digest, m.Signer)
	}
	// Pushing the same file again changes nothing; other content under the
	// same version is a conflict.
	if again, err := e.admin.PushModel(e.ctx(), file); err != nil || again.PushedAt != m.PushedAt {
		t.Errorf("second push: %v %+v", err, again)
	}
	_, err = e.admin.PushModel(e.ctx(), testModelFile(t, "occupancy", "1", 2))
	if ae := wantStatus(t, err, http.StatusConflict); !strings.Contains(ae.Message, "new version") {
		t.Errorf("conflict message: %s", ae.Message)
	}
	if _, err := e.admin.PushModel(e.ctx(), testModelFile(t, "occupancy", "2", 2)); err != nil {
		t.Fatal(err)
	}
	list, err := e.admin.ListModels(e.ctx())
	if err != nil || len(list.Models) != 2 || list.Models[0].Version != "1" || list.Models[1].Version != "2" || len(list.Deployments) != 0 {
		t.Fatalf("list: %v %+v", err, list)
	}
	vs, err := e.admin.ModelVersions(e.ctx(), "occupancy")
	if err != nil || len(vs.Versions) != 2 {
		t.Fatalf("versions: %v %+v", err, vs)
	}
	got, err := e.admin.GetModel(e.ctx(), "occupancy", "2")
	if err != nil || got.Version != "2" {
		t.Fatalf("get: %v %+v", err, got)
	}
	_, err = e.admin.GetModel(e.ctx(), "occupancy", "9")
	wantStatus(t, err, http.StatusNotFound)
	_, err = e.admin.ModelVersions(e.ctx(), "nothing")
	wantStatus(t, err, http.StatusNotFound)
	_, err = e.admin.DownloadModel(e.ctx(), "occupancy", "9")
	wantStatus(t, err, http.StatusNotFound)

	// Writes need admin; reads viewer.
	viewer := e.client(e.tokenFor(cpapi.RoleViewer))
	operator := e.client(e.tokenFor(cpapi.RoleOperator))
	if _, err := viewer.ListModels(e.ctx()); err != nil {
		t.Error(err)
	}
	_, err = operator.PushModel(e.ctx(), testModelFile(t, "occupancy", "3", 3))
	wantStatus(t, err, http.StatusForbidden)
	_, err = operator.DeployModel(e.ctx(), "occupancy", "1", "site=a")
	wantStatus(t, err, http.StatusForbidden)

	// Pushes are audited, the refused one too.
	recs, err := e.admin.ListAudit(e.ctx(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var pushes []string
	for _, r := range recs.Records {
		if r.Action == "model.push" {
			pushes = append(pushes, r.Target+" "+r.Result)
		}
	}
	if len(pushes) != 5 || !strings.HasPrefix(pushes[0], "occupancy@1 ok") || !strings.Contains(pushes[1], "already stored") ||
		!strings.Contains(pushes[2], "error 409") || !strings.Contains(pushes[4], "denied") {
		t.Errorf("audited pushes: %q", pushes)
	}
}

func TestModelPushBadInput(t *testing.T) {
	e := newTestEnv(t, nil)
	good := testModelFile(t, "occupancy", "1", 1)
	// A NaN weight with a correct digest, as a broken trainer might write.
	nan := bytes.Clone(good)
	hl := int(binary.BigEndian.Uint32(nan[10:]))
	binary.LittleEndian.PutUint64(nan[18+hl+8*7:], math.Float64bits(math.NaN())) // b0 value 1 (w0 is 3x2)
	sum := sha256.Sum256(nan[:len(nan)-32])
	copy(nan[len(nan)-32:], sum[:])
	cases := []struct {
		name string
		body []byte
		want string
	}{
		{"empty", nil, "truncated"},
		{"truncated", good[:len(good)-10], "truncated"},
		{"not a model", []byte("hello, world"), "not a model file"},
		{"wrong digest", func() []byte { b := bytes.Clone(good); b[len(b)-100] ^= 1; return b }(), "digest mismatch"},
		{"trailing bytes", append(bytes.Clone(good), "garbage!"...), "trailing"},
		{"NaN weight", nan, `tensor "b0" value 1 is NaN`},
		{"bad version", func() []byte { b := bytes.Clone(good); b[9] = 7; return b }(), "format version: version 7"},
	}
	for _, tc := range cases {
		_, err := e.admin.PushModel(e.ctx(), tc.body)
		ae := wantStatus(t, err, http.StatusBadRequest)
		if !strings.Contains(ae.Message, "model file refused") || !strings.Contains(ae.Message, tc.want) {
			t.Errorf("%s: message %q does not name %q", tc.name, ae.Message, tc.want)
		}
	}
	status, msg := e.rawRequest("POST", "/v1/models", e.adminToken, good, map[string]string{"Content-Type": "application/json"}, nil)
	if status != http.StatusUnsupportedMediaType || !strings.Contains(msg, cpapi.ModelContentType) {
		t.Errorf("JSON content type: %d %s", status, msg)
	}
	list, err := e.admin.ListModels(e.ctx())
	if err != nil || len(list.Models) != 0 {
		t.Fatalf("refused pushes stored something: %v %+v", err, list.Models)
	}

	// Deploy and rollback refusals.
	if _, err := e.admin.PushModel(e.ctx(), good); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, version, selector string
		status                  int
		want                    string
	}{
		{"occupancy", "9", "site=a", http.StatusNotFound, "not in the registry"},
		{"occupancy", "1", "", http.StatusBadRequest, "selector: empty"},
		{"occupancy", "1", "site", http.StatusBadRequest, "not key=value"},
		{"occupancy", "1", "-bad=x", http.StatusBadRequest, "label key"},
		{"occupancy", "1/x", "site=a", http.StatusBadRequest, "version"},
		{"nothing", "1", "site=a", http.StatusNotFound, "not in the registry"},
	} {
		_, err := e.admin.DeployModel(e.ctx(), tc.name, tc.version, tc.selector)
		if ae := wantStatus(t, err, tc.status); !strings.Contains(ae.Message, tc.want) {
			t.Errorf("deploy %s %s %q: %q does not say %q", tc.name, tc.version, tc.selector, ae.Message, tc.want)
		}
	}
	_, err = e.admin.RollbackModel(e.ctx(), "occupancy", "")
	wantStatus(t, err, http.StatusNotFound)
}

func TestModelDeployRollback(t *testing.T) {
	e := newTestEnv(t, nil)
	for i, v := range []string{"1", "2", "3"} {
		if _, err := e.admin.PushModel(e.ctx(), testModelFile(t, "occupancy", v, uint64(i))); err != nil {
			t.Fatal(err)
		}
	}
	deploy := func(v, sel string) cpapi.ModelDeployment {
		t.Helper()
		d, err := e.admin.DeployModel(e.ctx(), "occupancy", v, sel)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	active := func() map[string]string {
		t.Helper()
		l, err := e.admin.ListModels(e.ctx())
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, d := range l.Deployments {
			out[d.Selector] = d.Version
		}
		return out
	}
	d1 := deploy("1", "site=a")
	if !d1.Active || d1.Selector != "site=a" {
		t.Fatalf("deploy: %+v", d1)
	}
	if again := deploy("1", "site=a"); again.Seq != d1.Seq {
		t.Errorf("deploying the active version again made a new deployment %d", again.Seq)
	}
	deploy("2", "site=a")
	deploy("3", "site=a")
	// Selectors are canonical: the same labels in another order are the
	// same selector.
	deploy("1", "zone=x,site=b")
	if got := active(); got["site=a"] != "3" || got["site=b,zone=x"] != "1" || len(got) != 2 {
		t.Fatalf("active: %v", got)
	}
	// Deployed to two selectors: rollback must name one.
	_, err := e.admin.RollbackModel(e.ctx(), "occupancy", "")
	if ae := wantStatus(t, err, http.StatusBadRequest); !strings.Contains(ae.Message, "site=a") {
		t.Errorf("ambiguous rollback: %s", ae.Message)
	}
	rb, err := e.admin.RollbackModel(e.ctx(), "occupancy", "site=a")
	if err != nil || rb.RolledBack.Version != "3" || rb.Active.Version != "2" || rb.RolledBack.RolledBackAt == nil {
		t.Fatalf("rollback: %v %+v", err, rb)
	}
	if rb, err = e.admin.RollbackModel(e.ctx(), "occupancy", "site=a"); err != nil || rb.Active.Version != "1" {
		t.Fatalf("second rollback: %v %+v", err, rb)
	}
	_, err = e.admin.RollbackModel(e.ctx(), "occupancy", "site=a")
	if ae := wantStatus(t, err, http.StatusConflict); !strings.Contains(ae.Message, "none to return to") {
		t.Errorf("rollback past the first: %s", ae.Message)
	}
	// A new deployment goes on top; its rollback returns to version 1.
	deploy("3", "site=a")
	if rb, err = e.admin.RollbackModel(e.ctx(), "occupancy", "site=a"); err != nil || rb.Active.Version != "1" {
		t.Fatalf("rollback after redeploy: %v %+v", err, rb)
	}
	_, err = e.admin.RollbackModel(e.ctx(), "occupancy", "site=c")
	wantStatus(t, err, http.StatusNotFound)
	vs, err := e.admin.ModelVersions(e.ctx(), "occupancy")
	if err != nil || len(vs.Deployments) != 5 {
		t.Fatalf("history: %v %d deployments", err, len(vs.Deployments))
	}
	recs, _ := e.admin.ListAudit(e.ctx(), 0, 1000)
	n := 0
	for _, r := range recs.Records {
		if r.Action == "model.rollback" && r.Result == "ok" {
			n++
		}
	}
	if n != 3 {
		t.Errorf("%d rollbacks audited ok, want 3", n)
	}

	// Undeploy ends the whole stack of a selector: nothing is active
	// there; the other selector keeps its deployment.
	_, err = e.admin.UndeployModel(e.ctx(), "occupancy", "")
	wantStatus(t, err, http.StatusBadRequest)
	_, err = e.client(e.tokenFor(cpapi.RoleViewer)).UndeployModel(e.ctx(), "occupancy", "site=a")
	wantStatus(t, err, http.StatusForbidden)
	un, err := e.admin.UndeployModel(e.ctx(), "occupancy", "site=a")
	if err != nil || len(un.Ended) != 1 || un.Ended[0].Version != "1" || un.Ended[0].RolledBackAt == nil || un.Ended[0].Active {
		t.Fatalf("undeploy: %v %+v", err, un)
	}
	if got := active(); got["site=a"] != "" || got["site=b,zone=x"] != "1" || len(got) != 1 {
		t.Fatalf("active after undeploy: %v", got)
	}
	_, err = e.admin.UndeployModel(e.ctx(), "occupancy", "site=a")
	wantStatus(t, err, http.StatusNotFound)
	recs, _ = e.admin.ListAudit(e.ctx(), 0, 1000)
	n = 0
	for _, r := range recs.Records {
		if r.Action == "model.undeploy" && r.Result == "ok" && r.Target == "occupancy on site=a" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d undeploys audited ok, want 1", n)
	}
}

func TestAgentModelDelivery(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true })
	a := e.enrollPQ("edge-a", map[string]string{"site": "a"}, 1)
	b := e.enrollPQ("edge-b", map[string]string{"site": "b"}, 2)
	if _, err := e.admin.PushModel(e.ctx(), testModelFile(t, "occupancy", "1", 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.PushModel(e.ctx(), testModelFile(t, "occupancy", "2", 2)); err != nil {
		t.Fatal(err)
	}
	resp, err := a.client.WatchModels(e.ctx(), "", 0)
	if err != nil || len(resp.Assignments) != 0 || resp.Cursor == "" {
		t.Fatalf("before any deployment: %v %+v", err, resp)
	}
	if _, err := e.admin.DeployModel(e.ctx(), "occupancy", "1", "site=a"); err != nil {
		t.Fatal(err)
	}
	open := func(ag *pqAgent, name, version string) *fedlearn.File {
		t.Helper()
		env, err := ag.client.FetchAssignedModel(e.ctx(), name, version)
		if err != nil {
			t.Fatalf("fetch %s %s: %v", name, version, err)
		}
		file, _, err := pqcrypto.Open(nil, env, &pqcrypto.Keys{
			RecipientID: ag.id, PrivateKey: pqcrypto.PrivateKeyFor(ag.sk.Public().Fingerprint(), 1, ag.sk), AAD: cpapi.ModelAAD(ag.id, name, version),
		})
		if err != nil {
			t.Fatalf("open %s %s: %v", name, version, err)
		}
		// Sealed to this agent and bound to this model: another AAD fails.
		if _, _, err := pqcrypto.Open(nil, env, &pqcrypto.Keys{
			RecipientID: ag.id, PrivateKey: pqcrypto.PrivateKeyFor(ag.sk.Public().Fingerprint(), 1, ag.sk), AAD: cpapi.ModelAAD(ag.id, name, version+"x"),
		}); err == nil {
			t.Error("envelope opened with another version's associated data")
		}
		f, err := fedlearn.Verify(file, ag.cpKey)
		if err != nil {
			t.Fatalf("verify %s %s with the pinned key-message key: %v", name, version, err)
		}
		return f
	}
	ra, err := a.client.WatchModels(e.ctx(), resp.Cursor, 0)
	if err != nil || len(ra.Assignments) != 1 || ra.Assignments[0].Version != "1" || ra.Cursor == resp.Cursor {
		t.Fatalf("agent a: %v %+v", err, ra)
	}
	if f := open(a, "occupancy", "1"); f.Version != "1" || f.DigestHex() != ra.Assignments[0].Digest {
		t.Errorf("agent a got %s %s", f.Version, f.DigestHex())
	}
	rb, err := b.client.WatchModels(e.ctx(), "", 0)
	if err != nil || len(rb.Assignments) != 0 {
		t.Fatalf("agent b (site=b): %v %+v", err, rb)
	}
	_, err = b.client.FetchAssignedModel(e.ctx(), "occupancy", "1")
	wantStatus(t, err, http.StatusNotFound)
	_, err = a.client.FetchAssignedModel(e.ctx(), "occupancy", "2")
	wantStatus(t, err, http.StatusNotFound)

	// A held request answers when a deployment changes the assignments.
	type result struct {
		r   cpapi.AgentModelsResponse
		err error
		at  time.Duration
	}
	start := time.Now()
	done := make(chan result, 1)
	go func() {
		r, err := a.client.WatchModels(e.ctx(), ra.Cursor, time.Minute)
		done <- result{r, err, time.Since(start)}
	}()
	time.Sleep(200 * time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("held request answered before any change: %+v", r)
	default:
	}
	if _, err := e.admin.DeployModel(e.ctx(), "occupancy", "2", "site=a"); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || len(r.r.Assignments) != 1 || r.r.Assignments[0].Version != "2" || r.at > 30*time.Second {
		t.Fatalf("held request: %v %+v after %s", r.err, r.r, r.at)
	}
	open(a, "occupancy", "2")
	// Rollback returns agent a to version 1.
	if _, err := e.admin.RollbackModel(e.ctx(), "occupancy", ""); err != nil {
		t.Fatal(err)
	}
	if r, err := a.client.WatchModels(e.ctx(), "", 0); err != nil || r.Assignments[0].Version != "1" {
		t.Fatalf("after rollback: %v %+v", err, r)
	}
	// Relabelling agent b to site=a assigns it the model.
	if _, err := e.admin.UpdateLabels(e.ctx(), b.id, cpapi.LabelsPatch{Set: map[string]string{"site": "a"}}); err != nil {
		t.Fatal(err)
	}
	if r, err := b.client.WatchModels(e.ctx(), rb.Cursor, time.Second); err != nil || len(r.Assignments) != 1 {
		t.Fatalf("agent b after relabel: %v %+v", err, r)
	}
	open(b, "occupancy", "1")
	if m, err := e.admin.Metrics(e.ctx()); err != nil || !strings.Contains(m, `controlplane_model_files_total{result="delivered"} 3`) {
		t.Errorf("delivery metric: %v", err)
	}
	// Bad parameters.
	_, err = a.client.WatchModels(e.ctx(), "", 6*time.Minute)
	if !errors.Is(err, cpapi.ErrBadRequest) {
		t.Errorf("wait above the limit: %v", err)
	}
	status, msg := e.rawRequest("GET", "/v1/agent/models?wait=forever", "", nil, nil, &a.cert)
	if status != http.StatusBadRequest || !strings.Contains(msg, "wait") {
		t.Errorf("bad wait: %d %s", status, msg)
	}
}

// TestAgentModelSelectors: an agent serves, per model, the newest active
// deployment whose selector all its labels match.
func TestAgentModelSelectors(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true })
	a := e.enrollPQ("edge-a", map[string]string{"site": "a", "floor": "2"}, 1)
	for i, v := range []string{"1", "2", "3"} {
		if _, err := e.admin.PushModel(e.ctx(), testModelFile(t, "occupancy", v, uint64(i))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.admin.PushModel(e.ctx(), testModelFile(t, "hvac", "1", 9)); err != nil {
		t.Fatal(err)
	}
	assigned := func() map[string]string {
		t.Helper()
		r, err := a.client.WatchModels(e.ctx(), "", 0)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, as := range r.Assignments {
			out[as.Name] = as.Version + " via " + as.Selector
		}
		return out
	}
	deploy := func(name, v, sel string) {
		t.Helper()
		if _, err := e.admin.DeployModel(e.ctx(), name, v, sel); err != nil {
			t.Fatal(err)
		}
	}
	deploy("occupancy", "1", "site=a")
	deploy("occupancy", "3", "site=a,floor=3") // not this agent: floor differs
	deploy("occupancy", "2", "site=b")         // not this agent
	if got := assigned(); got["occupancy"] != "1 via site=a" || len(got) != 1 {
		t.Fatalf("assignments: %v", got)
	}
	deploy("occupancy", "2", "floor=2,site=a") // matches, newer
	deploy("hvac", "1", "floor=2")
	if got := assigned(); got["occupancy"] != "2 via floor=2,site=a" || got["hvac"] != "1 via floor=2" {
		t.Fatalf("assignments: %v", got)
	}
	// Rollback works per selector: the first deployment has nothing below
	// it; a later one returns to the version below it.
	if _, err := e.admin.RollbackModel(e.ctx(), "occupancy", "site=a,floor=2"); !errors.Is(err, cpapi.ErrConflict) {
		t.Fatalf("rollback of a first deployment: %v", err)
	}
	deploy("occupancy", "3", "floor=2,site=a")
	if _, err := e.admin.RollbackModel(e.ctx(), "occupancy", "site=a,floor=2"); err != nil {
		t.Fatal(err)
	}
	if got := assigned(); got["occupancy"] != "2 via floor=2,site=a" {
		t.Fatalf("after rollback: %v", got)
	}
}
