package ingest

import (
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/internal/testutil"
)

func startLimited(t *testing.T, lim BrokerLimits, clk clock.Clock, users map[string]string) (*Broker, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	b, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0", Limits: lim, Clock: clk, Users: users, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Stop() })
	return b, reg
}

// connectOK connects a raw client and fails unless the CONNACK admits it.
func connectOK(t *testing.T, addr string, version byte, id, user, pass string) *rawClient {
	t.Helper()
	r := dialMQTT(t, addr)
	r.write(connectPacket(version, id, user, pass))
	ack, err := r.read(version, 5*time.Second)
	if err != nil || ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("connect %s: packet type %d reason %#x, %v", id, ack.FixedHeader.Type, ack.ReasonCode, err)
	}
	return r
}

// TestBrokerMessageRate: a device over its rate is disconnected with
// reason 0x96 (MQTT 5) or a closed connection (3.1.1), counted; another
// device keeps publishing; the bucket refills with time and survives a
// reconnect.
func TestBrokerMessageRate(t *testing.T) {
	clk := clock.NewManual(time.Unix(1_700_000_000, 0))
	b, reg := startLimited(t, BrokerLimits{MessageRate: 5, MessageBurst: 10}, clk, nil)
	addr := b.Addr()

	noisy := connectOK(t, addr, 5, "noisy", "", "")
	quiet := connectOK(t, addr, 5, "quiet", "", "")
	for i := 0; i < 10; i++ {
		noisy.write(publishPacket(5, "devices/noisy/telemetry", []byte(`{"v":1}`)))
	}
	quiet.write(publishPacket(5, "devices/quiet/telemetry", []byte(`{"v":1}`)))
	if pk, err := noisy.read(5, 300*time.Millisecond); err == nil {
		t.Fatalf("within its burst the device got packet type %d reason %#x", pk.FixedHeader.Type, pk.ReasonCode)
	}
	noisy.write(publishPacket(5, "devices/noisy/telemetry", []byte(`{"v":1}`))) // the 11th
	pk, err := noisy.read(5, 5*time.Second)
	if err != nil || pk.FixedHeader.Type != packets.Disconnect || pk.ReasonCode != packets.ErrMessageRateTooHigh.Code {
		t.Fatalf("over its rate: packet type %d reason %#x (%v), want DISCONNECT 0x96", pk.FixedHeader.Type, pk.ReasonCode, err)
	}
	if !strings.Contains(pk.Properties.ReasonString, "rate") {
		t.Errorf("DISCONNECT reason string %q", pk.Properties.ReasonString)
	}
	if _, err := noisy.read(5, 2*time.Second); err == nil {
		t.Fatal("connection still open after the DISCONNECT")
	}
	// The other device is not affected.
	quiet.write(publishPacket(5, "devices/quiet/telemetry", []byte(`{"v":1}`)))
	if pk, err := quiet.read(5, 300*time.Millisecond); err == nil {
		t.Fatalf("quiet device got packet type %d reason %#x", pk.FixedHeader.Type, pk.ReasonCode)
	}
	// Reconnecting does not refill the bucket; time does.
	again := connectOK(t, addr, 5, "noisy", "", "")
	again.write(publishPacket(5, "devices/noisy/telemetry", []byte(`{"v":1}`)))
	if pk, err := again.read(5, 5*time.Second); err != nil || pk.ReasonCode != packets.ErrMessageRateTooHigh.Code {
		t.Fatalf("reconnected device with an empty bucket: reason %#x, %v", pk.ReasonCode, err)
	}
	clk.Advance(time.Second) // 5 tokens
	again = connectOK(t, addr, 5, "noisy", "", "")
	for i := 0; i < 5; i++ {
		again.write(publishPacket(5, "devices/noisy/telemetry", []byte(`{"v":1}`)))
	}
	if pk, err := again.read(5, 300*time.Millisecond); err == nil {
		t.Fatalf("after a refill: packet type %d reason %#x", pk.FixedHeader.Type, pk.ReasonCode)
	}

	// An MQTT 3.1.1 client (paho) over its rate loses its connection.
	lost := make(chan error, 1)
	opts := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("noisy-v3").SetAutoReconnect(false).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err })
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	for i := 0; i < 11; i++ {
		c.Publish("devices/noisy-v3/telemetry", 0, false, `{"v":1}`)
	}
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("MQTT 3.1.1 client over its rate still connected")
	}
	waitFor(t, "rate refusals counted", func() bool { return b.Refused()[RefusedMessageRate] == 3 })
	if n := testutil.MetricSum(t, reg, "edgefleet_mqtt_broker_refused_total", "message_rate"); n != 3 {
		t.Errorf("metric message_rate = %v, want 3", n)
	}
}

// TestBrokerConnectionLimits: connections over the total or per-address
// limit are closed at once; a client that sends no CONNECT is closed at
// the connect timeout; all counted.
func TestBrokerConnectionLimits(t *testing.T) {
	b, _ := startLimited(t, BrokerLimits{MaxConnections: 4, MaxConnectionsPerAddress: 3, ConnectTimeout: 300 * time.Millisecond}, nil, nil)
	addr := b.Addr()
	var held []*rawClient
	for i := 0; i < 3; i++ {
		held = append(held, connectOK(t, addr, 4, fmt.Sprintf("dev-%d", i), "", ""))
	}
	closedAtOnce := func(local string) {
		t.Helper()
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("connection from %s over the limit not closed at once: %v", local, err)
		}
	}
	closedAtOnce("127.0.0.1") // 4th from one address
	waitFor(t, "per-address refusal counted", func() bool { return b.Refused()[RefusedPerAddress] == 1 })
	r := dialMQTTFrom(t, "127.0.0.2", addr) // the 4th connection in all
	r.write(connectPacket(4, "elsewhere", "", ""))
	if ack, err := r.read(4, 5*time.Second); err != nil || ack.ReasonCode != 0 {
		t.Fatalf("a client from another address: reason %#x, %v", ack.ReasonCode, err)
	}
	closedAtOnce("127.0.0.3") // the 5th in all
	waitFor(t, "total refusal counted", func() bool { return b.Refused()[RefusedMaxConnections] == 1 })

	held[0].conn.Close()
	waitFor(t, "a slot freed", func() bool { return b.Connections() == 3 })
	// A client that sends nothing is closed at the connect timeout.
	silent := dialMQTTFrom(t, "127.0.0.3", addr)
	start := time.Now()
	if _, err := silent.read(4, 5*time.Second); err == nil || isTimeout(err) {
		t.Fatalf("silent client: %v, want the broker to close it", err)
	}
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Fatalf("silent client closed after %s, before the connect timeout", el)
	}
	waitFor(t, "connect timeout counted", func() bool { return b.Refused()[RefusedConnectTimeout] == 1 })
}

// TestBrokerRefusesBadConnect: an over-long client id gets CONNACK
// "client identifier not valid"; a packet over the size limit and
// malformed CONNECT packets close the connection, counted, and the broker
// keeps serving.
func TestBrokerRefusesBadConnect(t *testing.T) {
	b, _ := startLimited(t, BrokerLimits{MaxClientIDLen: 64, MaxPacketBytes: 4096, ConnectTimeout: 2 * time.Second}, nil, nil)
	addr := b.Addr()
	for _, v := range []byte{4, 5} {
		r := dialMQTT(t, addr)
		r.write(connectPacket(v, strings.Repeat("x", 65), "", ""))
		ack, err := r.read(v, 5*time.Second)
		want := packets.ErrClientIdentifierNotValid.Code
		if v == 4 {
			want = packets.Err3ClientIdentifierNotValid.Code
		}
		if err != nil || ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != want {
			t.Fatalf("MQTT %d, 65-byte client id: packet type %d reason %#x (%v), want CONNACK %#x", v, ack.FixedHeader.Type, ack.ReasonCode, err, want)
		}
	}
	connectOK(t, addr, 4, strings.Repeat("x", 64), "", "").conn.Close()

	bad := map[string][]byte{
		"256 MiB remaining length":      {0x10, 0xff, 0xff, 0xff, 0x7f},
		"remaining length of 5 bytes":   {0x10, 0xff, 0xff, 0xff, 0xff, 0x01},
		"PUBLISH before CONNECT":        {0x30, 0x05, 0x00, 0x01, 'a', 'b', 'c'},
		"bad protocol name":             {0x10, 0x0c, 0x00, 0x04, 'M', 'Q', 'X', 'X', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00},
		"protocol level 9":              {0x10, 0x0c, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x09, 0x02, 0x00, 0x3c, 0x00, 0x00},
		"reserved flag set":             {0x10, 0x0c, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x03, 0x00, 0x3c, 0x00, 0x00},
		"client id longer than packet":  {0x10, 0x0c, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x3c, 0xff, 0xff},
		"truncated variable header":     {0x10, 0x03, 0x00, 0x04, 'M'},
		"fixed header flags on CONNECT": {0x1f, 0x0c, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00},
	}
	for name, raw := range bad {
		before := b.Refused()
		r := dialMQTT(t, addr)
		if _, err := r.conn.Write(raw); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for {
			pk, err := r.read(4, 5*time.Second)
			if err != nil {
				if isTimeout(err) {
					t.Fatalf("%s: connection left open", name)
				}
				break
			}
			if pk.FixedHeader.Type == packets.Connack && pk.ReasonCode == 0 {
				t.Fatalf("%s: admitted", name)
			}
		}
		time.Sleep(50 * time.Millisecond)
		after := b.Refused()
		for k := range after {
			if after[k] != before[k] {
				t.Logf("%s: %s", name, k)
			}
		}
	}
	waitFor(t, "bad packets counted", func() bool {
		ref := b.Refused()
		return ref[RefusedPacketTooLarge] == 1 && ref[RefusedMalformed] >= 7
	})
	connectOK(t, addr, 5, "still-serving", "", "")
	t.Logf("refused: %v", b.Refused())
}

// TestBrokerLoginDelay: failed logins wait longer each time (per client
// id and per address), are counted, and the memory of offenders is
// bounded; a good login is answered at once.
func TestBrokerLoginDelay(t *testing.T) {
	b, _ := startLimited(t, BrokerLimits{LoginDelay: 100 * time.Millisecond, LoginMaxDelay: 400 * time.Millisecond, Offenders: 8},
		nil, map[string]string{"dev-1": "right"})
	addr := b.Addr()
	fail := func(local, id string) time.Duration {
		t.Helper()
		r := dialMQTTFrom(t, local, addr)
		start := time.Now()
		r.write(connectPacket(4, id, "dev-1", "wrong"))
		ack, err := r.read(4, 10*time.Second)
		if err != nil || ack.ReasonCode != packets.Err3NotAuthorized.Code {
			t.Fatalf("wrong password: reason %#x, %v", ack.ReasonCode, err)
		}
		return time.Since(start)
	}
	for i, min := range []time.Duration{100, 200, 400, 400} {
		if d := fail("127.0.0.1", "guesser"); d < min*time.Millisecond {
			t.Fatalf("failure %d answered after %s, want at least %dms", i+1, d, min)
		}
	}
	// Another client id from the same address is slowed by the address.
	if d := fail("127.0.0.1", "guesser-2"); d < 400*time.Millisecond {
		t.Fatalf("new client id from a guessing address answered after %s", d)
	}
	// A good login is not slowed.
	start := time.Now()
	connectOK(t, addr, 4, "good", "dev-1", "right")
	if d := time.Since(start); d > 90*time.Millisecond {
		t.Logf("good login took %s (slow machine?)", d)
	}
	if n := b.Refused()[RefusedBadLogin]; n != 5 {
		t.Fatalf("bad logins counted %d, want 5", n)
	}
	for i := 0; i < 20; i++ {
		fail(fmt.Sprintf("127.0.1.%d", i+1), fmt.Sprintf("spray-%d", i))
	}
	b.guard.lmu.Lock()
	ids, ips := b.guard.failedID.len(), b.guard.failedIP.len()
	b.guard.lmu.Unlock()
	if ids > 8 || ips > 8 {
		t.Fatalf("offenders remembered: %d ids, %d addresses; bound 8", ids, ips)
	}
}

func TestLoginDelaySteps(t *testing.T) {
	want := []time.Duration{1, 2, 4, 8, 10, 10}
	for i, w := range want {
		if d := loginDelay(i+1, time.Second, 10*time.Second); d != w*time.Second {
			t.Errorf("failure %d: delay %s, want %s", i+1, d, w*time.Second)
		}
	}
	if d := loginDelay(1_000_000, time.Second, 10*time.Second); d != 10*time.Second {
		t.Errorf("many failures: %s", d)
	}
}

func TestLRUBound(t *testing.T) {
	c := newLRU[int](3)
	for i := 0; i < 10; i++ {
		c.get(fmt.Sprint(i), func() int { return i })
		c.get("0", func() int { return -1 }) // kept in use
	}
	if c.len() != 3 {
		t.Fatalf("len %d", c.len())
	}
	if v := c.get("0", func() int { return -1 }); v != 0 {
		t.Fatalf("entry in use evicted: got %d", v)
	}
}

func TestTokenBucket(t *testing.T) {
	t0 := time.Unix(0, 0)
	b := &bucket{tokens: 2, last: t0}
	if !b.take(t0, 1, 2) || !b.take(t0, 1, 2) || b.take(t0, 1, 2) {
		t.Fatal("burst of 2")
	}
	if !b.take(t0.Add(time.Second), 1, 2) || b.take(t0.Add(time.Second), 1, 2) {
		t.Fatal("one token a second")
	}
	if !b.take(t0.Add(time.Hour), 1, 2) || !b.take(t0.Add(time.Hour), 1, 2) || b.take(t0.Add(time.Hour), 1, 2) {
		t.Fatal("refill capped at the burst")
	}
}

// BenchmarkRateCheck: the cost of the message-rate check on one publish
// (a token bucket in an LRU behind a mutex), beside the same hook with
// the rate off, in one run.
func BenchmarkRateCheck(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprintf("rate=%v", on), func(b *testing.B) {
			lim := BrokerLimits{Offenders: 4096}
			if on {
				lim.MessageRate, lim.MessageBurst = 1e12, 1<<30
			}
			done := make(chan struct{})
			defer close(done)
			srv := mochi.New(nil)
			g := newBrokerGuard(lim, clock.Real(), slog.New(slog.DiscardHandler), done)
			g.srv = srv
			h := &limitsHook{g: g}
			cls := make([]*mochi.Client, 64)
			for i := range cls {
				cls[i] = srv.NewClient(nil, "tcp", fmt.Sprintf("dev-%d", i), false)
			}
			pk := packets.Packet{TopicName: "devices/x/telemetry"}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				cl := cls[i%len(cls)]
				if h.Provides(mochi.OnPublish) {
					if _, err := h.OnPublish(cl, pk); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
