package ingest

import (
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// TestListenerCloseLeavesMochisLookupAlone: closing the broker's
// listener disconnects its MQTT clients itself; it never calls mochi's
// closeClients, whose Clients.GetByListener takes the clients' read lock
// twice and deadlocks with a client attaching at that moment (a broker's
// Stop hung so). Here mochi's function is one that never returns.
func TestListenerCloseLeavesMochisLookupAlone(t *testing.T) {
	b, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	lost := make(chan error, 1)
	dev := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("device-close").
		SetAutoReconnect(false).SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err }))
	if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("device connect: %v", tok.Error())
	}
	defer dev.Disconnect(0)
	l, ok := b.srv.Listeners.Get("tcp")
	if !ok {
		t.Fatal("no tcp listener")
	}
	closed := make(chan struct{})
	go func() {
		l.Close(func(string) { select {} }) // mochi's lookup, as if deadlocked
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the listener's Close waited on mochi's closeClients")
	}
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the device was not disconnected by the listener's Close")
	}
}
