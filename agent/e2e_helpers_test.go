package agent_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/agenttest"
	"github.com/edgefleet/edgefleet/internal/cptest"
)

// enrolledAgent is a control plane and one agent enrolled in it.
type enrolledAgent struct {
	cp  *cpapi.Client // admin client of the control plane
	a   *agent.Agent
	cfg agent.Config // the agent's configuration
}

// startEnrolled starts a control plane and agent name (cluster cluster)
// enrolled in it with labels, ingesting on an embedded broker, with a
// fast uplink back-off; edit adjusts its configuration. It returns once
// the agent holds its keys and the control plane's verifying key.
func startEnrolled(t *testing.T, name, cluster string, labels map[string]string, edit func(*agent.Config)) enrolledAgent {
	t.Helper()
	srv, cp := cptest.Start(t, cptest.Config(t.TempDir()))
	toks, err := cp.CreateEnrollmentTokens(t.Context(), time.Hour, labels, 1)
	if err != nil {
		t.Fatal(err)
	}
	cfg := agenttest.Config(t, name, cluster)
	cfg.Ingest.Enabled = true
	cfg.Ingest.MQTT.EmbeddedListen = "127.0.0.1:0"
	cfg.ControlPlane.URL = srv.URL()
	cfg.ControlPlane.CAFile = srv.CAPath()
	cfg.ControlPlane.EnrollmentToken = toks[0].Token
	cfg.ControlPlane.BackoffMin = 50 * time.Millisecond
	cfg.ControlPlane.BackoffMax = 200 * time.Millisecond
	if edit != nil {
		edit(&cfg)
	}
	a := agenttest.Start(t, cfg)
	waitUntil(t, 20*time.Second, "agent enrolled with keys", func() (bool, string) {
		return a.Uplink().Status().Enrolled && a.Uplink().Keys() != nil && a.Uplink().VerifyingKey() != nil, fmt.Sprintf("%+v", a.Uplink().Status())
	})
	return enrolledAgent{cp: cp, a: a, cfg: cfg}
}

// deploy pushes a model file to the registry, deploys the version to
// selector and waits until the agent serves the model name.
func (e enrolledAgent) deploy(t *testing.T, file []byte, name, version, selector string) {
	t.Helper()
	if _, err := e.cp.PushModel(t.Context(), file); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cp.DeployModel(t.Context(), name, version, selector); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 15*time.Second, "agent serves "+name+" "+version, func() (bool, string) {
		m, ok := e.a.Models().Get(name)
		return ok && m.Version() == version, fmt.Sprint(e.a.Models().Installed(), e.a.Uplink().Status().LastError)
	})
}
