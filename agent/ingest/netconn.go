package ingest

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/net/proxy"
)

// connReadBuffer is the read buffer of the subscriber's connection;
// connWriteBuffer bounds the bytes written to it and not yet sent.
const (
	connReadBuffer  = 64 << 10
	connWriteBuffer = 256 << 10
)

// openConn opens the subscriber's connection as paho would (tcp:// and
// mqtt:// through the proxy named by the environment, if any; ssl://,
// tls:// and mqtts:// with the client's TLS configuration, through
// all_proxy if set) and buffers it both ways (bufferedConn). paho reads
// each packet with several small reads (the fixed header byte by byte,
// then the rest) and writes each PUBACK on its own: draining a backlog,
// those system calls were a third of the subscriber's CPU time.
func openConn(uri *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
	d := o.Dialer
	if d == nil {
		d = &net.Dialer{Timeout: o.ConnectTimeout}
	}
	var conn net.Conn
	var err error
	switch uri.Scheme {
	case "tcp", "mqtt":
		conn, err = proxy.FromEnvironmentUsing(d).Dial("tcp", uri.Host)
	case "ssl", "tls", "mqtts":
		if os.Getenv("all_proxy") == "" {
			conn, err = tls.DialWithDialer(d, "tcp", uri.Host, o.TLSConfig)
			break
		}
		var raw net.Conn
		if raw, err = proxy.FromEnvironment().Dial("tcp", uri.Host); err != nil {
			break
		}
		tc := tls.Client(raw, o.TLSConfig)
		if err = tc.Handshake(); err != nil {
			raw.Close()
			break
		}
		conn = tc
	default:
		return nil, fmt.Errorf("ingest: broker URL scheme %q: %w", uri.Scheme, errors.ErrUnsupported)
	}
	if err != nil {
		return nil, err
	}
	return newBufferedConn(conn), nil
}

// bufferedConn is a connection with a read buffer and coalesced writes.
// Only paho's reading goroutine (and, before it starts, the handshake)
// reads. Write queues the bytes and returns; a flushing goroutine sends
// everything queued in one system call, so the PUBACKs of a group
// commit, which paho writes one by one, leave in a few writes. A write
// that fails closes the connection, which paho's reader then reports as
// lost (and reconnects); anything written but not sent is lost with the
// connection, as with unsent TCP data: unacknowledged messages are
// redelivered. Close sends what was written first (waiting at most
// closeFlushWait).
type bufferedConn struct {
	net.Conn
	r *bufio.Reader

	mu      sync.Mutex
	cond    *sync.Cond // signals pending bytes, space, close and errors
	pending []byte     // written, not yet handed to the flusher
	err     error      // a write failed: the connection is closed
	closing bool
	flushed chan struct{} // closed when the flusher has ended
}

// closeFlushWait bounds how long Close waits to send what was written.
const closeFlushWait = time.Second

func newBufferedConn(conn net.Conn) *bufferedConn {
	c := &bufferedConn{Conn: conn, r: bufio.NewReaderSize(conn, connReadBuffer), flushed: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	go c.flush()
	return c
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *bufferedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && !c.closing && len(c.pending) > 0 && len(c.pending)+len(p) > connWriteBuffer {
		c.cond.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	if c.closing {
		return 0, net.ErrClosed
	}
	c.pending = append(c.pending, p...)
	c.cond.Broadcast()
	return len(p), nil
}

// flush sends the pending bytes until the connection closes.
func (c *bufferedConn) flush() {
	defer close(c.flushed)
	var buf []byte
	c.mu.Lock()
	for {
		for len(c.pending) == 0 && c.err == nil && !c.closing {
			c.cond.Wait()
		}
		if len(c.pending) == 0 || c.err != nil {
			c.mu.Unlock()
			return
		}
		buf, c.pending = c.pending, buf[:0]
		c.cond.Broadcast() // room for writers
		c.mu.Unlock()
		_, err := c.Conn.Write(buf)
		c.mu.Lock()
		if err != nil {
			c.err = err
			c.cond.Broadcast()
			c.mu.Unlock()
			c.Conn.Close() // paho's reader sees the connection lost
			return
		}
	}
}

// Close sends what was written, then closes the connection.
func (c *bufferedConn) Close() error {
	c.mu.Lock()
	c.closing = true
	c.cond.Broadcast()
	c.mu.Unlock()
	c.Conn.SetWriteDeadline(time.Now().Add(closeFlushWait))
	<-c.flushed
	return c.Conn.Close()
}

// OpenBufferedConn is the connection opener the subscriber gives paho
// (mqtt.ClientOptions.SetCustomOpenConnectionFn): paho's own dialing,
// buffered both ways. The ingestion benchmark gives it to its bare paho
// subscriber too, so the two differ only by durable storage.
func OpenBufferedConn(uri *url.URL, o mqtt.ClientOptions) (net.Conn, error) { return openConn(uri, o) }
