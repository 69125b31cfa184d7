package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"unicode/utf8"

	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/crdt"
)

// Replication messages travel inside memberlist user messages (gossip
// broadcasts, SendReliable streams) and push/pull state. Each starts with a
// one-byte type:
//
//	msgDeltas    [1][deltas]                               gossip broadcast of local ops
//	msgSyncReq   [2][name][addr][digest][vv]               "here is my VV; send what I lack"
//	                                                       (addr: where to answer if the
//	                                                       receiver does not know the sender yet;
//	                                                       digest: 8 bytes, see membersDigest)
//	msgSyncResp  [3][flags][name][vv][deltas?]             first answer to a request: the
//	                                                       responder's VV and a first chunk
//	msgSyncData  [4][flags][name][deltas]                  further chunks, or a push of what
//	                                                       the responder lacks
//	msgState     [5][name][vv]                             memberlist push/pull local state
//	msgLeave     [6][name]                                 leave intent: name is leaving gracefully
//
// name and addr ("ip:port") are a uvarint length and that many bytes; vv in msgSyncResp is
// length-prefixed the same way, elsewhere it runs to the end; deltas are
// crdt.EncodeDeltas output running to the end of the message. flags bit 0
// (flagLast) marks the last message of an answer; bit 1 (flagPushBack, in
// msgSyncResp) asks the requester to push back what the responder lacks.
// Rejection reasons of replication messages (label values of
// edgefleet_gossip_rejected_total, beside membership's).
const (
	reasonUnknownType  = "unknown_type"
	reasonInvalidDelta = "invalid_delta"
	reasonClockDrift   = "clock_drift"
	reasonOwnName      = "own_name" // a peer claims this agent's name
)

const (
	msgDeltas   byte = 1
	msgSyncReq  byte = 2
	msgSyncResp byte = 3
	msgSyncData byte = 4
	msgState    byte = 5
	msgLeave    byte = 6
)

const (
	flagLast     byte = 1 << 0
	flagPushBack byte = 1 << 1
	// knownFlags are the flag bits this version understands.
	knownFlags = flagLast | flagPushBack
	// maxVVBytes bounds an encoded version vector.
	maxVVBytes = 2 << 20
	// maxMessageBytes bounds any replication message: a chunk at the
	// largest configurable size plus a version vector and framing.
	maxMessageBytes = maxChunkBytesCap + maxVVBytes + 1024
)

// message is a decoded replication message.
type message struct {
	Type   byte
	From   string
	Addr   string // msgSyncReq: the sender's gossip address
	Digest uint64 // msgSyncReq: digest of the members the sender sees alive
	Last   bool
	// PushBack (msgSyncResp): the responder wants what it lacks pushed back.
	PushBack bool
	VV       crdt.VersionVector
	Deltas   []crdt.Delta
}

// decodeError is a message that failed to decode, with the reason used as
// the metric label.
type decodeError struct {
	reason string
	err    error
}

func (e *decodeError) Error() string { return e.err.Error() }
func (e *decodeError) Unwrap() error { return e.err }

func malformed(format string, args ...any) error {
	return &decodeError{reason: membership.ReasonMalformed, err: fmt.Errorf("agent: malformed message: "+format, args...)}
}

// rejectReason returns the metric label for an error from decodeMessage or
// from merging its deltas.
func rejectReason(err error) string {
	var de *decodeError
	switch {
	case errors.As(err, &de):
		return de.reason
	case errors.Is(err, crdt.ErrClockDrift):
		return reasonClockDrift
	case errors.Is(err, crdt.ErrInvalidDelta):
		return reasonInvalidDelta
	}
	return membership.ReasonMalformed
}

// decodeMessage decodes and validates one replication message. It never
// panics; errors name what is wrong and carry a rejection reason.
func decodeMessage(b []byte) (message, error) {
	if len(b) == 0 {
		return message{}, malformed("empty")
	}
	if len(b) > maxMessageBytes {
		return message{}, &decodeError{reason: membership.ReasonOversized, err: fmt.Errorf("agent: message of %d bytes exceeds limit %d", len(b), maxMessageBytes)}
	}
	m := message{Type: b[0]}
	rest := b[1:]
	var err error
	switch m.Type {
	case msgDeltas:
		if len(rest) == 0 {
			return message{}, malformed("deltas message without deltas")
		}
		if m.Deltas, err = decodeDeltas(rest); err != nil {
			return message{}, err
		}
	case msgSyncReq, msgState:
		if m.From, rest, err = readName(rest); err != nil {
			return message{}, err
		}
		if m.Type == msgSyncReq {
			if m.Addr, rest, err = readAddr(rest); err != nil {
				return message{}, err
			}
			if len(rest) < 8 {
				return message{}, malformed("members digest truncated")
			}
			m.Digest, rest = binary.BigEndian.Uint64(rest), rest[8:]
		}
		if m.VV, err = decodeVV(rest); err != nil {
			return message{}, err
		}
	case msgLeave:
		if m.From, rest, err = readName(rest); err != nil {
			return message{}, err
		}
		if len(rest) != 0 {
			return message{}, malformed("%d trailing bytes after leave intent", len(rest))
		}
	case msgSyncResp, msgSyncData:
		if len(rest) == 0 {
			return message{}, malformed("missing flags")
		}
		flags := rest[0]
		if flags&^knownFlags != 0 {
			return message{}, malformed("unknown flags %#x", flags)
		}
		m.Last = flags&flagLast != 0
		m.PushBack = flags&flagPushBack != 0
		if m.PushBack && m.Type != msgSyncResp {
			return message{}, malformed("push-back flag outside a sync response")
		}
		if m.From, rest, err = readName(rest[1:]); err != nil {
			return message{}, err
		}
		if m.Type == msgSyncResp {
			var vvb []byte
			if vvb, rest, err = readBytes(rest, maxVVBytes, "version vector"); err != nil {
				return message{}, err
			}
			if m.VV, err = decodeVV(vvb); err != nil {
				return message{}, err
			}
		}
		if len(rest) > 0 {
			if m.Deltas, err = decodeDeltas(rest); err != nil {
				return message{}, err
			}
		} else if m.Type == msgSyncData {
			return message{}, malformed("sync data without deltas")
		}
	default:
		return message{}, &decodeError{reason: reasonUnknownType, err: fmt.Errorf("agent: unknown message type %d", m.Type)}
	}
	return m, nil
}

func decodeDeltas(b []byte) ([]crdt.Delta, error) {
	ds, err := crdt.DecodeDeltas(b)
	if err != nil {
		return nil, &decodeError{reason: reasonInvalidDelta, err: fmt.Errorf("agent: deltas: %w", err)}
	}
	if len(ds) == 0 {
		return nil, malformed("deltas section holds no delta")
	}
	for i := range ds {
		if err := ds[i].Validate(); err != nil {
			return nil, &decodeError{reason: reasonInvalidDelta, err: fmt.Errorf("agent: delta %d: %w", i, err)}
		}
	}
	return ds, nil
}

func decodeVV(b []byte) (crdt.VersionVector, error) {
	if len(b) > maxVVBytes {
		return nil, &decodeError{reason: membership.ReasonOversized, err: fmt.Errorf("agent: version vector of %d bytes exceeds limit %d", len(b), maxVVBytes)}
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
	nb, rest, err := readBytes(b, maxNodeNameLen, "node name")
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

// encodeMessage encodes m; encDeltas, when non-nil, is the already encoded
// deltas (crdt.EncodeDeltas) and takes the place of m.Deltas.
func encodeMessage(m message, encDeltas []byte) ([]byte, error) {
	if encDeltas == nil && len(m.Deltas) > 0 {
		var err error
		if encDeltas, err = crdt.EncodeDeltas(m.Deltas); err != nil {
			return nil, fmt.Errorf("agent: encoding deltas: %w", err)
		}
	}
	out := make([]byte, 0, 16+len(m.From)+len(encDeltas)+16*len(m.VV))
	out = append(out, m.Type)
	var flags byte
	if m.Last {
		flags |= flagLast
	}
	if m.PushBack && m.Type == msgSyncResp {
		flags |= flagPushBack
	}
	switch m.Type {
	case msgDeltas:
		if len(encDeltas) == 0 {
			return nil, errors.New("agent: encoding deltas message without deltas")
		}
		out = append(out, encDeltas...)
	case msgSyncReq, msgState:
		out = appendBytes(out, []byte(m.From))
		if m.Type == msgSyncReq {
			out = appendBytes(out, []byte(m.Addr))
			out = binary.BigEndian.AppendUint64(out, m.Digest)
		}
		out = append(out, crdt.EncodeVersionVector(m.VV)...)
	case msgLeave:
		out = appendBytes(out, []byte(m.From))
	case msgSyncResp:
		out = append(out, flags)
		out = appendBytes(out, []byte(m.From))
		out = appendBytes(out, crdt.EncodeVersionVector(m.VV))
		out = append(out, encDeltas...)
	case msgSyncData:
		if len(encDeltas) == 0 {
			return nil, errors.New("agent: encoding sync data without deltas")
		}
		out = append(out, flags)
		out = appendBytes(out, []byte(m.From))
		out = append(out, encDeltas...)
	default:
		return nil, fmt.Errorf("agent: encoding unknown message type %d", m.Type)
	}
	return out, nil
}
