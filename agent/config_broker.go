package agent

import (
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
)

// EmbeddedBrokerConfig configures the embedded broker (ingest.broker):
// whom it admits, TLS and limits. Devices registered with edgectl
// devices register (the replicated collection "device_identities") log
// in with user name = device id = client id and their secret, and are
// confined to their topics.
type EmbeddedBrokerConfig struct {
	// AllowAnonymous admits clients that send no user name, with access
	// to every topic (they cannot use a registered device's client id).
	// Default true, for the loopback development default; the agent
	// warns at start while it is true. Set it false once the devices are
	// registered. Setting ingest.mqtt.username turns it off.
	AllowAnonymous bool `yaml:"allow_anonymous"`
	// AuthCacheEntries bounds the verified secrets kept in memory (a
	// SHA-256 of the secret per device), which spare reconnecting devices
	// the PBKDF2 derivation. Default 4096; -1 turns the cache off.
	AuthCacheEntries int `yaml:"auth_cache_entries"`
	// IdentityPoll is how often the agent looks for changed identities in
	// replicated state (a change made on another agent arrives by gossip;
	// the connections of a disabled device are then closed). Default 1s.
	IdentityPoll time.Duration `yaml:"identity_poll"`
	// TLS serves the embedded broker over TLS too.
	TLS EmbeddedTLSConfig `yaml:"tls"`
	// Limits protect the embedded broker from noisy or hostile clients.
	Limits EmbeddedLimitsConfig `yaml:"limits"`
}

func defaultEmbeddedBrokerConfig() EmbeddedBrokerConfig {
	return EmbeddedBrokerConfig{AllowAnonymous: true, AuthCacheEntries: 4096, IdentityPoll: time.Second,
		TLS: defaultEmbeddedTLS(), Limits: defaultEmbeddedLimits()}
}

func (c *EmbeddedBrokerConfig) validateAuth() error {
	switch {
	case c.AuthCacheEntries < -1 || c.AuthCacheEntries == 0 || c.AuthCacheEntries > 1_000_000:
		return fmt.Errorf("agent: ingest.broker.auth_cache_entries: %d: want -1 (off) or 1..1000000", c.AuthCacheEntries)
	case c.IdentityPoll < 10*time.Millisecond || c.IdentityPoll > time.Minute:
		return fmt.Errorf("agent: ingest.broker.identity_poll: %s outside 10ms..1m", c.IdentityPoll)
	}
	return nil
}

// EmbeddedTLSConfig configures the embedded broker's MQTT-over-TLS
// listener (ingest.broker.tls). The clear-text listener
// (ingest.mqtt.embedded_listen) keeps serving; keep it on loopback (the
// default) when devices must use TLS.
type EmbeddedTLSConfig struct {
	// Listen is the TLS listener's address (conventionally port 8883);
	// empty serves no TLS. Default "".
	Listen string `yaml:"listen"`
	// CertFile and KeyFile are the broker's certificate chain and private
	// key (PEM). Issue the certificate under the fleet CA (the control
	// plane's ca.pem) for the names devices dial, so devices verify it
	// with that CA.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// FromControlPlane would have the control plane issue the certificate
	// for the agent's device-facing names. Not available yet: the control
	// plane issues agents client certificates only. Default false.
	FromControlPlane bool `yaml:"from_control_plane"`
	// MinVersion is the lowest TLS version accepted: "1.2" or "1.3".
	// Default "1.2".
	MinVersion string `yaml:"min_version"`
}

// EmbeddedLimitsConfig protect the embedded broker from noisy or hostile
// clients (ingest.broker.limits); 0 turns a limit off. Refusals
// are counted in edgefleet_mqtt_broker_refused_total{reason}.
type EmbeddedLimitsConfig struct {
	// MaxConnections bounds the open connections (all listeners). Default
	// 1024.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerAddress bounds the open connections from one IP
	// address. Default 128.
	MaxConnectionsPerAddress int `yaml:"max_connections_per_address"`
	// ConnectTimeout bounds the TLS handshake and the CONNECT packet after
	// a connection is accepted. Default 10s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// MaxClientIDLen is the longest client id accepted (bytes). Default 128.
	MaxClientIDLen int `yaml:"max_client_id_len"`
	// MaxPacketBytes is the largest MQTT packet accepted; a larger one
	// closes the connection before it is read. At least
	// ingest.limits.max_payload_bytes. Default 1048576 (1 MiB).
	MaxPacketBytes int `yaml:"max_packet_bytes"`
	// MessageRate is the publishes per second one device (client id)
	// may sustain, MessageBurst the burst above
	// it; a device going faster is disconnected (MQTT 5: reason 0x96
	// "message rate too high") and sends its unacknowledged messages
	// again after reconnecting. Defaults 1000 and 2000.
	MessageRate  float64 `yaml:"message_rate"`
	MessageBurst int     `yaml:"message_burst"`
	// LoginDelay is the wait before refusing a failed login, doubled with
	// each further failure of the client id or address up to
	// LoginMaxDelay. Defaults 250ms and 10s.
	LoginDelay    time.Duration `yaml:"login_delay"`
	LoginMaxDelay time.Duration `yaml:"login_max_delay"`
	// Offenders bounds the client ids and addresses remembered for the
	// login delay and the message rate. Default 4096.
	Offenders int `yaml:"offenders"`
}

func defaultEmbeddedTLS() EmbeddedTLSConfig { return EmbeddedTLSConfig{MinVersion: "1.2"} }

func defaultEmbeddedLimits() EmbeddedLimitsConfig {
	l := ingest.DefaultBrokerLimits()
	return EmbeddedLimitsConfig{
		MaxConnections:           l.MaxConnections,
		MaxConnectionsPerAddress: l.MaxConnectionsPerAddress,
		ConnectTimeout:           l.ConnectTimeout,
		MaxClientIDLen:           l.MaxClientIDLen,
		MaxPacketBytes:           l.MaxPacketBytes,
		MessageRate:              l.MessageRate,
		MessageBurst:             l.MessageBurst,
		LoginDelay:               l.LoginDelay,
		LoginMaxDelay:            l.LoginMaxDelay,
		Offenders:                l.Offenders,
	}
}

// tlsVersion parses min_version.
func tlsVersion(s string) (uint16, error) {
	switch s {
	case "1.2", "":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("%q: want \"1.2\" or \"1.3\"", s)
}

// validate checks the embedded broker's settings; external is
// ingest.mqtt.broker, payload ingest.limits.max_payload_bytes.
func (c *EmbeddedBrokerConfig) validate(external string, payload int) error {
	if err := c.validateAuth(); err != nil {
		return err
	}
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("agent: ingest.broker.%s: %s", field, fmt.Sprintf(format, args...))
	}
	t := &c.TLS
	if _, err := tlsVersion(t.MinVersion); err != nil {
		return bad("tls.min_version", "%v", err)
	}
	if t.Listen != "" {
		if external != "" {
			return bad("tls.listen", "set, but ingest.mqtt.broker %q is external (the embedded broker does not run)", external)
		}
		host, port, err := net.SplitHostPort(t.Listen)
		if err != nil {
			return bad("tls.listen", "%q: %v", t.Listen, err)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			return bad("tls.listen", "%q: bad port", t.Listen)
		}
		if host != "" && host != "localhost" && net.ParseIP(host) == nil {
			return bad("tls.listen", "%q: host is not an IP address", t.Listen)
		}
		switch {
		case t.FromControlPlane:
			return bad("tls.from_control_plane", "not available yet: the control plane issues agents client certificates only; set cert_file and key_file (a certificate under the fleet CA)")
		case t.CertFile == "" || t.KeyFile == "":
			return bad("tls", "listen %q needs cert_file and key_file", t.Listen)
		}
	} else if t.CertFile != "" || t.KeyFile != "" || t.FromControlPlane {
		return bad("tls.listen", "empty, but a certificate is configured; set the TLS listen address")
	}
	l := &c.Limits
	switch {
	case l.MaxConnections < 0:
		return bad("limits.max_connections", "%d: want 0 (off) or more", l.MaxConnections)
	case l.MaxConnectionsPerAddress < 0:
		return bad("limits.max_connections_per_address", "%d: want 0 (off) or more", l.MaxConnectionsPerAddress)
	case l.ConnectTimeout < 0 || (l.ConnectTimeout > 0 && l.ConnectTimeout < 100*time.Millisecond):
		return bad("limits.connect_timeout", "%s: want 0 (off) or at least 100ms", l.ConnectTimeout)
	case l.MaxClientIDLen < 0 || (l.MaxClientIDLen > 0 && l.MaxClientIDLen < 23):
		return bad("limits.max_client_id_len", "%d: want 0 (off) or at least 23 (MQTT requires 23)", l.MaxClientIDLen)
	case l.MaxPacketBytes < 0 || (l.MaxPacketBytes > 0 && l.MaxPacketBytes < payload) || l.MaxPacketBytes > 256<<20:
		return bad("limits.max_packet_bytes", "%d: want 0 (off) or limits.max_payload_bytes (%d) .. %d", l.MaxPacketBytes, payload, 256<<20)
	case l.MessageRate < 0:
		return bad("limits.message_rate", "%g: want 0 (off) or more", l.MessageRate)
	case l.MessageRate > 0 && l.MessageBurst < 1:
		return bad("limits.message_burst", "%d: at least 1 with a message rate", l.MessageBurst)
	case l.LoginDelay < 0:
		return bad("limits.login_delay", "%s: want 0 (off) or more", l.LoginDelay)
	case l.LoginDelay > 0 && (l.LoginMaxDelay < l.LoginDelay || l.LoginMaxDelay > time.Minute):
		return bad("limits.login_max_delay", "%s: want login_delay (%s) .. 1m", l.LoginMaxDelay, l.LoginDelay)
	case l.Offenders < 1 || l.Offenders > 1_000_000:
		return bad("limits.offenders", "%d outside 1..1000000", l.Offenders)
	}
	return nil
}
