package ingest

import (
	"fmt"
	"sync"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// ingestHook hands the publishes on an attached Ingestor's topics to it
// directly, inside the broker, and delays their acknowledgement until
// they are committed.
//
// mochi acknowledges a QoS 1 publish right after the OnPublish hooks
// return, before anything else happens to it. So for a QoS 1 publish on
// an ingested topic the hook queues the message with the Ingestor
// (Handle; while the queue is full this blocks the client's connection,
// which throttles the device) and answers ErrRejectPacket: mochi then
// neither acknowledges nor routes it. The hook routes it to the broker's
// other subscribers itself (through the inline client), and the
// Ingestor's acknowledging goroutine sends the PUBACK after the group
// commit holding the message, through the connection's ackWriter. One
// connection's messages are acknowledged in the order they arrived
// (MQTT 3.1.1 section 4.6), and a device may have many messages in
// flight, which share group commits with every other device's.
//
// A QoS 2 publish waits in the hook until it is committed; mochi then
// answers PUBREC and completes the exchange as usual (and recognizes a
// resent PUBLISH of it by its packet id). QoS 0 publishes are queued and
// routed as usual: nothing is acknowledged for them.
//
// A publish that the Ingestor does not take (it is stopping) is left
// unacknowledged: the device keeps it and sends it again, flagged DUP,
// after it reconnects; the Ingestor's redelivery de-duplication then
// applies as for a broker redelivering to a subscriber (see the package
// documentation).
//
// A QoS 1 PUBLISH whose packet id is still in flight on the same
// connection (received, not yet acknowledged) is the same message sent
// again, and is dropped: the first one's PUBACK answers both (MQTT
// 3.1.1 section 4.3.2 makes a packet id a new publication only after
// its PUBACK). paho sends such copies: a publish queued for sending
// when the connection drops goes out after the reconnect both from the
// session store (DUP) and from the send queue. Acknowledging each copy
// would send a second PUBACK for the id, which the device may take for
// the next message it gives the same id before that one is committed.
type ingestHook struct {
	mochi.HookBase
	b *Broker
}

// ingestHookID names the hook.
const ingestHookID = "edgefleet-ingest"

// ID names the hook.
func (h *ingestHook) ID() string { return ingestHookID }

// Provides selects the events the hook handles.
func (h *ingestHook) Provides(e byte) bool {
	return e == mochi.OnPublish || e == mochi.OnDisconnect
}

// OnDisconnect ends the connection's acknowledgement writer.
func (h *ingestHook) OnDisconnect(cl *mochi.Client, _ error, _ bool) {
	h.b.amu.Lock()
	w := h.b.ackWriters[cl]
	delete(h.b.ackWriters, cl)
	h.b.amu.Unlock()
	if w != nil {
		w.close()
	}
}

// OnPublish takes the publishes on the attached Ingestor's topics.
func (h *ingestHook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // the agent's own publishes and the routing of ingested ones
	}
	in, ok := h.b.ingestor()
	if !ok {
		return pk, packets.ErrRejectPacket // stopping: nothing is acknowledged
	}
	if in == nil || !in.topics.Matches(pk.TopicName) {
		return pk, nil
	}
	m := &brokerMessage{topic: pk.TopicName, payload: pk.Payload, dup: pk.FixedHeader.Dup, pid: pk.PacketID}
	switch pk.FixedHeader.Qos {
	case 0:
		m.pid = 0 // never redelivered
		_ = in.handle(m, h.b.done)
		return pk, nil
	case 1:
		m.acks = h.b.ackWriter(cl)
		if !m.acks.claim(pk.PacketID) {
			in.m.copies.Add(1)
			return pk, packets.ErrRejectPacket // a copy of a publish in flight
		}
		if err := in.handle(m, h.b.done); err != nil {
			m.acks.release(pk.PacketID)
			return pk, packets.ErrRejectPacket
		}
		h.b.route(pk)
		return pk, packets.ErrRejectPacket // acknowledged after the commit
	default:
		m.committed = make(chan struct{})
		if err := in.handle(m, h.b.done); err != nil {
			return pk, packets.ErrRejectPacket
		}
		select {
		case <-m.committed:
			return pk, nil // mochi answers PUBREC and routes it
		case <-in.done:
		case <-h.b.done:
		}
		select {
		case <-m.committed:
			return pk, nil
		default:
			return pk, packets.ErrRejectPacket
		}
	}
}

// brokerMessage is a publish the hook handed to the Ingestor.
type brokerMessage struct {
	topic     string
	payload   []byte
	dup       bool
	pid       uint16
	acks      *ackWriter    // QoS 1: where the PUBACK goes
	committed chan struct{} // QoS 2: closed once committed
}

func (m *brokerMessage) Topic() string     { return m.topic }
func (m *brokerMessage) Payload() []byte   { return m.payload }
func (m *brokerMessage) Duplicate() bool   { return m.dup }
func (m *brokerMessage) MessageID() uint16 { return m.pid }

// Ack acknowledges the message to its device.
func (m *brokerMessage) Ack() {
	switch {
	case m.acks != nil:
		m.acks.add(m.pid)
	case m.committed != nil:
		close(m.committed)
	}
}

// ackWriter writes the PUBACKs of one client connection, in the order
// they are added, on its own goroutine: a device that stops reading its
// socket holds back its own acknowledgements, never the Ingestor's.
type ackWriter struct {
	cl       *mochi.Client
	mu       sync.Mutex
	inflight map[uint16]struct{} // received, PUBACK not yet written
	ids      []uint16            // waiting to be written
	closed   bool
	wake     chan struct{}
	stopped  chan struct{}
}

func newAckWriter(cl *mochi.Client) *ackWriter {
	w := &ackWriter{cl: cl, inflight: map[uint16]struct{}{}, wake: make(chan struct{}, 1), stopped: make(chan struct{})}
	go w.run()
	return w
}

// claim records a received QoS 1 publish as in flight; false when its
// packet id already is (the publish is a copy of that one).
func (w *ackWriter) claim(pid uint16) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.inflight[pid]; ok {
		return false
	}
	w.inflight[pid] = struct{}{}
	return true
}

// release forgets an in-flight packet id.
func (w *ackWriter) release(pid uint16) {
	w.mu.Lock()
	delete(w.inflight, pid)
	w.mu.Unlock()
}

func (w *ackWriter) add(pid uint16) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return // the connection is gone: the device sends the message again
	}
	w.ids = append(w.ids, pid)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *ackWriter) close() {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.stopped)
	}
	w.mu.Unlock()
}

func (w *ackWriter) run() {
	var ids []uint16
	for {
		select {
		case <-w.stopped:
			return
		case <-w.wake:
		}
		w.mu.Lock()
		ids, w.ids = w.ids, ids[:0]
		// Released before the PUBACK is written: the device may reuse an
		// id as soon as it reads the PUBACK.
		for _, id := range ids {
			delete(w.inflight, id)
		}
		w.mu.Unlock()
		for _, id := range ids {
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: id, ReasonCode: packets.CodeSuccess.Code}
			if err := w.cl.WritePacket(pk); err != nil {
				w.close() // the connection is gone: the device sends the rest again
				return
			}
		}
	}
}

// ackWriter returns the acknowledgement writer of a client connection.
func (b *Broker) ackWriter(cl *mochi.Client) *ackWriter {
	b.amu.Lock()
	defer b.amu.Unlock()
	w := b.ackWriters[cl]
	if w == nil {
		w = newAckWriter(cl)
		b.ackWriters[cl] = w
	}
	return w
}

// route passes an ingested publish on to the broker's subscribers, if it
// has any for the topic (or the message is retained).
func (b *Broker) route(pk packets.Packet) {
	if !pk.FixedHeader.Retain {
		s := b.srv.Topics.Subscribers(pk.TopicName)
		if len(s.Subscriptions) == 0 && len(s.Shared) == 0 && len(s.InlineSubscriptions) == 0 {
			return
		}
	}
	if err := b.srv.Publish(pk.TopicName, pk.Payload, pk.FixedHeader.Retain, pk.FixedHeader.Qos); err != nil {
		b.log.Warn("route an ingested message to subscribers", "topic", pk.TopicName, "err", err)
	}
}

// ingestor returns the attached Ingestor, waiting for one while the
// broker is reserved for ingestion (BrokerConfig.Ingest, or an Ingestor
// was attached before). ok is false when the broker is stopping.
func (b *Broker) ingestor() (in *Ingestor, ok bool) {
	if in := b.in.Load(); in != nil {
		return in, true
	}
	for {
		b.mu.Lock()
		in, hold, stopped, changed := b.in.Load(), b.hold, b.stopped, b.changed
		b.mu.Unlock()
		switch {
		case stopped:
			return nil, false
		case in != nil || !hold:
			return in, true
		}
		<-changed
	}
}

// attach makes in the broker's Ingestor.
func (b *Broker) attach(in *Ingestor) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return fmt.Errorf("%w: the embedded broker is stopped", ErrClosed)
	}
	if !b.in.CompareAndSwap(nil, in) {
		return fmt.Errorf("%w: another Ingestor is attached to the embedded broker", ErrInvalidConfig)
	}
	b.hold = true
	b.signalLocked()
	return nil
}

// detach removes in; publishes then wait for the next Ingestor.
func (b *Broker) detach(in *Ingestor) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.in.CompareAndSwap(in, nil) {
		b.signalLocked()
	}
}

// signalLocked wakes the publishes waiting for a change. b.mu is held.
func (b *Broker) signalLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}
