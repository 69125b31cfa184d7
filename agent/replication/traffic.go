package replication

import "sync/atomic"

// Sent is what replication sent, by kind of message: bytes as handed to
// memberlist (before its framing and encryption) and message counts. Own
// gossip broadcasts and relayed ones are counted when memberlist takes them
// for a gossip packet, push/pull state when memberlist asks for it, and
// everything else when it is sent to one peer.
type Sent struct {
	bytes, msgs [numSentKinds]atomic.Uint64
}

// Kinds of sent replication traffic (label values of
// edgefleet_replication_sent_bytes_total and _messages_total).
const (
	SentDeltas   = "deltas"    // own deltas gossiped (TypeDeltas)
	SentRelay    = "relay"     // deltas relayed (relay.go)
	SentSyncReq  = "sync_req"  // anti-entropy requests
	SentSyncResp = "sync_resp" // first answers to requests
	SentSyncData = "sync_data" // further chunks and push-backs
	SentState    = "state"     // memberlist push/pull local state
	SentLeave    = "leave"     // leave intents
	SentSnapReq  = "snap_req"  // state transfer requests
	SentSnapData = "snap_data" // state transfer chunks
)

// SentKinds lists the kinds in a fixed order.
var SentKinds = []string{SentDeltas, SentRelay, SentSyncReq, SentSyncResp, SentSyncData, SentState, SentLeave, SentSnapReq, SentSnapData}

const numSentKinds = 9

// sentKind is the index in SentKinds of a message of type t; relay marks a
// relayed delta.
func sentKind(t byte, relay bool) int {
	if relay {
		return 1
	}
	switch t {
	case TypeDeltas:
		return 0
	case TypeSyncReq:
		return 2
	case TypeSyncResp:
		return 3
	case TypeSyncData:
		return 4
	case TypeState:
		return 5
	case TypeLeave:
		return 6
	case TypeSnapReq:
		return 7
	default:
		return 8
	}
}

func (s *Sent) add(msg []byte, relay bool) {
	if len(msg) == 0 {
		return
	}
	k := sentKind(msg[0], relay)
	s.bytes[k].Add(uint64(len(msg)))
	s.msgs[k].Add(1)
}

// Bytes returns the bytes sent of kind (one of SentKinds); 0 for others.
func (s *Sent) Bytes(kind string) uint64 {
	if i := sentIndex(kind); i >= 0 {
		return s.bytes[i].Load()
	}
	return 0
}

// Msgs returns the messages sent of kind (one of SentKinds); 0 for others.
func (s *Sent) Msgs(kind string) uint64 {
	if i := sentIndex(kind); i >= 0 {
		return s.msgs[i].Load()
	}
	return 0
}

func sentIndex(kind string) int {
	for i, k := range SentKinds {
		if k == kind {
			return i
		}
	}
	return -1
}
