package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/crdt"
)

// startStateAgent runs an agent in this process with its local API on a
// free loopback port and one collection of each type: config (lww), tags
// (orset), hits (counter), conf (mvreg).
func startStateAgent(t *testing.T) *agent.Agent {
	return startTestAgent(t, "edge-1", func(cfg *agent.Config) {
		cfg.Ingest.Enabled = false
		cfg.State.Collections = map[string]crdt.Type{"tags": crdt.TypeORSet, "hits": crdt.TypeCounter, "conf": crdt.TypeMVReg,
			agent.DevicesCollection: crdt.TypeLWW, agent.KeyRelayCollection: crdt.TypeLWW}
	})
}

// TestStateAgainstAgent drives every state command against a real agent.
func TestStateAgainstAgent(t *testing.T) {
	e := newDevicesEnv(t)
	ag := startStateAgent(t)
	e.vars["EDGEFLEET_AGENT"] = "http://" + ag.APIAddr()

	// lww: put, get, list, delete; a value from stdin.
	if out := e.must("state", "put", "config", "site", `{"name":"berlin"}`); !strings.HasPrefix(out, "Wrote config/site (lww, op ") || !strings.HasSuffix(out, " of edge-1).\n") {
		t.Fatalf("put: %q", out)
	}
	if r := e.runIn(strings.NewReader("  [1, 2]\n"), "state", "put", "config", "list", "-"); r.code != 0 {
		t.Fatalf("put from stdin: %+v", r)
	}
	if out := e.must("state", "get", "config", "site"); out != `{"name":"berlin"}`+"\n" {
		t.Fatalf("get: %q", out)
	}
	if it := decodeJSON[agentapi.Item](t, e.must("state", "get", "config", "list", "--json")); strings.Join(strings.Fields(string(it.Value)), "") != "[1,2]" || it.Origin != "edge-1" {
		t.Fatalf("get --json: %+v", it)
	}
	out := e.must("state", "list", "config")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[0], "KEY") ||
		!strings.Contains(lines[2], `{"name":"berlin"}`) || !strings.Contains(lines[2], "edge-1") {
		t.Fatalf("list:\n%s", out)
	}
	if entries := decodeJSON[[]agentapi.Entry](t, e.must("state", "list", "config", "--json")); len(entries) != 2 || entries[0].Key != "list" {
		t.Fatalf("list --json: %+v", entries)
	}
	if out := e.must("state", "delete", "config", "list"); !strings.HasPrefix(out, "Deleted config/list (lww,") {
		t.Fatalf("delete: %q", out)
	}
	if r := e.run("state", "get", "config", "list"); r.code != 1 || !strings.Contains(r.stderr, "404") || !strings.Contains(r.stderr, `key "list" not found`) {
		t.Fatalf("get deleted: %+v", r)
	}

	// Values must be JSON; a missing value is only right for sets.
	if r := e.run("state", "put", "config", "x", "plain text"); r.code != 2 || !strings.Contains(r.stderr, "VALUE is not a JSON document") {
		t.Fatalf("bad value: %+v", r)
	}
	if r := e.runIn(strings.NewReader(""), "state", "put", "config", "x", "-"); r.code != 2 || !strings.Contains(r.stderr, "the value on stdin is empty") {
		t.Fatalf("empty stdin: %+v", r)
	}
	if r := e.run("state", "put", "config", "x"); r.code != 2 || !strings.Contains(r.stderr, "not an orset collection") {
		t.Fatalf("no value: %+v", r)
	}

	// Counter: add, negative after --, list; not deletable; add refuses other types.
	if out := e.must("state", "add", "hits", "total", "5"); !strings.HasPrefix(out, "Added 5 to hits/total: now 5 (op ") {
		t.Fatalf("add: %q", out)
	}
	added := decodeJSON[counterAdded](t, e.must("state", "add", "hits", "total", "--json", "--", "-2"))
	if added.Value != 3 || added.Added != -2 || added.Type != "counter" || added.Seq == 0 {
		t.Fatalf("add --json: %+v", added)
	}
	if out := e.must("state", "get", "hits", "total"); out != "3\n" {
		t.Fatalf("counter get: %q", out)
	}
	if cs := decodeJSON[[]agentapi.Counter](t, e.must("state", "list", "hits", "--json")); len(cs) != 1 || cs[0] != (agentapi.Counter{Key: "total", Value: 3}) {
		t.Fatalf("counter list: %+v", cs)
	}
	if r := e.run("state", "delete", "hits", "total"); r.code != 1 || !strings.Contains(r.stderr, "405") {
		t.Fatalf("counter delete: %+v", r)
	}
	for _, coll := range []string{"config", "conf", "tags"} {
		if r := e.run("state", "add", coll, "site", "1"); r.code != 2 || !strings.Contains(r.stderr, "is not a counter collection") {
			t.Fatalf("add to %s: %+v", coll, r)
		}
	}
	if out := e.must("state", "get", "config", "site"); out != `{"name":"berlin"}`+"\n" {
		t.Fatalf("add changed an lww value: %q", out)
	}
	if r := e.run("state", "add", "hits", "total", "five"); r.code != 2 {
		t.Fatalf("bad N: %+v", r)
	}

	// OR-set: put adds, delete removes.
	if out := e.must("state", "put", "tags", "blue"); !strings.HasPrefix(out, "Added tags/blue (orset,") {
		t.Fatalf("set add: %q", out)
	}
	e.must("state", "put", "tags", "red")
	if out := e.must("state", "get", "tags", "blue"); out != "blue is in tags.\n" {
		t.Fatalf("set get: %q", out)
	}
	if out := e.must("state", "delete", "tags", "red"); !strings.HasPrefix(out, "Removed tags/red (orset,") {
		t.Fatalf("set remove: %q", out)
	}
	if m := decodeJSON[[]string](t, e.must("state", "list", "tags", "--json")); len(m) != 1 || m[0] != "blue" {
		t.Fatalf("set list: %v", m)
	}

	// MV register: concurrent writes (one merged from another replica)
	// are siblings, shown as separate values.
	e.must("state", "put", "conf", "mode", `"eco"`)
	other, err := crdt.Open(filepath.Join(t.TempDir(), "other.db"), crdt.Options{ReplicaID: "edge-2"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	d, err := other.MVPut(t.Context(), "conf", "mode", []byte(`"fast"`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ag.Store().Merge(t.Context(), []crdt.Delta{d}); err != nil {
		t.Fatal(err)
	}
	out = e.must("state", "get", "conf", "mode")
	if !strings.HasPrefix(out, "2 concurrent values (siblings):\n") || !strings.Contains(out, "\n\"eco\"\n") || !strings.Contains(out, "\n\"fast\"\n") {
		t.Fatalf("mvreg get:\n%s", out)
	}
	out = e.must("state", "list", "conf")
	if !strings.Contains(out, "1/2") || !strings.Contains(out, "2/2") || !strings.Contains(out, `"fast"`) {
		t.Fatalf("mvreg list:\n%s", out)
	}
	if regs := decodeJSON[[]agentapi.Register](t, e.must("state", "list", "conf", "--json")); len(regs) != 1 || len(regs[0].Values) != 2 {
		t.Fatalf("mvreg list --json: %+v", regs)
	}
	if out := e.must("state", "delete", "conf", "mode"); !strings.HasPrefix(out, "Cleared conf/mode (mvreg,") {
		t.Fatalf("mvreg clear: %q", out)
	}

	// The collections.
	out = e.must("state", "list")
	for _, want := range []string{"COLLECTION", "config", "lww", "hits", "counter", "tags", "orset", "conf", "mvreg"} {
		if !strings.Contains(out, want) {
			t.Fatalf("collections lack %s:\n%s", want, out)
		}
	}
	if colls := decodeJSON[[]agentapi.Collection](t, e.must("state", "list", "--json")); len(colls) < 4 {
		t.Fatalf("collections --json: %+v", colls)
	}
}
