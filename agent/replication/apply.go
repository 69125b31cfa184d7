package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/crdt"
)

// enqueueInbound copies b onto the inbound queue, or drops it.
func (r *Replicator) enqueueInbound(b []byte) {
	if len(b) > MaxMessageBytes {
		r.cfg.Reject(membership.ReasonOversized)
		r.log.Warn("gossip rejected", "reason", membership.ReasonOversized, "bytes", len(b), "limit", MaxMessageBytes)
		return
	}
	if r.inBytes.Load()+int64(len(b)) > inboundBudget {
		r.drop(len(b))
		return
	}
	buf := make([]byte, len(b))
	copy(buf, b)
	r.inBytes.Add(int64(len(buf)))
	select {
	case r.inbound <- buf:
	default:
		r.inBytes.Add(-int64(len(buf)))
		r.drop(len(b))
	}
}

func (r *Replicator) drop(n int) {
	if r.c.Dropped.Add(1)%100 == 1 {
		r.log.Warn("inbound replication queue full; dropping messages (anti-entropy repairs them)", "bytes", n, "dropped_total", r.c.Dropped.Load())
	}
}

// applyLoop drains the inbound queue: it decodes messages, merges their
// deltas (a batch per store transaction) and acts on the rest.
func (r *Replicator) applyLoop(ctx context.Context) {
	for {
		var first []byte
		select {
		case first = <-r.inbound:
		case <-ctx.Done():
			return
		}
		batch := [][]byte{first}
		size := len(first)
	fill:
		for len(batch) < applyBatchMsgs && size < applyBatchBytes {
			select {
			case b := <-r.inbound:
				batch = append(batch, b)
				size += len(b)
			default:
				break fill
			}
		}
		r.inBytes.Add(-int64(size))
		r.handleBatch(ctx, batch)
	}
}

// handleBatch processes received messages; it is the whole inbound
// message handler (FuzzHandleMessage drives it).
func (r *Replicator) handleBatch(ctx context.Context, raw [][]byte) {
	self := r.cfg.Name
	msgs := make([]Message, 0, len(raw))
	for _, b := range raw {
		m, err := Decode(b)
		if err != nil {
			r.rejectMsg(err, "")
			continue
		}
		if m.From == self {
			r.rejectMsg(&DecodeError{Reason: ReasonOwnName, Err: fmt.Errorf("replication: message claims to come from this agent (%q): duplicate node name?", self)}, "")
			continue
		}
		msgs = append(msgs, m)
	}
	if len(msgs) == 0 {
		return
	}
	// Clock samples first: the deltas of the same messages are judged
	// against them (a board whose wall clock is wrong has no other time).
	for _, m := range msgs {
		switch m.Type {
		case TypeSyncReq, TypeSyncResp, TypeState:
			r.members.SetClock(m.From, m.Clock.Time(), m.Clock.Sane)
		}
	}
	if err := r.mergeMessages(ctx, msgs); err != nil {
		if ctx.Err() != nil || errors.Is(err, crdt.ErrClosed) {
			return // shutting down
		}
		// The deltas stay missing (anti-entropy offers them again); the
		// requests and version vectors in the messages are still good.
		r.log.Error("merging received deltas", "err", err)
	} else {
		r.relay(msgs)
	}
	for _, m := range msgs {
		r.act(m)
	}
}

// mergeMessages merges the deltas of msgs in one transaction. When the
// batch is refused as bad input, each message is merged alone so only the
// bad ones are rejected (their deltas are cleared). Other errors (store
// closed, disk) are returned.
func (r *Replicator) mergeMessages(ctx context.Context, msgs []Message) error {
	s := r.store
	vv, err := s.VersionVector(ctx)
	if err != nil {
		return err
	}
	// Drop deltas the store already covers: gossip delivers most deltas
	// several times.
	var all []crdt.Delta
	for i := range msgs {
		kept := msgs[i].Deltas[:0:0]
		for _, d := range msgs[i].Deltas {
			if d.To > vv[d.Origin] {
				kept = append(kept, d)
			}
		}
		msgs[i].Deltas = kept
		all = append(all, kept...)
	}
	if len(all) == 0 {
		return nil
	}
	st, err := s.Merge(ctx, all)
	if err == nil {
		r.merged(st)
		dropRefused(msgs, st.Refused)
		return nil
	}
	if !isBadInput(err) {
		return err
	}
	for i := range msgs {
		if len(msgs[i].Deltas) == 0 {
			continue
		}
		st, err := s.Merge(ctx, msgs[i].Deltas)
		switch {
		case err == nil:
			r.merged(st)
			dropRefused(msgs[i:i+1], st.Refused)
		case isBadInput(err):
			r.rejectMsg(err, msgs[i].From)
			msgs[i].Deltas = nil
		default:
			return err
		}
	}
	return nil
}

// dropRefused removes from msgs the deltas of the origins Merge refused
// (clock too far ahead), so what is left is what was applied: the relay
// passes on only that, never a refused origin's ops.
func dropRefused(msgs []Message, refused []crdt.Refusal) {
	if len(refused) == 0 {
		return
	}
	for i := range msgs {
		kept := msgs[i].Deltas[:0:0]
		for _, d := range msgs[i].Deltas {
			if !slices.ContainsFunc(refused, func(x crdt.Refusal) bool { return x.Origin == d.Origin }) {
				kept = append(kept, d)
			}
		}
		msgs[i].Deltas = kept
	}
}

// merged counts what a Merge call applied and refused. Ops refused while
// this agent's wall clock is wrong and no peer's clock is known yet (the
// store judged them against its last timestamp) are counted as deferred,
// not against their origin: the fault is local, and anti-entropy offers
// them again once peers have reported their clocks.
func (r *Replicator) merged(st crdt.MergeStats) {
	r.c.DeltasApplied.Add(uint64(st.Applied))
	for _, x := range st.Refused {
		if x.Source == crdt.SourceLast {
			r.c.DeferredOps.Add(uint64(x.Ops))
			if r.refusals.noteDeferred(r.clock.Now()) {
				r.log.Warn("gossip ops deferred: this agent's wall clock is wrong and no peer's clock is known yet (anti-entropy offers them again)",
					"origin", x.Origin, "ops", x.Ops, "hlc", x.HLC.String())
			}
			continue
		}
		r.c.RefusedOps.Add(uint64(x.Ops))
		label, warn := r.refusals.note(x.Origin, r.clock.Now())
		r.cfg.Refused(label, x.Ops)
		if warn {
			r.log.Warn("gossip ops refused: their origin's clock is too far ahead (further refusals of it are logged again in a minute)",
				"origin", x.Origin, "ops", x.Ops, "hlc", x.HLC.String(), "ahead", x.Ahead, "reference", string(x.Source))
		}
	}
}

// Bounds of the refused-ops accounting.
const (
	// MaxRefusedOrigins bounds the origin label values of refused ops
	// (origins are names from the network: a bad peer could make up any
	// number of them).
	MaxRefusedOrigins = 256
	// RefusedOther is the origin label of the origins beyond the bound.
	RefusedOther = "_other"
	// refusalWarnInterval spaces the warnings about one origin, and those
	// about deferred ops.
	refusalWarnInterval = time.Minute
)

// refusals tracks the origins whose ops were refused: their metric label
// and when each was last warned about.
type refusals struct {
	mu       sync.Mutex
	warned   map[string]time.Time // by label
	deferred time.Time            // last warning about deferred ops
}

// note returns the label of origin and whether to warn about it now.
func (f *refusals) note(origin string, now time.Time) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	label := origin
	if _, ok := f.warned[origin]; !ok && len(f.warned) >= MaxRefusedOrigins {
		label = RefusedOther
	}
	last, ok := f.warned[label]
	if ok && !warnDue(last, now) {
		return label, false
	}
	f.warned[label] = now
	return label, true
}

// noteDeferred reports whether to warn about deferred ops now.
func (f *refusals) noteDeferred(now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.deferred.IsZero() && !warnDue(f.deferred, now) {
		return false
	}
	f.deferred = now
	return true
}

// warnDue: the warning interval has passed since last (or the clock went
// backwards).
func warnDue(last, now time.Time) bool {
	return now.Sub(last) >= refusalWarnInterval || now.Before(last)
}

func isBadInput(err error) bool {
	return errors.Is(err, crdt.ErrInvalidDelta) || errors.Is(err, crdt.ErrClockDrift)
}

func (r *Replicator) rejectMsg(err error, from string) {
	reason := RejectReason(err)
	r.cfg.Reject(reason)
	if from != "" {
		r.log.Warn("gossip rejected", "reason", reason, "from", from, "err", err)
	} else {
		r.log.Warn("gossip rejected", "reason", reason, "err", err)
	}
}

// act performs what a merged message asks for.
func (r *Replicator) act(m Message) {
	switch m.Type {
	case TypeSyncReq:
		r.members.SetVV(m.From, m.VV)
		r.observe(m.From, m.VV, nil)
		r.shipper.enqueue(shipJob{peer: m.From, addr: m.Addr, vv: m.VV, respond: true})
		if m.Digest != r.members.Digest() {
			r.members.Reconcile(m.From, m.Addr)
		}
	case TypeSyncResp:
		r.members.SetVV(m.From, m.VV)
		r.observe(m.From, m.VV, m.Horizon)
		if m.PushBack {
			r.shipper.enqueue(shipJob{peer: m.From, vv: m.VV}) // push back what the responder lacks
		}
		r.syncer.heard(m.From, m.Last)
	case TypeSyncData:
		r.syncer.heard(m.From, m.Last)
		if m.Last {
			r.pushBacks.done(m.From)
		}
	case TypeState:
		r.members.SetVV(m.From, m.VV)
		r.observe(m.From, m.VV, nil)
		r.shipper.enqueue(shipJob{peer: m.From, vv: m.VV})
	case TypeSnapReq:
		r.requestedSnapshot(m.From)
	case TypeSnapData:
		r.snapshotChunk(m)
	case TypeLeave:
		if r.members.MarkLeaving(m.From) {
			r.log.Info("member is leaving", "member", m.From)
			if msg, err := Encode(Message{Type: TypeLeave, From: m.From}, nil); err == nil {
				r.queueBroadcast(msg) // pass the intent on, once
			}
		}
	}
}

// AnnounceLeave tells peers this agent is leaving gracefully, so they
// record it as left rather than failed when memberlist reports it gone:
// directly to a few live peers, and by gossip. It returns within about a
// second.
func (r *Replicator) AnnounceLeave() {
	msg, err := Encode(Message{Type: TypeLeave, From: r.cfg.Name}, nil)
	if err != nil {
		r.log.Error("encoding leave intent", "err", err)
		return
	}
	r.queueBroadcast(msg)
	alive := r.members.Alive()
	done := make(chan struct{}, 3)
	sent := 0
	for ; sent < 3 && len(alive) > 0; sent++ {
		j := r.rnd.IntN(len(alive))
		name := alive[j].Name
		alive = append(alive[:j], alive[j+1:]...)
		go func() {
			if err := r.sendTo(name, "", msg); err != nil {
				r.log.Debug("sending leave intent", "peer", name, "err", err)
			}
			done <- struct{}{}
		}()
	}
	// An unreachable peer must not hold up the leave: a bound on network
	// time, on the system clock.
	timeout := time.NewTimer(time.Second)
	defer timeout.Stop()
	for ; sent > 0; sent-- {
		select {
		case <-done:
		case <-timeout.C:
			return
		}
	}
}
