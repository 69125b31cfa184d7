package agent

import (
	"fmt"

	"github.com/edgefleet/edgefleet/agent/ingest"
)

// embeddedBroker fills the embedded broker's TLS listener and limits.
func (a *Agent) embeddedBroker(bc *ingest.BrokerConfig) error {
	m := a.cfg.Ingest.MQTT
	l := m.EmbeddedLimits
	bc.Limits = ingest.BrokerLimits{
		MaxConnections: l.MaxConnections, MaxConnectionsPerAddress: l.MaxConnectionsPerAddress,
		ConnectTimeout: l.ConnectTimeout, MaxClientIDLen: l.MaxClientIDLen, MaxPacketBytes: l.MaxPacketBytes,
		MessageRate: l.MessageRate, MessageBurst: l.MessageBurst,
		LoginDelay: l.LoginDelay, LoginMaxDelay: l.LoginMaxDelay, Offenders: l.Offenders,
	}
	bc.Clock = a.clk
	bc.Registry = a.reg
	if m.EmbeddedTLS.Listen == "" {
		return nil
	}
	v, err := tlsVersion(m.EmbeddedTLS.MinVersion)
	if err != nil {
		return fmt.Errorf("agent: ingest.mqtt.embedded_tls.min_version: %w", err)
	}
	tc, err := ingest.LoadServerTLS(m.EmbeddedTLS.CertFile, m.EmbeddedTLS.KeyFile, v, a.clk.Now())
	if err != nil {
		return fmt.Errorf("agent: ingest.mqtt.embedded_tls: %w", err)
	}
	bc.TLSConfig, bc.TLSAddr = tc, m.EmbeddedTLS.Listen
	return nil
}

// MQTTTLSURL returns ssl://host:port of the embedded broker's TLS
// listener, or "" when it serves none.
func (a *Agent) MQTTTLSURL() string {
	a.mu.Lock()
	b := a.broker
	a.mu.Unlock()
	if b == nil {
		return ""
	}
	return b.TLSURL()
}
