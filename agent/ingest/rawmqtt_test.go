package ingest

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgefleet/edgefleet/internal/testutil"
)

// rawClient speaks MQTT byte by byte (mochi's packet codec), to send what
// paho would not (MQTT 5, malformed packets) and read what the broker
// answers.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func dialMQTT(t *testing.T, addr string) *rawClient {
	t.Helper()
	return dialMQTTFrom(t, "127.0.0.1", addr)
}

// dialMQTTFrom dials from a local address: any 127.0.0.0/8 address works
// on Linux, so tests can have clients "from" several addresses.
func dialMQTTFrom(t *testing.T, local, addr string) *rawClient {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, conn: c, br: bufio.NewReader(c)}
}

func (r *rawClient) write(pk packets.Packet) {
	r.t.Helper()
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	default:
		r.t.Fatalf("rawClient: cannot encode packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		r.t.Fatal(err)
	}
	if _, err := r.conn.Write(buf.Bytes()); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func connectPacket(version byte, id, user, pass string) packets.Packet {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: version,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Keepalive: 30, Clean: true}}
	if version == 4 || version == 3 {
		pk.ProtocolVersion = 4
	}
	if user != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(user)
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(pass)
	}
	return pk
}

func publishPacket(version byte, topic string, payload []byte) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: version,
		TopicName: topic, Payload: payload}
}

// read returns the next packet from the broker (CONNACK or DISCONNECT),
// or the error that ended the connection.
func (r *rawClient) read(version byte, timeout time.Duration) (packets.Packet, error) {
	_ = r.conn.SetReadDeadline(time.Now().Add(timeout))
	var pk packets.Packet
	b, err := r.br.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(r.br)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(r.br, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = version
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	}
	return pk, err
}

func serverTLS(t *testing.T, p *testutil.PKI) *tls.Config {
	t.Helper()
	c, err := LoadServerTLS(p.CertFile, p.KeyFile, tls.VersionTLS12, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tryDial dials from a local address, returning the error.
func tryDial(local, addr string) (*rawClient, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &rawClient{conn: c, br: bufio.NewReader(c)}, nil
}

func encodeConnect(pk packets.Packet) []byte {
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		panic(err)
	}
	return buf.Bytes()
}
