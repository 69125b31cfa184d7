package ingest

import (
	"context"
	"fmt"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

func publishAll(t *testing.T, broker, user, pass string, topic string, payloads []string) {
	t.Helper()
	opts := mqtt.NewClientOptions().AddBroker(broker).SetClientID(fmt.Sprintf("pub-%d", time.Now().UnixNano())).
		SetUsername(user).SetPassword(pass).SetOrderMatters(false)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(100)
	var toks []mqtt.Token
	for _, p := range payloads {
		toks = append(toks, c.Publish(topic, 1, false, p))
	}
	for _, tok := range toks {
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
}

// TestEmbeddedBroker: the same subscriber against the in-process broker,
// with live traffic and a backlog queued while the agent was away.
func TestEmbeddedBroker(t *testing.T) {
	b, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0", Users: map[string]string{"agent": "pw"}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	dir := t.TempDir()
	cfg := Config{DataDir: dir, MQTT: MQTTConfig{Broker: b.URL(), ClientID: "embedded-agent", Username: "agent", Password: "pw"}}
	in, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	in.Start(context.Background())
	waitSubscribed(t, in)
	var ps []string
	for i := 0; i < 300; i++ {
		ps = append(ps, fmt.Sprintf(`{"v":%d}`, i))
	}
	ps = append(ps, `{"v":`)
	publishAll(t, b.URL(), "agent", "pw", "devices/e1/telemetry", ps)
	rep := waitMessages(t, dir, 301)
	if rep.Readings != 300 || rep.DeadLetters != 1 {
		t.Fatalf("live: %+v", rep)
	}
	in.Stop()
	publishAll(t, b.URL(), "agent", "pw", "devices/e2/telemetry", ps[:200])
	in, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	in.Start(context.Background())
	defer in.Stop()
	rep = waitMessages(t, dir, 501)
	if rep.Readings != 500 || len(rep.Devices) != 2 {
		t.Fatalf("backlog: %+v", rep)
	}
	// Anonymous clients are refused when users are set.
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("anon").SetConnectTimeout(2 * time.Second))
	if tok := c.Connect(); tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
		t.Fatal("anonymous client accepted")
	}
	if _, err := StartBroker(BrokerConfig{Addr: "nonsense"}); err == nil {
		t.Fatal("bad address accepted")
	}
}
