package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"
)

// handshakeListener completes TLS handshakes before handing connections to
// the HTTP server, on a bounded number of short-lived goroutines. This
// bounds the memory and CPU a burst of connecting agents can take, and the
// long-lived per-connection goroutine of net/http never grows its stack for
// the handshake's cryptography (10,000 idle agents hold 10,000 of them).
type handshakeListener struct {
	inner   net.Listener
	conf    *tls.Config
	timeout time.Duration
	log     *slog.Logger

	ready chan net.Conn
	sem   chan struct{}
	done  chan struct{}
	once  sync.Once
	errMu sync.Mutex
	err   error
}

func newHandshakeListener(inner net.Listener, conf *tls.Config, parallel int, timeout time.Duration, log *slog.Logger) *handshakeListener {
	l := &handshakeListener{
		inner: inner, conf: conf, timeout: timeout, log: log,
		ready: make(chan net.Conn), sem: make(chan struct{}, parallel), done: make(chan struct{}),
	}
	go l.acceptLoop()
	return l
}

func (l *handshakeListener) acceptLoop() {
	var backoff time.Duration
	for {
		c, err := l.inner.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(backoff):
					continue
				case <-l.done:
					return
				}
			}
			l.errMu.Lock()
			l.err = err
			l.errMu.Unlock()
			l.Close()
			return
		}
		backoff = 0
		select {
		case l.sem <- struct{}{}:
		case <-l.done:
			c.Close()
			return
		}
		go l.handshake(c)
	}
}

func (l *handshakeListener) handshake(c net.Conn) {
	defer func() { <-l.sem }()
	tc := tls.Server(c, l.conf)
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		l.log.Debug("TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	select {
	case l.ready <- tc:
	case <-l.done:
		tc.Close()
	}
}

// Accept returns the next connection whose handshake is complete.
func (l *handshakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		l.errMu.Lock()
		defer l.errMu.Unlock()
		if l.err != nil {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

// Close stops accepting.
func (l *handshakeListener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.inner.Close()
	})
	return err
}

// Addr is the listening address.
func (l *handshakeListener) Addr() net.Addr { return l.inner.Addr() }
