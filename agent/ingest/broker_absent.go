//go:build !mochi

package ingest

import (
	"crypto/tls"
	"errors"
	"log/slog"
)

// ErrNoEmbeddedBroker: this build has no embedded broker. It needs the
// module github.com/mochi-mqtt/server/v2 in go.mod and the build tag
// "mochi"; until then, point MQTTConfig.Broker at an external broker.
var ErrNoEmbeddedBroker = errors.New("ingest: embedded MQTT broker not built in (needs github.com/mochi-mqtt/server/v2 in go.mod and -tags mochi); use an external broker")

// BrokerConfig configures the embedded broker.
type BrokerConfig struct {
	// Addr is the TCP address to listen on. Default "127.0.0.1:1883".
	Addr string
	// Users, when set, maps user names to passwords.
	Users map[string]string
	// TLSConfig, when set, serves MQTT over TLS.
	TLSConfig *tls.Config
	// Logger receives the broker's logs.
	Logger *slog.Logger
}

// Broker is the embedded MQTT broker; absent from this build.
type Broker struct{}

// StartBroker returns ErrNoEmbeddedBroker: this build has no embedded broker.
func StartBroker(BrokerConfig) (*Broker, error) { return nil, ErrNoEmbeddedBroker }

// Addr returns "".
func (*Broker) Addr() string { return "" }

// URL returns "".
func (*Broker) URL() string { return "" }

// Stop does nothing.
func (*Broker) Stop() error { return nil }
