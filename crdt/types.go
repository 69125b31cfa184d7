// Package crdt holds edgefleet's conflict-free replicated data types and
// their SQLite store.
//
// Every replica (agent) owns a hybrid logical clock and a sequence counter.
// A local change is an Op, identified by its Dot (origin replica, sequence
// number). The store applies local ops durably, exports the ops a peer lacks
// given that peer's VersionVector, and merges ops received from peers. A
// store's state is a function of the set of ops it has applied (Merge is
// idempotent, commutative and associative on it), so replicas that have
// applied the same ops hold the same state whatever the order or
// duplication of deliveries, and replicas that have received everything
// hold the same state whatever was lost, reordered or compacted on the way.
// See Store.Merge for what compacted deltas change before that.
//
// Which type to use for what:
//
//   - TypeLWW, last-writer-wins map: one current value per key where the
//     latest write should simply win (device registry fields, labels, model
//     assignments). Concurrent writes are ordered by (HLC, origin).
//   - TypeORSet, add-wins observed-remove set: membership (tags on a device,
//     members of a group, a job queue's entries). An add concurrent with a
//     remove of the same element wins.
//   - TypeCounter, PN-counter: counts incremented and decremented on many
//     replicas (readings seen, jobs done).
//   - TypeMVReg, multi-value register: values where silently dropping a
//     concurrent write would be wrong (key-version metadata, configuration an
//     operator must reconcile). Concurrent writes are all kept until a later
//     write that has observed them replaces them.
//
// Durability and identity: every local op, Merge call and Compact call is
// one SQLite transaction (WAL, synchronous=FULL) that also persists the
// replica's sequence number, clock and version vector, so a crash loses
// nothing acknowledged and the clock never goes backwards across restarts.
// A replica id belongs to one history for good: Merge rejects ops of the
// own id beyond the local history. A replica whose database is lost comes
// back under its id only through InstallSnapshot of a peer's state (which
// restores its sequence number), holding local ops until then
// (HoldLocalOps); a replica behind a peer's compaction horizon (Horizon)
// recovers the same way.
//
// Delta wire format, merge rules and the compaction safety rule are
// documented on EncodeDeltas, Store.Merge and Store.Compact.
//
// The package has no network code; the agent ships Deltas over gossip.
package crdt

import (
	"errors"
	"fmt"
	"time"
)

// Type names the kind of replicated collection an op belongs to.
type Type string

// Collection types.
const (
	TypeLWW     Type = "lww"
	TypeORSet   Type = "orset"
	TypeCounter Type = "counter"
	TypeMVReg   Type = "mvreg"
)

// Valid reports whether t is one of the known collection types.
func (t Type) Valid() bool {
	switch t {
	case TypeLWW, TypeORSet, TypeCounter, TypeMVReg:
		return true
	}
	return false
}

// Kind is what an op does.
type Kind uint8

// Op kinds.
const (
	KindPut        Kind = 1 // LWW: set Key to Value
	KindDelete     Kind = 2 // LWW: delete Key (a tombstone that wins like a write)
	KindAdd        Kind = 3 // OR-set: add element Key, tagged with the op's Dot
	KindRemove     Kind = 4 // OR-set: remove the Observed tags of element Key
	KindCounter    Kind = 5 // counter: origin's cumulative totals for Key become P and N
	KindMVPut      Kind = 6 // MV register: Key gets Value, replacing the Observed values
	KindMVDelete   Kind = 7 // MV register: remove the Observed values of Key
	maxKindPlusOne      = 8
)

// Dot identifies one op: the replica that made it and its sequence number
// there (1, 2, 3, ...).
type Dot struct {
	Origin string
	Seq    uint64
}

// VersionVector maps a replica id to the highest sequence number of that
// replica such that every op up to it has been applied (or superseded).
type VersionVector map[string]uint64

// Op is one replicated change.
type Op struct {
	Dot        Dot
	HLC        Timestamp
	Type       Type
	Collection string
	Key        string
	Kind       Kind
	Value      []byte // KindPut, KindMVPut
	P, N       uint64 // KindCounter: the origin's cumulative increments and decrements of Key
	Observed   []Dot  // KindRemove, KindMVPut, KindMVDelete: the tags/values this op replaces
}

// Delta is a run of ops from one origin. It covers that origin's sequence
// numbers From+1 .. To: Ops holds those of them still retained, in sequence
// order; ops superseded and compacted away are omitted, which is safe because
// whatever superseded them is shipped instead.
type Delta struct {
	Origin string
	From   uint64
	To     uint64
	Ops    []Op
}

// Sentinel errors. Errors returned by this package wrap them and carry
// context, prefixed "crdt:".
var (
	// ErrClockDrift: a remote timestamp is further ahead of the clock's
	// reference time than the configured maximum drift (Clock.Observe;
	// Merge refuses such ops by origin instead, see MergeStats.Refused).
	ErrClockDrift = errors.New("crdt: clock drift beyond limit")
	// ErrInvalidDelta: a delta or op is malformed (bad kind, type, sizes,
	// ranges, dots); nothing of the call that carried it was applied.
	ErrInvalidDelta = errors.New("crdt: invalid delta")
	// ErrTypeMismatch: a local op names a collection under another type.
	ErrTypeMismatch = errors.New("crdt: collection type mismatch")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("crdt: store closed")
	// ErrInvalidVersionVector: an encoded version vector is malformed.
	ErrInvalidVersionVector = errors.New("crdt: invalid version vector")
	// ErrCorrupt: a row read from the database does not hold what the store
	// wrote there (unknown kind or type, bad sizes, undecodable fields).
	ErrCorrupt = errors.New("crdt: corrupt row")
	// ErrReplicaMismatch: the database was created by another replica id.
	ErrReplicaMismatch = errors.New("crdt: database belongs to another replica")
)

// Type returns the collection type that ops of kind k belong to, or "" for
// an unknown kind.
func (k Kind) Type() Type {
	switch k {
	case KindPut, KindDelete:
		return TypeLWW
	case KindAdd, KindRemove:
		return TypeORSet
	case KindCounter:
		return TypeCounter
	case KindMVPut, KindMVDelete:
		return TypeMVReg
	}
	return ""
}

// Valid reports whether k is a known op kind.
func (k Kind) Valid() bool { return k > 0 && k < maxKindPlusOne }

// String returns the name of the kind.
func (k Kind) String() string {
	switch k {
	case KindPut:
		return "put"
	case KindDelete:
		return "delete"
	case KindAdd:
		return "add"
	case KindRemove:
		return "remove"
	case KindCounter:
		return "counter"
	case KindMVPut:
		return "mvput"
	case KindMVDelete:
		return "mvdelete"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Entry is one live key of a last-writer-wins map.
type Entry struct {
	Key    string
	Value  []byte
	HLC    Timestamp // timestamp of the winning write
	Origin string    // replica that made the winning write
}

// CollectionInfo describes one collection held by a store. A collection
// that replicas disagreed about appears once per type it holds state under.
type CollectionInfo struct {
	Name string
	Type Type
	Keys int // live keys (LWW), elements (OR-set), counters, or registers with values
}

// MergeStats reports what one Merge call did.
type MergeStats struct {
	Applied    int  // ops new to this store, applied
	Duplicates int  // ops already held (covered by the version vector or already in the log)
	Stale      int  // deltas starting beyond this store's version vector (a gap): their ops were applied but the vector did not advance over them, so they will be offered again
	Advanced   bool // the version vector moved
	// Refused lists, by origin, the ops refused for a timestamp too far
	// ahead of the reference time (see Merge).
	Refused []Refusal
}

// Refusal is what Merge refused of one origin: the ops from its first one
// too far ahead of the reference time on (an origin's timestamps only grow,
// so all of them would be). They are not applied and the version vector
// does not advance over them: anti-entropy offers them again.
type Refusal struct {
	Origin string
	Ops    int           // ops refused (counting each copy received)
	HLC    Timestamp     // timestamp of the first op refused
	Ahead  time.Duration // how far it is ahead of the reference time
	Source ClockSource   // what the reference time came from
}

// CompactStats reports what one Compact call removed.
type CompactStats struct {
	OpsRemoved        int // superseded ops and expired remove/delete ops dropped from the op log
	TombstonesRemoved int // LWW delete markers and removed-dot records dropped from the state
}

// StoreStats describes a store's size.
type StoreStats struct {
	Ops         int   // ops in the op log
	Tombstones  int   // LWW delete markers plus removed-dot records
	Collections int   // distinct (collection, type) pairs
	DBBytes     int64 // size of the database file plus its WAL
}
