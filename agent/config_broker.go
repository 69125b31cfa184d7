package agent

import (
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
)

// EmbeddedTLSConfig configures the embedded broker's MQTT-over-TLS
// listener (ingest.mqtt.embedded_tls). The clear-text listener
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
// clients (ingest.mqtt.embedded_limits); 0 turns a limit off. Refusals
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

// validateEmbedded checks the embedded broker's TLS and limits; payload
// is ingest.limits.max_payload_bytes.
func (m *MQTTConfig) validateEmbedded(payload int) error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("agent: ingest.mqtt.%s: %s", field, fmt.Sprintf(format, args...))
	}
	t := &m.EmbeddedTLS
	if _, err := tlsVersion(t.MinVersion); err != nil {
		return bad("embedded_tls.min_version", "%v", err)
	}
	if t.Listen != "" {
		if m.Broker != "" {
			return bad("embedded_tls.listen", "set, but mqtt.broker %q is external (the embedded broker does not run)", m.Broker)
		}
		host, port, err := net.SplitHostPort(t.Listen)
		if err != nil {
			return bad("embedded_tls.listen", "%q: %v", t.Listen, err)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			return bad("embedded_tls.listen", "%q: bad port", t.Listen)
		}
		if host != "" && host != "localhost" && net.ParseIP(host) == nil {
			return bad("embedded_tls.listen", "%q: host is not an IP address", t.Listen)
		}
		switch {
		case t.FromControlPlane:
			return bad("embedded_tls.from_control_plane", "not available yet: the control plane issues agents client certificates only; set cert_file and key_file (a certificate under the fleet CA)")
		case t.CertFile == "" || t.KeyFile == "":
			return bad("embedded_tls", "listen %q needs cert_file and key_file", t.Listen)
		}
	} else if t.CertFile != "" || t.KeyFile != "" || t.FromControlPlane {
		return bad("embedded_tls.listen", "empty, but a certificate is configured; set the TLS listen address")
	}
	l := &m.EmbeddedLimits
	switch {
	case l.MaxConnections < 0:
		return bad("embedded_limits.max_connections", "%d: want 0 (off) or more", l.MaxConnections)
	case l.MaxConnectionsPerAddress < 0:
		return bad("embedded_limits.max_connections_per_address", "%d: want 0 (off) or more", l.MaxConnectionsPerAddress)
	case l.ConnectTimeout < 0 || (l.ConnectTimeout > 0 && l.ConnectTimeout < 100*time.Millisecond):
		return bad("embedded_limits.connect_timeout", "%s: want 0 (off) or at least 100ms", l.ConnectTimeout)
	case l.MaxClientIDLen < 0 || (l.MaxClientIDLen > 0 && l.MaxClientIDLen < 23):
		return bad("embedded_limits.max_client_id_len", "%d: want 0 (off) or at least 23 (MQTT requires 23)", l.MaxClientIDLen)
	case l.MaxPacketBytes < 0 || (l.MaxPacketBytes > 0 && l.MaxPacketBytes < payload) || l.MaxPacketBytes > 256<<20:
		return bad("embedded_limits.max_packet_bytes", "%d: want 0 (off) or limits.max_payload_bytes (%d) .. %d", l.MaxPacketBytes, payload, 256<<20)
	case l.MessageRate < 0:
		return bad("embedded_limits.message_rate", "%g: want 0 (off) or more", l.MessageRate)
	case l.MessageRate > 0 && l.MessageBurst < 1:
		return bad("embedded_limits.message_burst", "%d: at least 1 with a message rate", l.MessageBurst)
	case l.LoginDelay < 0:
		return bad("embedded_limits.login_delay", "%s: want 0 (off) or more", l.LoginDelay)
	case l.LoginDelay > 0 && (l.LoginMaxDelay < l.LoginDelay || l.LoginMaxDelay > time.Minute):
		return bad("embedded_limits.login_max_delay", "%s: want login_delay (%s) .. 1m", l.LoginMaxDelay, l.LoginDelay)
	case l.Offenders < 1 || l.Offenders > 1_000_000:
		return bad("embedded_limits.offenders", "%d outside 1..1000000", l.Offenders)
	}
	return nil
}
