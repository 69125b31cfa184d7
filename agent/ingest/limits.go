package ingest

import (
	"container/list"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
)

// BrokerLimits protect the embedded broker, and the devices using it,
// from a noisy or hostile client. A zero field turns its limit off.
type BrokerLimits struct {
	// MaxConnections bounds the open network connections (all listeners,
	// counted from accept, before any MQTT packet): one more is closed at
	// once.
	MaxConnections int
	// MaxConnectionsPerAddress bounds the open connections from one IP
	// address.
	MaxConnectionsPerAddress int
	// ConnectTimeout bounds the time from accept to a complete CONNECT
	// packet (the TLS handshake included). mochi sets no deadline of its
	// own there, so without it a client that sends nothing holds a
	// connection forever.
	ConnectTimeout time.Duration
	// MaxClientIDLen is the longest client id accepted (bytes); a longer
	// one is refused with CONNACK "client identifier not valid".
	MaxClientIDLen int
	// MaxPacketBytes is the largest MQTT packet accepted; a larger one
	// closes the connection before its body is read (mochi's
	// MaximumPacketSize; MQTT 5 clients are told it in the CONNACK).
	MaxPacketBytes int
	// MessageRate is the sustained publishes per second allowed to one
	// device (its client id, or its username with RateByUsername), a
	// token bucket holding MessageBurst. A device going faster is disconnected:
	// MQTT 5 clients receive DISCONNECT reason 0x96 "message rate too
	// high"; unacknowledged messages come again after it reconnects.
	MessageRate  float64
	MessageBurst int
	// RateByUsername keys the message rate by username (client id when a
	// client has none): right when every device has its own credential.
	// Off, it is keyed by client id, as one username shared by many
	// devices would put them all in one bucket.
	RateByUsername bool
	// LoginDelay is the delay before refusing the first failed login of a
	// client id or address; each further failure doubles it, up to
	// LoginMaxDelay. Zero turns the slow-down off.
	LoginDelay    time.Duration
	LoginMaxDelay time.Duration
	// Offenders bounds the client ids and addresses remembered for the
	// slow-down and the devices' rate buckets (each, least recently used
	// forgotten first). Default 4096.
	Offenders int
}

// DefaultBrokerLimits are the agent's defaults (ingest.broker.limits).
func DefaultBrokerLimits() BrokerLimits {
	return BrokerLimits{
		MaxConnections:           1024,
		MaxConnectionsPerAddress: 128,
		ConnectTimeout:           10 * time.Second,
		MaxClientIDLen:           128,
		MaxPacketBytes:           1 << 20,
		MessageRate:              1000,
		MessageBurst:             2000,
		LoginDelay:               250 * time.Millisecond,
		LoginMaxDelay:            10 * time.Second,
		Offenders:                4096,
	}
}

func (l *BrokerLimits) validate() error {
	switch {
	case l.MaxConnections < 0, l.MaxConnectionsPerAddress < 0, l.ConnectTimeout < 0, l.MaxClientIDLen < 0,
		l.MaxPacketBytes < 0, l.MessageRate < 0, l.MessageBurst < 0, l.LoginDelay < 0, l.LoginMaxDelay < 0, l.Offenders < 0:
		return fmt.Errorf("%w: broker limits: negative value in %+v", ErrInvalidConfig, *l)
	case l.MaxPacketBytes > 256<<20:
		return fmt.Errorf("%w: broker limits: max packet %d bytes above the MQTT maximum %d", ErrInvalidConfig, l.MaxPacketBytes, 256<<20)
	case l.MessageRate > 0 && l.MessageBurst < 1:
		return fmt.Errorf("%w: broker limits: message rate %g/s needs a burst of at least 1", ErrInvalidConfig, l.MessageRate)
	case l.LoginDelay > 0 && l.LoginMaxDelay < l.LoginDelay:
		return fmt.Errorf("%w: broker limits: login max delay %s below login delay %s", ErrInvalidConfig, l.LoginMaxDelay, l.LoginDelay)
	}
	if l.Offenders == 0 {
		l.Offenders = 4096
	}
	return nil
}

// Refusal reasons: the "reason" label of
// edgefleet_mqtt_broker_refused_total.
const (
	RefusedMaxConnections = "max_connections"         // over BrokerLimits.MaxConnections
	RefusedPerAddress     = "max_connections_address" // over MaxConnectionsPerAddress
	RefusedTLSHandshake   = "tls_handshake"           // TLS handshake failed or timed out
	RefusedPlainOnTLS     = "plain_mqtt_on_tls"       // an MQTT CONNECT in clear text on the TLS port
	RefusedConnectTimeout = "connect_timeout"         // no complete CONNECT in time
	RefusedMalformed      = "malformed_packet"        // the connection ended on a protocol error
	RefusedPacketTooLarge = "packet_too_large"        // over MaxPacketBytes
	RefusedClientID       = "client_id_too_long"      // over MaxClientIDLen
	RefusedBadLogin       = "bad_login"               // refused by every authentication hook
	RefusedMessageRate    = "message_rate"            // disconnected over MessageRate
)

var refusedReasons = []string{RefusedMaxConnections, RefusedPerAddress, RefusedTLSHandshake, RefusedPlainOnTLS,
	RefusedConnectTimeout, RefusedMalformed, RefusedPacketTooLarge, RefusedClientID, RefusedBadLogin, RefusedMessageRate}

// brokerGuard holds the limits' state shared by the listeners and hooks.
type brokerGuard struct {
	lim   BrokerLimits
	clk   clock.Clock
	log   *slog.Logger
	srv   *mochi.Server
	done  <-chan struct{}
	count map[string]*atomic.Int64 // by refusal reason; fixed at start

	mu      sync.Mutex
	open    int
	perAddr map[string]int

	rmu     sync.Mutex
	buckets *lru[*bucket]

	lmu      sync.Mutex
	failedID *lru[*offender]
	failedIP *lru[*offender]

	logMu   sync.Mutex
	logNext map[string]time.Time // per reason: when the next refusal may be logged
}

func newBrokerGuard(lim BrokerLimits, clk clock.Clock, log *slog.Logger, done <-chan struct{}) *brokerGuard {
	g := &brokerGuard{lim: lim, clk: clk, log: log, done: done, count: map[string]*atomic.Int64{},
		perAddr: map[string]int{}, buckets: newLRU[*bucket](lim.Offenders),
		failedID: newLRU[*offender](lim.Offenders), failedIP: newLRU[*offender](lim.Offenders), logNext: map[string]time.Time{}}
	for _, r := range refusedReasons {
		g.count[r] = new(atomic.Int64)
	}
	return g
}

// register exports the refusal counters.
func (g *brokerGuard) register(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, r := range refusedReasons {
		v := g.count[r]
		c := prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "edgefleet_mqtt_broker_refused_total",
			Help:        "Connections and clients the embedded broker refused or disconnected, by reason.",
			ConstLabels: prometheus.Labels{"reason": r},
		}, func() float64 { return float64(v.Load()) })
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("ingest: broker metrics: %w", err)
		}
	}
	return nil
}

// refuse counts a refusal and logs it, at most once every 10 s a reason
// (a storm of refusals must not become a storm of log lines).
func (g *brokerGuard) refuse(reason, remote, client string, err error) {
	n := g.count[reason].Add(1)
	now := g.clk.Now()
	g.logMu.Lock()
	ok := !now.Before(g.logNext[reason])
	if ok {
		g.logNext[reason] = now.Add(10 * time.Second)
	}
	g.logMu.Unlock()
	if ok {
		g.log.Warn("mqtt client refused", "reason", reason, "remote", remote, "client", client, "err", err, "refused_total", n)
	}
}

// acquire takes a connection slot for ip; false (counted) when a limit
// is reached.
func (g *brokerGuard) acquire(ip, remote string) bool {
	g.mu.Lock()
	reason := ""
	switch {
	case g.lim.MaxConnections > 0 && g.open >= g.lim.MaxConnections:
		reason = RefusedMaxConnections
	case g.lim.MaxConnectionsPerAddress > 0 && g.perAddr[ip] >= g.lim.MaxConnectionsPerAddress:
		reason = RefusedPerAddress
	default:
		g.open++
		g.perAddr[ip]++
	}
	g.mu.Unlock()
	if reason != "" {
		g.refuse(reason, remote, "", nil)
		return false
	}
	return true
}

func (g *brokerGuard) release(ip string) {
	g.mu.Lock()
	g.open--
	if g.perAddr[ip]--; g.perAddr[ip] <= 0 {
		delete(g.perAddr, ip)
	}
	g.mu.Unlock()
}

// connections returns the open connections (for tests and stats).
func (g *brokerGuard) connections() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open
}

// bucket is a token bucket.
type bucket struct {
	tokens float64
	last   time.Time
}

// take removes one token; false when none is left.
func (b *bucket) take(now time.Time, rate float64, burst int) bool {
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = min(float64(burst), b.tokens+el*rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// offender counts the failed logins of one client id or address.
type offender struct {
	failures int
	last     time.Time
}

// loginDelay is the delay before refusing a login that failed after n-1
// earlier failures: base doubling with each, capped at max.
func loginDelay(n int, base, max time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// clientKey names the device a client speaks for: its client id, or its
// username (client id when it has none) with byUser.
func clientKey(cl *mochi.Client, byUser bool) string {
	if byUser && len(cl.Properties.Username) > 0 {
		return "u:" + string(cl.Properties.Username)
	}
	return "c:" + cl.ID
}

// remoteIP is the IP address part of a remote address.
func remoteIP(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}

// limitsHook enforces the client id length and the message rate. It is
// added before every other hook, so a publish over the rate reaches no
// other hook.
type limitsHook struct {
	mochi.HookBase
	g *brokerGuard
}

func (h *limitsHook) ID() string { return "edgefleet-limits" }

func (h *limitsHook) Provides(e byte) bool {
	return (e == mochi.OnConnect && h.g.lim.MaxClientIDLen > 0) || (e == mochi.OnPublish && h.g.lim.MessageRate > 0)
}

// OnConnect refuses a client id over the limit with CONNACK 0x85 (MQTT 5)
// or 0x02 "identifier rejected" (3.1.1).
func (h *limitsHook) OnConnect(cl *mochi.Client, pk packets.Packet) error {
	if len(pk.Connect.ClientIdentifier) <= h.g.lim.MaxClientIDLen {
		return nil
	}
	h.g.refuse(RefusedClientID, cl.Net.Remote, "", fmt.Errorf("client id of %d bytes, at most %d", len(pk.Connect.ClientIdentifier), h.g.lim.MaxClientIDLen))
	_ = h.g.srv.SendConnack(cl, packets.ErrClientIdentifierNotValid, false, nil)
	return packets.ErrClientIdentifierNotValid
}

// OnPublish disconnects a device publishing over its rate.
func (h *limitsHook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	key := clientKey(cl, h.g.lim.RateByUsername)
	now := h.g.clk.Now()
	h.g.rmu.Lock()
	b := h.g.buckets.get(key, func() *bucket { return &bucket{tokens: float64(h.g.lim.MessageBurst), last: now} })
	ok := b.take(now, h.g.lim.MessageRate, h.g.lim.MessageBurst)
	h.g.rmu.Unlock()
	if ok {
		return pk, nil
	}
	h.g.refuse(RefusedMessageRate, cl.Net.Remote, cl.ID, fmt.Errorf("%s over %g messages/s (burst %d)", key[2:], h.g.lim.MessageRate, h.g.lim.MessageBurst))
	if cl.Properties.ProtocolVersion == 5 {
		_ = h.g.srv.DisconnectClient(cl, packets.ErrMessageRateTooHigh)
	}
	cl.Stop(packets.ErrMessageRateTooHigh)
	return pk, packets.ErrRejectPacket
}

// loginDelayHook slows failed logins down. It must be added after every
// authentication hook: mochi asks the hooks in order and stops at the
// first that admits the client, so this hook is asked only when every
// other one refused. It then waits (the longer the more the client id
// or its address failed recently) and refuses too; mochi answers the
// CONNACK failure after it returns.
//
// While it waits the connection holds its slot (MaxConnections,
// MaxConnectionsPerAddress), which bounds the goroutines waiting, and
// the memory is bounded by BrokerLimits.Offenders.
type loginDelayHook struct {
	mochi.HookBase
	g *brokerGuard
}

func (h *loginDelayHook) ID() string { return "edgefleet-login-delay" }

func (h *loginDelayHook) Provides(e byte) bool {
	return e == mochi.OnConnectAuthenticate || e == mochi.OnSessionEstablished
}

// OnConnectAuthenticate records the failure, waits and refuses.
func (h *loginDelayHook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	h.g.refuse(RefusedBadLogin, cl.Net.Remote, cl.ID, fmt.Errorf("user %q", pk.Connect.Username))
	if h.g.lim.LoginDelay <= 0 {
		return false
	}
	now := h.g.clk.Now()
	forget := 2 * h.g.lim.LoginMaxDelay // a quiet period that resets the count
	bump := func(c *lru[*offender], key string) int {
		o := c.get(key, func() *offender { return &offender{} })
		if now.Sub(o.last) > max(forget, time.Minute) {
			o.failures = 0
		}
		o.failures++
		o.last = now
		return o.failures
	}
	h.g.lmu.Lock()
	n := max(bump(h.g.failedID, cl.ID), bump(h.g.failedIP, remoteIP(cl.Net.Remote)))
	h.g.lmu.Unlock()
	d := loginDelay(n, h.g.lim.LoginDelay, h.g.lim.LoginMaxDelay)
	if cl.Net.Conn != nil {
		// mochi set the keep-alive deadline; the CONNACK must still go out.
		_ = cl.Net.Conn.SetDeadline(time.Now().Add(d + 5*time.Second))
	}
	t := h.g.clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
	case <-h.g.done:
	}
	return false
}

// OnSessionEstablished forgets the failures of a client id that logged
// in (its address keeps its record: one valid device must not clear an
// address's guessing).
func (h *loginDelayHook) OnSessionEstablished(cl *mochi.Client, _ packets.Packet) {
	h.g.lmu.Lock()
	h.g.failedID.remove(cl.ID)
	h.g.lmu.Unlock()
}

// lru is a map bounded to n entries, least recently used evicted first.
// Not safe for concurrent use.
type lru[V any] struct {
	n  int
	ll *list.List
	m  map[string]*list.Element
}

type lruEntry[V any] struct {
	key string
	val V
}

func newLRU[V any](n int) *lru[V] {
	return &lru[V]{n: max(n, 1), ll: list.New(), m: map[string]*list.Element{}}
}

// get returns key's value, adding mk() when absent.
func (c *lru[V]) get(key string, mk func() V) V {
	if e, ok := c.m[key]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*lruEntry[V]).val
	}
	if c.ll.Len() >= c.n {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.m, old.Value.(*lruEntry[V]).key)
	}
	v := mk()
	c.m[key] = c.ll.PushFront(&lruEntry[V]{key: key, val: v})
	return v
}

func (c *lru[V]) remove(key string) {
	if e, ok := c.m[key]; ok {
		c.ll.Remove(e)
		delete(c.m, key)
	}
}

func (c *lru[V]) len() int { return c.ll.Len() }

// disconnectListener disconnects the MQTT clients of one listener with
// the reason "server shutting down", as mochi's closeListenerClients
// does, reading the clients under one read lock (Clients.GetAll).
func (g *brokerGuard) disconnectListener(id string) {
	for _, cl := range g.srv.Clients.GetAll() {
		if cl.Net.Listener == id && !cl.Closed() {
			_ = g.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}
