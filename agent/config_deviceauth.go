package agent

import (
	"fmt"
	"time"
)

// BrokerAuthConfig says whom the embedded broker admits (ingest.broker).
// Devices registered with edgectl devices register (the replicated
// collection "device_identities") log in with user name = device id =
// client id and their secret, and are confined to their topics.
type BrokerAuthConfig struct {
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
}

func defaultBrokerAuthConfig() BrokerAuthConfig {
	return BrokerAuthConfig{AllowAnonymous: true, AuthCacheEntries: 4096, IdentityPoll: time.Second}
}

func (c *BrokerAuthConfig) validate() error {
	switch {
	case c.AuthCacheEntries < -1 || c.AuthCacheEntries == 0 || c.AuthCacheEntries > 1_000_000:
		return fmt.Errorf("agent: ingest.broker.auth_cache_entries: %d: want -1 (off) or 1..1000000", c.AuthCacheEntries)
	case c.IdentityPoll < 10*time.Millisecond || c.IdentityPoll > time.Minute:
		return fmt.Errorf("agent: ingest.broker.identity_poll: %s outside 10ms..1m", c.IdentityPoll)
	}
	return nil
}
