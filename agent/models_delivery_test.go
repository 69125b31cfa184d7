package agent_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/agent/modelsync"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/internal/agenttest"
	"github.com/edgefleet/edgefleet/internal/cptest"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// testInstaller is a minimal real model runtime: it verifies the file with
// the control plane's key, builds a forward pass over its weights and
// swaps it in for the model of the same name.
type testInstaller struct {
	key *pqcrypto.VerifyingKey

	mu       sync.Mutex
	serving  map[string]modelsync.InstalledModel
	forwards map[string]*fedlearn.Forward
	installs []string // name@version, in order
	failNext int      // Install calls to refuse before installing
}

func newTestInstaller(key *pqcrypto.VerifyingKey) *testInstaller {
	return &testInstaller{key: key, serving: map[string]modelsync.InstalledModel{}, forwards: map[string]*fedlearn.Forward{}}
}

func (in *testInstaller) Install(ctx context.Context, signed []byte) error {
	f, err := fedlearn.Verify(signed, in.key)
	if err != nil {
		return err
	}
	fw, err := fedlearn.NewForward(f.Arch, f.Weights)
	if err != nil {
		return err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.failNext > 0 {
		in.failNext--
		return errors.New("test installer: refused on purpose")
	}
	in.serving[f.Name] = modelsync.InstalledModel{Name: f.Name, Version: f.Version, Digest: f.DigestHex(), FromControlPlane: true}
	in.forwards[f.Name] = fw
	in.installs = append(in.installs, f.Name+"@"+f.Version)
	return nil
}

func (in *testInstaller) Installed() []modelsync.InstalledModel {
	in.mu.Lock()
	defer in.mu.Unlock()
	var out []modelsync.InstalledModel
	for _, m := range in.serving {
		out = append(out, m)
	}
	return out
}

func (in *testInstaller) Remove(ctx context.Context, name string) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	delete(in.serving, name)
	delete(in.forwards, name)
	in.installs = append(in.installs, "-"+name)
	return nil
}

func (in *testInstaller) version(name string) string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.serving[name].Version
}

func (in *testInstaller) history() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Clone(in.installs)
}

func modelFile(t *testing.T, version string, seed uint64) []byte {
	t.Helper()
	a, err := fedlearn.ParseArch("mlp:4", 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	f := &fedlearn.File{
		Name: "occupancy", Version: version, Arch: a, Weights: fedlearn.InitWeights(a, seed),
		Schema: fedlearn.Schema{Features: []fedlearn.Feature{
			{Name: "temperature", Metric: "temperature", Agg: fedlearn.AggLatest, Std: 1},
			{Name: "co2", Metric: "co2", Agg: fedlearn.AggLatest, Std: 1},
		}},
		Labels:   []string{"empty", "occupied"},
		Training: fedlearn.Training{Epochs: 1, Seed: seed, Created: time.Now().UTC()},
	}
	b, err := f.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ok, state := cond()
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > d {
			t.Fatalf("%s: not after %s (%s)", what, d, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestModelDelivery: a real control plane and two real agents (site=a,
// site=b). A deployment to site=a reaches agent a only, through the
// model watch (well within a heartbeat interval), signed and sealed; a
// refused install is retried; rollback returns agent a to the version
// before; relabelling agent b to site=a gives it the model.
func TestModelDelivery(t *testing.T) {
	cpCfg := cptest.Config(t.TempDir())
	cpCfg.HeartbeatInterval = 10 * time.Second
	srv, cp := cptest.Start(t, cpCfg)
	key := srv.KeyService().VerifyingKey()
	start := func(name, site string, inst *testInstaller) *agent.Agent {
		toks, err := cp.CreateEnrollmentTokens(t.Context(), time.Hour, map[string]string{"site": site}, 1)
		if err != nil {
			t.Fatal(err)
		}
		cfg := agenttest.Config(t, name, "models")
		cfg.Ingest.Enabled = false // no broker needed here
		cfg.ControlPlane.URL = srv.URL()
		cfg.ControlPlane.CAFile = srv.CAPath()
		cfg.ControlPlane.EnrollmentToken = toks[0].Token
		cfg.ControlPlane.BackoffMin = 50 * time.Millisecond
		cfg.ControlPlane.BackoffMax = 200 * time.Millisecond
		return agenttest.StartWith(t, cfg, agent.Deps{Models: inst})
	}
	instA, instB := newTestInstaller(key), newTestInstaller(key)
	a := start("model-a", "a", instA)
	b := start("model-b", "b", instB)
	waitUntil(t, 20*time.Second, "both agents enrolled with keys", func() (bool, string) {
		sa, sb := a.Uplink().Status(), b.Uplink().Status()
		return sa.Enrolled && sb.Enrolled && a.Uplink().Keys() != nil && b.Uplink().Keys() != nil, fmt.Sprintf("%+v %+v", sa, sb)
	})
	for i, v := range []string{"1", "2"} {
		if _, err := cp.PushModel(t.Context(), modelFile(t, v, uint64(i))); err != nil {
			t.Fatal(err)
		}
	}
	// Let the model watches reach their held requests.
	time.Sleep(300 * time.Millisecond)
	deployed := time.Now()
	if _, err := cp.DeployModel(t.Context(), "occupancy", "1", "site=a"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "agent a serves version 1", func() (bool, string) {
		return instA.version("occupancy") == "1", fmt.Sprint(instA.history(), a.Uplink().Status().LastError)
	})
	took := time.Since(deployed)
	t.Logf("deploy to install on agent a: %s", took)
	if took > 5*time.Second {
		t.Errorf("deployment took %s to arrive: not through the held request", took)
	}

	// A refused install is tried again; until then version 1 serves.
	instA.mu.Lock()
	instA.failNext = 2
	instA.mu.Unlock()
	if _, err := cp.DeployModel(t.Context(), "occupancy", "2", "site=a"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "agent a serves version 2 after two refusals", func() (bool, string) {
		return instA.version("occupancy") == "2", fmt.Sprint(instA.history(), a.Uplink().Status().LastError)
	})
	if instA.failNext != 0 {
		t.Errorf("%d refusals left", instA.failNext)
	}
	if _, err := cp.RollbackModel(t.Context(), "occupancy", ""); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "agent a back on version 1", func() (bool, string) {
		return instA.version("occupancy") == "1", fmt.Sprint(instA.history())
	})
	if h := instA.history(); !slices.Equal(h, []string{"occupancy@1", "occupancy@2", "occupancy@1"}) {
		t.Errorf("agent a installed %v", h)
	}
	if h := instB.history(); len(h) != 0 {
		t.Fatalf("agent b (site=b) installed %v", h)
	}
	// Relabelled to site=a, agent b receives the active version.
	if _, err := cp.UpdateLabels(t.Context(), b.Uplink().Status().AgentID, cpapi.LabelsPatch{Set: map[string]string{"site": "a"}}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "agent b serves version 1", func() (bool, string) {
		return instB.version("occupancy") == "1", fmt.Sprint(instB.history(), b.Uplink().Status().LastError)
	})
	// Relabelled away (site=c), agent b removes the model; a model it did
	// not receive from the control plane stays.
	instB.mu.Lock()
	instB.serving["local"] = modelsync.InstalledModel{Name: "local", Version: "1", Digest: "00"}
	instB.mu.Unlock()
	if _, err := cp.UpdateLabels(t.Context(), b.Uplink().Status().AgentID, cpapi.LabelsPatch{Set: map[string]string{"site": "c"}}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "agent b removes occupancy", func() (bool, string) {
		return instB.version("occupancy") == "", fmt.Sprint(instB.history(), b.Uplink().Status().LastError)
	})
	if instB.version("local") != "1" {
		t.Fatal("agent b removed a model it did not receive from the control plane")
	}
	// Undeployed from site=a, agent a removes it too.
	if _, err := cp.UndeployModel(t.Context(), "occupancy", "site=a"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "agent a removes occupancy", func() (bool, string) {
		return instA.version("occupancy") == "", fmt.Sprint(instA.history(), a.Uplink().Status().LastError)
	})
	if st := a.Uplink().Status(); st.LastError != "" {
		t.Errorf("agent a uplink error after all installs: %s", st.LastError)
	}
}
