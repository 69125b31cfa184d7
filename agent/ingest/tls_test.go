package ingest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgefleet/edgefleet/internal/testutil"
)

// TestBrokerTLS: a device connects over mqtts and verifies the agent's
// certificate against the fleet CA; its readings are stored. A client
// trusting another CA refuses the broker; a clear-text client on the
// TLS port gets a CONNACK refusal at once (no hang), counted; TLS below
// 1.2 is refused.
func TestBrokerTLS(t *testing.T) {
	pki := testutil.NewPKI(t)
	b, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0", TLSAddr: "127.0.0.1:0", TLSConfig: serverTLS(t, pki), Ingest: true,
		Limits: BrokerLimits{ConnectTimeout: 3 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	if !strings.HasPrefix(b.URL(), "tcp://") || !strings.HasPrefix(b.TLSURL(), "ssl://") {
		t.Fatalf("URL %q, TLSURL %q", b.URL(), b.TLSURL())
	}
	dir := t.TempDir()
	in, err := New(Config{DataDir: dir, Embedded: b})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer in.Stop()

	connect := func(url string, tc *tls.Config) (mqtt.Client, error) {
		opts := mqtt.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("dev-%d", time.Now().UnixNano())).
			SetTLSConfig(tc).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second)
		c := mqtt.NewClient(opts)
		tok := c.Connect()
		if !tok.WaitTimeout(8 * time.Second) {
			return nil, errors.New("connect hung")
		}
		return c, tok.Error()
	}

	c, err := connect(b.TLSURL(), &tls.Config{RootCAs: pki.CAPool})
	if err != nil {
		t.Fatalf("device over mqtts, verifying the fleet CA: %v", err)
	}
	for i := 0; i < 20; i++ {
		tok := c.Publish("devices/tls-1/telemetry", 1, false, fmt.Sprintf(`{"v":%d}`, i))
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish over TLS: %v", tok.Error())
		}
	}
	c.Disconnect(100)
	waitMessages(t, dir, 20)

	// A client trusting another CA refuses the agent's certificate.
	other := testutil.NewPKI(t)
	if _, err := connect(b.TLSURL(), &tls.Config{RootCAs: other.CAPool}); err == nil {
		t.Fatal("a client trusting another CA connected")
	} else if ua := (x509.UnknownAuthorityError{}); !errors.As(err, &ua) && !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("wrong-CA client: %v, want an unknown-authority error", err)
	}

	// Clear text on the TLS port: refused at once with a CONNACK saying so.
	start := time.Now()
	_, err = connect("tcp://"+strings.TrimPrefix(b.TLSURL(), "ssl://"), nil)
	if err == nil {
		t.Fatal("a clear-text client connected to the TLS port")
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("clear-text client waited %s for its refusal", el)
	}
	if !strings.Contains(strings.ToLower(err.Error()), "unavailable") {
		t.Fatalf("clear-text 3.1.1 client: %v, want the CONNACK refusal", err)
	}
	// MQTT 5 gets the reason string.
	tlsAddr := strings.TrimPrefix(b.TLSURL(), "ssl://")
	r := dialMQTT(t, tlsAddr)
	r.write(connectPacket(5, "plain-v5", "", ""))
	ack, err := r.read(5, 3*time.Second)
	if err != nil {
		t.Fatalf("clear-text MQTT 5 client: %v, want a CONNACK", err)
	}
	if ack.ReasonCode != packets.ErrServerUnavailable.Code || !strings.Contains(ack.Properties.ReasonString, "TLS") {
		t.Fatalf("clear-text MQTT 5 CONNACK: reason %#x %q", ack.ReasonCode, ack.Properties.ReasonString)
	}

	// TLS 1.1 is refused by the handshake.
	d := &net.Dialer{Timeout: 3 * time.Second}
	if conn, err := tls.DialWithDialer(d, "tcp", tlsAddr, &tls.Config{RootCAs: pki.CAPool, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}); err == nil {
		conn.Close()
		t.Fatal("TLS 1.1 handshake succeeded")
	}

	// The broker counts a refusal after the client saw it.
	waitFor(t, "TLS refusals counted", func() bool {
		ref := b.Refused()
		// The wrong-CA client aborts its handshake, and TLS 1.1.
		return ref[RefusedPlainOnTLS] == 2 && ref[RefusedTLSHandshake] == 2
	})
}

// TestLoadServerTLS: what is wrong with the files is named.
func TestLoadServerTLS(t *testing.T) {
	pki := testutil.NewPKI(t)
	dir := t.TempDir()
	now := time.Now()
	expiredCert, expiredKey := pki.Issue(t, dir, "expired", now.Add(-48*time.Hour), now.Add(-24*time.Hour), []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
	clientCert, clientKey := pki.Issue(t, dir, "client", now.Add(-time.Hour), now.Add(time.Hour), []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
	for _, tc := range []struct {
		name, cert, key string
		min             uint16
		want            string
	}{
		{"missing", dir + "/nope.pem", pki.KeyFile, 0, "no such file"},
		{"mismatched key", pki.CertFile, expiredKey, 0, "private key does not match"},
		{"expired", expiredCert, expiredKey, 0, "not now"},
		{"client only", clientCert, clientKey, 0, "serverAuth"},
		{"TLS 1.0", pki.CertFile, pki.KeyFile, tls.VersionTLS10, "want 1.2 or 1.3"},
	} {
		_, err := LoadServerTLS(tc.cert, tc.key, tc.min, now)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	c, err := LoadServerTLS(pki.CertFile, pki.KeyFile, 0, now)
	if err != nil || c.MinVersion != tls.VersionTLS12 {
		t.Fatalf("good pair: %v, min version %#x", err, c.MinVersion)
	}
}

// FuzzSniffConnect: reading the protocol level of a clear-text CONNECT
// never panics, accepts only a CONNECT's start, and the refusal it leads
// to is a CONNACK mochi's own decoder reads back.
func FuzzSniffConnect(f *testing.F) {
	f.Add(encodeConnect(connectPacket(4, "dev", "", "")))
	f.Add(encodeConnect(connectPacket(5, "dev", "u", "p")))
	f.Add([]byte{0x10, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{0x10, 0x0c, 0x00, 0x06, 'M', 'Q', 'I', 's', 'd', 'p', 0x03})
	f.Add([]byte{0x16, 0x03, 0x01})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		level, ok := sniffConnect(b)
		if !ok {
			return
		}
		if b[0] != 0x10 || !strings.Contains(string(b), "MQ") {
			t.Fatalf("%x taken for a CONNECT", b)
		}
		out := plainRefusal(level)
		var pk packets.Packet
		if err := pk.FixedHeader.Decode(out[0]); err != nil || pk.FixedHeader.Type != packets.Connack {
			t.Fatalf("refusal %x: %v", out, err)
		}
		pk.FixedHeader.Remaining = int(out[1])
		pk.ProtocolVersion = level
		if err := pk.ConnackDecode(out[2:]); err != nil || pk.ReasonCode == 0 || int(out[1]) != len(out)-2 {
			t.Fatalf("refusal %x for level %d: reason %#x, %v", out, level, pk.ReasonCode, err)
		}
	})
}
