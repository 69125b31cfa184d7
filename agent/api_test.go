package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/crdt"
)

type apiClient struct {
	t    *testing.T
	base string
}

func (c apiClient) do(method, path, body string) (int, map[string]any, string) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var obj map[string]any
	_ = json.Unmarshal(raw, &obj)
	return resp.StatusCode, obj, string(raw)
}

func (c apiClient) expect(method, path, body string, status int) map[string]any {
	c.t.Helper()
	got, obj, raw := c.do(method, path, body)
	if got != status {
		c.t.Fatalf("%s %s: status %d, want %d: %s", method, path, got, status, raw)
	}
	if status >= 400 {
		if _, ok := obj["error"].(string); !ok {
			c.t.Fatalf("%s %s: error body is not {\"error\": ...}: %s", method, path, raw)
		}
	}
	return obj
}

func TestAPIRoundTrips(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.start("api", nil, func(cfg *Config) {
		cfg.API.MaxBodyBytes = 1024
		cfg.State.Collections = map[string]crdt.Type{"tags": crdt.TypeORSet, "hits": crdt.TypeCounter, "conf": crdt.TypeMVReg}
	})
	api := apiClient{t: t, base: "http://" + a.APIAddr()}

	api.expect("GET", "/healthz", "", 200)
	if obj := api.expect("GET", "/readyz", "", 200); obj["status"] != "ready" {
		t.Fatalf("readyz: %v", obj)
	}

	// LWW: JSON values come back as JSON, other text as a string.
	put := api.expect("PUT", "/v1/state/devices/d1", `{"model":"pi4","ram":4}`, 200)
	if put["origin"] != "api" || put["seq"].(float64) < 1 || put["type"] != "lww" {
		t.Fatalf("put result: %v", put)
	}
	got := api.expect("GET", "/v1/state/devices/d1", "", 200)
	if v, ok := got["value"].(map[string]any); !ok || v["model"] != "pi4" || got["origin"] != "api" || got["hlc"] == "" {
		t.Fatalf("get: %v", got)
	}
	api.expect("PUT", "/v1/state/devices/d2", "plain text", 200)
	if got := api.expect("GET", "/v1/state/devices/d2", "", 200); got["value"] != "plain text" {
		t.Fatalf("text value: %v", got)
	}
	api.expect("PUT", "/v1/state/devices/nested/key", "x", 200)
	if got := api.expect("GET", "/v1/state/devices/nested/key", "", 200); got["key"] != "nested/key" {
		t.Fatalf("key with slash: %v", got)
	}
	list := api.expect("GET", "/v1/state/devices", "", 200)
	if entries := list["entries"].([]any); len(entries) != 3 {
		t.Fatalf("listing: %v", list)
	}
	api.expect("DELETE", "/v1/state/devices/d2", "", 200)
	api.expect("GET", "/v1/state/devices/d2", "", 404)
	api.expect("GET", "/v1/state/devices/never", "", 404)

	// Counter.
	api.expect("PUT", "/v1/state/hits/total", `{"add": 5}`, 200)
	api.expect("PUT", "/v1/state/hits/total", `{"add": -2}`, 200)
	if got := api.expect("GET", "/v1/state/hits/total", "", 200); got["value"].(float64) != 3 {
		t.Fatalf("counter: %v", got)
	}
	api.expect("PUT", "/v1/state/hits/total", `{"add": "five"}`, 400)
	api.expect("PUT", "/v1/state/hits/total", `{"sub": 1}`, 400)
	api.expect("PUT", "/v1/state/hits/total", `{}`, 400)
	api.expect("DELETE", "/v1/state/hits/total", "", 405)
	if got := api.expect("GET", "/v1/state/hits", "", 200); fmt.Sprint(got["counters"]) != "[map[key:total value:3]]" {
		t.Fatalf("counter listing: %v", got)
	}

	// OR-set.
	api.expect("PUT", "/v1/state/tags/blue", "", 200)
	if got := api.expect("GET", "/v1/state/tags/blue", "", 200); got["present"] != true {
		t.Fatalf("orset: %v", got)
	}
	if got := api.expect("GET", "/v1/state/tags", "", 200); len(got["members"].([]any)) != 1 {
		t.Fatalf("orset listing: %v", got)
	}
	api.expect("DELETE", "/v1/state/tags/blue", "", 200)
	if got := api.expect("GET", "/v1/state/tags/blue", "", 200); got["present"] != false {
		t.Fatalf("orset after remove: %v", got)
	}

	// MV register.
	api.expect("PUT", "/v1/state/conf/mode", `"eco"`, 200)
	if got := api.expect("GET", "/v1/state/conf/mode", "", 200); len(got["values"].([]any)) != 1 || got["values"].([]any)[0] != "eco" {
		t.Fatalf("mvreg: %v", got)
	}
	if got := api.expect("GET", "/v1/state/conf", "", 200); fmt.Sprint(got["registers"]) != "[map[key:mode values:[eco]]]" {
		t.Fatalf("mvreg listing: %v", got)
	}
	api.expect("DELETE", "/v1/state/conf/mode", "", 200)
	api.expect("GET", "/v1/state/conf/mode", "", 404)
	if got := api.expect("GET", "/v1/state/conf", "", 200); fmt.Sprint(got["registers"]) != "[]" {
		t.Fatalf("mvreg listing after clear: %v", got)
	}

	// Bad input.
	api.expect("PUT", "/v1/state/devices/big", strings.Repeat("x", 2000), 413)
	api.expect("PUT", "/v1/state/bad%20name/k", "v", 400)
	api.expect("GET", "/v1/state/"+strings.Repeat("c", 300)+"/k", "", 400)
	api.expect("PUT", "/v1/state/devices/ctl%01key", "v", 400)
	api.expect("GET", "/v1/nothing", "", 404)
	if code, _, _ := api.do("POST", "/v1/state/devices/d1", "v"); code != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", code)
	}
	// A direct store write under another type conflicts.
	api.expect("PUT", "/v1/state/hits/other", `{"add": 1}`, 200)
	if _, err := a.Store().Put(t.Context(), "hits", "x", []byte("v")); err == nil {
		t.Fatal("type mismatch accepted by store")
	}

	// Collections, members, metrics.
	resp, err := http.Get(api.base + "/v1/state")
	if err != nil {
		t.Fatal(err)
	}
	var colls []map[string]any
	json.NewDecoder(resp.Body).Decode(&colls)
	resp.Body.Close()
	if len(colls) < 4 {
		t.Fatalf("collections: %v", colls)
	}
	resp, err = http.Get(api.base + "/v1/members")
	if err != nil {
		t.Fatal(err)
	}
	var members []Member
	json.NewDecoder(resp.Body).Decode(&members)
	resp.Body.Close()
	if len(members) != 1 || members[0].Name != "api" || members[0].State != StateAlive {
		t.Fatalf("members: %+v", members)
	}
	// Status of an agent without ingestion or a control plane.
	st := api.expect("GET", "/v1/status", "", 200)
	if st["node"] != "api" || st["running"] != true || fmt.Sprint(st["ingest"]) != "map[enabled:false]" || fmt.Sprint(st["uplink"]) != "map[enabled:false]" ||
		fmt.Sprint(st["members"].(map[string]any)["alive"]) != "1" || fmt.Sprint(st["keys"]) != "map[gossip:map[bootstrap:true encrypted:true primary:0 versions:[]] held:[]]" {
		t.Fatalf("status: %v", st)
	}
	resp, err = http.Get(api.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{
		`edgefleet_members{state="alive"} 1`,
		`edgefleet_gossip_bytes_total{dir="out"}`,
		`edgefleet_gossip_messages_total{dir="in"}`,
		"edgefleet_deltas_applied_total",
		"edgefleet_sync_rounds_total",
		"edgefleet_sync_lag_ops",
	} {
		if !strings.Contains(string(body), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}

	// After Kill the API is gone; a stopped agent is not ready.
	a.Kill()
	client := http.Client{Timeout: time.Second}
	if _, err := client.Get(api.base + "/healthz"); err == nil {
		t.Fatal("API still serving after Kill")
	}
}
