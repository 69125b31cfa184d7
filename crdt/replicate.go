package crdt

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"time"
)

// VersionVector returns a copy of the store's version vector: for every
// origin, the highest sequence number up to which all its ops have been
// applied here (or superseded).
func (s *Store) VersionVector(ctx context.Context) (VersionVector, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return nil, fmt.Errorf("crdt: version vector: %w", ErrClosed)
	}
	return s.vv.Clone(), nil
}

const opColumns = `seq, hlc, type, coll, key, kind, value, p, n, observed`

// scanOp reads one op log row (opColumns) of origin and checks it.
func scanOp(rows *sql.Rows, origin string) (Op, error) {
	var (
		seq, hlc, kind, p, n int64
		typ, coll, key       string
		value, observed      []byte
	)
	if err := rows.Scan(&seq, &hlc, &typ, &coll, &key, &kind, &value, &p, &n, &observed); err != nil {
		return Op{}, fmt.Errorf("%w: ops row of %q: %v", ErrCorrupt, origin, err)
	}
	op := Op{
		Dot:        Dot{Origin: origin, Seq: uint64(seq)},
		HLC:        Timestamp(hlc),
		Type:       Type(typ),
		Collection: coll,
		Key:        key,
		Kind:       Kind(kind),
		P:          uint64(p),
		N:          uint64(n),
	}
	if kind < 0 || kind > 255 || seq <= 0 || hlc <= 0 || p < 0 || n < 0 {
		return Op{}, fmt.Errorf("%w: ops row %s:%d: kind %d, hlc %d, totals %d/%d", ErrCorrupt, origin, seq, kind, hlc, p, n)
	}
	if len(value) > 0 {
		op.Value = value
	}
	dots, err := decodeDots(observed)
	if err != nil {
		return Op{}, fmt.Errorf("%w: ops row %s:%d: observed dots: %v", ErrCorrupt, origin, seq, err)
	}
	op.Observed = dots
	if err := op.validate(); err != nil {
		return Op{}, fmt.Errorf("%w: ops row %s:%d: %v", ErrCorrupt, origin, seq, err)
	}
	return op, nil
}

// DeltasSince returns the ops this store holds that a holder of peer lacks:
// per origin, the range (peer[o], ours[o]] with the ops of it still in the
// op log (compacted ones are superseded by ops shipped too). The result is
// cut at about maxBytes of encoding (maxBytes <= 0 or above MaxDeltaBytes
// means MaxDeltaBytes) and MaxOpsPerMessage ops, but holds at least one op
// (or one fully compacted range) whenever anything is missing. Each Delta is
// a contiguous range of one origin; call again with peer.Advance(result) for
// the rest. An empty result means the peer lacks nothing this store can
// ship. Ops this store holds beyond a gap in its own version vector are not
// shipped (their range is not contiguous here).
func (s *Store) DeltasSince(ctx context.Context, peer VersionVector, maxBytes int) ([]Delta, error) {
	if err := s.readCheck("deltas since"); err != nil {
		return nil, err
	}
	if maxBytes <= 0 || maxBytes > MaxDeltaBytes {
		maxBytes = MaxDeltaBytes
	}
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("crdt: deltas since: %w", err)
	}
	defer tx.Rollback()
	// Snapshot the version vector in the same read transaction as the ops.
	var seq int64
	if err := tx.QueryRowContext(ctx, `SELECT seq FROM meta WHERE id = 1`).Scan(&seq); err != nil {
		return nil, s.scanErr("deltas since", err)
	}
	if seq < 0 {
		return nil, s.corrupt(fmt.Errorf("crdt: deltas since: %w: meta seq %d", ErrCorrupt, seq))
	}
	ours, err := readVV(ctx, tx, s.id, uint64(seq))
	if err != nil {
		return nil, s.corrupt(fmt.Errorf("crdt: deltas since: %w", err))
	}
	origins := make([]string, 0, len(ours))
	for o, have := range ours {
		if have > peer[o] {
			origins = append(origins, o)
		}
	}
	sort.Strings(origins)
	stmt := tx.StmtContext(ctx, s.st.opsRange)
	var (
		out   []Delta
		used  = 1 + 3 + 3
		nops  int
		ended bool
	)
	for _, o := range origins {
		d := Delta{Origin: o, From: peer[o], To: ours[o]}
		used += encodedDeltaOverhead(o)
		rows, err := stmt.QueryContext(ctx, o, int64(d.From), int64(d.To))
		if err != nil {
			return nil, fmt.Errorf("crdt: deltas since: %w", err)
		}
		for rows.Next() {
			op, err := scanOp(rows, o)
			if err != nil {
				rows.Close()
				return nil, s.corrupt(fmt.Errorf("crdt: deltas since: %w", err))
			}
			size := encodedOpSize(&op)
			if (used+size > maxBytes || nops >= MaxOpsPerMessage || len(out) >= MaxDeltasPerMessage) && (len(out) > 0 || len(d.Ops) > 0) {
				d.To = op.Dot.Seq - 1
				ended = true
				break
			}
			used += size
			nops++
			d.Ops = append(d.Ops, op)
		}
		if err := rows.Close(); err != nil {
			return nil, fmt.Errorf("crdt: deltas since: %w", err)
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("crdt: deltas since: %w", err)
		}
		if d.To > d.From {
			out = append(out, d)
		}
		if ended || len(out) >= MaxDeltasPerMessage || used >= maxBytes {
			break
		}
	}
	return out, nil
}

// Merge applies deltas received from peers. It first validates all of ds
// (ErrInvalidDelta) and checks deltas claiming this replica's own origin
// against its history (ErrInvalidDelta when they claim sequence numbers it
// never issued or differ from its op log); any failure rejects the whole
// call with nothing written. Then it applies everything in one transaction,
// except the ops of an origin whose clock is too far ahead: from an
// origin's first op with a timestamp more than the maximum drift ahead of
// the clock's reference time (see Clock), its ops in ds are refused (listed
// in MergeStats.Refused) and the version vector does not advance over them,
// while the ops of every other origin apply.
//
// Merge is idempotent, commutative and associative on the state, which is
// that of the set of ops applied: ops already covered by the version vector
// are skipped, ops beyond a gap are applied (state join) but the version
// vector only advances over ranges contiguous with it (so it can depend on
// the order of calls; the ranges left out are offered again). Deltas are
// taken in (origin, From) order so a chain of ranges within one call
// advances the vector across all of them.
//
// A delta from a compacted store covers the superseded ops it leaves out, so
// a replica that merges it skips those ops if they arrive later on their
// own: until the ops that superseded them arrive too, its state can differ
// from that of a replica that got them in the other order, with the same
// version vector. Once both have received everything they agree (given
// compactions that keep the safety rule on Compact).
func (s *Store) Merge(ctx context.Context, ds []Delta) (MergeStats, error) {
	var st MergeStats
	for i := range ds {
		if err := ds[i].Validate(); err != nil {
			s.metrics.rejected.WithLabelValues("invalid").Inc()
			s.log.Warn("crdt: merge rejected", "reason", "invalid", "err", err)
			return st, fmt.Errorf("crdt: merge: delta %d: %w", i, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return st, fmt.Errorf("crdt: merge: %w", ErrClosed)
	}
	if err := s.checkOwn(ctx, ds); err != nil {
		s.metrics.rejected.WithLabelValues("conflict").Inc()
		s.log.Warn("crdt: merge rejected", "reason", "conflict", "err", err)
		return st, s.corrupt(err)
	}
	ref, limit := s.clock.Limit()
	ds, refused := refuseAhead(ds, ref, limit)
	for _, r := range refused {
		s.metrics.mergeRefused.Add(float64(r.Ops))
		s.log.Debug("crdt: merge refused ops of an origin whose clock is too far ahead",
			"origin", r.Origin, "ops", r.Ops, "hlc", r.HLC.String(), "ahead", r.Ahead, "source", string(r.Source))
	}
	if len(ds) == 0 {
		st.Refused = refused
		return st, nil
	}
	var maxHLC Timestamp
	for i := range ds {
		for j := range ds[i].Ops {
			maxHLC = max(maxHLC, ds[i].Ops[j].HLC)
		}
	}
	if maxHLC > 0 {
		s.clock.observeChecked(maxHLC)
	}
	tx, err := s.wc.BeginTx(ctx, nil)
	if err != nil {
		return st, fmt.Errorf("crdt: merge: begin: %w", err)
	}
	w := &wtx{ctx: ctx, tx: tx}
	vv := s.vv.Clone()
	pending := map[string]typeSet{}
	st, err = s.mergeTx(w, ds, vv, pending)
	if err == nil {
		err = tx.Commit()
	}
	if err != nil {
		tx.Rollback()
		return MergeStats{}, s.corrupt(fmt.Errorf("crdt: merge: %w", err))
	}
	s.vv = vv
	s.commitCollections(pending)
	s.metrics.mergeApplied.Add(float64(st.Applied))
	s.metrics.mergeDup.Add(float64(st.Duplicates))
	st.Refused = refused
	return st, nil
}

// refuseAhead cuts from ds, per origin, the ops from the first one stamped
// after limit on: each delta of such an origin ends just before that op (a
// range cut like DeltasSince's), or is dropped when nothing is left of it.
// It returns the deltas kept and the refusals, sorted by origin; ds itself
// is not modified.
func refuseAhead(ds []Delta, ref Reference, limit Timestamp) ([]Delta, []Refusal) {
	first := map[string]*Op{} // per origin, its op of lowest sequence stamped after limit
	for i := range ds {
		for j := range ds[i].Ops {
			op := &ds[i].Ops[j]
			if op.HLC > limit {
				if f, ok := first[op.Dot.Origin]; !ok || op.Dot.Seq < f.Dot.Seq {
					first[op.Dot.Origin] = op
				}
			}
		}
	}
	if len(first) == 0 {
		return ds, nil
	}
	counts := map[string]int{}
	kept := make([]Delta, 0, len(ds))
	for _, d := range ds {
		f, ok := first[d.Origin]
		if !ok {
			kept = append(kept, d)
			continue
		}
		cut := f.Dot.Seq
		n := 0
		for n < len(d.Ops) && d.Ops[n].Dot.Seq < cut {
			n++
		}
		counts[d.Origin] += len(d.Ops) - n
		if d.To >= cut {
			d.To = cut - 1
		}
		if d.To > d.From {
			d.Ops = d.Ops[:n:n]
			kept = append(kept, d)
		}
	}
	out := make([]Refusal, 0, len(first))
	for o, f := range first {
		out = append(out, Refusal{Origin: o, Ops: counts[o], HLC: f.HLC,
			Ahead: time.Duration(f.HLC.Millis()-ref.Time.UnixMilli()) * time.Millisecond, Source: ref.Source})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Origin < out[j].Origin })
	return kept, out
}

func (s *Store) mergeTx(w *wtx, ds []Delta, vv VersionVector, pending map[string]typeSet) (MergeStats, error) {
	var st MergeStats
	changed := map[string]bool{}
	for _, i := range deltaOrder(ds) {
		d := &ds[i]
		gap := d.From > vv[d.Origin]
		for j := range d.Ops {
			op := &d.Ops[j]
			if vv.Covers(op.Dot) {
				st.Duplicates++
				continue
			}
			inserted, err := s.insertOp(w, op, true)
			if err != nil {
				return st, err
			}
			if !inserted {
				st.Duplicates++
				continue
			}
			if err := s.applyOp(w, op, vv); err != nil {
				return st, err
			}
			if err := s.noteCollection(w, op.Collection, op.Type, pending); err != nil {
				return st, err
			}
			st.Applied++
		}
		if gap {
			st.Stale++
		} else if d.To > vv[d.Origin] {
			vv[d.Origin] = d.To
			changed[d.Origin] = true
			st.Advanced = true
		}
	}
	for o := range changed {
		if o == s.id {
			continue
		}
		if _, err := w.exec(s.st.upsertVV, o, int64(vv[o])); err != nil {
			return st, fmt.Errorf("update version vector: %w", err)
		}
	}
	if _, err := w.exec(s.st.setMeta, int64(s.seq), int64(s.clock.Last())); err != nil {
		return st, fmt.Errorf("update meta: %w", err)
	}
	return st, nil
}

// checkOwn rejects deltas of this replica's own origin that do not match
// its history: sequence numbers it never issued, or ops that differ from
// the ones in its op log.
func (s *Store) checkOwn(ctx context.Context, ds []Delta) error {
	for i := range ds {
		d := &ds[i]
		if d.Origin != s.id {
			continue
		}
		if d.To > s.seq {
			return fmt.Errorf("crdt: merge: %w: delta %d claims ops %d..%d of this replica %q, which has only issued %d",
				ErrInvalidDelta, i, d.From+1, d.To, s.id, s.seq)
		}
		for j := range d.Ops {
			op := &d.Ops[j]
			var (
				hlc, kind int64
				coll, key string
			)
			err := s.st.opByDot.QueryRowContext(ctx, s.id, int64(op.Dot.Seq)).Scan(&hlc, &kind, &coll, &key)
			if errors.Is(err, sql.ErrNoRows) {
				continue // compacted here
			}
			if err != nil {
				return s.scanErr("merge", err)
			}
			if Timestamp(hlc) != op.HLC || Kind(kind) != op.Kind || coll != op.Collection || key != op.Key {
				return fmt.Errorf("crdt: merge: %w: delta %d op %s:%d differs from this replica's own op", ErrInvalidDelta, i, op.Dot.Origin, op.Dot.Seq)
			}
		}
	}
	return nil
}
