package main

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/internal/agenttest"
)

// startIngestAgent runs an agent in this process with ingestion from its
// embedded broker and its local API, both on free loopback ports.
func startIngestAgent(t *testing.T, name string) *agent.Agent {
	return startTestAgent(t, name, func(cfg *agent.Config) {
		cfg.Ingest.Enabled = true
		cfg.Ingest.MQTT.EmbeddedListen = "127.0.0.1:0"
		cfg.Ingest.DeviceRegistryInterval = 200 * time.Millisecond
	})
}

// startTestAgent runs an agent in this process with its local API on a
// free loopback port, configured further by mod.
func startTestAgent(t *testing.T, name string, mod func(*agent.Config)) *agent.Agent {
	t.Helper()
	cfg := agenttest.Config(t, name, "edgectl-test")
	mod(&cfg)
	return agenttest.Start(t, cfg)
}

func mqttConnect(t *testing.T, broker, id string) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(id).SetConnectTimeout(5 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s to %s: %v", id, broker, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

// TestDevicesAgainstAgent drives every devices command against a real
// agent: telemetry published to its broker shows up in the device
// registry, commands reach a device subscribed to its command topic, and
// malformed messages are listed and purged as dead letters.
func TestDevicesAgainstAgent(t *testing.T) {
	e := newDevicesEnv(t)
	ag := startIngestAgent(t, "edge-1")
	e.vars["EDGEFLEET_AGENT"] = "http://" + ag.APIAddr()

	dev := mqttConnect(t, ag.MQTTURL(), "sensor-1")
	var (
		mu       sync.Mutex
		commands []string
	)
	if tok := dev.Subscribe("devices/sensor-1/commands", 1, func(_ mqtt.Client, m mqtt.Message) {
		mu.Lock()
		commands = append(commands, string(m.Payload()))
		mu.Unlock()
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	now := time.Now().Unix()
	for _, p := range []struct{ topic, payload string }{
		{"devices/sensor-1/telemetry", fmt.Sprintf(`{"ts":%d,"temp":21.5,"hum":40}`, now-2)},
		{"devices/sensor-1/telemetry", fmt.Sprintf(`{"ts":%d,"temp":22.5,"hum":41}`, now-1)},
		{"devices/sensor-1/telemetry", `{"temp":`},
		{"devices/bad id/telemetry", `{"temp":1}`},
	} {
		if tok := dev.Publish(p.topic, 1, false, p.payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}

	// The registry entry appears once the agent has written it.
	deadline := time.Now().Add(20 * time.Second)
	var rec agentapi.DeviceRecord
	for {
		r := e.run("devices", "show", "sensor-1", "--json")
		if r.code == 0 {
			rec = decodeJSON[agentapi.DeviceRecord](t, r.stdout)
			if rec.Messages == 2 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("device record: %+v", r)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rec.Agent != "edge-1" || rec.Readings != 4 || rec.LastValues["temp"] != 22.5 || rec.LastValues["hum"] != 41 {
		t.Fatalf("record: %+v", rec)
	}
	out := e.must("devices", "list")
	if !strings.Contains(out, "sensor-1") || !strings.Contains(out, "edge-1") || !strings.Contains(out, "hum=41 temp=22.5") {
		t.Fatalf("list:\n%s", out)
	}
	if list := decodeJSON[[]agentapi.DeviceRecord](t, e.must("devices", "list", "--json")); len(list) != 1 || list[0].ID != "sensor-1" {
		t.Fatalf("list json: %+v", list)
	}
	if r := e.run("devices", "show", "nobody"); r.code != 1 || !strings.Contains(r.stderr, "404") {
		t.Fatalf("unknown device: %+v", r)
	}

	// A command reaches the device.
	if out := e.must("devices", "send", "sensor-1", `{"fan":"on"}`); out != "Sent 12 bytes to devices/sensor-1/commands (QoS 1).\n" {
		t.Fatalf("send: %q", out)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		got := strings.Join(commands, "|")
		mu.Unlock()
		if got == `{"fan":"on"}` {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("device received %q", got)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Dead letters: the broken JSON and the bad topic.
	dls := decodeJSON[[]ingest.DeadLetter](t, e.must("devices", "dead-letters", "--json"))
	if len(dls) != 2 {
		t.Fatalf("dead letters: %+v", dls)
	}
	out = e.must("devices", "dead-letters", "list", "--reason", "bad_topic")
	if !strings.Contains(out, "devices/bad id/telemetry") || !strings.Contains(out, "bad_topic") || strings.Contains(out, "sensor-1") {
		t.Fatalf("bad_topic listing:\n%s", out)
	}
	if out := e.must("devices", "dead-letters", "--show-payload"); !strings.Contains(out, "Payload:\n  {\"temp\":\n") {
		t.Fatalf("--show-payload:\n%s", out)
	}
	if out := e.must("devices", "dead-letters", "purge", "--reason", "bad_topic"); out != "Purged 1 dead letter.\n" {
		t.Fatalf("purge reason: %q", out)
	}
	if out := e.must("devices", "dead-letters", "purge", "--id", fmt.Sprint(dls[0].ID), "--id", fmt.Sprint(dls[1].ID)); out != "Purged 1 dead letter.\n" {
		t.Fatalf("purge ids: %q", out)
	}
	if out := e.must("devices", "dead-letters"); out != "No dead letters.\n" {
		t.Fatalf("after purge: %q", out)
	}
	if got := decodeJSON[agentapi.PurgeResult](t, e.must("devices", "dead-letters", "purge", "--all", "--json")); got.Purged != 0 {
		t.Fatalf("purge all: %+v", got)
	}
}
