package test

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/internal/testutil"
)

// TestAgentRunsOnDefaults starts edge-agent with no config file and no flag
// but its data dir: it must come up on the documented default ports.
func TestAgentRunsOnDefaults(t *testing.T) {
	if testing.Short() {
		t.Skip("scenario test: skipped with -short")
	}
	for _, addr := range []string{"127.0.0.1:7070", "0.0.0.0:7946", "127.0.0.1:1883"} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Skipf("default port %s is busy on this machine: %v", addr, err)
		}
		l.Close()
	}
	p := &proc{t: t, name: "defaults", dataDir: filepath.Join(t.TempDir(), "data"), api: "127.0.0.1:7070", logs: &testutil.SyncBuffer{}}
	p.startWith(cleanEnv(), "run", "--data", p.dataDir)
	resp, err := http.Get(p.url("/healthz"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if _, err := os.Stat(filepath.Join(p.dataDir, "gossip.key")); err != nil {
		t.Fatalf("no generated gossip key: %v", err)
	}
	// Ingestion runs on defaults too: the embedded broker on 127.0.0.1:1883.
	if broker := p.waitBroker(); broker != "tcp://127.0.0.1:1883" {
		t.Fatalf("default broker %q", broker)
	}
}

// TestAgentRejectsBadConfig: a config with an unknown field exits 1 naming
// the field; an unknown flag exits 2.
func TestAgentRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(cfg, []byte("gossip:\n  bind_prot: 7946\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := runBin(t, "edge-agent", "run", "--config", cfg, "--data", dir)
	if code != 1 || !strings.Contains(out, "bind_prot") {
		t.Fatalf("bad config: exit %d, output %q; want exit 1 naming bind_prot", code, out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--mqtt-broker", "http://broker:1883"}, "ingest.mqtt.broker"},
		{[]string{"--mqtt-password", "pw", "--mqtt-password-file", "pwfile"}, "--mqtt-password-file"},
		{[]string{"--mqtt-password", "pw"}, "ingest.mqtt.username"},
		{[]string{"--control-plane", "http://cp.example"}, "url"},
		{[]string{"--enrollment-token", "a", "--enrollment-token-file", "b"}, "--enrollment-token-file"},
	} {
		out, code := runBin(t, "edge-agent", append([]string{"run", "--data", dir}, c.args...)...)
		if code != 1 || !strings.Contains(out, c.want) {
			t.Errorf("run %v: exit %d, output %q; want exit 1 naming %s", c.args, code, out, c.want)
		}
	}
	out, code = runBin(t, "edge-agent", "run", "--no-such-flag")
	if code != 2 {
		t.Fatalf("unknown flag: exit %d, output %q; want 2", code, out)
	}
	out, code = runBin(t, "edge-agent", "bench", "no-such-suite")
	if code != 2 || !strings.Contains(out, "no-such-suite") {
		t.Fatalf("unknown suite: exit %d, output %q; want 2", code, out)
	}
}

func runBin(t *testing.T, name string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatal(err)
	}
	return string(out), 0
}

// cleanEnv is the environment without EDGEFLEET_* overrides.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "EDGEFLEET_") {
			env = append(env, kv)
		}
	}
	return env
}
