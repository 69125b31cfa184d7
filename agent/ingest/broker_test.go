package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/internal/testutil"
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
	if _, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0", ClientQueue: -1}); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "client queue") {
		t.Fatalf("negative client queue: %v", err)
	}
}

func connectClient(t *testing.T, broker, id string, clean bool) mqtt.Client {
	t.Helper()
	opts := mqtt.NewClientOptions().AddBroker(broker).SetClientID(id).SetCleanSession(clean).
		SetOrderMatters(false).SetConnectTimeout(5 * time.Second)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

func waitToken(t *testing.T, what string, tok mqtt.Token) {
	t.Helper()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: %v", what, tok.Error())
	}
}

// TestEmbeddedIngest: with an Ingestor attached to the embedded broker,
// a device's QoS 1 publish is acknowledged only once committed (a held
// commit holds the PUBACK); QoS 0 and 2 are ingested too; other
// subscribers still receive the telemetry; other topics are not held;
// publishes wait while no Ingestor is attached, before the first and
// between two; Publish reaches devices through the broker.
func TestEmbeddedIngest(t *testing.T) {
	logs := &testutil.SyncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0", Ingest: true, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	dev := connectClient(t, b.URL(), "dev-1", true)
	watcher := connectClient(t, b.URL(), "watcher", true)
	var seen, other atomic.Int32
	waitToken(t, "subscribe", watcher.Subscribe("devices/+/telemetry", 1, func(mqtt.Client, mqtt.Message) { seen.Add(1) }))
	waitToken(t, "subscribe", watcher.Subscribe("devices/+/status", 1, func(mqtt.Client, mqtt.Message) { other.Add(1) }))

	// Before an Ingestor is attached, publishes wait.
	early := dev.Publish("devices/dev-1/telemetry", 1, false, `{"v":1}`)
	if early.WaitTimeout(150 * time.Millisecond) {
		t.Fatalf("publish acknowledged with no Ingestor attached (err %v)", early.Error())
	}

	dir := t.TempDir()
	cfg := Config{DataDir: dir, Embedded: b, MQTT: MQTTConfig{Broker: b.URL()}}
	in, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var held atomic.Bool
	in.Store().commitHook = func([]*envelope) error {
		if held.Load() {
			<-release
		}
		return nil
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !in.Subscribed() || in.Broker() != b.URL() {
		t.Fatalf("attached ingestor: subscribed %v, broker %q", in.Subscribed(), in.Broker())
	}
	waitToken(t, "early publish", early)

	// A held commit holds the PUBACK; other topics are not held.
	held.Store(true)
	tok := dev.Publish("devices/dev-1/telemetry", 1, false, `{"v":2}`)
	waitToken(t, "status publish", dev.Publish("devices/dev-1/status", 1, false, "up"))
	if tok.WaitTimeout(200 * time.Millisecond) {
		t.Fatal("PUBACK sent before the commit")
	}
	held.Store(false)
	close(release)
	waitToken(t, "publish after the commit", tok)
	if rep := waitMessages(t, dir, 2); rep.Readings != 2 {
		t.Fatalf("after QoS 1: %+v", rep)
	}

	// QoS 2 and QoS 0, and a pipelined burst from a second device.
	waitToken(t, "QoS 2", dev.Publish("devices/dev-1/telemetry", 2, false, `{"v":3}`))
	waitToken(t, "QoS 0", dev.Publish("devices/dev-1/telemetry", 0, false, `{"v":4}`))
	dev2 := connectClient(t, b.URL(), "dev-2", true)
	var toks []mqtt.Token
	for i := 0; i < 500; i++ {
		toks = append(toks, dev2.Publish("devices/dev-2/telemetry", 1, false, fmt.Sprintf(`{"v":%d}`, i)))
	}
	toks = append(toks, dev2.Publish("devices/dev-2/telemetry", 1, false, `{"v":`))
	for _, tok := range toks {
		waitToken(t, "burst", tok)
	}
	rep := waitMessages(t, dir, 505)
	if rep.Readings != 504 || rep.DeadLetters != 1 || len(rep.Devices) != 2 {
		t.Fatalf("after the burst: %+v", rep)
	}
	waitFor(t, "the watcher to receive the telemetry and the status", func() bool { return seen.Load() == 505 && other.Load() == 1 })
	if l := logs.String(); strings.Contains(l, "publish packet rejected") || !strings.Contains(l, "server started") {
		t.Fatalf("broker debug log (%d bytes): every ingested publish logged, or nothing logged:\n%.3000s", len(l), l)
	}

	// Commands reach a device's subscription through the broker.
	got := make(chan string, 1)
	waitToken(t, "subscribe commands", dev.Subscribe("devices/dev-1/commands", 1, func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) }))
	if err := in.Publish(context.Background(), "devices/dev-1/commands", []byte("reboot")); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p != "reboot" {
			t.Fatalf("command %q", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("command not delivered")
	}

	// Between two Ingestors, publishes wait again.
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}
	if in.Subscribed() {
		t.Fatal("stopped ingestor still attached")
	}
	late := dev2.Publish("devices/dev-2/telemetry", 1, false, `{"v":1000}`)
	if late.WaitTimeout(150 * time.Millisecond) {
		t.Fatal("publish acknowledged with no Ingestor attached")
	}
	in2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := in2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer in2.Stop()
	in3, _ := New(Config{DataDir: t.TempDir(), Embedded: b})
	if err := in3.Start(context.Background()); err == nil {
		t.Fatal("a second Ingestor attached to the same broker")
	}
	in3.Stop()
	waitToken(t, "late publish", late)
	if rep := waitMessages(t, dir, 506); rep.Readings != 505 {
		t.Fatalf("after the second ingestor: %+v", rep)
	}
	if _, err := New(Config{DataDir: t.TempDir(), Embedded: b, MQTT: MQTTConfig{Broker: "tcp://10.0.0.1:1883"}}); err == nil {
		t.Fatal("a broker URL other than the embedded broker's accepted")
	}
}

// TestEmbeddedBrokerStopReleases: a publish waiting for an Ingestor is
// released, unacknowledged, when the broker stops.
func TestEmbeddedBrokerStopReleases(t *testing.T) {
	b, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0", Ingest: true})
	if err != nil {
		t.Fatal(err)
	}
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("d").SetAutoReconnect(false))
	waitToken(t, "connect", c.Connect())
	tok := c.Publish("devices/d/telemetry", 1, false, `{"v":1}`)
	if tok.WaitTimeout(100 * time.Millisecond) {
		t.Fatal("acknowledged with no Ingestor")
	}
	stopped := make(chan error, 1)
	go func() { stopped <- b.Stop() }()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("broker stop hangs on a waiting publish")
	}
	if tok.WaitTimeout(2*time.Second) && tok.Error() == nil {
		t.Fatal("publish acknowledged by a stopping broker")
	}
	if _, err := New(Config{DataDir: t.TempDir(), Embedded: b}); err != nil {
		t.Fatal(err)
	}
}
