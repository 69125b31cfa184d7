package agentapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/edgefleet/edgefleet/internal/agenttest"
	"github.com/edgefleet/edgefleet/internal/cptest"
)

// startAgent runs an agent in this process with every part the API
// reports on: ingestion from its embedded broker, an uplink enrolled in an
// in-process control plane (so it holds keys), and one collection of each
// type.
func startAgent(t *testing.T) *agent.Agent {
	t.Helper()
	cpCfg := cptest.Config(t.TempDir())
	cpCfg.HeartbeatInterval = 300 * time.Millisecond
	srv, admin := cptest.Start(t, cpCfg)
	toks, err := admin.CreateEnrollmentTokens(t.Context(), time.Hour, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	cfg := agenttest.Config(t, "api-1", "agentapi-test")
	cfg.Ingest.Enabled = true
	cfg.Ingest.MQTT.EmbeddedListen = "127.0.0.1:0"
	cfg.Ingest.DeviceRegistryInterval = 100 * time.Millisecond
	cfg.State.Collections = map[string]crdt.Type{"tags": crdt.TypeORSet, "hits": crdt.TypeCounter, "conf": crdt.TypeMVReg,
		agent.DevicesCollection: crdt.TypeLWW, agent.KeyRelayCollection: crdt.TypeLWW}
	cfg.ControlPlane.URL = srv.URL()
	cfg.ControlPlane.CAFile = srv.CAPath()
	cfg.ControlPlane.EnrollmentToken = toks[0].Token
	return agenttest.Start(t, cfg)
}

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// strict fetches path from the agent and decodes the answer into a T with
// unknown fields disallowed; encoding the T again must not produce fields
// the agent did not send either (fields the client has and the server
// lacks). It returns the T.
func strict[T any](t *testing.T, base, method, path, body string, status int) T {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != status {
		t.Fatalf("%s %s: %s, want %d: %s", method, path, resp.Status, status, raw)
	}
	var v T
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s %s: the answer does not fit %T: %v\n%s", method, path, v, err, raw)
	}
	again, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var got, sent any
	json.Unmarshal(raw, &sent)
	json.Unmarshal(again, &got)
	if extra := extraKeys(got, sent, ""); len(extra) > 0 {
		t.Fatalf("%s %s: %T has fields the agent did not send: %v\n%s", method, path, v, extra, raw)
	}
	return v
}

// extraKeys lists the object keys in a that b lacks, recursively.
func extraKeys(a, b any, at string) []string {
	var out []string
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok {
			return nil
		}
		for k, x := range av {
			y, ok := bv[k]
			if !ok {
				out = append(out, at+"."+k)
				continue
			}
			out = append(out, extraKeys(x, y, at+"."+k)...)
		}
	case []any:
		bv, ok := b.([]any)
		if !ok {
			return nil
		}
		for i := range min(len(av), len(bv)) {
			out = append(out, extraKeys(av[i], bv[i], fmt.Sprintf("%s[%d]", at, i))...)
		}
	}
	slices.Sort(out)
	return out
}

// TestWireTypesMatchTheAgent decodes every endpoint's real answer into the
// client's types, strictly, and drives the Client against the same agent.
func TestWireTypesMatchTheAgent(t *testing.T) {
	a := startAgent(t)
	base := "http://" + a.APIAddr()
	c := agentapi.New(base, nil)
	t.Cleanup(c.CloseIdleConnections)
	ctx := t.Context()

	// Enrolled, with the control plane's keys, and a device with a dead letter.
	eventually(t, "uplink with keys", func() error {
		up, err := c.Uplink(ctx)
		if err != nil {
			return err
		}
		if !up.Enrolled || len(up.KeyVersions) < 2 || up.LastHeartbeat.IsZero() {
			return fmt.Errorf("uplink %+v", up)
		}
		return nil
	})
	dev := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(a.MQTTURL()).SetClientID("sensor-1"))
	if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt connect: %v", tok.Error())
	}
	defer dev.Disconnect(50)
	for _, p := range []string{fmt.Sprintf(`{"ts":%d,"temp":21.5}`, time.Now().Unix()), `{"temp":`} {
		if tok := dev.Publish("devices/sensor-1/telemetry", 1, false, p); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	eventually(t, "device record", func() error {
		_, err := c.Device(ctx, "sensor-1")
		return err
	})

	// One key of each type, written through the client.
	if _, err := c.Put(ctx, "cfg", "site", []byte(`{"name":"berlin"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "cfg", "blob", []byte{0xff, 0x00}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "cfg", "nested/key", []byte("text")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "tags", "blue", nil); err != nil {
		t.Fatal(err)
	}
	if w, err := c.CounterAdd(ctx, "hits", "total", 5); err != nil || w.Type != agentapi.TypeCounter || w.Seq == 0 {
		t.Fatalf("counter add: %+v, %v", w, err)
	}
	if _, err := c.Put(ctx, "conf", "mode", []byte(`"eco"`)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "conf", "raw", []byte{0xfe}); err != nil {
		t.Fatal(err)
	}

	strict[agentapi.Health](t, base, "GET", "/healthz", "", 200)
	if r := strict[agentapi.Ready](t, base, "GET", "/readyz", "", 200); r.Members != 1 {
		t.Fatalf("ready: %+v", r)
	}
	colls := strict[[]agentapi.Collection](t, base, "GET", "/v1/state", "", 200)
	if len(colls) < 5 {
		t.Fatalf("collections: %+v", colls)
	}
	if l := strict[agentapi.Listing](t, base, "GET", "/v1/state/cfg", "", 200); len(l.Entries) != 3 || l.Type != agentapi.TypeLWW {
		t.Fatalf("lww listing: %+v", l)
	}
	if l := strict[agentapi.Listing](t, base, "GET", "/v1/state/tags", "", 200); fmt.Sprint(l.Members) != "[blue]" {
		t.Fatalf("orset listing: %+v", l)
	}
	if l := strict[agentapi.Listing](t, base, "GET", "/v1/state/hits", "", 200); fmt.Sprint(l.Counters) != "[{total 5}]" {
		t.Fatalf("counter listing: %+v", l)
	}
	if l := strict[agentapi.Listing](t, base, "GET", "/v1/state/conf", "", 200); len(l.Registers) != 2 || string(l.Registers[0].Values[0]) != `"eco"` {
		t.Fatalf("mvreg listing: %+v", l)
	}
	if it := strict[agentapi.Item](t, base, "GET", "/v1/state/cfg/site", "", 200); string(it.Value) != `{"name":"berlin"}` || it.HLC == "" || it.Origin != "api-1" {
		t.Fatalf("lww item: %+v", it)
	}
	if it := strict[agentapi.Item](t, base, "GET", "/v1/state/cfg/blob", "", 200); it.Encoding != "base64" {
		t.Fatalf("binary item: %+v", it)
	}
	if it := strict[agentapi.Item](t, base, "GET", "/v1/state/tags/blue", "", 200); it.Present == nil || !*it.Present {
		t.Fatalf("orset item: %+v", it)
	}
	if it := strict[agentapi.Item](t, base, "GET", "/v1/state/hits/total", "", 200); string(it.Value) != "5" {
		t.Fatalf("counter item: %+v", it)
	}
	if it := strict[agentapi.Item](t, base, "GET", "/v1/state/conf/raw", "", 200); len(it.Values) != 1 || !strings.Contains(string(it.Values[0]), `"encoding":"base64"`) {
		t.Fatalf("binary mvreg item: %+v", it)
	}
	strict[agentapi.WriteResult](t, base, "PUT", "/v1/state/cfg/other", `1`, 200)
	strict[agentapi.WriteResult](t, base, "DELETE", "/v1/state/cfg/other", "", 200)
	members := strict[[]agentapi.Member](t, base, "GET", "/v1/members", "", 200)
	if len(members) != 1 || members[0].Name != "api-1" || members[0].State != agentapi.StateAlive || members[0].Meta.ID == "" {
		t.Fatalf("members: %+v", members)
	}
	devs := strict[struct {
		Devices []agentapi.DeviceRecord `json:"devices"`
	}](t, base, "GET", "/v1/devices", "", 200)
	if len(devs.Devices) != 1 || devs.Devices[0].ID != "sensor-1" || devs.Devices[0].Agent != "api-1" {
		t.Fatalf("devices: %+v", devs)
	}
	strict[agentapi.DeviceRecord](t, base, "GET", "/v1/devices/sensor-1", "", 200)
	if s := strict[agentapi.CommandSent](t, base, "POST", "/v1/devices/sensor-1/commands", `{"fan":"on"}`, 202); s.Bytes != 12 {
		t.Fatalf("command: %+v", s)
	}
	page := strict[agentapi.DeadLetterPage](t, base, "GET", "/v1/dead-letters", "", 200)
	if len(page.Items) != 1 || page.Items[0].Reason != "schema" || string(page.Items[0].Payload) != `{"temp":` {
		t.Fatalf("dead letters: %+v", page)
	}
	ing := strict[agentapi.IngestStatus](t, base, "GET", "/v1/ingest", "", 200)
	if !ing.Enabled || ing.Stats == nil || ing.Stats.Received < 2 || ing.Store == nil {
		t.Fatalf("ingest: %+v", ing)
	}
	up := strict[agentapi.UplinkStatus](t, base, "GET", "/v1/uplink", "", 200)
	if !up.Enabled || up.AgentID == "" {
		t.Fatalf("uplink: %+v", up)
	}
	st := strict[agentapi.Status](t, base, "GET", "/v1/status", "", 200)
	if st.Node != "api-1" || !st.Running || st.Members.Alive != 1 || len(st.Members.List) != 1 || st.Health == nil ||
		!st.Ingest.Enabled || !st.Uplink.Enrolled || st.UptimeSeconds <= 0 || st.Version == "" {
		t.Fatalf("status: %+v", st)
	}
	if len(st.Keys.Held) < 2 || !st.Keys.Gossip.Encrypted {
		t.Fatalf("status keys: %+v", st.Keys)
	}
	if p := strict[agentapi.PurgeResult](t, base, "DELETE", "/v1/dead-letters?all=true", "", 200); p.Purged != 1 {
		t.Fatalf("purge: %+v", p)
	}
	if l := strict[agentapi.ModelList](t, base, "GET", "/v1/models", "", 200); l.Models == nil || len(l.Models) != 0 {
		t.Fatalf("models: %+v", l)
	}
	strict[agentapi.ErrorBody](t, base, "POST", "/v1/models/none/predict", `{"features":[1]}`, 404)

	// The client's calls decode the same answers.
	if l, err := c.List(ctx, "hits"); err != nil || len(l.Counters) != 1 {
		t.Fatalf("List: %+v, %v", l, err)
	}
	if it, err := c.Get(ctx, "cfg", "nested/key"); err != nil || string(it.Value) != `"text"` {
		t.Fatalf("Get with a slash: %+v, %v", it, err)
	}
	st2, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := agentapi.IngestRate(st, st2); !ok || r < 0 {
		t.Fatalf("rate: %v %v", r, ok)
	}
	for name, call := range map[string]func() error{
		"Health":      func() error { _, err := c.Health(ctx); return err },
		"Ready":       func() error { _, err := c.Ready(ctx); return err },
		"Metrics":     func() error { _, err := c.Metrics(ctx); return err },
		"Collections": func() error { _, err := c.Collections(ctx); return err },
		"Members":     func() error { _, err := c.Members(ctx); return err },
		"Devices":     func() error { _, err := c.Devices(ctx); return err },
		"Ingest":      func() error { _, err := c.Ingest(ctx); return err },
		"DeadLetters": func() error {
			_, err := c.DeadLetters(ctx, agentapi.DeadLetterQuery{After: 0, Limit: 10, Reason: "schema"})
			return err
		},
		"PurgeDeadLetters": func() error {
			_, err := c.PurgeDeadLetters(ctx, agentapi.DeadLetterPurge{Before: time.Now().Add(-time.Hour)})
			return err
		},
		"SendCommand": func() error { _, err := c.SendCommand(ctx, "sensor-1", []byte("x")); return err },
	} {
		if err := call(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}

	// Errors: typed, with the status, the method, the path and the agent's message.
	_, err = c.Get(ctx, "cfg", "missing")
	var ae *agentapi.Error
	if !errors.As(err, &ae) || ae.StatusCode != 404 || agentapi.StatusCode(err) != 404 ||
		!strings.Contains(err.Error(), "GET /v1/state/cfg/missing") || !strings.Contains(err.Error(), `key "missing" not found`) {
		t.Fatalf("missing key: %v", err)
	}
	if _, err := c.Delete(ctx, "hits", "total"); agentapi.StatusCode(err) != 405 || !strings.Contains(err.Error(), "counters cannot be deleted") {
		t.Fatalf("counter delete: %v", err)
	}
	if _, err := c.Device(ctx, "nobody"); agentapi.StatusCode(err) != 404 {
		t.Fatalf("unknown device: %v", err)
	}
}

// TestClientErrors: no answer, an answer from something that is not an
// agent, and an answer that does not fit.
func TestClientErrors(t *testing.T) {
	ctx := t.Context()
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	_, err := agentapi.New(dead.URL, nil).Members(ctx)
	var ue *agentapi.UnreachableError
	if !errors.As(err, &ue) || ue.URL != dead.URL || ue.Path != "/v1/members" || agentapi.StatusCode(err) != 0 {
		t.Fatalf("unreachable: %v", err)
	}

	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		io.WriteString(w, "<html>proxy</html>")
	}))
	defer other.Close()
	_, err = agentapi.New(other.URL, nil).Status(ctx)
	var ae *agentapi.Error
	if !errors.As(err, &ae) || ae.StatusCode != 502 || ae.Message != "" || ae.Body != "<html>proxy</html>" || !strings.Contains(err.Error(), "an edge-agent's API?") {
		t.Fatalf("not an agent: %v", err)
	}

	garbled := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"devices": 7}`)
	}))
	defer garbled.Close()
	if _, err := agentapi.New(garbled.URL, nil).Devices(ctx); !errors.Is(err, agentapi.ErrUnexpectedAnswer) {
		t.Fatalf("garbled: %v", err)
	}

	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer slow.Close()
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := agentapi.New(slow.URL, nil).Health(tctx); !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &ue) {
		t.Fatalf("slow: %v", err)
	}
}
