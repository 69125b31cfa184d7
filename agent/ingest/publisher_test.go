package ingest

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/internal/mqtttest"
)

// TestPublisher: messages sent without waiting reach a subscriber and
// are counted once acknowledged; a publisher whose broker is away fails
// at once.
func TestPublisher(t *testing.T) {
	m := startMosquitto(t, mqtttest.Options{})
	var got atomic.Int64
	sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.URL()).SetClientID("watcher"))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer sub.Disconnect(50)
	if tok := sub.Subscribe("devices/+/inference", 1, func(mqtt.Client, mqtt.Message) { got.Add(1) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	p, err := NewPublisher(MQTTConfig{Broker: m.URL(), ClientID: "agent-inference"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	deadline := time.Now().Add(10 * time.Second)
	for !p.connected.Load() {
		if time.Now().After(deadline) {
			t.Fatal("publisher not connected")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var sent []Sent
	for i := 0; i < 200; i++ {
		s, err := p.Send(fmt.Sprintf("devices/d%d/inference", i%3), []byte(`{"class":1}`))
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, s)
	}
	for _, s := range sent {
		select {
		case <-s.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("not acknowledged")
		}
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
	}
	if p.Published() != 200 {
		t.Fatalf("published %d", p.Published())
	}
	for got.Load() < 200 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got.Load() != 200 {
		t.Fatalf("subscriber got %d of 200", got.Load())
	}
	if _, err := p.Send("devices/+/inference", nil); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("wildcard topic: %v", err)
	}

	away, err := NewPublisher(MQTTConfig{Broker: "tcp://127.0.0.1:1", ClientID: "nobody", ConnectTimeout: 100 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer away.Close()
	if _, err := away.Send("devices/d/inference", []byte("x")); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("broker away: %v", err)
	}
}
