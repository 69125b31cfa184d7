package main

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/internal/agenttest"
)

// TestStatusOfRunningAgent asks a real agent with ingestion for its
// status while a device publishes, as JSON and as text.
func TestStatusOfRunningAgent(t *testing.T) {
	cfg := testAgentConfig(t)
	cfg.API.Addr = "127.0.0.1:0"
	a := startTestAgent(t, cfg)

	// A device publishes 50 messages a second while status measures.
	dev := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(a.MQTTURL()).SetClientID("sensor-1").SetConnectTimeout(5 * time.Second))
	if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer dev.Disconnect(50)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				dev.Publish("devices/sensor-1/telemetry", 1, false, fmt.Sprintf(`{"temp":%d}`, time.Now().UnixNano()%100)).WaitTimeout(5 * time.Second)
			}
		}
	}()
	defer func() { close(stop); <-done }()

	out := mustAgent(t, "status", "--api", a.APIAddr(), "--json", "--window", "1s")
	var rep statusReport
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if rep.Node != "edge-1" || !rep.Running || rep.Members.Alive != 1 || !rep.Ingest.Enabled || !rep.Ingest.Subscribed || rep.Ingest.Stats == nil ||
		rep.Uplink.Enabled || !rep.Keys.Gossip.Encrypted || rep.RateWindowSeconds < 0.9 {
		t.Fatalf("status:\n%s", out)
	}
	// 50/s nominal; a loaded machine publishes fewer.
	if rep.IngestRate == nil || *rep.IngestRate < 5 || *rep.IngestRate > 80 {
		t.Fatalf("ingest rate %v:\n%s", rep.IngestRate, out)
	}

	out = mustAgent(t, "status", "--api", "http://"+a.APIAddr(), "--window", "0")
	for _, want := range []string{"Agent:", "edge-1", "health ok", "Members:", "1 alive, 0 dead, 0 left", "Ingestion:", "subscribed to tcp://127.0.0.1:",
		"(embedded broker), rate not measured", "backlog ", "outbox 0 readings", "Uplink:", "disabled (no control plane)", "Keys:", "none from a control plane",
		"Gossip keyring:", "bootstrap key (primary)"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
}

// testAgentConfig is an agent on loopback ports with ingestion from its
// embedded broker and no API.
func testAgentConfig(t *testing.T) agent.Config {
	cfg := agenttest.Config(t, "edge-1", "edge-agent-test")
	cfg.API.Addr = ""
	cfg.Ingest.Enabled = true
	cfg.Ingest.MQTT.EmbeddedListen = "127.0.0.1:0"
	return cfg
}

// startTestAgent starts an agent in this process, stopped when the test ends.
func startTestAgent(t *testing.T, cfg agent.Config) *agent.Agent {
	t.Helper()
	return agenttest.Start(t, cfg)
}

func TestStatusErrors(t *testing.T) {
	dead := httptest.NewServer(nil)
	addr := dead.Listener.Addr().String()
	dead.Close()
	if r := runAgent(t, "status", "--api", addr); r.code != 1 || !strings.Contains(r.stderr, "no answer from the agent API at http://"+addr) ||
		!strings.Contains(r.stderr, "is edge-agent running?") {
		t.Fatalf("unreachable: %+v", r)
	}
	if r := runAgent(t, "status", "--api", "ftp://x"); r.code != 2 || !strings.Contains(r.stderr, "--api") {
		t.Fatalf("bad --api: %+v", r)
	}
}
