package replication

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/crdt"
)

// Recovery by state transfer. Deltas cannot repair every replica:
//
//   - one whose version vector is behind a peer's compaction horizon
//     (crdt.Store.Horizon) for some origin may lack removals that exist
//     nowhere as ops any more (it was away longer than
//     gossip.reconnect_timeout, so it was left out of the stable vector, and
//     longer than state.tombstone_ttl);
//   - one that holds less of its own origin than a peer (a fresh database
//     under a node name the fleet knows: a quarantined state.db, a
//     re-flashed board): issuing sequence numbers the fleet already has
//     would fork its history.
//
// A peer never ships deltas to a requester behind its horizon; it answers
// with its version vector and horizon only. The replica that learns it is
// behind (from a sync response's horizon, or from any peer's version vector
// holding more of its own origin) holds local ops (crdt.ErrAwaitingState;
// the API answers 503), stops shipping deltas, and asks that peer for a
// snapshot (TypeSnapReq). The peer streams crdt.ExportSnapshot in chunks
// (TypeSnapData); the replica assembles it and installs it with
// crdt.Store.InstallSnapshot, which verifies the state hash over the
// received rows and installs everything in one transaction, keeping the
// replica's own ops the peer lacks. A refused snapshot (bad hash, malformed,
// clock drift) is logged with its reason, counted in
// edgefleet_gossip_rejected_total and changes nothing; the replica asks
// again (another peer, if one reports it behind) after SyncTimeout.
//
// A store that starts empty does not know yet whether the fleet knows its
// replica id, so it holds local ops until the first peer report (a sync
// request or response, or push/pull state) shows whether it does, or until
// RecoveryTimeout passes without any: then it assumes it is new and
// releases them (logged). An agent with no seeds releases at once.

// Rejection reasons of snapshots (labels of edgefleet_gossip_rejected_total).
const (
	ReasonSnapshotHash    = "snapshot_hash"
	ReasonSnapshotInvalid = "snapshot_invalid"
)

// recovery is the state of this agent's state transfer.
type recovery struct {
	mu       sync.Mutex
	need     string    // why a snapshot is needed; "" when not
	peer     string    // the peer asked, or to ask
	askedAt  time.Time // when peer was asked (zero: not yet)
	fresh    bool      // the store started empty; no peer has reported yet
	deadline time.Time // fresh: when to give up waiting for a report
	xfer     uint64    // transfer being received (0: none yet)
	buf      []byte    // its bytes, Total long, filled chunk by chunk
	got      uint64    // bytes received of it
	offsets  map[uint64]bool
}

// serveReq is a snapshot request to serve; installReq an assembled
// snapshot to install.
type (
	serveReq   struct{ peer string }
	installReq struct {
		peer string
		snap []byte
	}
)

// startRecovery holds local ops of a store that starts empty until a peer
// reports (see above), when there are seeds to ask.
func (r *Replicator) startRecovery() {
	vv, err := r.store.VersionVector(context.Background())
	if err != nil || len(vv) > 0 || !r.cfg.Seeded {
		return
	}
	r.rec.mu.Lock()
	r.rec.fresh = true
	r.rec.deadline = r.clock.Now().Add(r.cfg.RecoveryTimeout)
	r.rec.mu.Unlock()
	r.store.HoldLocalOps(fmt.Sprintf("new database for %q: waiting for a peer to tell whether the fleet knows this replica", r.cfg.Name))
	r.log.Info("new database, local writes held until a peer reports", "timeout", r.cfg.RecoveryTimeout)
}

// Recovering returns why local writes wait for a state transfer, or "".
func (r *Replicator) Recovering() string { return r.store.LocalOpsHeld() }

// needsState reports whether a state transfer is pending.
func (r *Replicator) needsState() bool {
	r.rec.mu.Lock()
	defer r.rec.mu.Unlock()
	return r.rec.need != ""
}

// observe checks what peer reported (its version vector, and its horizon
// when known) against this store: it starts a state transfer when deltas
// cannot repair this replica, and releases a fresh store's hold when the
// peer knows nothing of its origin.
func (r *Replicator) observe(peer string, vv, horizon crdt.VersionVector) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ours, err := r.store.VersionVector(ctx)
	if err != nil {
		return
	}
	self := r.cfg.Name
	reason := ""
	if vv[self] > ours[self] {
		reason = fmt.Sprintf("peer %q holds ops of this replica up to %d, this store only up to %d", peer, vv[self], ours[self])
	} else if o, behind := crdt.Behind(ours, horizon); behind {
		reason = fmt.Sprintf("behind the compaction horizon of peer %q for origin %q (%d < %d)", peer, o, ours[o], horizon[o])
	}
	r.rec.mu.Lock()
	defer r.rec.mu.Unlock()
	if reason == "" {
		if r.rec.fresh && r.rec.need == "" {
			r.rec.fresh = false
			r.store.ReleaseLocalOps()
			r.log.Info("peer knows nothing more of this replica; local writes released", "peer", peer)
		}
		return
	}
	r.needStateLocked(peer, reason)
}

// needState starts a state transfer from peer (see needStateLocked).
func (r *Replicator) needState(peer, reason string) {
	r.rec.mu.Lock()
	defer r.rec.mu.Unlock()
	r.needStateLocked(peer, reason)
}

// needStateLocked records that a state transfer is needed, holds local
// ops and wakes the recovery loop to ask peer; r.rec.mu held.
func (r *Replicator) needStateLocked(peer, reason string) {
	r.rec.fresh = false
	if r.rec.need == "" {
		r.rec.need = reason
		r.rec.peer = peer
		r.rec.askedAt = time.Time{}
		r.store.HoldLocalOps(reason)
		r.log.Warn("deltas cannot repair this replica; asking for a state transfer", "peer", peer, "reason", reason)
	} else if r.rec.peer == "" {
		r.rec.peer = peer
	}
	r.kickRecovery()
}

// staleOwnOp returns a description of an op of this replica in ds older
// than the tombstone TTL, or "". Such an op never reached the peer within
// the TTL: a delete it predates may be compacted away there, so shipping
// it could resurrect the key. This replica recovers by a state transfer
// instead, which drops such writes (crdt.Store.InstallSnapshot).
func (r *Replicator) staleOwnOp(ds []crdt.Delta) string {
	cutoff := r.clock.Now().Add(-r.ttl)
	for i := range ds {
		if ds[i].Origin != r.cfg.Name {
			continue
		}
		for j := range ds[i].Ops {
			if op := &ds[i].Ops[j]; op.HLC.Time().Before(cutoff) {
				return fmt.Sprintf("own op %d of %s never reached the peer within the tombstone TTL (%s)", op.Dot.Seq, op.HLC.Time().Format(time.RFC3339), r.ttl)
			}
		}
	}
	return ""
}

func (r *Replicator) kickRecovery() {
	select {
	case r.recKick <- struct{}{}:
	default:
	}
}

// recoverLoop asks for snapshots while one is needed (again after
// SyncTimeout without progress), releases a fresh store's hold at its
// deadline, and serves the snapshot requests of peers.
func (r *Replicator) recoverLoop(ctx context.Context) {
	tick := r.clock.NewTicker(r.cfg.SyncInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case req := <-r.serve:
			r.serveSnapshot(ctx, req.peer)
		case req := <-r.install:
			r.installSnapshot(ctx, req.peer, req.snap)
		case <-r.recKick:
		case <-tick.C():
		}
		r.recoverStep(ctx)
	}
}

func (r *Replicator) recoverStep(ctx context.Context) {
	now := r.clock.Now()
	r.rec.mu.Lock()
	if r.rec.fresh && r.rec.need == "" && !now.Before(r.rec.deadline) {
		r.rec.fresh = false
		r.store.ReleaseLocalOps()
		r.log.Warn("no peer reported within the recovery timeout; assuming this replica is new and releasing local writes",
			"timeout", r.cfg.RecoveryTimeout)
	}
	if r.rec.need == "" || (!r.rec.askedAt.IsZero() && now.Sub(r.rec.askedAt) < r.cfg.SyncTimeout) {
		r.rec.mu.Unlock()
		return
	}
	peer := r.rec.peer
	if peer == "" || !r.rec.askedAt.IsZero() {
		// No answer from the peer asked: ask a live peer at random.
		if alive := r.members.Alive(); len(alive) > 0 {
			peer = alive[r.rnd.IntN(len(alive))].Name
		}
	}
	if peer == "" {
		r.rec.mu.Unlock()
		return
	}
	r.rec.peer, r.rec.askedAt = peer, now
	r.rec.buf, r.rec.got, r.rec.xfer, r.rec.offsets = nil, 0, 0, nil
	r.rec.mu.Unlock()
	msg, err := Encode(Message{Type: TypeSnapReq, From: r.cfg.Name}, nil)
	if err == nil {
		err = r.sendTo(peer, "", msg)
	}
	if err != nil && ctx.Err() == nil {
		r.log.Debug("snapshot request failed", "peer", peer, "err", err)
		return
	}
	r.log.Info("snapshot requested", "peer", peer)
}

// requestedSnapshot queues a peer's snapshot request (dropped when full:
// the peer asks again).
func (r *Replicator) requestedSnapshot(peer string) {
	select {
	case r.serve <- serveReq{peer: peer}:
	default:
		r.log.Debug("snapshot request dropped: busy", "peer", peer)
	}
}

// serveSnapshot exports the store and streams it to peer in chunks.
func (r *Replicator) serveSnapshot(ctx context.Context, peer string) {
	if r.needsState() {
		r.log.Debug("not serving a snapshot while awaiting one", "peer", peer)
		return
	}
	snap, info, err := r.store.ExportSnapshot(ctx)
	if err != nil {
		r.log.Warn("snapshot export failed", "peer", peer, "err", err)
		return
	}
	xfer := uint64(r.rnd.IntN(1<<62)) + 1
	chunk := r.cfg.MaxChunkBytes
	for off := 0; off < len(snap); off += chunk {
		end := min(off+chunk, len(snap))
		msg, err := Encode(Message{Type: TypeSnapData, From: r.cfg.Name, Xfer: xfer, Total: uint64(len(snap)),
			Offset: uint64(off), Chunk: snap[off:end], Last: end == len(snap)}, nil)
		if err != nil {
			r.log.Error("encoding snapshot chunk", "err", err)
			return
		}
		if err := r.sendTo(peer, "", msg); err != nil {
			r.log.Debug("sending snapshot failed", "peer", peer, "err", err)
			return
		}
	}
	r.log.Info("snapshot sent", "peer", peer, "bytes", len(snap), "hash", info.Hash)
}

// snapshotChunk assembles a chunk from the peer asked and installs the
// snapshot once complete. Chunks may arrive in any order (each travels on
// its own connection): each is placed at its offset. The first chunk after
// a request picks the transfer; chunks of any other (an earlier request
// still being served) are ignored.
func (r *Replicator) snapshotChunk(m Message) {
	r.rec.mu.Lock()
	if r.rec.need == "" || m.From != r.rec.peer {
		r.rec.mu.Unlock()
		r.log.Debug("unrequested snapshot chunk ignored", "peer", m.From)
		return
	}
	if r.rec.xfer == 0 && m.Xfer != 0 {
		r.rec.xfer, r.rec.buf, r.rec.got, r.rec.offsets = m.Xfer, make([]byte, m.Total), 0, map[uint64]bool{}
	}
	if m.Xfer != r.rec.xfer || m.Total != uint64(len(r.rec.buf)) {
		r.rec.mu.Unlock()
		r.log.Debug("snapshot chunk of another transfer ignored", "peer", m.From)
		return
	}
	if r.rec.offsets[m.Offset] {
		r.rec.mu.Unlock()
		r.log.Debug("duplicate snapshot chunk ignored", "peer", m.From, "offset", m.Offset)
		return
	}
	// Decode bounds the chunk within Total. Overlapping chunks from a
	// broken sender could complete the count with a hole: the snapshot's
	// hash, checked at install, refuses that.
	r.rec.offsets[m.Offset] = true
	copy(r.rec.buf[m.Offset:], m.Chunk)
	r.rec.got += uint64(len(m.Chunk))
	r.rec.askedAt = r.clock.Now() // progress keeps the request alive
	if r.rec.got < uint64(len(r.rec.buf)) {
		r.rec.mu.Unlock()
		return
	}
	snap := r.rec.buf
	r.rec.buf, r.rec.got, r.rec.offsets = nil, 0, nil
	r.rec.mu.Unlock()
	select {
	case r.install <- installReq{peer: m.From, snap: snap}:
	default: // one is being installed; this one is asked for again if needed
	}
}

// installSnapshot installs an assembled snapshot from peer.
func (r *Replicator) installSnapshot(ctx context.Context, peer string, snap []byte) {
	info, err := r.store.InstallSnapshot(ctx, snap)
	if err != nil {
		reason := ReasonSnapshotInvalid
		if errors.Is(err, crdt.ErrSnapshotHash) {
			reason = ReasonSnapshotHash
		}
		if errors.Is(err, crdt.ErrClosed) || ctx.Err() != nil {
			return
		}
		r.cfg.Reject(reason)
		r.log.Warn("state transfer refused; nothing changed", "reason", reason, "peer", peer, "err", err)
		r.rec.mu.Lock()
		r.rec.peer = "" // ask someone (possibly the same peer) again after SyncTimeout
		r.rec.mu.Unlock()
		return
	}
	r.rec.mu.Lock()
	r.rec.need, r.rec.peer, r.rec.askedAt, r.rec.fresh = "", "", time.Time{}, false
	r.rec.mu.Unlock()
	r.log.Info("state transfer installed", "peer", peer, "bytes", info.Bytes, "hash", info.Hash,
		"own_ops_kept", info.OwnKept, "own_writes_dropped", info.OwnLost)
	// Fetch what is newer than the snapshot and ship the own ops kept.
	for _, p := range r.members.Alive() {
		r.syncer.enqueue(p.Name)
	}
}

// deltasCannotRepair returns why shipping deltas to peer, which holds vv,
// would not repair it (so it must be sent none), or "".
func (r *Replicator) deltasCannotRepair(peer string, vv, own, horizon crdt.VersionVector) string {
	// Nothing of its own origin while this agent holds some: it lost its
	// database (a lagging but otherwise intact peer is left to detect it
	// itself: a request can race with its own gossiped ops).
	if vv[peer] == 0 && own[peer] > 0 {
		return fmt.Sprintf("it holds none of its own ops, this agent holds them up to %d: it lost its database", own[peer])
	}
	if o, behind := crdt.Behind(vv, horizon); behind {
		return fmt.Sprintf("it is behind this agent's compaction horizon for origin %q (%d < %d)", o, vv[o], horizon[o])
	}
	return ""
}
