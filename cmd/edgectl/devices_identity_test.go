package main

import (
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/internal/agenttest"
	"github.com/edgefleet/edgefleet/internal/mqtttest"
	"github.com/edgefleet/edgefleet/internal/testutil"
)

// deviceLogin connects with user name = client id = id.
func deviceLogin(broker, clientID, user, secret string) (mqtt.Client, error) {
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(clientID).SetUsername(user).SetPassword(secret).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(3 * time.Second))
	tok := c.Connect()
	if !tok.WaitTimeout(5 * time.Second) {
		return nil, errors.New("connect timed out")
	}
	return c, tok.Error()
}

// TestDeviceIdentitiesAgainstAgent: register prints the secret once and
// the agent's broker admits the device with it; list shows the state;
// disable refuses it, enable lets it back; rotate-secret retires the
// old secret; errors exit as they should.
func TestDeviceIdentitiesAgainstAgent(t *testing.T) {
	e := newDevicesEnv(t)
	cfg := agenttest.Config(t, "edge-id", "edgectl-test")
	cfg.Ingest.Enabled = true
	cfg.Ingest.MQTT.EmbeddedListen = "127.0.0.1:0"
	cfg.Ingest.Broker.AllowAnonymous = false
	logs := &testutil.SyncBuffer{}
	ag := agenttest.StartWith(t, cfg, agent.Deps{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	e.vars["EDGEFLEET_AGENT"] = "http://" + ag.APIAddr()

	out := e.must("devices", "register", "room-9")
	if !strings.Contains(out, "Secret:") || !strings.Contains(out, "devices/room-9/telemetry") {
		t.Fatalf("register:\n%s", out)
	}
	reg := decodeJSON[agentapi.IdentitySecret](t, e.must("devices", "register", "cam-1", "--topics", "pub:devices/cam-1/telemetry,pub:devices/cam-1/images", "--json"))
	if len(reg.Secret) != 43 || reg.Identity.State != "active" || len(reg.Identity.Publish) != 2 || len(reg.Identity.Subscribe) != 2 {
		t.Fatalf("register --json: %+v", reg)
	}
	if r := e.run("devices", "register", "cam-1"); r.code != 1 || !strings.Contains(r.stderr, "409") {
		t.Fatalf("second register: %+v", r)
	}
	if r := e.run("devices", "register", "x", "--topics", "pub:a/#/b"); r.code != 2 {
		t.Fatalf("bad --topics: %+v", r)
	}
	if r := e.run("devices", "disable", "nobody"); r.code != 1 || !strings.Contains(r.stderr, "404") {
		t.Fatalf("disable unknown: %+v", r)
	}
	if r := e.run("devices", "rotate-secret", "a/b"); r.code != 2 {
		t.Fatalf("bad id: %+v", r)
	}

	cl, err := deviceLogin(ag.MQTTURL(), "cam-1", "cam-1", reg.Secret)
	if err != nil {
		t.Fatalf("registered device refused: %v", err)
	}
	cl.Disconnect(0)
	rows := decodeJSON[[]map[string]any](t, e.must("devices", "list", "--json"))
	if len(rows) != 2 || rows[0]["id"] != "cam-1" || rows[0]["state"] != "active" {
		t.Fatalf("list --json: %v", rows)
	}

	if out := e.must("devices", "disable", "cam-1"); out != "Device cam-1 is disabled.\n" {
		t.Fatalf("disable: %q", out)
	}
	if !strings.Contains(e.must("devices", "list"), "disabled") {
		t.Fatal("list does not show the disabled state")
	}
	waitForCond(t, "disabled device refused", func() bool {
		cl, err := deviceLogin(ag.MQTTURL(), "cam-1", "cam-1", reg.Secret)
		if err == nil {
			cl.Disconnect(0)
		}
		return err != nil
	})
	e.must("devices", "enable", "cam-1")
	waitForCond(t, "enabled device admitted", func() bool {
		cl, err := deviceLogin(ag.MQTTURL(), "cam-1", "cam-1", reg.Secret)
		if err == nil {
			cl.Disconnect(0)
		}
		return err == nil
	})
	rot := decodeJSON[agentapi.IdentitySecret](t, e.must("devices", "rotate-secret", "cam-1", "--json"))
	if rot.Secret == reg.Secret || !rot.Identity.Rotated.After(reg.Identity.Rotated) {
		t.Fatalf("rotate: %+v", rot)
	}
	if cl, err := deviceLogin(ag.MQTTURL(), "cam-1", "cam-1", reg.Secret); err == nil {
		cl.Disconnect(0)
		t.Fatal("old secret admitted after rotate-secret")
	}
	if cl, err := deviceLogin(ag.MQTTURL(), "cam-1", "cam-1", rot.Secret); err != nil {
		t.Fatalf("new secret refused: %v", err)
	} else {
		cl.Disconnect(0)
	}
	// The secret is not in what list or the identity API show.
	if strings.Contains(e.must("devices", "list", "--json"), rot.Secret) {
		t.Fatal("list shows a secret")
	}
	// Each change is an audit record in the agent's log, without secrets.
	log := logs.String()
	for _, want := range []string{"action=device.register device=room-9", "action=device.register device=cam-1",
		"action=device.disable device=cam-1", "action=device.enable device=cam-1", "action=device.rotate-secret device=cam-1"} {
		found := false
		for _, line := range strings.Split(log, "\n") {
			found = found || strings.Contains(line, "msg=audit ") && strings.Contains(line, want) && strings.Contains(line, "result=ok")
		}
		if !found {
			t.Errorf("agent log lacks the audit record %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, reg.Secret) || strings.Contains(log, rot.Secret) {
		t.Fatal("a secret is in the agent's log")
	}
}

func waitForCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCredentialsExportMosquitto: the exported password and ACL files
// give a real Mosquitto the same rules: a registered device publishes its
// telemetry, which the agent's user receives; it cannot publish as
// another device or read another device's commands; a wrong secret and a
// disabled device are refused.
func TestCredentialsExportMosquitto(t *testing.T) {
	if _, err := mqtttest.Binary(); err != nil {
		t.Skipf("needs mosquitto: %v", err)
	}
	e := newDevicesEnv(t)
	ag := startTestAgent(t, "edge-export", func(cfg *agent.Config) {
		cfg.Ingest.Enabled = true
		cfg.Ingest.MQTT.EmbeddedListen = "127.0.0.1:0"
	})
	e.vars["EDGEFLEET_AGENT"] = "http://" + ag.APIAddr()
	secret := map[string]string{}
	for _, id := range []string{"d1", "d2", "d3"} {
		r := decodeJSON[agentapi.IdentitySecret](t, e.must("devices", "register", id, "--json"))
		secret[id] = r.Secret
	}
	e.must("devices", "disable", "d3")
	dir := t.TempDir()
	res := decodeJSON[exportResult](t, e.must("devices", "credentials", "export", "--format", "mosquitto", "--dir", dir, "--json"))
	if len(res.Devices) != 2 || len(res.Skipped) != 1 || !res.AgentPasswordNew {
		t.Fatalf("export: %+v", res)
	}
	if r := e.run("devices", "credentials", "export", "--format", "emqx", "--dir", dir); r.code != 2 {
		t.Fatalf("unknown format: %+v", r)
	}
	agentPw, err := os.ReadFile(res.AgentPasswordFile)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mqtttest.Start(mqtttest.Options{Dir: t.TempDir(), PasswordFile: res.PasswordFile, ACLFile: res.ACLFile})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop() })

	// The agent's user subscribes to every device's telemetry.
	got := make(chan string, 10)
	sub, err := deviceLogin(m.URL(), "agent-sub", "edge-agent", strings.TrimSpace(string(agentPw)))
	if err != nil {
		t.Fatalf("agent user refused by mosquitto: %v\n%s", err, m.Log())
	}
	defer sub.Disconnect(0)
	if tok := sub.Subscribe("devices/+/telemetry", 1, func(_ mqtt.Client, msg mqtt.Message) {
		got <- msg.Topic() + " " + string(msg.Payload())
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	// d1 publishing as d2: refused (Mosquitto drops a 3.1.1 client that
	// publishes outside its ACL, as the embedded broker does).
	forger, err := deviceLogin(m.URL(), "d1", "d1", secret["d1"])
	if err != nil {
		t.Fatalf("d1 refused by mosquitto: %v\n%s", err, m.Log())
	}
	forger.Publish("devices/d2/telemetry", 1, false, `{"forged":1}`).WaitTimeout(2 * time.Second)
	forger.Disconnect(0)
	d1, err := deviceLogin(m.URL(), "d1", "d1", secret["d1"])
	if err != nil {
		t.Fatalf("d1 refused by mosquitto: %v\n%s", err, m.Log())
	}
	defer d1.Disconnect(0)
	// d1 reads its commands, not d2's; the agent's user publishes them.
	cmds := make(chan string, 10)
	for _, f := range []string{"devices/d1/commands", "devices/d2/commands"} {
		if tok := d1.Subscribe(f, 1, func(_ mqtt.Client, msg mqtt.Message) { cmds <- msg.Topic() }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	if tok := d1.Publish("devices/d1/telemetry", 1, false, `{"t":21}`); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("d1 publishing its telemetry: %v\n%s", tok.Error(), m.Log())
	}
	for _, topic := range []string{"devices/d2/commands", "devices/d1/commands"} {
		if tok := sub.Publish(topic, 1, false, "on"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	select {
	case msg := <-got:
		if msg != `devices/d1/telemetry {"t":21}` {
			t.Fatalf("agent user received %q first: a device published as another", msg)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("agent user received no telemetry\n%s", m.Log())
	}
	select {
	case topic := <-cmds:
		if topic != "devices/d1/commands" {
			t.Fatalf("d1 received %s", topic)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("d1 received no command")
	}
	time.Sleep(300 * time.Millisecond) // anything else in flight arrives
	if len(got) != 0 || len(cmds) != 0 {
		t.Fatalf("more delivered than allowed: telemetry %d, commands %d", len(got), len(cmds))
	}
	for _, c := range []struct{ user, secret, why string }{
		{"d1", secret["d2"], "wrong secret"},
		{"d3", secret["d3"], "disabled device"},
		{"nobody", secret["d1"], "unknown user"},
	} {
		if cl, err := deviceLogin(m.URL(), c.user, c.user, c.secret); err == nil {
			cl.Disconnect(0)
			t.Fatalf("mosquitto admitted a %s", c.why)
		}
	}
	// The files are what the export says.
	pw, _ := os.ReadFile(res.PasswordFile)
	if n := strings.Count(string(pw), "\n"); n != 3 || !strings.Contains(string(pw), "edge-agent:$7$101$") {
		t.Fatalf("password file:\n%s", pw)
	}
	acl, _ := os.ReadFile(filepath.Join(dir, "acl"))
	if !strings.Contains(string(acl), "user d1\ntopic write devices/d1/telemetry\ntopic read devices/d1/commands\ntopic read devices/d1/inference\n") {
		t.Fatalf("acl file:\n%s", acl)
	}
	var again exportResult
	if err := json.Unmarshal([]byte(e.must("devices", "credentials", "export", "--dir", dir, "--json")), &again); err != nil || again.AgentPasswordNew {
		t.Fatalf("second export must reuse the agent's password: %+v %v", again, err)
	}
}
