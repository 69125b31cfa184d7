package ingest

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// rawDevice is an MQTT 3.1.1 client written by hand, to send what paho
// would not on purpose: the same packet twice on one connection.
type rawDevice struct {
	t    *testing.T
	conn net.Conn
}

func dialRaw(t *testing.T, addr, id string) *rawDevice {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	d := &rawDevice{t: t, conn: c}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Clean: true, Keepalive: 60}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	d.write(buf.Bytes())
	if typ, _ := d.read(5 * time.Second); typ != packets.Connack {
		t.Fatalf("CONNACK expected, got packet type %d", typ)
	}
	return d
}

func (d *rawDevice) write(b []byte) {
	d.t.Helper()
	if _, err := d.conn.Write(b); err != nil {
		d.t.Fatal(err)
	}
}

func (d *rawDevice) publish(topic, payload string, pid uint16, dup bool) {
	d.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Dup: dup}, ProtocolVersion: 4,
		TopicName: topic, PacketID: pid, Payload: []byte(payload)}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		d.t.Fatal(err)
	}
	d.write(buf.Bytes())
}

// read returns the type and packet id (PUBACK) of the next packet, or
// type 0 when none comes within wait.
func (d *rawDevice) read(wait time.Duration) (byte, uint16) {
	d.t.Helper()
	d.conn.SetReadDeadline(time.Now().Add(wait))
	var hdr [2]byte
	if _, err := io.ReadFull(d.conn, hdr[:]); err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return 0, 0
		}
		d.t.Fatal(err)
	}
	body := make([]byte, hdr[1]) // every packet expected here is short
	if _, err := io.ReadFull(d.conn, body); err != nil {
		d.t.Fatal(err)
	}
	typ := hdr[0] >> 4
	if typ == packets.Puback && len(body) >= 2 {
		return typ, uint16(body[0])<<8 | uint16(body[1])
	}
	return typ, 0
}

// TestEmbeddedInflightCopy: a device sending a QoS 1 publish again on
// the same connection while the first is not yet acknowledged (paho
// does, after a reconnect) gets one PUBACK, and the message is stored
// once. After the PUBACK, the same packet id is a new publication: a
// DUP copy of the message then is recognized by the store, a message
// without DUP is a new reading.
func TestEmbeddedInflightCopy(t *testing.T) {
	b, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0", Ingest: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	dir := t.TempDir()
	in, err := New(Config{DataDir: dir, Embedded: b})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	held := make(chan struct{}, 1)
	first := true
	in.Store().commitHook = func([]*envelope) error {
		if first {
			first = false
			held <- struct{}{}
			<-release
		}
		return nil
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer in.Stop()
	d := dialRaw(t, b.Addr(), "raw-1")
	const topic = "devices/raw-1/telemetry"
	d.publish(topic, `{"door":1}`, 5, false)
	<-held // the first copy's commit is under way and held
	d.publish(topic, `{"door":1}`, 5, true)
	waitFor(t, "the copy to be dropped", func() bool { return in.Stats().Copies == 1 })
	close(release)
	if typ, pid := d.read(5 * time.Second); typ != packets.Puback || pid != 5 {
		t.Fatalf("PUBACK for 5 expected, got type %d id %d", typ, pid)
	}
	if typ, pid := d.read(300 * time.Millisecond); typ != 0 {
		t.Fatalf("a second packet after the PUBACK: type %d id %d", typ, pid)
	}

	// Acknowledged: the same id again, flagged DUP, is a copy the store
	// recognizes (acknowledged again); without DUP it is a new reading.
	d.publish(topic, `{"door":1}`, 5, true)
	if typ, pid := d.read(5 * time.Second); typ != packets.Puback || pid != 5 {
		t.Fatalf("PUBACK for the late copy expected, got type %d id %d", typ, pid)
	}
	d.publish(topic, `{"door":1}`, 5, false)
	if typ, pid := d.read(5 * time.Second); typ != packets.Puback || pid != 5 {
		t.Fatalf("PUBACK for the new message expected, got type %d id %d", typ, pid)
	}
	st, err := in.Store().Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Readings != 2 || st.DuplicateMessages != 1 || in.Stats().Copies != 1 {
		t.Fatalf("2 readings, 1 duplicate message, 1 in-flight copy expected: %+v, copies %d", st, in.Stats().Copies)
	}
}
