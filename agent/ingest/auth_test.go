package ingest

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/edgefleet/edgefleet/agent/devcred"
)

// testIdentity is a device with the default topics and a fresh secret.
func testIdentity(t *testing.T, name string) (Identity, string) {
	t.Helper()
	secret, err := devcred.NewSecret(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h, err := devcred.HashSecret(rand.Reader, secret)
	if err != nil {
		t.Fatal(err)
	}
	return Identity{Name: name, Hash: h, Publish: []string{"devices/" + name + "/telemetry"},
		Subscribe: []string{"devices/" + name + "/commands", "devices/" + name + "/inference"}}, secret
}

// authBroker starts an embedded broker with Auth and an Ingestor.
func authBroker(t *testing.T, anon bool) (*Broker, *Ingestor) {
	t.Helper()
	b, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0", Ingest: true, Auth: &AuthConfig{AllowAnonymous: anon, Registry: prometheus.NewRegistry()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Stop() })
	in, err := New(Config{DataDir: t.TempDir(), Embedded: b})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Stop() })
	return b, in
}

// dial connects a paho (MQTT 3.1.1) client; lost receives its
// connection-lost errors.
func dial(b *Broker, id, user, pass string, lost chan<- error) (mqtt.Client, error) {
	o := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID(id).SetUsername(user).SetPassword(pass).
		SetConnectTimeout(3 * time.Second).SetAutoReconnect(false).SetProtocolVersion(4).SetOrderMatters(false)
	if lost != nil {
		o.SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err })
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(5 * time.Second) {
		return nil, context.DeadlineExceeded
	}
	return c, tok.Error()
}

// counter reads a counter.
func counter(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

func refused(b *Broker, reason string) float64 {
	return counter(b.auth.refused.WithLabelValues(reason))
}

// TestBrokerAuthConnect: wrong secret, unknown user, anonymous client,
// another device's client id and a disabled device are refused and
// counted; the right secret is admitted, the second time from the cache.
func TestBrokerAuthConnect(t *testing.T) {
	b, _ := authBroker(t, false)
	d1, s1 := testIdentity(t, "d1")
	d2, _ := testIdentity(t, "d2")
	d2.Disabled = true
	b.SetIdentities([]Identity{d1, d2})

	for _, c := range []struct{ id, user, pass, reason string }{
		{"d1", "d1", s1 + "x", RefuseSecret},
		{"d1", "d1", "", RefuseSecret},
		{"d9", "d9", s1, RefuseUnknown},
		{"anon", "", "", RefuseAnonymous},
		{"d2", "d1", s1, RefuseClientID},
		{"d2", "d2", s1, RefuseDisabled},
	} {
		before := refused(b, c.reason)
		if cl, err := dial(b, c.id, c.user, c.pass, nil); err == nil {
			cl.Disconnect(0)
			t.Fatalf("%+v: admitted", c)
		}
		if got := refused(b, c.reason); got != before+1 {
			t.Fatalf("%+v: refusals %q went %v -> %v", c, c.reason, before, got)
		}
	}
	for i := 0; i < 2; i++ {
		cl, err := dial(b, "d1", "d1", s1, nil)
		if err != nil {
			t.Fatalf("right secret refused: %v", err)
		}
		cl.Disconnect(0)
	}
	if got := counter(b.auth.accepted.WithLabelValues("cached")); got != 1 {
		t.Fatalf("cached admissions %v, want 1", got)
	}
	if cl, err := dial(b, "d1/sensor-a", "d1", s1, nil); err != nil {
		t.Fatalf("client id d1/sensor-a refused: %v", err)
	} else {
		cl.Disconnect(0)
	}
	// A wrong secret after a cached success still fails.
	if cl, err := dial(b, "d1", "d1", s1[:len(s1)-1], nil); err == nil {
		cl.Disconnect(0)
		t.Fatal("wrong secret admitted after a cached success")
	}
}

// TestBrokerAuthTopics: a device publishing to another device's topic is
// refused (MQTT 3.1.1: disconnected), counted, and nothing is stored
// for the other device; subscribing to another device's commands is
// refused; its own topics work.
func TestBrokerAuthTopics(t *testing.T) {
	b, in := authBroker(t, false)
	d1, s1 := testIdentity(t, "d1")
	d2, s2 := testIdentity(t, "d2")
	b.SetIdentities([]Identity{d1, d2})
	lost := make(chan error, 4)
	c1, err := dial(b, "d1", "d1", s1, lost)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Disconnect(0)
	waitToken(t, "own telemetry", c1.Publish("devices/d1/telemetry", 1, false, `{"t":1}`))
	tok := c1.Subscribe("devices/d2/commands", 1, nil)
	waitToken(t, "subscribe", tok)
	if code := tok.(*mqtt.SubscribeToken).Result()["devices/d2/commands"]; code < 0x80 {
		t.Fatalf("subscription to d2's commands granted (code %#x)", code)
	}
	for _, f := range []string{"devices/+/commands", "devices/#", "#"} {
		tok := c1.Subscribe(f, 1, nil)
		waitToken(t, "subscribe "+f, tok)
		if code := tok.(*mqtt.SubscribeToken).Result()[f]; code < 0x80 {
			t.Fatalf("subscription to %s granted (code %#x)", f, code)
		}
	}
	if got := refused(b, RefuseSubscribe); got != 4 {
		t.Fatalf("subscribe refusals %v, want 4", got)
	}
	cmds := make(chan string, 4)
	tok = c1.Subscribe("devices/d1/commands", 1, func(_ mqtt.Client, m mqtt.Message) { cmds <- string(m.Payload()) })
	waitToken(t, "own commands", tok)
	if code := tok.(*mqtt.SubscribeToken).Result()["devices/d1/commands"]; code != 1 {
		t.Fatalf("own commands: code %#x", code)
	}
	// The agent's commands (inline client) reach the device.
	if err := in.Publish(context.Background(), "devices/d1/commands", []byte("fan-on")); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-cmds:
		if c != "fan-on" {
			t.Fatalf("command %q", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the agent's command did not reach the device")
	}

	// QoS 1 to d2's topic: the 3.1.1 client is disconnected.
	c1.Publish("devices/d2/telemetry", 1, false, `{"t":666}`)
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("a 3.1.1 device publishing to another device's topic was not disconnected")
	}
	// QoS 0 to d2's topic: dropped, counted.
	c1b, err := dial(b, "d1", "d1", s1, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c1b.Disconnect(0)
	waitToken(t, "qos0", c1b.Publish("devices/d2/telemetry", 0, false, `{"t":667}`))
	waitToken(t, "own telemetry", c1b.Publish("devices/d1/telemetry", 1, false, `{"t":2}`))
	if got := refused(b, RefusePublish); got != 2 {
		t.Fatalf("publish refusals %v, want 2", got)
	}
	// MQTT 5: PUBACK and SUBACK carry 0x87 (not authorized), the
	// connection stays.
	v5 := dialV5(t, b.Addr(), "d2", "d2", s2)
	if code := v5.publish("devices/d1/telemetry", 7); code != packets.ErrNotAuthorized.Code {
		t.Fatalf("MQTT 5 publish to d1's topic: reason %#x, want 0x87", code)
	}
	if code := v5.subscribe("devices/d1/commands", 8); code != packets.ErrNotAuthorized.Code {
		t.Fatalf("MQTT 5 subscribe to d1's commands: reason %#x, want 0x87", code)
	}
	if code := v5.publish("devices/d2/telemetry", 9); code != 0 {
		t.Fatalf("MQTT 5 publish to its own topic: reason %#x", code)
	}
	waitFor(t, "3 readings committed", func() bool {
		st, err := in.Store().Stats(context.Background())
		return err == nil && st.Readings == 3
	})
	devs, err := in.Store().Devices(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		switch {
		case d.ID == "d1" && d.Readings == 2, d.ID == "d2" && d.Readings == 1:
		default:
			t.Fatalf("stored device %s with %d readings (want d1: 2, d2: 1, from their own connections)", d.ID, d.Readings)
		}
	}
}

// TestBrokerAuthDisable: disabling a device closes its live connection,
// a reconnect is refused; enabling it lets it back; a new secret closes
// the connection made with the old one. Anonymous clients, when
// allowed, cannot take a device's client id.
func TestBrokerAuthDisable(t *testing.T) {
	b, _ := authBroker(t, true)
	d1, s1 := testIdentity(t, "d1")
	b.SetIdentities([]Identity{d1})
	lost := make(chan error, 1)
	c1, err := dial(b, "d1", "d1", s1, lost)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Disconnect(0)
	off := d1
	off.Disabled = true
	start := time.Now()
	if n := b.SetIdentities([]Identity{off}); n != 1 {
		t.Fatalf("closed %d connections, want 1", n)
	}
	select {
	case <-lost:
		t.Logf("disabled device's connection lost %v after SetIdentities", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("disabled device still connected after 5s")
	}
	if _, err := dial(b, "d1", "d1", s1, nil); err == nil {
		t.Fatal("disabled device admitted")
	}
	b.SetIdentities([]Identity{d1})
	c1, err = dial(b, "d1", "d1", s1, lost)
	if err != nil {
		t.Fatalf("enabled device refused: %v", err)
	}
	rot, s1new := testIdentity(t, "d1")
	b.SetIdentities([]Identity{rot})
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("connection made with the old secret survives a rotation")
	}
	if _, err := dial(b, "d1", "d1", s1, nil); err == nil {
		t.Fatal("old secret admitted after rotation")
	}
	if cl, err := dial(b, "d1", "d1", s1new, nil); err != nil {
		t.Fatalf("new secret refused: %v", err)
	} else {
		cl.Disconnect(0)
	}
	if got := counter(b.auth.kicked.WithLabelValues("disabled")); got != 1 {
		t.Fatalf("disconnects for disabled %v", got)
	}
	// Anonymous: admitted, but not with a device's client id.
	if cl, err := dial(b, "anon-1", "", "", nil); err != nil {
		t.Fatalf("anonymous client refused with allow_anonymous: %v", err)
	} else {
		cl.Disconnect(0)
	}
	if _, err := dial(b, "d1", "", "", nil); err == nil {
		t.Fatal("anonymous client admitted with a device's client id")
	}
}

// v5Client is an MQTT 5 client written by hand (paho.mqtt.golang speaks
// 3.1.1), to read the reason codes of refusals.
type v5Client struct {
	t    *testing.T
	conn net.Conn
}

func dialV5(t *testing.T, addr, id, user, pass string) *v5Client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	v := &v5Client{t: t, conn: c}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Clean: true, Keepalive: 60,
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(pass)}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	v.write(buf.Bytes())
	typ, body := v.read()
	if typ != packets.Connack || len(body) < 2 || body[1] != 0 {
		t.Fatalf("CONNACK success expected, got type %d body %x", typ, body)
	}
	return v
}

func (v *v5Client) write(b []byte) {
	v.t.Helper()
	if _, err := v.conn.Write(b); err != nil {
		v.t.Fatal(err)
	}
}

// read returns the next packet's type and body.
func (v *v5Client) read() (byte, []byte) {
	v.t.Helper()
	v.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var h [1]byte
	if _, err := io.ReadFull(v.conn, h[:]); err != nil {
		v.t.Fatal(err)
	}
	n, mult := 0, 1
	for {
		var b [1]byte
		if _, err := io.ReadFull(v.conn, b[:]); err != nil {
			v.t.Fatal(err)
		}
		n += int(b[0]&127) * mult
		if b[0] < 128 {
			break
		}
		mult *= 128
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(v.conn, body); err != nil {
		v.t.Fatal(err)
	}
	return h[0] >> 4, body
}

// publish sends a QoS 1 publish and returns the PUBACK's reason code.
func (v *v5Client) publish(topic string, pid uint16) byte {
	v.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 5,
		TopicName: topic, PacketID: pid, Payload: []byte(`{"t":5}`)}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		v.t.Fatal(err)
	}
	v.write(buf.Bytes())
	typ, body := v.read()
	if typ != packets.Puback || len(body) < 2 {
		v.t.Fatalf("PUBACK expected, got type %d body %x", typ, body)
	}
	if len(body) == 2 {
		return 0 // success, reason code omitted
	}
	return body[2]
}

// subscribe subscribes to one filter and returns the SUBACK's code.
func (v *v5Client) subscribe(filter string, pid uint16) byte {
	v.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 5,
		PacketID: pid, Filters: packets.Subscriptions{{Filter: filter, Qos: 1}}}
	var buf bytes.Buffer
	if err := pk.SubscribeEncode(&buf); err != nil {
		v.t.Fatal(err)
	}
	v.write(buf.Bytes())
	typ, body := v.read()
	if typ != packets.Suback || len(body) < 4 {
		v.t.Fatalf("SUBACK expected, got type %d body %x", typ, body)
	}
	return body[len(body)-1]
}
