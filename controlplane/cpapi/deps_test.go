package cpapi

import (
	"os/exec"
	"strings"
	"testing"
)

// TestAgentLinksNoServer: the agent reaches the control plane through this
// package only, so none of the server (its store, its key service) is
// linked into edge-agent.
func TestAgentLinksNoServer(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	out, err := exec.Command(goBin, "list", "-deps", "github.com/edgefleet/edgefleet/agent/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if p == "github.com/edgefleet/edgefleet/controlplane" {
			t.Errorf("the agent depends on the control plane server (%s)", p)
		}
	}
}
