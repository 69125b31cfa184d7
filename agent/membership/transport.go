package membership

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Traffic holds the byte and message totals of all memberlist traffic of
// one agent (packets and streams, both directions), as seen on the wire
// below memberlist's encryption and labels.
type Traffic struct {
	BytesOut, BytesIn atomic.Uint64
	MsgsOut, MsgsIn   atomic.Uint64
	// StreamBytesOut and StreamBytesIn are the stream part of the totals.
	StreamBytesOut, StreamBytesIn atomic.Uint64
}

// countingTransport wraps a memberlist transport and counts what crosses
// it. Every packet is one message; every stream (dialed or accepted) is one
// message, and all bytes read or written on it are counted.
//
// With a cluster label it also checks the label of incoming traffic before
// memberlist sees it, so that traffic of another cluster is counted exactly
// (memberlist drops it too, but only logs it): packets and streams with
// another label or none are rejected as foreign_cluster; streams closed
// before sending anything (a peer's abandoned dial) are dropped silently.
type countingTransport struct {
	inner  memberlist.NodeAwareTransport
	c      *Traffic
	header []byte // label header every packet and stream must start with; nil: no label
	reject func(reason, detail string)
	// refused are the revoked members (Cluster.SetRefused); nil: none.
	refused atomic.Pointer[refusal]

	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	done     chan struct{}
	wg       sync.WaitGroup
	once     sync.Once

	pendingMu sync.Mutex
	pending   map[net.Conn]struct{} // accepted streams whose label is being read
}

// labelPeekTimeout bounds how long an accepted stream may take to send its
// label header.
const labelPeekTimeout = 5 * time.Second

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

// newCountingTransport wraps inner, counting into c; with a cluster label
// it rejects traffic of other clusters through reject (reason, detail).
func newCountingTransport(inner memberlist.Transport, c *Traffic, label string, reject func(reason, detail string)) (*countingTransport, error) {
	t := &countingTransport{
		inner:    nodeAware(inner),
		c:        c,
		reject:   reject,
		packetCh: make(chan *memberlist.Packet),
		streamCh: make(chan net.Conn),
		done:     make(chan struct{}),
		pending:  make(map[net.Conn]struct{}),
	}
	if label != "" {
		h, err := memberlist.AddLabelHeaderToPacket([]byte{}, label)
		if err != nil {
			return nil, fmt.Errorf("membership: cluster label: %w", err)
		}
		t.header = h
	}
	t.wg.Add(2)
	go t.forwardPackets()
	go t.forwardStreams()
	return t, nil
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
			t.c.MsgsIn.Add(1)
			t.c.BytesIn.Add(uint64(len(p.Buf)))
			if t.header != nil && !bytes.HasPrefix(p.Buf, t.header) {
				t.rejectLabel(p.Buf, "packet", p.From)
				continue
			}
			if t.refusedPacket(p) {
				continue
			}
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

// rejectLabel counts traffic whose first bytes b are not this cluster's
// label header.
func (t *countingTransport) rejectLabel(b []byte, what string, from net.Addr) {
	_, label, err := memberlist.RemoveLabelHeaderFromPacket(b)
	if err != nil {
		t.reject(ReasonMalformed, fmt.Sprintf("%s from %v: %v", what, from, err))
		return
	}
	t.reject(ReasonForeignCluster, fmt.Sprintf("%s from %v with cluster label %q", what, from, label))
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
			t.c.MsgsIn.Add(1)
			cc := &countingConn{Conn: conn, c: t.c}
			if t.header == nil {
				t.deliver(cc)
				continue
			}
			t.pendingMu.Lock()
			t.pending[conn] = struct{}{}
			t.pendingMu.Unlock()
			t.wg.Add(1)
			go t.checkStream(cc)
		case <-t.done:
			return
		}
	}
}

func (t *countingTransport) deliver(conn net.Conn) {
	select {
	case t.streamCh <- conn:
	case <-t.done:
		conn.Close()
	}
}

// checkStream reads an accepted stream's label header (without consuming
// it) and hands the stream to memberlist only if it is this cluster's.
func (t *countingTransport) checkStream(cc *countingConn) {
	defer t.wg.Done()
	defer func() {
		t.pendingMu.Lock()
		delete(t.pending, cc.Conn)
		t.pendingMu.Unlock()
	}()
	_ = cc.SetReadDeadline(time.Now().Add(labelPeekTimeout))
	br := bufio.NewReader(cc)
	b, err := br.Peek(len(t.header))
	if len(b) == 0 {
		cc.Close() // nothing sent: an abandoned dial
		return
	}
	if err != nil || !bytes.Equal(b, t.header) {
		if len(b) >= 2 {
			if more, _ := br.Peek(2 + int(b[1])); len(more) > len(b) {
				b = more
			}
		}
		t.rejectLabel(b, "stream", cc.RemoteAddr())
		cc.Close()
		return
	}
	_ = cc.SetReadDeadline(time.Time{})
	t.deliver(&bufferedConn{Conn: cc, r: br})
}

// bufferedConn reads through a bufio.Reader that may hold peeked bytes.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (t *countingTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return t.inner.FinalAdvertiseAddr(ip, port)
}

func (t *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.refusedTo(memberlist.Address{Addr: addr}) {
		return droppedWrite()
	}
	t.c.MsgsOut.Add(1)
	t.c.BytesOut.Add(uint64(len(b)))
	return t.inner.WriteTo(b, addr)
}

func (t *countingTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.refusedTo(a) {
		return droppedWrite()
	}
	t.c.MsgsOut.Add(1)
	t.c.BytesOut.Add(uint64(len(b)))
	return t.inner.WriteToAddress(b, a)
}

func (t *countingTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

func (t *countingTransport) StreamCh() <-chan net.Conn { return t.streamCh }

func (t *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if a := (memberlist.Address{Addr: addr}); t.refusedTo(a) {
		return nil, errRefusedDial(a)
	}
	conn, err := t.inner.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	t.c.MsgsOut.Add(1)
	return &countingConn{Conn: conn, c: t.c}, nil
}

func (t *countingTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.refusedTo(a) {
		return nil, errRefusedDial(a)
	}
	conn, err := t.inner.DialAddressTimeout(a, timeout)
	if err != nil {
		return nil, err
	}
	t.c.MsgsOut.Add(1)
	return &countingConn{Conn: conn, c: t.c}, nil
}

// Shutdown shuts the inner transport down (memberlist keeps draining our
// channels meanwhile), then stops the forwarders.
func (t *countingTransport) Shutdown() error {
	err := t.inner.Shutdown()
	t.once.Do(func() { close(t.done) })
	t.pendingMu.Lock()
	for conn := range t.pending {
		conn.Close()
	}
	t.pendingMu.Unlock()
	t.wg.Wait()
	return err
}

// countingConn counts the bytes read and written on a stream.
type countingConn struct {
	net.Conn
	c *Traffic
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.c.BytesIn.Add(uint64(n))
	c.c.StreamBytesIn.Add(uint64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.c.BytesOut.Add(uint64(n))
	c.c.StreamBytesOut.Add(uint64(n))
	return n, err
}
