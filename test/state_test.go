package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/agentapi"
)

// cliResult is one run of a built binary.
type cliResult struct {
	code           int
	stdout, stderr string
}

// runCLI runs a built binary with stdin, without EDGEFLEET_* overrides
// but a contexts file of its own.
func runCLI(t *testing.T, stdin string, name string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	cmd.Env = append(cleanEnv(), "EDGEFLEET_CONFIG="+filepath.Join(t.TempDir(), "config.yaml"))
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := cliResult{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

// mustCLI runs a binary that must succeed and returns its stdout.
func mustCLI(t *testing.T, stdin, name string, args ...string) string {
	t.Helper()
	r := runCLI(t, stdin, name, args...)
	if r.code != 0 {
		t.Fatalf("%s %s: exit %d\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func decodeAs[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("decode %T: %v\n%s", v, err, s)
	}
	return v
}

// TestStateAndStatusCommands drives `edgectl state` and `edge-agent
// status` against running edge-agent processes: every collection type,
// siblings of a register written on two agents before they met, and the
// status of the pair.
func TestStateAndStatusCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("scenario test: skipped with -short")
	}
	cfg := filepath.Join(t.TempDir(), "edge-agent.yaml")
	if err := os.WriteFile(cfg, []byte("state:\n  collections: {devices: lww, keys.relay: lww, tags: orset, hits: counter, conf: mvreg}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := newProc(t, "state-a")
	a.extra = []string{"--config", cfg}
	a.start()
	b := newProc(t, "state-b")
	b.extra = []string{"--config", cfg}
	b.start()
	onA, onB := "--agent=http://"+a.api, "--agent="+b.api
	state := func(agent string, args ...string) string {
		t.Helper()
		return mustCLI(t, "", "edgectl", append([]string{"state", agent}, args...)...)
	}

	// lww: put (an argument, stdin), get, list, delete.
	state(onA, "put", "config", "site", `{"name":"berlin"}`)
	mustCLI(t, `{"floors": 3}`, "edgectl", "state", "put", "config", "building", "-", onA)
	if it := decodeAs[agentapi.Item](t, state(onA, "get", "config", "building", "--json")); it.Origin != "state-a" || !strings.Contains(string(it.Value), `"floors": 3`) {
		t.Fatalf("get: %+v", it)
	}
	if out := state(onA, "get", "config", "site"); out != `{"name":"berlin"}`+"\n" {
		t.Fatalf("get: %q", out)
	}
	if es := decodeAs[[]agentapi.Entry](t, state(onA, "list", "config", "--json")); len(es) != 2 || es[0].Key != "building" || es[1].Key != "site" {
		t.Fatalf("list: %+v", es)
	}
	state(onA, "delete", "config", "building")
	if r := runCLI(t, "", "edgectl", "state", "get", "config", "building", onA); r.code != 1 || !strings.Contains(r.stderr, "404") {
		t.Fatalf("get deleted: %+v", r)
	}
	if r := runCLI(t, "", "edgectl", "state", "put", "config", "x", "{not json", onA); r.code != 2 || !strings.Contains(r.stderr, "not a JSON document") {
		t.Fatalf("bad JSON: %+v", r)
	}

	// Counter and OR-set.
	state(onA, "add", "hits", "total", "5")
	if out := state(onA, "add", "hits", "total", "--", "-2"); !strings.HasPrefix(out, "Added -2 to hits/total: now 3") {
		t.Fatalf("add: %q", out)
	}
	state(onA, "put", "tags", "blue")
	state(onA, "put", "tags", "red")
	state(onA, "delete", "tags", "red")
	if m := decodeAs[[]string](t, state(onA, "list", "tags", "--json")); fmt.Sprint(m) != "[blue]" {
		t.Fatalf("set: %v", m)
	}

	// A register written on both agents before they know each other
	// holds both values once they meet.
	state(onA, "put", "conf", "mode", `"eco"`)
	state(onB, "put", "conf", "mode", `"fast"`)
	b.stop()
	b.join = []string{a.gossip}
	b.start()
	eventually(t, 20*time.Second, "siblings on a", func() error {
		it := decodeAs[agentapi.Item](t, state(onA, "get", "conf", "mode", "--json"))
		if len(it.Values) != 2 {
			return fmt.Errorf("values %s", it.Values)
		}
		return nil
	})
	if out := state(onA, "get", "conf", "mode"); !strings.HasPrefix(out, "2 concurrent values (siblings):\n") || !strings.Contains(out, `"eco"`) || !strings.Contains(out, `"fast"`) {
		t.Fatalf("siblings:\n%s", out)
	}
	eventually(t, 20*time.Second, "counter on b", func() error {
		if out := state(onB, "get", "hits", "total"); out != "3\n" {
			return fmt.Errorf("hits/total on b: %q", out)
		}
		return nil
	})
	state(onB, "put", "conf", "mode", `"auto"`)
	eventually(t, 20*time.Second, "one value on a", func() error {
		if out := state(onA, "get", "conf", "mode"); out != `"auto"`+"\n" {
			return fmt.Errorf("conf/mode on a: %q", out)
		}
		return nil
	})

	// edge-agent status sees the pair.
	var rep struct {
		agentapi.Status
		IngestRate        *float64 `json:"ingest_rate"`
		RateWindowSeconds float64  `json:"rate_window_seconds"`
	}
	eventually(t, 20*time.Second, "status", func() error {
		out := mustCLI(t, "", "edge-agent", "status", "--api", a.api, "--json", "--window", "200ms")
		dec := json.NewDecoder(strings.NewReader(out))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rep); err != nil {
			t.Fatalf("status: %v\n%s", err, out)
		}
		if rep.Members.Alive != 2 {
			return fmt.Errorf("members %+v", rep.Members)
		}
		return nil
	})
	if rep.Node != "state-a" || !rep.Running || rep.Health == nil || rep.Health.Status != "ok" || !rep.Ingest.Enabled || rep.IngestRate == nil ||
		rep.Uplink.Enabled || !rep.Keys.Gossip.Encrypted || rep.UptimeSeconds <= 0 {
		t.Fatalf("status: %+v", rep)
	}
	out := mustCLI(t, "", "edge-agent", "status", "--api", "http://"+b.api, "--window", "0")
	if !strings.Contains(out, "state-b") || !strings.Contains(out, "2 alive, 0 dead, 0 left") || !strings.Contains(out, "state-a") {
		t.Fatalf("status of b:\n%s", out)
	}
}
