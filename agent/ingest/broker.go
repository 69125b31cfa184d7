package ingest

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
)

// BrokerConfig configures the embedded broker.
type BrokerConfig struct {
	// Addr is the TCP address to listen on. Default "127.0.0.1:1883";
	// port 0 picks a free port (see Broker.Addr).
	Addr string
	// Users, when set, maps user names to passwords and refuses
	// anonymous clients; when empty every client may connect. Ignored
	// when Auth is set.
	Users map[string]string
	// Auth, when set, authenticates every client against the identities
	// given to Broker.SetIdentities (none until then) and confines each
	// to its topics (see auth.go).
	Auth *AuthConfig
	// TLSConfig, when set, serves MQTT over TLS (ssl:// clients): on
	// TLSAddr when set (Addr then stays clear text), else on Addr. See
	// LoadServerTLS.
	TLSConfig *tls.Config
	// TLSAddr is the address of a second listener serving MQTT over TLS
	// with TLSConfig ("" = none).
	TLSAddr string
	// Limits protect the broker from noisy and hostile clients (see
	// BrokerLimits); the zero value sets none.
	Limits BrokerLimits
	// Clock times the message rate and the failed-login delays. Nil is
	// the real clock.
	Clock clock.Clock
	// Registry, when set, receives the broker's metrics
	// (edgefleet_mqtt_broker_refused_total).
	Registry *prometheus.Registry
	// Logger receives the broker's logs. Nil discards them.
	Logger *slog.Logger
	// Ingest reserves the broker for an Ingestor attached to it later
	// (Config.Embedded): until one is attached, and after it stops,
	// clients' publishes wait (their connections stop being read), so
	// nothing is acknowledged that no Ingestor took. Without it the
	// broker is an ordinary broker until an Ingestor attaches.
	Ingest bool
	// ClientQueue bounds the messages queued for writing to one client
	// connection (deliveries to its subscriptions; PUBACKs are written
	// directly); beyond it the broker drops deliveries to that client,
	// as mochi does. The queue is allocated with each connection, 8
	// bytes an entry. Telemetry passed on to subscribers comes in bursts
	// of one group commit, so it should hold two commits' messages.
	// Default 2048 (16 KiB a connection).
	ClientQueue int
}

// Broker is an MQTT broker running in this process (mochi-mqtt), the
// zero-install default for an agent and for edgectl sim. Sessions and
// queued messages live in memory: they survive clients reconnecting,
// not the broker stopping. A client's queue of unacknowledged QoS 1
// messages holds at most 65535 (the packet-id space) and its pending
// writes BrokerConfig.ClientQueue; beyond that the broker drops
// messages (as mochi does).
//
// An Ingestor attached to the broker (Config.Embedded) takes the
// publishes on its topics directly, without an MQTT session of its
// own: see ingestHook. The broker then acknowledges a device's QoS 1
// publish only after the Ingestor committed it, so whatever a device
// saw acknowledged survives a crash of the process (kill -9, power
// loss): the device keeps every unacknowledged message and sends it
// again when it reconnects.
type Broker struct {
	srv     *mochi.Server
	addr    string
	tlsAddr string
	once    sync.Once
	tls     bool
	guard   *brokerGuard
	auth    *authHook // nil without BrokerConfig.Auth

	log     *slog.Logger
	in      atomic.Pointer[Ingestor] // attached Ingestor, nil when none
	mu      sync.Mutex               // guards hold, stopped, changed
	hold    bool                     // publishes wait while no Ingestor is attached
	stopped bool
	changed chan struct{} // closed and replaced at every attach, detach and stop
	done    chan struct{} // closed when the broker stops

	amu        sync.Mutex
	ackWriters map[*mochi.Client]*ackWriter // per connection with QoS 1 messages in the Ingestor
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
	} else {
		cfg.Logger = slog.New(quietRejects{cfg.Logger.Handler()})
	}
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumInflight = math.MaxUint16
	switch {
	case cfg.ClientQueue < 0:
		return nil, fmt.Errorf("%w: broker client queue %d is negative", ErrInvalidConfig, cfg.ClientQueue)
	case cfg.ClientQueue == 0:
		cfg.ClientQueue = 2048
	}
	caps.MaximumClientWritesPending = int32(min(cfg.ClientQueue, math.MaxInt32))
	if err := cfg.Limits.validate(); err != nil {
		return nil, err
	}
	caps.MaximumPacketSize = uint32(cfg.Limits.MaxPacketBytes)
	if cfg.TLSAddr != "" {
		if cfg.TLSConfig == nil {
			return nil, fmt.Errorf("%w: broker TLS address %q without a TLS configuration", ErrInvalidConfig, cfg.TLSAddr)
		}
		if _, _, err := net.SplitHostPort(cfg.TLSAddr); err != nil {
			return nil, fmt.Errorf("%w: broker TLS address %q: %v", ErrInvalidConfig, cfg.TLSAddr, err)
		}
	}
	// The inline client publishes the Ingestor's messages (Publish) and
	// passes the ingested telemetry on to the broker's other subscribers.
	srv := mochi.New(&mochi.Options{Capabilities: caps, Logger: cfg.Logger, InlineClient: true})
	b := &Broker{srv: srv, tls: cfg.TLSConfig != nil && cfg.TLSAddr == "", log: cfg.Logger, hold: cfg.Ingest,
		changed: make(chan struct{}), done: make(chan struct{}), ackWriters: map[*mochi.Client]*ackWriter{}}
	b.guard = newBrokerGuard(cfg.Limits, clock.Or(cfg.Clock), cfg.Logger, b.done)
	b.guard.srv = srv
	if err := b.guard.register(cfg.Registry); err != nil {
		return nil, err
	}
	// Hook order matters: the limits first (a publish over the rate
	// reaches no other hook), the failed-login delay after every
	// authentication hook (see loginDelayHook).
	if err := srv.AddHook(&limitsHook{g: b.guard}, nil); err != nil {
		return nil, fmt.Errorf("ingest: broker limits: %w", err)
	}
	var err error
	if cfg.Auth != nil {
		if b.auth, err = newAuthHook(cfg.Auth, cfg.Logger); err == nil {
			err = srv.AddHook(b.auth, nil)
		}
	} else if len(cfg.Users) > 0 {
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
	if err := srv.AddHook(&loginDelayHook{g: b.guard}, nil); err != nil {
		return nil, fmt.Errorf("ingest: broker login delay: %w", err)
	}
	if err := srv.AddHook(&ingestHook{b: b}, nil); err != nil {
		return nil, fmt.Errorf("ingest: broker ingestion hook: %w", err)
	}
	l := &guardedListener{id: "tcp", addr: cfg.Addr, g: b.guard}
	if b.tls {
		l.tls = cfg.TLSConfig
	}
	if err := srv.AddListener(l); err != nil {
		return nil, fmt.Errorf("ingest: broker listen on %s: %w", cfg.Addr, err)
	}
	var tl *guardedListener
	if cfg.TLSAddr != "" {
		tl = &guardedListener{id: "tls", addr: cfg.TLSAddr, tls: cfg.TLSConfig, g: b.guard}
		if err := srv.AddListener(tl); err != nil {
			srv.Close()
			return nil, fmt.Errorf("ingest: broker listen (TLS) on %s: %w", cfg.TLSAddr, err)
		}
	}
	if err := srv.Serve(); err != nil {
		srv.Close()
		return nil, fmt.Errorf("ingest: broker serve: %w", err)
	}
	b.addr = l.Address()
	if tl != nil {
		b.tlsAddr = tl.Address()
	}
	return b, nil
}

// TLSURL returns ssl://host:port of the TLS listener (BrokerConfig.TLSAddr
// or a TLS Addr), or "" without one.
func (b *Broker) TLSURL() string {
	switch {
	case b.tlsAddr != "":
		return "ssl://" + b.tlsAddr
	case b.tls:
		return "ssl://" + b.addr
	}
	return ""
}

// Refused returns how many connections and clients the broker refused or
// disconnected, by reason (the Refused* constants).
func (b *Broker) Refused() map[string]int64 {
	m := make(map[string]int64, len(b.guard.count))
	for r, v := range b.guard.count {
		m[r] = v.Load()
	}
	return m
}

// Connections returns the open network connections.
func (b *Broker) Connections() int { return b.guard.connections() }

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
		// Release the publishes waiting for an Ingestor first: mochi
		// closes the connections whose reads they hold.
		b.mu.Lock()
		b.stopped = true
		b.signalLocked()
		b.mu.Unlock()
		close(b.done)
		if e := b.srv.Close(); e != nil {
			err = fmt.Errorf("ingest: stop broker: %w", e)
		}
		b.amu.Lock()
		for cl, w := range b.ackWriters {
			w.close()
			delete(b.ackWriters, cl)
		}
		b.amu.Unlock()
	})
	return err
}

// quietRejects drops mochi's debug record of every publish the ingestion
// hook takes ("publish packet rejected": that is how the hook keeps
// mochi from acknowledging it), which would otherwise log each message.
type quietRejects struct{ slog.Handler }

func (q quietRejects) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "publish packet rejected" {
		ours := false
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "hook" && a.Value.String() == ingestHookID {
				ours = true
				return false
			}
			return true
		})
		if ours {
			return nil
		}
	}
	return q.Handler.Handle(ctx, r)
}

func (q quietRejects) WithAttrs(as []slog.Attr) slog.Handler {
	return quietRejects{q.Handler.WithAttrs(as)}
}

func (q quietRejects) WithGroup(name string) slog.Handler {
	return quietRejects{q.Handler.WithGroup(name)}
}
