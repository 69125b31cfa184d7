package ingest

import (
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// BrokerConfig configures the embedded broker.
type BrokerConfig struct {
	// Addr is the TCP address to listen on. Default "127.0.0.1:1883";
	// port 0 picks a free port (see Broker.Addr).
	Addr string
	// Users, when set, maps user names to passwords and refuses
	// anonymous clients; when empty every client may connect.
	Users map[string]string
	// TLSConfig, when set, serves MQTT over TLS (ssl:// clients).
	TLSConfig *tls.Config
	// Logger receives the broker's logs. Nil discards them.
	Logger *slog.Logger
}

// Broker is an MQTT broker running in this process (mochi-mqtt), the
// zero-install default for an agent and for edgectl sim. Sessions and
// queued messages live in memory: they survive clients reconnecting,
// not the broker stopping. A client's queue of unacknowledged QoS 1
// messages holds at most 65535 (the packet-id space) and its pending
// writes 65536; beyond that the broker drops messages (as mochi does).
type Broker struct {
	srv  *mochi.Server
	addr string
	once sync.Once
	tls  bool
}

// StartBroker starts an embedded broker and returns once it listens.
func StartBroker(cfg BrokerConfig) (*Broker, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:1883"
	}
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		return nil, fmt.Errorf("%w: broker address %q: %v", ErrInvalidConfig, cfg.Addr, err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumInflight = math.MaxUint16
	caps.MaximumClientWritesPending = 65536
	srv := mochi.New(&mochi.Options{Capabilities: caps, Logger: cfg.Logger, InlineClient: false})
	var err error
	if len(cfg.Users) > 0 {
		users := auth.Users{}
		for u, p := range cfg.Users {
			users[u] = auth.UserRule{Username: auth.RString(u), Password: auth.RString(p)}
		}
		err = srv.AddHook(new(auth.Hook), &auth.Options{Ledger: &auth.Ledger{Users: users}})
	} else {
		err = srv.AddHook(new(auth.AllowHook), nil)
	}
	if err != nil {
		return nil, fmt.Errorf("ingest: broker auth: %w", err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "tcp", Address: cfg.Addr, TLSConfig: cfg.TLSConfig})
	if err := srv.AddListener(l); err != nil {
		return nil, fmt.Errorf("ingest: broker listen on %s: %w", cfg.Addr, err)
	}
	if err := srv.Serve(); err != nil {
		srv.Close()
		return nil, fmt.Errorf("ingest: broker serve: %w", err)
	}
	return &Broker{srv: srv, addr: l.Address(), tls: cfg.TLSConfig != nil}, nil
}

// Addr returns the address the broker listens on (host:port).
func (b *Broker) Addr() string { return b.addr }

// URL returns the broker's URL for clients: tcp://host:port, or
// ssl://host:port with TLS.
func (b *Broker) URL() string {
	if b.tls {
		return "ssl://" + b.addr
	}
	return "tcp://" + b.addr
}

// Stop closes the listener and every client connection.
func (b *Broker) Stop() error {
	var err error
	b.once.Do(func() {
		if e := b.srv.Close(); e != nil {
			err = fmt.Errorf("ingest: stop broker: %w", e)
		}
	})
	return err
}
