package ingest

import (
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Publisher is an MQTT connection of its own for messages the agent
// publishes at a high rate (predictions), beside the subscriber's.
//
// Why not the subscriber's session: paho reads a connection's packets on
// one goroutine, and hands each incoming publish to the subscriber before
// it reads the next packet. While ingestion holds back (a commit under
// way, a full queue: the intended backpressure), the broker's
// acknowledgements of the agent's own publishes queue behind incoming
// telemetry, and publishes wait seconds for them. A connection that only
// publishes reads nothing else.
type Publisher struct {
	client    mqtt.Client
	broker    string
	connected atomic.Bool
	published atomic.Int64
}

// NewPublisher connects (in the background, retrying) to the broker of
// cfg as cfg.ClientID, with a clean session: messages not acknowledged
// when the connection drops fail, and are not sent again.
func NewPublisher(cfg MQTTConfig, log *slog.Logger) (*Publisher, error) {
	if err := checkBrokerURL(cfg.Broker); err != nil {
		return nil, err
	}
	if cfg.ClientID == "" {
		return nil, fmt.Errorf("%w: publisher needs a client id", ErrInvalidConfig)
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 30 * time.Second
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.MaxReconnectInterval == 0 {
		cfg.MaxReconnectInterval = 10 * time.Second
	}
	p := &Publisher{broker: cfg.Broker}
	opts := mqtt.NewClientOptions().
		AddBroker(cfg.Broker).
		SetClientID(cfg.ClientID).
		SetUsername(cfg.Username).
		SetPassword(cfg.Password).
		SetCleanSession(true).
		SetOrderMatters(false).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(min(time.Second, cfg.MaxReconnectInterval)).
		SetMaxReconnectInterval(cfg.MaxReconnectInterval).
		SetConnectTimeout(cfg.ConnectTimeout).
		SetKeepAlive(cfg.KeepAlive).
		SetStore(mqtt.NewMemoryStore()).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			p.connected.Store(false)
			log.Warn("mqtt publisher connection lost; reconnecting", "broker", cfg.Broker, "err", err)
		}).
		SetOnConnectHandler(func(mqtt.Client) { p.connected.Store(true) })
	if cfg.TLSConfig != nil {
		opts.SetTLSConfig(cfg.TLSConfig)
	}
	p.client = mqtt.NewClient(opts)
	p.client.Connect() // retries in the background (SetConnectRetry)
	return p, nil
}

// Send publishes payload to topic at QoS 1 without waiting for the
// broker's acknowledgement; it fails at once while disconnected.
func (p *Publisher) Send(topic string, payload []byte) (Sent, error) {
	if err := checkPublish(topic, payload); err != nil {
		return nil, err
	}
	if !p.connected.Load() || !p.client.IsConnectionOpen() {
		return nil, fmt.Errorf("%w (%s)", ErrNotConnected, p.broker)
	}
	return &sentToken{published: &p.published, topic: topic, tok: p.client.Publish(topic, 1, false, payload)}, nil
}

// Connected reports whether the connection to the broker is up.
func (p *Publisher) Connected() bool { return p.connected.Load() && p.client.IsConnectionOpen() }

// Published is how many messages the broker acknowledged.
func (p *Publisher) Published() int64 { return p.published.Load() }

// Close disconnects, waiting up to 250 ms for messages in flight.
func (p *Publisher) Close() { p.client.Disconnect(250) }
