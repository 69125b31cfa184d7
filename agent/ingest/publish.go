package ingest

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	wait, err := in.send(topic, payload)
	if err != nil {
		return err
	}
	return wait(ctx)
}

// Outgoing is one message for PublishAll.
type Outgoing struct {
	Topic   string
	Payload []byte
}

// PublishAll sends every message as Publish does, but sends them all
// before waiting for their acknowledgements, so they travel pipelined
// rather than one round trip each. It returns how many the broker
// acknowledged and the errors of the others, joined.
func (in *Ingestor) PublishAll(ctx context.Context, msgs []Outgoing) (int, error) {
	waits := make([]func(context.Context) error, 0, len(msgs))
	var errs []error
	for _, m := range msgs {
		wait, err := in.send(m.Topic, m.Payload)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		waits = append(waits, wait)
	}
	ok := 0
	for _, wait := range waits {
		if err := wait(ctx); err != nil {
			errs = append(errs, err)
			continue
		}
		ok++
	}
	return ok, errors.Join(errs...)
}

// send checks and sends one QoS 1 message and returns what waits for the
// broker's acknowledgement.
func (in *Ingestor) send(topic string, payload []byte) (func(context.Context) error, error) {
	if topic == "" || len(topic) > 65535 || strings.ContainsAny(topic, "+#\x00") {
		return nil, fmt.Errorf("%w: publish topic %.128q is empty, too long or holds a wildcard or NUL", ErrInvalidConfig, topic)
	}
	if len(payload) > MaxPublishBytes {
		return nil, fmt.Errorf("%w: publish payload of %d bytes exceeds %d", ErrInvalidConfig, len(payload), MaxPublishBytes)
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
		return func(context.Context) error { return nil }, nil
	}
	if in.mqtt == nil || in.mqtt.client == nil {
		return nil, fmt.Errorf("%w: no broker configured", ErrNotConnected)
	}
	if in.m.connected.Load() != 1 || !in.mqtt.client.IsConnectionOpen() {
		return nil, fmt.Errorf("%w (%s)", ErrNotConnected, in.cfg.MQTT.Broker)
	}
	tok := in.mqtt.client.Publish(topic, 1, false, payload)
	return func(ctx context.Context) error {
		select {
		case <-tok.Done():
			if err := tok.Error(); err != nil {
				return fmt.Errorf("ingest: publish to %s: %w", topic, err)
			}
			in.m.published.Add(1)
			return nil
		case <-ctx.Done():
			return fmt.Errorf("ingest: publish to %s: waiting for the broker's acknowledgement: %w", topic, ctx.Err())
		case <-in.stopping:
			return fmt.Errorf("ingest: publish to %s: %w", topic, ErrClosed)
		}
	}, nil
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
