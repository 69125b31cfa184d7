package cpapi

import (
	"os/exec"
	"strings"
	"testing"
)

// goListDeps returns the packages the patterns depend on.
func goListDeps(t *testing.T, patterns ...string) []string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs go list")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	out, err := exec.Command(goBin, append([]string{"list", "-deps"}, patterns...)...).Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	return strings.Fields(string(out))
}

// TestAgentLinksNoServer: the agent reaches the control plane through this
// package only, so none of the server (its store, its key service) is
// linked into edge-agent.
func TestAgentLinksNoServer(t *testing.T) {
	for _, p := range goListDeps(t, "github.com/edgefleet/edgefleet/agent/...") {
		if p == "github.com/edgefleet/edgefleet/controlplane" {
			t.Errorf("the agent depends on the control plane server (%s)", p)
		}
	}
}

// TestNoBenchHarnessInProduction: the measurement harnesses (package bench
// and below, the Mosquitto test helper) are linked by the bench commands
// only, never by the agent or the control plane.
func TestNoBenchHarnessInProduction(t *testing.T) {
	for _, p := range goListDeps(t, "github.com/edgefleet/edgefleet/agent/...", "github.com/edgefleet/edgefleet/controlplane/...") {
		if strings.HasPrefix(p, "github.com/edgefleet/edgefleet/bench") || p == "github.com/edgefleet/edgefleet/internal/mqtttest" {
			t.Errorf("agent or control plane depends on the harness %s", p)
		}
	}
}
