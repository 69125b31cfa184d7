package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/agent"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "edge-agent.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestConfigDefaultsLoadsBack: what `config defaults` prints is commented
// YAML that loads back to DefaultConfig and validates.
func TestConfigDefaultsLoadsBack(t *testing.T) {
	out := mustAgent(t, "config", "defaults")
	if !strings.HasPrefix(out, "# ") || strings.Count(out, "# ") < 50 {
		t.Errorf("defaults are not commented:\n%s", out)
	}
	path := writeConfig(t, out)
	cfg, err := agent.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := agent.DefaultConfig(); !reflect.DeepEqual(cfg, want) {
		t.Fatalf("printed defaults load as\n%+v\nwant\n%+v", cfg, want)
	}
	if got := mustAgent(t, "config", "validate", path); !strings.HasPrefix(got, "ok: "+path+"\n") {
		t.Fatalf("validate of the defaults: %s", got)
	}
}

// TestConfigValidateAppliesEnv: validate loads the file and then the
// EDGEFLEET_* variables, as run does, and says which were set.
func TestConfigValidateAppliesEnv(t *testing.T) {
	path := writeConfig(t, "node_name: edge-7\ndata_dir: /from/file\ncontrol_plane:\n  url: https://cp.example:8443\n  enrollment_token: secret-token\n")
	t.Setenv(agent.EnvDataDir, "/from/env")
	out := mustAgent(t, "config", "validate", path)
	for _, want := range []string{"ok: " + path + "\n", "node name      edge-7\n", "data dir       /from/env\n",
		"control plane  https://cp.example:8443\n", "environment    " + agent.EnvDataDir + "\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "secret-token") {
		t.Errorf("summary shows the enrollment token:\n%s", out)
	}
	t.Setenv(agent.EnvDataDir, "")
	if r := runAgent(t, "config", "validate", path); r.code != 1 || r.stderr != "edge-agent: agent: data_dir: must not be empty\n" {
		t.Errorf("empty %s: exit %d, stderr %q", agent.EnvDataDir, r.code, r.stderr)
	}
}

// TestConfigValidateErrors: a bad file fails with exit 1 and one message
// that names the field once prefixed.
func TestConfigValidateErrors(t *testing.T) {
	for body, want := range map[string]string{
		"gossip:\n  bind_prot: 7946\n":      "agent: config PATH: line 2: gossip.bind_prot: unknown field",
		"gossip:\n  bind_port: seven\n":     `agent: config PATH: line 2: gossip.bind_port: "seven" is not an integer`,
		"ingest:\n  batch_delay: 5 secs\n":  `agent: config PATH: line 2: ingest.batch_delay: "5 secs" is not a duration (such as 500ms, 3s, 10m or 72h)`,
		"gossip:\n  bind_port: 70000\n":     "agent: gossip.bind_port: 70000 out of range",
		"control_plane:\n  url: ftp://x\n":  `agent: control_plane.url: "ftp://x" must be https://host[:port]`,
		"labels: [a, b]\n":                  "agent: config PATH: line 1: labels: want a mapping",
		"log:\n  level: loud\n":             `agent: log.level: "loud" (want debug, info, warn or error)`,
		"node_name: a\n---\nnode_name: b\n": "agent: config PATH: more than one YAML document",
	} {
		path := writeConfig(t, body)
		r := runAgent(t, "config", "validate", path)
		if want := "edge-agent: " + strings.ReplaceAll(want, "PATH", path) + "\n"; r.code != 1 || r.stderr != want {
			t.Errorf("%q: exit %d, stderr\n%q\nwant\n%q", body, r.code, r.stderr, want)
		}
	}
	if r := runAgent(t, "config", "validate"); r.code != 2 {
		t.Errorf("no file: exit %d, stderr %s", r.code, r.stderr)
	}
	missing := filepath.Join(t.TempDir(), "none.yaml")
	if r := runAgent(t, "config", "validate", missing); r.code != 1 ||
		r.stderr != "edge-agent: agent: config: open "+missing+": no such file or directory\n" {
		t.Errorf("missing file: exit %d, stderr %q", r.code, r.stderr)
	}
}
