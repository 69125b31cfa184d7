package ingest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// TestPublishCommands: Publish sends QoS 1 messages on the subscriber's
// session to another client of the broker; bad topics, oversize payloads
// and a missing session are refused with clear errors.
func TestPublishCommands(t *testing.T) {
	b, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()

	got := make(chan mqtt.Message, 4)
	dev := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("device-d1"))
	if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("device connect: %v", tok.Error())
	}
	defer dev.Disconnect(100)
	if tok := dev.Subscribe("devices/d1/commands", 1, func(_ mqtt.Client, m mqtt.Message) { got <- m }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("device subscribe: %v", tok.Error())
	}

	// Without a broker there is no session to publish on.
	noBroker, err := New(Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := noBroker.Publish(context.Background(), "devices/d1/commands", []byte("x")); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("publish without broker: %v", err)
	}
	if noBroker.Subscribed() {
		t.Fatal("subscribed without a broker")
	}
	noBroker.Stop()

	in, err := New(Config{DataDir: t.TempDir(), MQTT: MQTTConfig{Broker: b.URL(), ClientID: "agent-pub"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitSubscribed(t, in)
	if !in.Subscribed() || in.Broker() != b.URL() {
		t.Fatalf("Subscribed %v, Broker %q", in.Subscribed(), in.Broker())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := in.Publish(ctx, "devices/d1/commands", []byte(`{"led":"on"}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if string(m.Payload()) != `{"led":"on"}` || m.Qos() != 1 {
			t.Fatalf("device got %q at QoS %d", m.Payload(), m.Qos())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("command not delivered")
	}
	if st := in.Stats(); st.Published != 1 {
		t.Fatalf("published = %d", st.Published)
	}
	for _, topic := range []string{"", "devices/+/commands", "devices/#", "a\x00b"} {
		if err := in.Publish(ctx, topic, []byte("x")); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("topic %q: %v", topic, err)
		}
	}
	if err := in.Publish(ctx, "devices/d1/commands", []byte(strings.Repeat("x", MaxPublishBytes+1))); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("oversize payload: %v", err)
	}
	in.Stop()
	if err := in.Publish(ctx, "devices/d1/commands", []byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("after Stop: %v", err)
	}
	if len(Reasons()) != len(reasons) || Reasons()[0] != ReasonTopic {
		t.Errorf("Reasons() = %v", Reasons())
	}
}
