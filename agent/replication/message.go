package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/crdt"
)

// Replication messages travel inside memberlist user messages (gossip
// broadcasts, SendReliable streams) and push/pull state. Each starts with a
// one-byte type:
//
//	TypeDeltas    [1][deltas]                               gossip broadcast of local ops
//	TypeSyncReq   [2][name][addr][digest][clock][vv]        "here is my VV; send what I lack"
//	                                                       (addr: where to answer if the
//	                                                       receiver does not know the sender yet;
//	                                                       digest: 8 bytes, see membership.Table.Digest)
//	TypeSyncResp  [3][flags][name][clock][vv][horizon?][deltas?] first answer to a request: the
//	                                                       responder's VV, its compaction
//	                                                       horizon (flagHorizon) and a first chunk
//	TypeSyncData  [4][flags][name][deltas]                  further chunks, or a push of what
//	                                                       the responder lacks
//	TypeState     [5][name][clock][vv]                      memberlist push/pull local state
//	TypeLeave     [6][name]                                 leave intent: name is leaving gracefully
//	TypeSnapReq   [7][name]                                 "send me your whole state" (recovery)
//	TypeSnapData  [8][flags][name][xfer][total][offset][b]  a chunk of an encoded snapshot
//	                                                       (crdt.ExportSnapshot): transfer id
//	                                                       (8 bytes), total size and offset
//	                                                       (uvarints), bytes to the end
//
// name and addr ("ip:port") are a uvarint length and that many bytes; vv in TypeSyncResp is
// length-prefixed the same way, elsewhere it runs to the end; deltas are
// crdt.EncodeDeltas output running to the end of the message. flags bit 0
// (flagLast) marks the last message of an answer (or of a snapshot); bit 1
// (flagPushBack, in TypeSyncResp) asks the requester to push back what the
// responder lacks; bit 2 (flagHorizon, in TypeSyncResp) says a
// length-prefixed compaction horizon follows the version vector (it is set
// only by a responder that has compacted removals away, so fleets that
// never did exchange the same bytes as before).
// clock is the sender's clock when it sent the message (ClockSample): one
// byte of clock flags (bit 0, clockSane: the sender judges its wall clock
// sane) and 8 bytes, big-endian, of Unix milliseconds of its reference
// time. Receivers keep the sane ones as samples of the fleet's time.
// Rejection reasons of replication messages (label values of
// edgefleet_gossip_rejected_total, beside membership's).
const (
	ReasonUnknownType  = "unknown_type"
	ReasonInvalidDelta = "invalid_delta"
	ReasonClockDrift   = "clock_drift"
	ReasonOwnName      = "own_name" // a peer claims this agent's name
)

// Bounds of the protocol.
const (
	// MaxNodeNameLen bounds a node name (config node_name).
	MaxNodeNameLen = 64
	// MaxChunkBytesCap is the largest configurable chunk of deltas
	// (config gossip.max_chunk_bytes).
	MaxChunkBytesCap = 4 << 20
)

const (
	TypeDeltas   byte = 1
	TypeSyncReq  byte = 2
	TypeSyncResp byte = 3
	TypeSyncData byte = 4
	TypeState    byte = 5
	TypeLeave    byte = 6
	TypeSnapReq  byte = 7
	TypeSnapData byte = 8
)

const (
	flagLast     byte = 1 << 0
	flagPushBack byte = 1 << 1
	flagHorizon  byte = 1 << 2
	// knownFlags are the flag bits this version understands.
	knownFlags = flagLast | flagPushBack | flagHorizon
	// clockSane (clock flags): the sender judges its wall clock sane.
	clockSane byte = 1 << 0
	// clockBytes is the size of an encoded ClockSample.
	clockBytes = 9
	// maxVVBytes bounds an encoded version vector.
	maxVVBytes = 2 << 20
	// MaxMessageBytes bounds any replication message: a chunk at the
	// largest configurable size plus a version vector and framing.
	MaxMessageBytes = MaxChunkBytesCap + maxVVBytes + 1024
)

// Message is a decoded replication message.
type Message struct {
	Type   byte
	From   string
	Addr   string // TypeSyncReq: the sender's gossip address
	Digest uint64 // TypeSyncReq: digest of the members the sender sees alive
	Last   bool
	// PushBack (TypeSyncResp): the responder wants what it lacks pushed back.
	PushBack bool
	VV       crdt.VersionVector
	// Horizon (TypeSyncResp): the responder's compaction horizon
	// (crdt.Store.Horizon); nil when it has none.
	Horizon crdt.VersionVector
	Deltas  []crdt.Delta
	// TypeSnapData: transfer id, total encoded size, offset of Chunk.
	Xfer          uint64
	Total, Offset uint64
	Chunk         []byte
	// Clock (TypeSyncReq, TypeSyncResp, TypeState): the sender's clock.
	Clock ClockSample
}

// ClockSample is a sender's clock reading: its reference time (crdt.Clock)
// in Unix milliseconds, and whether that is its own wall clock, judged
// sane.
type ClockSample struct {
	UnixMilli int64
	Sane      bool
}

// Time is the sample's reading.
func (c ClockSample) Time() time.Time { return time.UnixMilli(c.UnixMilli) }

func appendClock(dst []byte, c ClockSample) []byte {
	var flags byte
	if c.Sane {
		flags |= clockSane
	}
	dst = append(dst, flags)
	return binary.BigEndian.AppendUint64(dst, uint64(c.UnixMilli))
}

func readClock(b []byte) (ClockSample, []byte, error) {
	if len(b) < clockBytes {
		return ClockSample{}, nil, malformed("clock truncated")
	}
	if b[0]&^clockSane != 0 {
		return ClockSample{}, nil, malformed("unknown clock flags %#x", b[0])
	}
	return ClockSample{Sane: b[0]&clockSane != 0, UnixMilli: int64(binary.BigEndian.Uint64(b[1:]))}, b[clockBytes:], nil
}

// DecodeError is a message refused as bad input, with the reason used as
// the metric label.
type DecodeError struct {
	Reason string
	Err    error
}

func (e *DecodeError) Error() string { return e.Err.Error() }
func (e *DecodeError) Unwrap() error { return e.Err }

func malformed(format string, args ...any) error {
	return &DecodeError{Reason: membership.ReasonMalformed, Err: fmt.Errorf("replication: malformed message: "+format, args...)}
}

// RejectReason returns the metric label for an error from Decode or
// from merging its deltas.
func RejectReason(err error) string {
	var de *DecodeError
	switch {
	case errors.As(err, &de):
		return de.Reason
	case errors.Is(err, crdt.ErrClockDrift):
		return ReasonClockDrift
	case errors.Is(err, crdt.ErrInvalidDelta):
		return ReasonInvalidDelta
	}
	return membership.ReasonMalformed
}

// Decode decodes and validates one replication message. It never
// panics; errors name what is wrong and carry a rejection reason.
func Decode(b []byte) (Message, error) {
	if len(b) == 0 {
		return Message{}, malformed("empty")
	}
	if len(b) > MaxMessageBytes {
		return Message{}, &DecodeError{Reason: membership.ReasonOversized, Err: fmt.Errorf("replication: message of %d bytes exceeds limit %d", len(b), MaxMessageBytes)}
	}
	m := Message{Type: b[0]}
	rest := b[1:]
	var err error
	switch m.Type {
	case TypeDeltas:
		if len(rest) == 0 {
			return Message{}, malformed("deltas message without deltas")
		}
		if m.Deltas, err = decodeDeltas(rest); err != nil {
			return Message{}, err
		}
	case TypeSyncReq, TypeState:
		if m.From, rest, err = readName(rest); err != nil {
			return Message{}, err
		}
		if m.Type == TypeSyncReq {
			if m.Addr, rest, err = readAddr(rest); err != nil {
				return Message{}, err
			}
			if len(rest) < 8 {
				return Message{}, malformed("members digest truncated")
			}
			m.Digest, rest = binary.BigEndian.Uint64(rest), rest[8:]
		}
		if m.Clock, rest, err = readClock(rest); err != nil {
			return Message{}, err
		}
		if m.VV, err = decodeVV(rest); err != nil {
			return Message{}, err
		}
	case TypeLeave, TypeSnapReq:
		if m.From, rest, err = readName(rest); err != nil {
			return Message{}, err
		}
		if len(rest) != 0 {
			return Message{}, malformed("%d trailing bytes after %s", len(rest), typeName(m.Type))
		}
	case TypeSnapData:
		if m, err = decodeSnapData(m, rest); err != nil {
			return Message{}, err
		}
	case TypeSyncResp, TypeSyncData:
		if len(rest) == 0 {
			return Message{}, malformed("missing flags")
		}
		flags := rest[0]
		if flags&^knownFlags != 0 {
			return Message{}, malformed("unknown flags %#x", flags)
		}
		m.Last = flags&flagLast != 0
		m.PushBack = flags&flagPushBack != 0
		if (m.PushBack || flags&flagHorizon != 0) && m.Type != TypeSyncResp {
			return Message{}, malformed("push-back or horizon flag outside a sync response")
		}
		if m.From, rest, err = readName(rest[1:]); err != nil {
			return Message{}, err
		}
		if m.Type == TypeSyncResp {
			if m.Clock, rest, err = readClock(rest); err != nil {
				return Message{}, err
			}
			var vvb []byte
			if vvb, rest, err = readBytes(rest, maxVVBytes, "version vector"); err != nil {
				return Message{}, err
			}
			if m.VV, err = decodeVV(vvb); err != nil {
				return Message{}, err
			}
			if flags&flagHorizon != 0 {
				if vvb, rest, err = readBytes(rest, maxVVBytes, "horizon"); err != nil {
					return Message{}, err
				}
				if m.Horizon, err = decodeVV(vvb); err != nil {
					return Message{}, err
				}
				if len(m.Horizon) == 0 {
					return Message{}, malformed("empty horizon")
				}
			}
		}
		if len(rest) > 0 {
			if m.Deltas, err = decodeDeltas(rest); err != nil {
				return Message{}, err
			}
		} else if m.Type == TypeSyncData {
			return Message{}, malformed("sync data without deltas")
		}
	default:
		return Message{}, &DecodeError{Reason: ReasonUnknownType, Err: fmt.Errorf("replication: unknown message type %d", m.Type)}
	}
	return m, nil
}

func decodeDeltas(b []byte) ([]crdt.Delta, error) {
	ds, err := crdt.DecodeDeltas(b)
	if err != nil {
		return nil, &DecodeError{Reason: ReasonInvalidDelta, Err: fmt.Errorf("replication: deltas: %w", err)}
	}
	if len(ds) == 0 {
		return nil, malformed("deltas section holds no delta")
	}
	for i := range ds {
		if err := ds[i].Validate(); err != nil {
			return nil, &DecodeError{Reason: ReasonInvalidDelta, Err: fmt.Errorf("replication: delta %d: %w", i, err)}
		}
	}
	return ds, nil
}

func decodeVV(b []byte) (crdt.VersionVector, error) {
	if len(b) > maxVVBytes {
		return nil, &DecodeError{Reason: membership.ReasonOversized, Err: fmt.Errorf("replication: version vector of %d bytes exceeds limit %d", len(b), maxVVBytes)}
	}
	vv, err := crdt.DecodeVersionVector(b)
	if err != nil {
		return nil, malformed("version vector: %v", err)
	}
	return vv, nil
}

func readBytes(b []byte, limit int, what string) ([]byte, []byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 {
		return nil, nil, malformed("%s length", what)
	}
	b = b[k:]
	if n > uint64(limit) {
		return nil, nil, malformed("%s length %d exceeds %d", what, n, limit)
	}
	if n > uint64(len(b)) {
		return nil, nil, malformed("%s length %d exceeds remaining %d bytes", what, n, len(b))
	}
	return b[:n], b[n:], nil
}

func readName(b []byte) (string, []byte, error) {
	nb, rest, err := readBytes(b, MaxNodeNameLen, "node name")
	if err != nil {
		return "", nil, err
	}
	if len(nb) == 0 || !utf8.Valid(nb) {
		return "", nil, malformed("node name is empty or not UTF-8")
	}
	return string(nb), rest, nil
}

// maxAddrLen bounds "ip:port" (an IPv6 address with port fits).
const maxAddrLen = 64

func readAddr(b []byte) (string, []byte, error) {
	ab, rest, err := readBytes(b, maxAddrLen, "address")
	if err != nil {
		return "", nil, err
	}
	host, port, err := net.SplitHostPort(string(ab))
	if err != nil || net.ParseIP(host) == nil {
		return "", nil, malformed("address %q is not ip:port", ab)
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 || strconv.Itoa(p) != port {
		return "", nil, malformed("address %q has a bad port", ab)
	}
	return string(ab), rest, nil
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// Encode encodes m; encDeltas, when non-nil, is the already encoded
// deltas (crdt.EncodeDeltas) and takes the place of m.Deltas.
func Encode(m Message, encDeltas []byte) ([]byte, error) {
	if encDeltas == nil && len(m.Deltas) > 0 {
		var err error
		if encDeltas, err = crdt.EncodeDeltas(m.Deltas); err != nil {
			return nil, fmt.Errorf("replication: encoding deltas: %w", err)
		}
	}
	out := make([]byte, 0, 16+len(m.From)+len(encDeltas)+16*len(m.VV))
	out = append(out, m.Type)
	var flags byte
	if m.Last {
		flags |= flagLast
	}
	if m.PushBack && m.Type == TypeSyncResp {
		flags |= flagPushBack
	}
	switch m.Type {
	case TypeDeltas:
		if len(encDeltas) == 0 {
			return nil, errors.New("replication: encoding deltas message without deltas")
		}
		out = append(out, encDeltas...)
	case TypeSyncReq, TypeState:
		out = appendBytes(out, []byte(m.From))
		if m.Type == TypeSyncReq {
			out = appendBytes(out, []byte(m.Addr))
			out = binary.BigEndian.AppendUint64(out, m.Digest)
		}
		out = appendClock(out, m.Clock)
		out = append(out, crdt.EncodeVersionVector(m.VV)...)
	case TypeLeave, TypeSnapReq:
		out = appendBytes(out, []byte(m.From))
	case TypeSyncResp:
		if len(m.Horizon) > 0 {
			flags |= flagHorizon
		}
		out = append(out, flags)
		out = appendBytes(out, []byte(m.From))
		out = appendClock(out, m.Clock)
		out = appendBytes(out, crdt.EncodeVersionVector(m.VV))
		if len(m.Horizon) > 0 {
			out = appendBytes(out, crdt.EncodeVersionVector(m.Horizon))
		}
		out = append(out, encDeltas...)
	case TypeSnapData:
		out = append(out, flags)
		out = appendBytes(out, []byte(m.From))
		out = binary.BigEndian.AppendUint64(out, m.Xfer)
		out = binary.AppendUvarint(out, m.Total)
		out = binary.AppendUvarint(out, m.Offset)
		out = append(out, m.Chunk...)
	case TypeSyncData:
		if len(encDeltas) == 0 {
			return nil, errors.New("replication: encoding sync data without deltas")
		}
		out = append(out, flags)
		out = appendBytes(out, []byte(m.From))
		out = append(out, encDeltas...)
	default:
		return nil, fmt.Errorf("replication: encoding unknown message type %d", m.Type)
	}
	return out, nil
}

func typeName(t byte) string {
	switch t {
	case TypeLeave:
		return "leave intent"
	case TypeSnapReq:
		return "snapshot request"
	}
	return fmt.Sprintf("message type %d", t)
}

// decodeSnapData decodes the rest of a TypeSnapData message.
func decodeSnapData(m Message, rest []byte) (Message, error) {
	if len(rest) == 0 {
		return Message{}, malformed("missing flags")
	}
	flags := rest[0]
	if flags&^flagLast != 0 {
		return Message{}, malformed("unknown snapshot flags %#x", flags)
	}
	m.Last = flags&flagLast != 0
	var err error
	if m.From, rest, err = readName(rest[1:]); err != nil {
		return Message{}, err
	}
	if len(rest) < 8 {
		return Message{}, malformed("snapshot transfer id truncated")
	}
	m.Xfer, rest = binary.BigEndian.Uint64(rest), rest[8:]
	var k int
	if m.Total, k = binary.Uvarint(rest); k <= 0 {
		return Message{}, malformed("snapshot size")
	}
	rest = rest[k:]
	if m.Offset, k = binary.Uvarint(rest); k <= 0 {
		return Message{}, malformed("snapshot offset")
	}
	rest = rest[k:]
	if m.Total > crdt.MaxSnapshotBytes || m.Offset > m.Total || uint64(len(rest)) > m.Total-m.Offset || len(rest) == 0 {
		return Message{}, malformed("snapshot chunk of %d bytes at %d of %d", len(rest), m.Offset, m.Total)
	}
	if m.Last != (m.Offset+uint64(len(rest)) == m.Total) {
		return Message{}, malformed("snapshot chunk ending at %d of %d flagged last=%v", m.Offset+uint64(len(rest)), m.Total, m.Last)
	}
	m.Chunk = rest
	return m, nil
}
