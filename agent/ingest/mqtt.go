package ingest

import (
	"fmt"
	"net/url"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// checkBrokerURL accepts tcp://host:port and ssl://host:port (also
// mqtt:// and mqtts:// / tls://, which paho treats alike).
func checkBrokerURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%w: broker URL %q: %v", ErrInvalidConfig, s, err)
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts":
	default:
		return fmt.Errorf("%w: broker URL %q: scheme %q (want tcp:// or ssl://)", ErrInvalidConfig, s, u.Scheme)
	}
	if u.Host == "" || u.Port() == "" {
		return fmt.Errorf("%w: broker URL %q: want scheme://host:port", ErrInvalidConfig, s)
	}
	return nil
}

// subscriber is the paho MQTT client of an Ingestor.
//
// Settings and why:
//   - CleanSession false and a stable client id: the broker keeps the
//     subscription and queues QoS 1 messages while the agent is away.
//   - AutoAckDisabled: PUBACK is sent by the committer, after the group
//     commit holding the message (Message.Ack).
//   - OrderMatters true: paho calls the handler on its single router
//     goroutine, in arrival order, so acknowledgements follow arrival
//     order (MQTT 3.1.1 section 4.6) and a handler blocked on a full
//     queue stops paho reading the socket: TCP and then the broker's
//     in-flight window throttle the publishers.
//   - A default publish handler: after a reconnect the broker sends the
//     session's queued messages before the SUBSCRIBE of OnConnect is
//     answered; without it paho would drop them unacknowledged.
//   - The subscription is renewed on every connect (SUBSCRIBE is
//     idempotent), which also covers a broker that lost the session.
//   - The connection reads through a buffer (openConn).
//   - paho's in-memory store: the subscriber publishes nothing, and a
//     received QoS 1 message that was not acknowledged before a crash is
//     redelivered by the broker, so paho's own persistence would add
//     nothing; the SQLite store is the durable record.
type subscriber struct {
	in         *Ingestor
	client     mqtt.Client
	subscribed chan struct{}
	subOnce    sync.Once
}

func newSubscriber(in *Ingestor) *subscriber {
	return &subscriber{in: in, subscribed: make(chan struct{})}
}

func (s *subscriber) start() error {
	c := s.in.cfg.MQTT
	filter := s.in.topics.Filter()
	log := s.in.log
	handler := func(_ mqtt.Client, m mqtt.Message) {
		// Handle returns ErrClosed only while stopping; the message then
		// stays unacknowledged and is redelivered to the next session.
		_ = s.in.Handle(m)
	}
	opts := mqtt.NewClientOptions().
		AddBroker(c.Broker).
		SetClientID(c.ClientID).
		SetUsername(c.Username).
		SetPassword(c.Password).
		SetCleanSession(false).
		SetAutoAckDisabled(true).
		SetOrderMatters(true).
		SetResumeSubs(true).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(min(time.Second, c.MaxReconnectInterval)).
		SetMaxReconnectInterval(c.MaxReconnectInterval).
		SetConnectTimeout(c.ConnectTimeout).
		SetKeepAlive(c.KeepAlive).
		SetStore(mqtt.NewMemoryStore()).
		SetCustomOpenConnectionFn(openConn).
		SetDefaultPublishHandler(handler).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			s.in.m.connected.Store(0)
			log.Warn("mqtt connection lost; reconnecting", "broker", c.Broker, "err", err)
		}).
		SetOnConnectHandler(func(cl mqtt.Client) {
			s.in.m.connected.Store(1)
			for {
				tok := cl.Subscribe(filter, 1, handler)
				if tok.WaitTimeout(c.ConnectTimeout) && tok.Error() == nil {
					break
				}
				log.Error("mqtt subscribe failed; retrying", "filter", filter, "err", tok.Error())
				select {
				case <-s.in.stopping:
					return
				case <-time.After(time.Second):
				}
				if !cl.IsConnectionOpen() {
					return // the next OnConnect subscribes
				}
			}
			log.Info("mqtt subscribed", "broker", c.Broker, "filter", filter, "client_id", c.ClientID)
			s.subOnce.Do(func() { close(s.subscribed) })
		})
	if c.TLSConfig != nil {
		opts.SetTLSConfig(c.TLSConfig)
	}
	s.client = mqtt.NewClient(opts)
	s.client.Connect() // with ConnectRetry the token completes once connected; progress is logged
	return nil
}

// stop disconnects, giving queued acknowledgements time to be written.
func (s *subscriber) stop() {
	if s.client != nil {
		s.client.Disconnect(500)
		s.in.m.connected.Store(0)
	}
}
