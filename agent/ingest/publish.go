package ingest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// ErrNotConnected: the Ingestor has no broker, or its MQTT session is
// down; nothing was published.
var ErrNotConnected = errors.New("ingest: not connected to the broker")

// MaxPublishBytes is the largest payload Publish sends.
const MaxPublishBytes = 256 << 10

// Publish sends payload to topic at QoS 1 on the subscriber's MQTT
// session and returns once the broker acknowledged it (PUBACK) or ctx
// ends; attached to an embedded broker (Config.Embedded), it hands the
// message to that broker's subscribers directly. It fails with
// ErrNotConnected when the session is down (the message is not queued
// for later), and refuses topics holding MQTT wildcards or NUL and
// payloads over MaxPublishBytes. It is safe for concurrent use.
func (in *Ingestor) Publish(ctx context.Context, topic string, payload []byte) error {
	s, err := in.sendTracked(topic, payload)
	if err != nil {
		return err
	}
	select {
	case <-s.Done():
		return s.Err()
	case <-ctx.Done():
		return fmt.Errorf("ingest: publish to %s: waiting for the broker's acknowledgement: %w", topic, ctx.Err())
	case <-in.stopping:
		return fmt.Errorf("ingest: publish to %s: %w", topic, ErrClosed)
	}
}

// Sent is a QoS 1 message on its way to the broker (Send).
type Sent interface {
	// Done is closed once the broker acknowledged the message or it
	// failed.
	Done() <-chan struct{}
	// Err is nil once the broker acknowledged the message.
	Err() error
}

// Send sends payload to topic at QoS 1 as Publish does, but returns
// without waiting for the broker's acknowledgement: the caller watches
// the returned Sent, so many messages travel pipelined.
func (in *Ingestor) Send(topic string, payload []byte) (Sent, error) {
	return in.sendTracked(topic, payload)
}

// sendTracked checks and sends one QoS 1 message.
func (in *Ingestor) sendTracked(topic string, payload []byte) (Sent, error) {
	if err := checkPublish(topic, payload); err != nil {
		return nil, err
	}
	select {
	case <-in.stopping:
		return nil, ErrClosed
	default:
	}
	if b := in.cfg.Embedded; b != nil {
		if !in.attached.Load() {
			return nil, fmt.Errorf("%w: not attached to the embedded broker", ErrNotConnected)
		}
		if err := b.srv.Publish(topic, payload, false, 1); err != nil {
			return nil, fmt.Errorf("ingest: publish to %s: %w", topic, err)
		}
		in.m.published.Add(1)
		return sentDone{}, nil
	}
	if in.mqtt == nil || in.mqtt.client == nil {
		return nil, fmt.Errorf("%w: no broker configured", ErrNotConnected)
	}
	if in.m.connected.Load() != 1 || !in.mqtt.client.IsConnectionOpen() {
		return nil, fmt.Errorf("%w (%s)", ErrNotConnected, in.cfg.MQTT.Broker)
	}
	return &sentToken{published: &in.m.published, topic: topic, tok: in.mqtt.client.Publish(topic, 1, false, payload)}, nil
}

// checkPublish refuses topics holding MQTT wildcards or NUL and payloads
// over MaxPublishBytes.
func checkPublish(topic string, payload []byte) error {
	if topic == "" || len(topic) > 65535 || strings.ContainsAny(topic, "+#\x00") {
		return fmt.Errorf("%w: publish topic %.128q is empty, too long or holds a wildcard or NUL", ErrInvalidConfig, topic)
	}
	if len(payload) > MaxPublishBytes {
		return fmt.Errorf("%w: publish payload of %d bytes exceeds %d", ErrInvalidConfig, len(payload), MaxPublishBytes)
	}
	return nil
}

// sentDone is a message the embedded broker took.
type sentDone struct{}

var closedCh = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (sentDone) Done() <-chan struct{} { return closedCh }
func (sentDone) Err() error            { return nil }

// sentToken is a message paho sends; it counts it in published once
// acknowledged.
type sentToken struct {
	published *atomic.Int64
	topic     string
	tok       mqtt.Token
	counted   atomic.Bool
}

func (s *sentToken) Done() <-chan struct{} { return s.tok.Done() }

func (s *sentToken) Err() error {
	select {
	case <-s.tok.Done():
	default:
		return fmt.Errorf("ingest: publish to %s: not acknowledged yet", s.topic)
	}
	if err := s.tok.Error(); err != nil {
		return fmt.Errorf("ingest: publish to %s: %w", s.topic, err)
	}
	if s.counted.CompareAndSwap(false, true) {
		s.published.Add(1)
	}
	return nil
}

// Subscribed reports whether the MQTT subscriber has subscribed at least
// once and its session is up now, or the Ingestor is attached to its
// embedded broker. Without a broker it is false.
func (in *Ingestor) Subscribed() bool {
	if in.cfg.Embedded != nil {
		return in.attached.Load()
	}
	if in.mqtt == nil {
		return false
	}
	select {
	case <-in.mqtt.subscribed:
		return in.m.connected.Load() == 1
	default:
		return false
	}
}

// Broker is the URL of the broker the Ingestor takes messages from ("" without one).
func (in *Ingestor) Broker() string {
	if in.cfg.Embedded != nil {
		return in.cfg.Embedded.URL()
	}
	return in.cfg.MQTT.Broker
}

// Reasons lists every dead-letter Reason.
func Reasons() []Reason { return append([]Reason(nil), reasons...) }
