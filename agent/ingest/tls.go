package ingest

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// LoadServerTLS builds the embedded broker's TLS configuration from a PEM
// certificate chain and its private key. minVersion is tls.VersionTLS12
// or tls.VersionTLS13 (0 means 1.2). It checks that the key matches and
// that the certificate is valid now and may serve TLS.
func LoadServerTLS(certFile, keyFile string, minVersion uint16, now time.Time) (*tls.Config, error) {
	switch minVersion {
	case 0:
		minVersion = tls.VersionTLS12
	case tls.VersionTLS12, tls.VersionTLS13:
	default:
		return nil, fmt.Errorf("%w: TLS minimum version %#x: want 1.2 or 1.3", ErrInvalidConfig, minVersion)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("ingest: broker TLS certificate %s, key %s: %w", certFile, keyFile, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("ingest: broker TLS certificate %s: %w", certFile, err)
	}
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("ingest: broker TLS certificate %s is valid from %s to %s, not now (%s)",
			certFile, leaf.NotBefore.Format(time.RFC3339), leaf.NotAfter.Format(time.RFC3339), now.Format(time.RFC3339))
	}
	if len(leaf.ExtKeyUsage) > 0 {
		ok := false
		for _, u := range leaf.ExtKeyUsage {
			ok = ok || u == x509.ExtKeyUsageServerAuth || u == x509.ExtKeyUsageAny
		}
		if !ok {
			return nil, fmt.Errorf("ingest: broker TLS certificate %s is not for TLS servers (no serverAuth extended key usage)", certFile)
		}
	}
	pair.Leaf = leaf
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: minVersion}, nil
}

// guardedListener is the broker's TCP listener (plain or TLS). Unlike
// mochi's listeners.TCP it applies BrokerLimits before mochi sees a
// connection: connection slots, the deadline for the TLS handshake and
// the CONNECT packet, and the refusal of clear-text MQTT on a TLS port
// with a CONNACK saying so; it also counts how connections end.
type guardedListener struct {
	id   string
	addr string
	tls  *tls.Config
	g    *brokerGuard

	mu    sync.Mutex
	ln    net.Listener
	end   atomic.Bool
	conns map[net.Conn]struct{} // open connections, closed by Close
}

var _ listeners.Listener = (*guardedListener)(nil)

func (l *guardedListener) ID() string       { return l.id }
func (l *guardedListener) Protocol() string { return "tcp" }

func (l *guardedListener) Address() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

func (l *guardedListener) Init(*slog.Logger) error {
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.ln = ln
	l.mu.Unlock()
	return nil
}

func (l *guardedListener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if l.end.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait, keep serving.
			l.g.log.Warn("mqtt accept failed", "listener", l.id, "err", err)
			select {
			case <-time.After(100 * time.Millisecond):
			case <-l.g.done:
				return
			}
			continue
		}
		go l.handle(conn, establish)
	}
}

// Close stops accepting, disconnects the MQTT clients and closes every
// connection still open, also those accepted but not yet clients (a
// device reconnecting during Close must not keep the broker's Close
// waiting for it).
//
// The clients are disconnected by disconnectListener, not by mochi's
// closeClients: that one reads them with Clients.GetByListener, which
// takes the clients' read lock twice (Len inside it), so a client
// attaching at that moment (Clients.Delete waiting for the write lock
// between the two) deadlocks both. A stress run caught a broker's Stop
// hung so for 19 minutes.
func (l *guardedListener) Close(listeners.CloseFn) {
	l.mu.Lock()
	first := l.end.CompareAndSwap(false, true)
	if l.ln != nil {
		_ = l.ln.Close()
	}
	l.mu.Unlock()
	if !first {
		return
	}
	l.g.disconnectListener(l.id)
	l.mu.Lock()
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
}

// track records an open connection; false once the listener is closed.
func (l *guardedListener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.end.Load() {
		return false
	}
	if l.conns == nil {
		l.conns = map[net.Conn]struct{}{}
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *guardedListener) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// handle runs one connection until it ends.
func (l *guardedListener) handle(conn net.Conn, establish listeners.EstablishFn) {
	remote := conn.RemoteAddr().String()
	ip := remoteIP(remote)
	if !l.track(conn) {
		_ = conn.Close()
		return
	}
	defer l.untrack(conn)
	if !l.g.acquire(ip, remote) {
		_ = conn.Close()
		return
	}
	defer l.g.release(ip)
	if d := l.g.lim.ConnectTimeout; d > 0 {
		// mochi replaces it with the keep-alive once it read CONNECT.
		_ = conn.SetDeadline(time.Now().Add(d))
	}
	c := conn
	if l.tls != nil {
		br := bufio.NewReaderSize(conn, 512)
		first, err := br.Peek(1)
		if err != nil {
			l.g.refuse(timeoutOr(err, RefusedConnectTimeout, RefusedTLSHandshake), remote, "", err)
			_ = conn.Close()
			return
		}
		pc := &peekedConn{Conn: conn, r: br}
		if first[0] != 0x16 { // not a TLS handshake record
			l.refusePlain(pc, br, remote)
			return
		}
		tc := tls.Server(pc, l.tls)
		if err := tc.HandshakeContext(context.Background()); err != nil {
			l.g.refuse(timeoutOr(err, RefusedConnectTimeout, RefusedTLSHandshake), remote, "", err)
			_ = conn.Close()
			return
		}
		c = tc
	}
	err := establish(l.id, c)
	if err == nil {
		return
	}
	// mochi wraps what ends the connection before a CONNECT was read.
	connectPhase := strings.HasPrefix(err.Error(), "read connection:")
	switch {
	case errors.Is(err, packets.ErrPacketTooLarge):
		l.g.refuse(RefusedPacketTooLarge, remote, "", err)
	case connectPhase && isTimeout(err):
		l.g.refuse(RefusedConnectTimeout, remote, "", err)
	case connectPhase && !isEOF(err), isProtocolError(err):
		l.g.refuse(RefusedMalformed, remote, "", err)
	}
}

// refusePlain answers a clear-text MQTT CONNECT on the TLS port with a
// CONNACK refusal in clear text, so the client's error says what is
// wrong instead of a bare EOF: "server unavailable" (3.1.1, 0x03) or
// 0x88 "server unavailable" with the reason string (MQTT 5).
func (l *guardedListener) refusePlain(c net.Conn, br *bufio.Reader, remote string) {
	defer c.Close()
	head, _ := br.Peek(min(br.Buffered(), 16))
	if len(head) < 9 {
		// Wait briefly for the rest of a CONNECT's variable header.
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		head, _ = br.Peek(9)
	}
	level, isConnect := sniffConnect(head)
	l.g.refuse(RefusedPlainOnTLS, remote, "", fmt.Errorf("first byte %#x is not a TLS handshake", head[0]))
	if !isConnect {
		return
	}
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Write(plainRefusal(level))
}

// plainTLSReason is the MQTT 5 reason string of that refusal.
const plainTLSReason = "this port serves MQTT over TLS only (mqtts/ssl://)"

// plainRefusal encodes the CONNACK refusing a clear-text client.
func plainRefusal(level byte) []byte {
	if level < 5 {
		return []byte{0x20, 0x02, 0x00, 0x03} // connection refused: server unavailable
	}
	props := append([]byte{0x1F, byte(len(plainTLSReason) >> 8), byte(len(plainTLSReason))}, plainTLSReason...)
	body := append([]byte{0x00, 0x88, byte(len(props))}, props...)
	return append([]byte{0x20, byte(len(body))}, body...)
}

// sniffConnect reads the protocol level of an MQTT CONNECT from the first
// bytes of a connection: fixed header 0x10, a remaining length of 1 to 4
// bytes, the protocol name ("MQTT", or "MQIsdp" for 3.1) and the level.
// ok is false when the bytes are not the start of a CONNECT.
func sniffConnect(b []byte) (level byte, ok bool) {
	if len(b) < 2 || b[0] != 0x10 {
		return 0, false
	}
	i := 1
	for n := 0; ; n++ {
		if i >= len(b) || n == 4 {
			return 0, false
		}
		c := b[i]
		i++
		if c&0x80 == 0 {
			break
		}
	}
	if i+2 > len(b) {
		return 0, false
	}
	nameLen := int(b[i])<<8 | int(b[i+1])
	i += 2
	if nameLen != 4 && nameLen != 6 {
		return 0, false
	}
	if i+nameLen+1 > len(b) {
		return 0, false
	}
	switch string(b[i : i+nameLen]) {
	case "MQTT", "MQIsdp":
	default:
		return 0, false
	}
	return b[i+nameLen], true
}

// peekedConn is a connection whose first bytes were read ahead into r.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func timeoutOr(err error, timeout, other string) string {
	if isTimeout(err) {
		return timeout
	}
	return other
}

// isEOF reports a connection the client closed.
func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}

// isProtocolError reports a connection ended by a packet mochi could not
// decode or accept (not by the client going away).
func isProtocolError(err error) bool {
	if isEOF(err) {
		return false
	}
	var code packets.Code
	if errors.As(err, &code) {
		return code.Code >= packets.ErrUnspecifiedError.Code && code != packets.ErrBadUsernameOrPassword &&
			code != packets.ErrClientIdentifierNotValid && code != packets.ErrMessageRateTooHigh && code != packets.ErrServerBusy
	}
	return false
}
