package main

import (
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/agent/agentapi"
)

// TestDevicesControlPlane: the identity commands with --control-plane
// go to the control plane: register prints the secret once, list shows
// the state, disable and enable change it, an unknown device is 404.
func TestDevicesControlPlane(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	out := e.must("devices", "register", "meter-1", "--control-plane")
	if !strings.Contains(out, "Device meter-1 registered.") || !strings.Contains(out, "Secret:") {
		t.Fatalf("register: %s", out)
	}
	sec := decodeJSON[agentapi.IdentitySecret](t, e.must("devices", "register", "meter-2", "--control-plane", "--json",
		"--topics", "pub:devices/meter-2/telemetry,pub:devices/meter-2/status"))
	if sec.Secret == "" || sec.Identity.Hash != "" || strings.Join(sec.Identity.Publish, " ") != "devices/meter-2/telemetry devices/meter-2/status" {
		t.Fatalf("register --json: %+v", sec)
	}
	if out := e.must("devices", "disable", "meter-1", "--control-plane"); !strings.Contains(out, "Device meter-1 is disabled.") {
		t.Fatalf("disable: %s", out)
	}
	rows := decodeJSON[[]deviceRow](t, e.must("devices", "list", "--control-plane", "--json"))
	if len(rows) != 2 || rows[0].ID != "meter-1" || rows[0].State != "disabled" || rows[1].State != "active" {
		t.Fatalf("list: %+v", rows)
	}
	e.must("devices", "enable", "meter-1", "--control-plane")
	rot := decodeJSON[agentapi.IdentitySecret](t, e.must("devices", "rotate-secret", "meter-1", "--control-plane", "--json"))
	if rot.Secret == "" || rot.Identity.State != "active" {
		t.Fatalf("rotate: %+v", rot)
	}
	if r := e.run("devices", "disable", "nobody", "--control-plane"); r.code != 1 || !strings.Contains(r.stderr, "404") {
		t.Fatalf("unknown device: %+v", r)
	}
	if r := e.run("devices", "register", "meter-1", "--control-plane"); r.code != 1 || !strings.Contains(r.stderr, "409") {
		t.Fatalf("registered twice: %+v", r)
	}
}
