package replication

import (
	"context"

	"github.com/edgefleet/edgefleet/crdt"
)

// compactLoop compacts the store every compaction interval (±10%), when
// one is set, at the start Config.Defer allows. Removals (tombstones) are compacted up to the pointwise
// minimum of the version vectors of every member that has not left, once
// every such member has reported one; superseded ops always (see
// crdt.Store.Compact). Members are forgotten after
// gossip.reconnect_timeout (72 h) and then no longer hold removals back
// once the tombstone TTL (7 days) has passed: a forgotten member that
// returns behind the compaction horizon recovers by a state transfer
// (recover.go).
func (r *Replicator) compactLoop(ctx context.Context) {
	if r.cfg.CompactionInterval <= 0 {
		return
	}
	for r.sleep(ctx, r.jitter(r.cfg.CompactionInterval, 0.1)) {
		done := func() {}
		if r.cfg.Defer != nil {
			d, err := r.cfg.Defer(ctx)
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				r.log.Warn("compaction scheduler failed; compacting now", "err", err)
			default:
				done = d
			}
		}
		err := r.Compact(ctx)
		done()
		if err != nil && ctx.Err() == nil {
			r.log.Warn("compaction failed", "err", err)
		}
	}
}

// Compact compacts the store once (compactLoop runs it every compaction
// interval).
func (r *Replicator) Compact(ctx context.Context) error {
	s := r.store
	vv, err := s.VersionVector(ctx)
	if err != nil {
		return err
	}
	stable, ok := r.members.StableVV(vv)
	if !ok {
		// Superseded history can always go; removals wait until every
		// member has reported what it holds.
		r.log.Debug("compacting superseded ops only: not every member has reported its version vector")
		stable = crdt.VersionVector{}
	}
	st, err := s.Compact(ctx, stable, r.clock.Now())
	if err != nil {
		return err
	}
	if st.OpsRemoved > 0 || st.TombstonesRemoved > 0 {
		r.log.Info("compacted state", "ops_removed", st.OpsRemoved, "tombstones_removed", st.TombstonesRemoved)
	}
	return nil
}
