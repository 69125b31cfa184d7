package ingest

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestBufferedConn: writes from several goroutines arrive whole and in
// each writer's order, beyond the write buffer's size; Close sends what
// was written before closing; reads go through the buffer; a write
// after Close fails.
func TestBufferedConn(t *testing.T) {
	raw, peer := tcpPair(t)
	c := newBufferedConn(raw)
	var want bytes.Buffer
	for i := 0; i < 20000; i++ {
		want.WriteString("packet-")
		want.WriteByte(byte('a' + i%26))
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	p := want.Bytes()
	for len(p) > 0 {
		n := min(len(p), 8)
		if _, err := c.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if _, err := peer.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, want.Bytes()) {
			t.Fatalf("peer got %d bytes, want %d", len(b), want.Len())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("peer did not see the close")
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Fatal("write after close accepted")
	}
	c.Close() // twice is harmless
}

// TestBufferedConnConcurrentWrites: concurrent writers' packets are never
// interleaved.
func TestBufferedConnConcurrentWrites(t *testing.T) {
	raw, peer := tcpPair(t)
	c := newBufferedConn(raw)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pkt := []byte(strings.Repeat(string(rune('A'+w)), 100))
			for i := 0; i < 2000; i++ {
				if _, err := c.Write(pkt); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	c.Close()
	b := <-got
	if len(b) != 4*2000*100 {
		t.Fatalf("%d bytes", len(b))
	}
	for i := 0; i < len(b); i += 100 {
		if bytes.Count(b[i:i+100], b[i:i+1]) != 100 {
			t.Fatalf("packet at %d interleaved", i)
		}
	}
}

// TestBufferedConnWriteError: when the peer is gone, writes fail and the
// connection is closed, so paho's reader sees it lost.
func TestBufferedConnWriteError(t *testing.T) {
	raw, peer := tcpPair(t)
	c := newBufferedConn(raw)
	peer.(*net.TCPConn).SetLinger(0)
	peer.Close() // reset
	deadline := time.Now().Add(10 * time.Second)
	var err error
	for err == nil && time.Now().Before(deadline) {
		_, err = c.Write(make([]byte, 1024))
		time.Sleep(time.Millisecond)
	}
	if err == nil {
		t.Fatal("writes to a reset connection keep succeeding")
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read succeeds on a failed connection")
	}
	c.Close()
}

// TestOpenConnSchemes: tcp:// dials; schemes the subscriber does not
// serve are refused by name.
func TestOpenConnSchemes(t *testing.T) {
	if _, err := openConn(&url.URL{Scheme: "ws", Host: "127.0.0.1:1"}, *mqtt.NewClientOptions()); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("ws: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := openConn(&url.URL{Scheme: "tcp", Host: l.Addr().String()}, *mqtt.NewClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
