package agent

import (
	"fmt"

	"github.com/edgefleet/edgefleet/agent/ingest"
)

// embeddedBroker fills the embedded broker's TLS listener and limits.
func (a *Agent) embeddedBroker(bc *ingest.BrokerConfig) error {
	m := a.cfg.Ingest.Broker
	l := m.Limits
	bc.Limits = ingest.BrokerLimits{
		MaxConnections: l.MaxConnections, MaxConnectionsPerAddress: l.MaxConnectionsPerAddress,
		ConnectTimeout: l.ConnectTimeout, MaxClientIDLen: l.MaxClientIDLen, MaxPacketBytes: l.MaxPacketBytes,
		MessageRate: l.MessageRate, MessageBurst: l.MessageBurst,
		LoginDelay: l.LoginDelay, LoginMaxDelay: l.LoginMaxDelay, Offenders: l.Offenders,
	}
	bc.Clock = a.clk
	bc.Registry = a.reg
	if m.TLS.Listen == "" {
		return nil
	}
	v, err := tlsVersion(m.TLS.MinVersion)
	if err != nil {
		return fmt.Errorf("agent: ingest.broker.tls.min_version: %w", err)
	}
	tc, err := ingest.LoadServerTLS(m.TLS.CertFile, m.TLS.KeyFile, v, a.clk.Now())
	if err != nil {
		return fmt.Errorf("agent: ingest.broker.tls: %w", err)
	}
	bc.TLSConfig, bc.TLSAddr = tc, m.TLS.Listen
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
