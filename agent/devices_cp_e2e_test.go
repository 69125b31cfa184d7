package agent_test

import (
	"fmt"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/agenttest"
	"github.com/edgefleet/edgefleet/internal/cptest"
	"github.com/edgefleet/edgefleet/internal/mqtttest"
)

// TestControlPlaneDeviceIdentities: a device registered through the
// control plane is admitted by an agent that never talks to the control
// plane (it learns the identity by gossip from one that does); disabling
// it through the control plane closes its connection there within 5 s,
// enabling lets it back, and a rotated secret replaces the old one.
func TestControlPlaneDeviceIdentities(t *testing.T) {
	srv, cp := cptest.Start(t, cptest.Config(t.TempDir()))
	toks, err := cp.CreateEnrollmentTokens(t.Context(), time.Hour, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	cfg := agenttest.Config(t, "gw-a", "devices-cp")
	cfg.ControlPlane.URL = srv.URL()
	cfg.ControlPlane.CAFile = srv.CAPath()
	cfg.ControlPlane.EnrollmentToken = toks[0].Token
	cfg.ControlPlane.BackoffMin = 50 * time.Millisecond
	cfg.ControlPlane.BackoffMax = 200 * time.Millisecond
	a := agenttest.Start(t, cfg)
	waitUntil(t, 20*time.Second, "agent enrolled", func() (bool, string) {
		return a.Uplink().Status().Enrolled, fmt.Sprintf("%+v", a.Uplink().Status())
	})
	bcfg := agenttest.Config(t, "gw-b", "devices-cp")
	bcfg.Gossip.Join = []string{a.GossipAddr()}
	bcfg.Ingest.Enabled = true
	bcfg.Ingest.MQTT.EmbeddedListen = "127.0.0.1:0"
	bcfg.Ingest.Broker.AllowAnonymous = false
	b := agenttest.Start(t, bcfg)

	reg, err := cp.RegisterDevice(t.Context(), cpapi.RegisterDeviceRequest{ID: "meter-9"})
	if err != nil {
		t.Fatal(err)
	}
	lost := make(chan time.Time, 4)
	var dev mqtt.Client
	waitUntil(t, 20*time.Second, "device admitted by the agent without a control plane", func() (bool, string) {
		var err error
		dev, err = mqtttest.DialDevice(b.MQTTURL(), "meter-9", reg.Secret, lost)
		return err == nil, fmt.Sprint(err)
	})
	if tok := dev.Publish("devices/meter-9/telemetry", 1, false, `{"ts":1,"kwh":3}`); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	// Another device's topic: MQTT 3.1.1 has no refusal code, so the
	// broker closes the connection.
	dev.Publish("devices/meter-8/telemetry", 1, false, `{"ts":1,"kwh":3}`)
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("publishing to another device's topic was not refused")
	}
	if dev, err = mqtttest.DialDevice(b.MQTTURL(), "meter-9", reg.Secret, lost); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	if _, err := cp.SetDeviceState(t.Context(), "meter-9", false); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-lost:
		t.Logf("disabled through the control plane: connection closed %.2f s later", at.Sub(start).Seconds())
		if d := at.Sub(start); d > 5*time.Second {
			t.Errorf("closed after %s, bound 5s", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("disabling through the control plane did not close the connection")
	}
	if _, err := mqtttest.DialDevice(b.MQTTURL(), "meter-9", reg.Secret, nil); err == nil {
		t.Fatal("a disabled device connected")
	}

	if _, err := cp.SetDeviceState(t.Context(), "meter-9", true); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "enabled device admitted again", func() (bool, string) {
		c, err := mqtttest.DialDevice(b.MQTTURL(), "meter-9", reg.Secret, nil)
		if err == nil {
			c.Disconnect(50)
		}
		return err == nil, fmt.Sprint(err)
	})

	rot, err := cp.RotateDeviceSecret(t.Context(), "meter-9")
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "new secret admitted, old refused", func() (bool, string) {
		if c, err := mqtttest.DialDevice(b.MQTTURL(), "meter-9", reg.Secret, nil); err == nil {
			c.Disconnect(50)
			return false, "old secret still admitted"
		}
		c, err := mqtttest.DialDevice(b.MQTTURL(), "meter-9", rot.Secret, nil)
		if err == nil {
			c.Disconnect(50)
		}
		return err == nil, fmt.Sprint(err)
	})
}
