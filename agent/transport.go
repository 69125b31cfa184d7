package agent

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// trafficCounters holds the byte and message totals of all memberlist
// traffic of one agent (packets and streams, both directions), as seen on
// the wire below memberlist's encryption and labels.
type trafficCounters struct {
	bytesOut, bytesIn atomic.Uint64
	msgsOut, msgsIn   atomic.Uint64
}

// countingTransport wraps a memberlist transport and counts what crosses
// it. Every packet is one message; every stream (dialed or accepted) is one
// message, and all bytes read or written on it are counted.
type countingTransport struct {
	inner memberlist.NodeAwareTransport
	c     *trafficCounters

	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	done     chan struct{}
	wg       sync.WaitGroup
	once     sync.Once
}

var _ memberlist.NodeAwareTransport = (*countingTransport)(nil)

// nodeAware adapts a plain Transport the way memberlist does.
func nodeAware(t memberlist.Transport) memberlist.NodeAwareTransport {
	if na, ok := t.(memberlist.NodeAwareTransport); ok {
		return na
	}
	return plainShim{t}
}

type plainShim struct{ memberlist.Transport }

func (s plainShim) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return s.WriteTo(b, a.Addr)
}

func (s plainShim) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return s.DialTimeout(a.Addr, timeout)
}

func newCountingTransport(inner memberlist.Transport, c *trafficCounters) *countingTransport {
	t := &countingTransport{
		inner:    nodeAware(inner),
		c:        c,
		packetCh: make(chan *memberlist.Packet),
		streamCh: make(chan net.Conn),
		done:     make(chan struct{}),
	}
	t.wg.Add(2)
	go t.forwardPackets()
	go t.forwardStreams()
	return t
}

func (t *countingTransport) forwardPackets() {
	defer t.wg.Done()
	in := t.inner.PacketCh()
	for {
		select {
		case p, ok := <-in:
			if !ok {
				in = nil // a closed channel never delivers again
				continue
			}
			if p == nil {
				continue
			}
			t.c.msgsIn.Add(1)
			t.c.bytesIn.Add(uint64(len(p.Buf)))
			select {
			case t.packetCh <- p:
			case <-t.done:
				return
			}
		case <-t.done:
			return
		}
	}
}

func (t *countingTransport) forwardStreams() {
	defer t.wg.Done()
	in := t.inner.StreamCh()
	for {
		select {
		case conn, ok := <-in:
			if !ok {
				in = nil
				continue
			}
			if conn == nil {
				continue
			}
			t.c.msgsIn.Add(1)
			select {
			case t.streamCh <- &countingConn{Conn: conn, c: t.c}:
			case <-t.done:
				conn.Close()
				return
			}
		case <-t.done:
			return
		}
	}
}

func (t *countingTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return t.inner.FinalAdvertiseAddr(ip, port)
}

func (t *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	t.c.msgsOut.Add(1)
	t.c.bytesOut.Add(uint64(len(b)))
	return t.inner.WriteTo(b, addr)
}

func (t *countingTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	t.c.msgsOut.Add(1)
	t.c.bytesOut.Add(uint64(len(b)))
	return t.inner.WriteToAddress(b, a)
}

func (t *countingTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

func (t *countingTransport) StreamCh() <-chan net.Conn { return t.streamCh }

func (t *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	conn, err := t.inner.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	t.c.msgsOut.Add(1)
	return &countingConn{Conn: conn, c: t.c}, nil
}

func (t *countingTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	conn, err := t.inner.DialAddressTimeout(a, timeout)
	if err != nil {
		return nil, err
	}
	t.c.msgsOut.Add(1)
	return &countingConn{Conn: conn, c: t.c}, nil
}

// Shutdown shuts the inner transport down (memberlist keeps draining our
// channels meanwhile), then stops the forwarders.
func (t *countingTransport) Shutdown() error {
	err := t.inner.Shutdown()
	t.once.Do(func() { close(t.done) })
	t.wg.Wait()
	return err
}

// countingConn counts the bytes read and written on a stream.
type countingConn struct {
	net.Conn
	c *trafficCounters
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.c.bytesIn.Add(uint64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.c.bytesOut.Add(uint64(n))
	return n, err
}
